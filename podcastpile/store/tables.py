"""The episode database's tables (SQLAlchemy 2). Alembic migrations under `migrations/` create them."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a 64-bit id.
_Id = BigInteger().with_variant(Integer(), "sqlite")
_Json = JSON().with_variant(JSONB(), "postgresql")


class EpisodeStatus(StrEnum):
    """Where an episode is in its life. The seed's names are kept where they fit."""

    archive_pending = "archive_pending"  # waiting for an Internet Archive capture
    archiving = "archiving"  # a Save Page Now capture was submitted and is being polled
    pending = "pending"  # archived (or archive not required): ready to be claimed
    assigned = "assigned"  # claimed by a worker, lease held
    processing = "processing"  # the worker said it started
    completed = "completed"
    failed = "failed"  # permanent failure, or attempts used up; see error_code / error


LEASED = (EpisodeStatus.assigned, EpisodeStatus.processing)


class Base(DeclarativeBase):
    # Named constraints, so migrations and the models agree on names on every database.
    metadata = MetaData(
        naming_convention={
            "uq": "uq_%(table_name)s_%(column_0_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s",
        }
    )


class Episode(Base):
    """One podcast episode: the queue entry and the record of what happened to it."""

    __tablename__ = "episodes"

    id: Mapped[int] = mapped_column(_Id, primary_key=True, autoincrement=True)
    url_hash: Mapped[str] = mapped_column(String(32), unique=True)  # md5 of the normalized URL
    url: Mapped[str] = mapped_column(Text)
    podcast_id: Mapped[str | None] = mapped_column(String(64))
    language: Mapped[str | None] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(20))

    # Internet Archive
    archive_url: Mapped[str | None] = mapped_column(Text)
    archive_timestamp: Mapped[str | None] = mapped_column(String(14))
    archive_job_id: Mapped[str | None] = mapped_column(String(64))
    archive_attempts: Mapped[int] = mapped_column(Integer, default=0)
    archived_at: Mapped[datetime | None] = mapped_column(DateTime)

    # Lease: who holds the episode and until when. `lease_token` fences late workers out.
    worker_id: Mapped[str | None] = mapped_column(String(255))
    worker_ip: Mapped[str | None] = mapped_column(String(64))
    gpu: Mapped[str | None] = mapped_column(String(255))
    lease_token: Mapped[str | None] = mapped_column(String(32))
    leased_until: Mapped[datetime | None] = mapped_column(DateTime)
    claimed_at: Mapped[datetime | None] = mapped_column(DateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0)

    # Result summary (the full result lives in `results`)
    duration_seconds: Mapped[float | None] = mapped_column(Float)
    audio_sha256: Mapped[str | None] = mapped_column(String(64))
    audio_md5: Mapped[str | None] = mapped_column(String(32))
    processing_seconds: Mapped[float | None] = mapped_column(Float)
    code_version: Mapped[str | None] = mapped_column(String(64))

    error_code: Mapped[str | None] = mapped_column(String(64))
    error: Mapped[str | None] = mapped_column(Text)

    created_at: Mapped[datetime] = mapped_column(DateTime)
    updated_at: Mapped[datetime] = mapped_column(DateTime)
    completed_at: Mapped[datetime | None] = mapped_column(DateTime)

    __table_args__ = (
        # claim (status = pending ORDER BY id), counts by status, list by status
        Index("ix_episodes_status_id", "status", "id"),
        # finding expired leases
        Index("ix_episodes_status_leased_until", "status", "leased_until"),
    )


class Result(Base):
    """The full processing result of a completed episode: turns, words, segments, models."""

    __tablename__ = "results"

    episode_id: Mapped[int] = mapped_column(
        _Id, ForeignKey("episodes.id", ondelete="CASCADE"), primary_key=True
    )
    payload: Mapped[dict[str, Any]] = mapped_column(_Json)
    created_at: Mapped[datetime] = mapped_column(DateTime)
