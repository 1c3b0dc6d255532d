"""What the real Internet Archive needs from the store: a shared lookup window, captures CDX
listed (so one prefix query answers many episodes), whether a capture's size came from its
download, and an enclosure's redirect chain.

Columns are added with plain ALTER TABLE ADD COLUMN (no table copy on SQLite), which keeps
migration 0005's row triggers on `episodes` in place.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.add_column("episodes", sa.Column("archive_bytes_downloaded", sa.Boolean(), nullable=True))
    op.add_column("episodes", sa.Column("archive_redirects", sa.Text(), nullable=True))
    op.create_table(
        "archive_lookups",
        sa.Column("id", _Id, primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_archive_lookups_at", "archive_lookups", ["at"])
    op.create_table(
        "archive_known_captures",
        sa.Column("id", _Id, primary_key=True, autoincrement=True),
        sa.Column("url_key", sa.String(40), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("timestamp", sa.String(14), nullable=False),
        sa.Column("statuscode", sa.String(8), nullable=True),
        sa.Column("digest", sa.String(64), nullable=True),
        sa.Column("length", sa.BigInteger(), nullable=True),
        sa.Column("learned_at", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("url_key", "timestamp", name="uq_archive_known_captures_url_key_timestamp"),
    )
    op.create_table(
        "archive_prefix_lookups",
        sa.Column("prefix_key", sa.String(40), primary_key=True),
        sa.Column("prefix", sa.Text(), nullable=False),
        sa.Column("looked_up_at", sa.DateTime(), nullable=False),
        sa.Column("since", sa.String(14), nullable=False),
        sa.Column("complete", sa.Boolean(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("archive_prefix_lookups")
    op.drop_table("archive_known_captures")
    op.drop_index("ix_archive_lookups_at", table_name="archive_lookups")
    op.drop_table("archive_lookups")
    # Plain DROP COLUMN (SQLite 3.35+), not a batch table copy, which would drop 0005's triggers.
    op.drop_column("episodes", "archive_redirects")
    op.drop_column("episodes", "archive_bytes_downloaded")
