"""Dataset exports: published Parquet shards and which result of each episode they hold.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_Json = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "dataset_shards",
        sa.Column("id", _Id, primary_key=True, autoincrement=True),
        sa.Column("dataset", sa.String(1024), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("episodes", sa.Integer(), nullable=False),
        sa.Column("replaced", sa.Integer(), nullable=False),
        sa.Column("carried", sa.Integer(), nullable=False),
        sa.Column("audio_seconds", sa.Float(), nullable=False),
        sa.Column("files", _Json, nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("removed_generation", sa.Integer(), nullable=True),
        sa.UniqueConstraint("dataset", "name", name="uq_dataset_shards_dataset"),
    )
    op.create_index(
        "ix_dataset_shards_dataset_removed_generation",
        "dataset_shards",
        ["dataset", "removed_generation"],
    )
    op.create_table(
        "dataset_exports",
        sa.Column("dataset", sa.String(1024), primary_key=True),
        sa.Column(
            "episode_id",
            _Id,
            sa.ForeignKey("episodes.id", ondelete="CASCADE", name="fk_dataset_exports_episode_id"),
            primary_key=True,
        ),
        sa.Column(
            "shard_id",
            _Id,
            sa.ForeignKey(
                "dataset_shards.id", ondelete="SET NULL", name="fk_dataset_exports_shard_id"
            ),
            nullable=True,
        ),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("result_created_at", sa.DateTime(), nullable=False),
        sa.Column("exported_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_dataset_exports_shard_id", "dataset_exports", ["shard_id"])


def downgrade() -> None:
    op.drop_index("ix_dataset_exports_shard_id", table_name="dataset_exports")
    op.drop_table("dataset_exports")
    op.drop_index("ix_dataset_shards_dataset_removed_generation", table_name="dataset_shards")
    op.drop_table("dataset_shards")
