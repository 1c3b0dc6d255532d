"""Archive stage (backoff and quota deferral, capture provenance, submission log, daily usage),
duplicates, and which run holds a lease.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_COLUMNS = [
    sa.Column("archive_not_before", sa.DateTime(), nullable=True),
    sa.Column("archive_submitted_at", sa.DateTime(), nullable=True),
    sa.Column("archive_digest", sa.String(64), nullable=True),
    sa.Column("archive_bytes", sa.BigInteger(), nullable=True),
    sa.Column("archive_reused", sa.Boolean(), nullable=True),
    sa.Column("archive_error", sa.Text(), nullable=True),
    sa.Column("duplicate_of", _Id, nullable=True),
    sa.Column("claimed_by_run", sa.String(64), nullable=True),
]


def upgrade() -> None:
    with op.batch_alter_table("episodes") as batch:
        for column in _COLUMNS:
            batch.add_column(column.copy())
    op.create_index("ix_episodes_audio_sha256", "episodes", ["audio_sha256"])
    op.create_index("ix_episodes_claimed_by_run", "episodes", ["claimed_by_run"])
    op.create_table(
        "archive_submissions",
        sa.Column("id", _Id, primary_key=True, autoincrement=True),
        sa.Column("episode_id", _Id, nullable=True),
        sa.Column("submitted_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_archive_submissions_submitted_at", "archive_submissions", ["submitted_at"])
    op.create_table(
        "archive_days",
        sa.Column("day", sa.String(10), primary_key=True),
        sa.Column("captures", sa.Integer(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "archive_pauses",
        sa.Column("reason", sa.String(64), primary_key=True),
        sa.Column("until", sa.DateTime(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("archive_pauses")
    op.drop_table("archive_days")
    op.drop_index("ix_archive_submissions_submitted_at", table_name="archive_submissions")
    op.drop_table("archive_submissions")
    op.drop_index("ix_episodes_claimed_by_run", table_name="episodes")
    op.drop_index("ix_episodes_audio_sha256", table_name="episodes")
    with op.batch_alter_table("episodes") as batch:
        for column in reversed(_COLUMNS):
            batch.drop_column(column.name)
