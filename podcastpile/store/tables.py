"""The episode database's tables (SQLAlchemy 2). Alembic migrations under `migrations/` create them."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    text,
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
    duplicate = "duplicate"  # same audio (sha256) as an earlier episode, see duplicate_of


ARCHIVE_WAITING = (EpisodeStatus.archive_pending, EpisodeStatus.archiving)


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
    # Not before this time: a transient archive failure backs off, a quota error waits for the reset.
    archive_not_before: Mapped[datetime | None] = mapped_column(DateTime)
    archive_submitted_at: Mapped[datetime | None] = mapped_column(DateTime)
    archive_digest: Mapped[str | None] = mapped_column(String(64))  # CDX: base32 SHA-1 of the bytes
    archive_bytes: Mapped[int | None] = mapped_column(BigInteger)
    archive_reused: Mapped[bool | None] = mapped_column(Boolean)  # an existing capture was reused
    archive_error: Mapped[str | None] = mapped_column(Text)  # why there is no archived copy (prefer mode)

    # Lease: who holds the episode and until when. `lease_token` fences late workers out.
    worker_id: Mapped[str | None] = mapped_column(String(255))
    worker_ip: Mapped[str | None] = mapped_column(String(64))
    gpu: Mapped[str | None] = mapped_column(String(255))
    lease_token: Mapped[str | None] = mapped_column(String(32))
    # The orchestrator's run that holds the lease (a Prefect flow run id), so the episodes of a
    # run found dead can be requeued at once instead of after the lease.
    claimed_by_run: Mapped[str | None] = mapped_column(String(64))
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
    duplicate_of: Mapped[int | None] = mapped_column(_Id)

    created_at: Mapped[datetime] = mapped_column(DateTime)
    updated_at: Mapped[datetime] = mapped_column(DateTime)
    completed_at: Mapped[datetime | None] = mapped_column(DateTime)

    __table_args__ = (
        # claim (status = pending ORDER BY id), counts by status, list by status
        Index("ix_episodes_status_id", "status", "id"),
        # finding expired leases
        Index("ix_episodes_status_leased_until", "status", "leased_until"),
        # identical audio under another URL
        Index("ix_episodes_audio_sha256", "audio_sha256"),
        # the episodes a crashed run held
        Index("ix_episodes_claimed_by_run", "claimed_by_run"),
        # archive episodes deferred to a later time (a few): `ppcli stats` finds them without a
        # scan of everything waiting for a capture. Partial, so claims never touch it.
        Index(
            "ix_episodes_archive_not_before",
            "archive_not_before",
            postgresql_where=text("archive_not_before IS NOT NULL"),
            sqlite_where=text("archive_not_before IS NOT NULL"),
        ),
    )


class EpisodeCounter(Base):
    """Episode counts the database keeps current, so statistics never count the `episodes` table.

    Triggers on `episodes` (migration 0005) add each inserted, updated or deleted row's change
    here in the same transaction as the change, whatever code path made it (claims, results,
    operator commands, COPY imports, hand-written SQL). A row is one cell: the episodes with one
    status, failure reason and archive outcome, and their summed duration. Concurrent writers
    on PostgreSQL spread over `slot`s (each writing transaction takes one no other open
    transaction holds) so they do not queue on one hot row; readers sum the slots. See
    `podcastpile/store/counters.py` for what each column holds.
    """

    __tablename__ = "episode_counters"

    slot: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    status: Mapped[str] = mapped_column(String(20), primary_key=True)
    reason: Mapped[str] = mapped_column(String(64), primary_key=True)  # failed: error_code; else ''
    archived: Mapped[str] = mapped_column(String(8), primary_key=True)  # no, new, reused, unknown
    episodes: Mapped[int] = mapped_column(BigInteger)
    duration_us: Mapped[int] = mapped_column(BigInteger)  # summed duration_seconds, microseconds


class ArchiveSubmission(Base):
    """One Save Page Now submission: the log the per-minute rate window is counted over.

    Shared by every archive run on every machine (they share the store), so the limit holds
    across all of them. Rows older than a day are pruned.
    """

    __tablename__ = "archive_submissions"

    id: Mapped[int] = mapped_column(_Id, primary_key=True, autoincrement=True)
    episode_id: Mapped[int | None] = mapped_column(_Id)
    submitted_at: Mapped[datetime] = mapped_column(DateTime)

    __table_args__ = (Index("ix_archive_submissions_submitted_at", "submitted_at"),)


class ArchiveDay(Base):
    """Captures and captured bytes per UTC day, against the account's daily quota."""

    __tablename__ = "archive_days"

    day: Mapped[str] = mapped_column(String(10), primary_key=True)  # YYYY-MM-DD, UTC
    captures: Mapped[int] = mapped_column(Integer, default=0)
    bytes: Mapped[int] = mapped_column(BigInteger, default=0)


class ArchivePause(Base):
    """A pause of all submissions: the service said Retry-After, or a daily quota is used up."""

    __tablename__ = "archive_pauses"

    reason: Mapped[str] = mapped_column(String(64), primary_key=True)
    until: Mapped[datetime] = mapped_column(DateTime)
    detail: Mapped[str | None] = mapped_column(Text)


class Result(Base):
    """The full processing result of a completed episode: turns, words, segments, models."""

    __tablename__ = "results"

    episode_id: Mapped[int] = mapped_column(
        _Id, ForeignKey("episodes.id", ondelete="CASCADE"), primary_key=True
    )
    payload: Mapped[dict[str, Any]] = mapped_column(_Json)
    created_at: Mapped[datetime] = mapped_column(DateTime)


class DatasetShard(Base):
    """One published shard of an exported dataset: a file per dataset configuration, same name.

    `dataset` is the export destination (an absolute folder or a URL), so one store can feed
    several datasets. A shard is live until a later generation rewrites it without rows whose
    result was reprocessed; then `removed_generation` says which generation retired it.
    """

    __tablename__ = "dataset_shards"

    id: Mapped[int] = mapped_column(_Id, primary_key=True, autoincrement=True)
    dataset: Mapped[str] = mapped_column(String(1024))
    name: Mapped[str] = mapped_column(String(255))  # e.g. train-g00003-00012
    generation: Mapped[int] = mapped_column(Integer)
    episodes: Mapped[int] = mapped_column(Integer)  # rows in the per-episode configuration
    replaced: Mapped[int] = mapped_column(Integer)  # of those, new rows replacing an earlier export
    carried: Mapped[int] = mapped_column(Integer)  # of those, rows kept from the shard it rewrote
    audio_seconds: Mapped[float] = mapped_column(Float)
    files: Mapped[dict[str, Any]] = mapped_column(_Json)  # config -> {path, rows, bytes}
    created_at: Mapped[datetime] = mapped_column(DateTime)
    removed_generation: Mapped[int | None] = mapped_column(Integer)

    __table_args__ = (
        UniqueConstraint("dataset", "name"),
        Index("ix_dataset_shards_dataset_removed_generation", "dataset", "removed_generation"),
    )


class DatasetExport(Base):
    """Which result of an episode a dataset holds, and in which shard.

    `result_created_at` is the exported result's `results.created_at`: reprocessing replaces
    the results row with a newer one, so a differing timestamp means the export is stale.
    `shard_id` is NULL while the old row has been taken out and the new one not yet written.
    """

    __tablename__ = "dataset_exports"

    dataset: Mapped[str] = mapped_column(String(1024), primary_key=True)
    episode_id: Mapped[int] = mapped_column(
        _Id, ForeignKey("episodes.id", ondelete="CASCADE"), primary_key=True
    )
    shard_id: Mapped[int | None] = mapped_column(
        _Id, ForeignKey("dataset_shards.id", ondelete="SET NULL")
    )
    generation: Mapped[int] = mapped_column(Integer)
    result_created_at: Mapped[datetime] = mapped_column(DateTime)
    exported_at: Mapped[datetime] = mapped_column(DateTime)

    __table_args__ = (Index("ix_dataset_exports_shard_id", "shard_id"),)
