"""Episodes: the queue and the record.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "episodes",
        sa.Column("id", _Id, primary_key=True, autoincrement=True),
        sa.Column("url_hash", sa.String(32), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("podcast_id", sa.String(64)),
        sa.Column("language", sa.String(16)),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("archive_url", sa.Text()),
        sa.Column("archive_timestamp", sa.String(14)),
        sa.Column("archive_job_id", sa.String(64)),
        sa.Column("archive_attempts", sa.Integer(), nullable=False),
        sa.Column("archived_at", sa.DateTime()),
        sa.Column("worker_id", sa.String(255)),
        sa.Column("worker_ip", sa.String(64)),
        sa.Column("gpu", sa.String(255)),
        sa.Column("lease_token", sa.String(32)),
        sa.Column("leased_until", sa.DateTime()),
        sa.Column("claimed_at", sa.DateTime()),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("duration_seconds", sa.Float()),
        sa.Column("audio_sha256", sa.String(64)),
        sa.Column("audio_md5", sa.String(32)),
        sa.Column("processing_seconds", sa.Float()),
        sa.Column("code_version", sa.String(64)),
        sa.Column("error_code", sa.String(64)),
        sa.Column("error", sa.Text()),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("completed_at", sa.DateTime()),
        sa.UniqueConstraint("url_hash", name="uq_episodes_url_hash"),
    )
    op.create_index("ix_episodes_status_id", "episodes", ["status", "id"])
    op.create_index("ix_episodes_status_leased_until", "episodes", ["status", "leased_until"])


def downgrade() -> None:
    op.drop_table("episodes")
