"""The episode database's tables, as SQLAlchemy Core `Table`s. Alembic migrations under
`migrations/` create them.

The store reads and writes through these alone, so commands such as `ppcli stats` never load
the ORM (about 0.1 s of imports); `rows.py` maps `Episode` onto `episodes` for the few reads
that return whole rows.
"""

from __future__ import annotations

from enum import StrEnum

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a 64-bit id.
_Id = BigInteger().with_variant(Integer(), "sqlite")
_Json = JSON().with_variant(JSONB(), "postgresql")


class EpisodeStatus(StrEnum):
    """Where an episode is in its life (the original Podcast Pile's job statuses where they fit)."""

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


metadata = MetaData(
    # Named constraints, so migrations and the tables agree on names on every database.
    naming_convention={
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s",
    }
)


# One podcast episode: the queue entry and the record of what happened to it.
episodes = Table(
    "episodes",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("url_hash", String(32), unique=True, nullable=False),  # md5 of the normalized URL
    Column("url", Text, nullable=False),
    Column("podcast_id", String(64)),
    Column("language", String(16)),
    Column("status", String(20), nullable=False),
    # Internet Archive
    Column("archive_url", Text),
    Column("archive_timestamp", String(14)),
    Column("archive_job_id", String(64)),
    Column("archive_attempts", Integer, default=0, nullable=False),
    Column("archived_at", DateTime),
    # Not before this time: a transient archive failure backs off, a quota error waits for the reset.
    Column("archive_not_before", DateTime),
    Column("archive_submitted_at", DateTime),
    Column("archive_digest", String(64)),  # CDX: base32 SHA-1 of the bytes
    Column("archive_bytes", BigInteger),
    Column("archive_reused", Boolean),  # an existing capture was reused
    Column("archive_error", Text),  # why there is no archived copy (prefer mode)
    # The capture's body size came from the download (not CDX's compressed record size) and
    # has been counted against its day's bytes.
    Column("archive_bytes_downloaded", Boolean),
    # The enclosure's redirect chain as resolved before submitting (JSON list of URLs): what
    # was submitted to Save Page Now and why.
    Column("archive_redirects", Text),
    # Lease: who holds the episode and until when. `lease_token` fences late workers out.
    Column("worker_id", String(255)),
    Column("worker_ip", String(64)),
    Column("gpu", String(255)),
    Column("lease_token", String(32)),
    # The orchestrator's run that holds the lease (a Prefect flow run id), so the episodes of a
    # run found dead can be requeued at once instead of after the lease.
    Column("claimed_by_run", String(64)),
    Column("leased_until", DateTime),
    Column("claimed_at", DateTime),
    Column("attempts", Integer, default=0, nullable=False),
    # Result summary (the full result lives in `results`)
    Column("duration_seconds", Float),
    Column("audio_sha256", String(64)),
    Column("audio_md5", String(32)),
    Column("processing_seconds", Float),
    Column("code_version", String(64)),
    Column("error_code", String(64)),
    Column("error", Text),
    Column("duplicate_of", _Id),
    Column("created_at", DateTime, nullable=False),
    Column("updated_at", DateTime, nullable=False),
    Column("completed_at", DateTime),
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


# Episode counts the database keeps current, so statistics never count the `episodes` table.
#
# Triggers on `episodes` (migration 0005) add each inserted, updated or deleted row's change
# here in the same transaction as the change, whatever code path made it (claims, results,
# operator commands, COPY imports, hand-written SQL). A row is one cell: the episodes with one
# status, failure reason and archive outcome, and their summed duration. Concurrent writers
# on PostgreSQL spread over `slot`s (each writing transaction takes one no other open
# transaction holds) so they do not queue on one hot row; readers sum the slots. See
# `podcastpile/store/counters.py` for what each column holds.
episode_counters = Table(
    "episode_counters",
    metadata,
    Column("slot", SmallInteger, primary_key=True),
    Column("status", String(20), primary_key=True),
    Column("reason", String(64), primary_key=True),  # failed: error_code; else ''
    Column("archived", String(8), primary_key=True),  # no, new, reused, unknown
    Column("episodes", BigInteger, nullable=False),
    Column("duration_us", BigInteger, nullable=False),  # summed duration_seconds, microseconds
)


# One Save Page Now submission: the log the per-minute rate window is counted over.
#
# Shared by every archive run on every machine (they share the store), so the limit holds
# across all of them. Rows older than a day are pruned.
archive_submissions = Table(
    "archive_submissions",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("episode_id", _Id),
    Column("submitted_at", DateTime, nullable=False),
    Index("ix_archive_submissions_submitted_at", "submitted_at"),
)


# Captures and captured bytes per UTC day, against the account's daily quota.
archive_days = Table(
    "archive_days",
    metadata,
    Column("day", String(10), primary_key=True),  # YYYY-MM-DD, UTC
    Column("captures", Integer, default=0, nullable=False),
    Column("bytes", BigInteger, default=0, nullable=False),
)


# A pause, by scope: a plain reason pauses submissions (Retry-After, a daily quota, refused
# keys, a service-side error); `lookup:` reasons pause lookups (a 429 from CDX); `host:<host>`
# pauses submissions of that one host (`error:host-crawling-paused`).
archive_pauses = Table(
    "archive_pauses",
    metadata,
    Column("reason", String(64), primary_key=True),
    Column("until", DateTime, nullable=False),
    Column("detail", Text),
)


# One Wayback lookup (a CDX or availability request), for the per-minute lookup window that
# every archive run on every machine shares (IA firewalls an address that goes over). Rows
# older than an hour are pruned.
archive_lookups = Table(
    "archive_lookups",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("at", DateTime, nullable=False),
    Index("ix_archive_lookups_at", "at"),
)


# Captures CDX has listed, remembered so that one lookup (a prefix query over a podcast's
# folder) answers many episodes and no run asks CDX again for what another run learned.
# `url_key` is the SHA-1 of the URL (URLs are too long for a portable index).
archive_known_captures = Table(
    "archive_known_captures",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("url_key", String(40), nullable=False),
    Column("url", Text, nullable=False),
    Column("timestamp", String(14), nullable=False),
    Column("statuscode", String(8)),
    Column("digest", String(64)),
    Column("length", BigInteger),
    Column("learned_at", DateTime, nullable=False),
    UniqueConstraint("url_key", "timestamp", name="uq_archive_known_captures_url_key_timestamp"),
)


# Prefix (folder) queries CDX has answered: while one is fresh, an episode under that folder
# with no known capture has none (when the answer was complete), without asking again.
archive_prefix_lookups = Table(
    "archive_prefix_lookups",
    metadata,
    Column("prefix_key", String(40), primary_key=True),
    Column("prefix", Text, nullable=False),
    Column("looked_up_at", DateTime, nullable=False),
    Column("since", String(14), nullable=False),  # the query's `from`
    Column("complete", Boolean, nullable=False),  # fewer rows than the query's limit came back
)


# The full processing result of a completed episode: turns, words, segments, models.
results = Table(
    "results",
    metadata,
    Column("episode_id", _Id, ForeignKey("episodes.id", ondelete="CASCADE"), primary_key=True),
    Column("payload", _Json, nullable=False),
    Column("created_at", DateTime, nullable=False),
)


# One published shard of an exported dataset: a file per dataset configuration, same name.
#
# `dataset` is the export destination (an absolute folder or a URL), so one store can feed
# several datasets. A shard is live until a later generation rewrites it without rows whose
# result was reprocessed; then `removed_generation` says which generation retired it.
dataset_shards = Table(
    "dataset_shards",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("dataset", String(1024), nullable=False),
    Column("name", String(255), nullable=False),  # e.g. train-g00003-00012
    Column("generation", Integer, nullable=False),
    Column("episodes", Integer, nullable=False),  # rows in the per-episode configuration
    Column("replaced", Integer, nullable=False),  # of those, new rows replacing an earlier export
    Column("carried", Integer, nullable=False),  # of those, rows kept from the shard it rewrote
    Column("audio_seconds", Float, nullable=False),
    Column("files", _Json, nullable=False),  # config -> {path, rows, bytes}
    Column("created_at", DateTime, nullable=False),
    Column("removed_generation", Integer),

    UniqueConstraint("dataset", "name"),
    Index("ix_dataset_shards_dataset_removed_generation", "dataset", "removed_generation"),
)


# Which result of an episode a dataset holds, and in which shard.
#
# `result_created_at` is the exported result's `results.created_at`: reprocessing replaces
# the results row with a newer one, so a differing timestamp means the export is stale.
# `shard_id` is NULL while the old row has been taken out and the new one not yet written.
dataset_exports = Table(
    "dataset_exports",
    metadata,
    Column("dataset", String(1024), primary_key=True),
    Column("episode_id", _Id, ForeignKey("episodes.id", ondelete="CASCADE"), primary_key=True),
    Column("shard_id", _Id, ForeignKey("dataset_shards.id", ondelete="SET NULL")),
    Column("generation", Integer, nullable=False),
    Column("result_created_at", DateTime, nullable=False),
    Column("exported_at", DateTime, nullable=False),
    Index("ix_dataset_exports_shard_id", "shard_id"),
)
