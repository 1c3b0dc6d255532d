"""`Episode`: one row of `episodes` as an object, for the reads that return whole rows
(`EpisodeStore.get`, `find`, `list`). The only module of the store that loads the ORM.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import DeclarativeBase, Mapped

from podcastpile.store import tables


class _Base(DeclarativeBase):
    metadata = tables.metadata


class Episode(_Base):
    """One podcast episode: the queue entry and the record of what happened to it
    (columns documented in `tables.episodes`)."""

    __table__ = tables.episodes

    id: Mapped[int]
    url_hash: Mapped[str]
    url: Mapped[str]
    podcast_id: Mapped[str | None]
    language: Mapped[str | None]
    status: Mapped[str]
    archive_url: Mapped[str | None]
    archive_timestamp: Mapped[str | None]
    archive_job_id: Mapped[str | None]
    archive_attempts: Mapped[int]
    archived_at: Mapped[datetime | None]
    archive_not_before: Mapped[datetime | None]
    archive_submitted_at: Mapped[datetime | None]
    archive_digest: Mapped[str | None]
    archive_bytes: Mapped[int | None]
    archive_reused: Mapped[bool | None]
    archive_error: Mapped[str | None]
    archive_bytes_downloaded: Mapped[bool | None]
    archive_redirects: Mapped[str | None]
    worker_id: Mapped[str | None]
    worker_ip: Mapped[str | None]
    gpu: Mapped[str | None]
    lease_token: Mapped[str | None]
    claimed_by_run: Mapped[str | None]
    leased_until: Mapped[datetime | None]
    claimed_at: Mapped[datetime | None]
    attempts: Mapped[int]
    duration_seconds: Mapped[float | None]
    audio_sha256: Mapped[str | None]
    audio_md5: Mapped[str | None]
    processing_seconds: Mapped[float | None]
    code_version: Mapped[str | None]
    error_code: Mapped[str | None]
    error: Mapped[str | None]
    duplicate_of: Mapped[int | None]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    completed_at: Mapped[datetime | None]
