"""Adding episodes: checked and normalized, in chunks, the fastest way each database offers.

Both insert paths add only URLs not stored yet and return how many rows were new, so an import
can be rerun (or run twice at once) without duplicates.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from itertools import islice
from typing import Any

from sqlalchemy import Connection, Engine, text
from sqlalchemy.dialects import sqlite

from podcastpile.net.urls import InvalidURL
from podcastpile.store.clock import Clock
from podcastpile.store.records import AddSummary, NewEpisode, Rejected
from podcastpile.store.tables import EpisodeStatus
from podcastpile.store.tables import episodes as _episodes

Row = tuple[str, str, str | None, str | None]  # url_hash, url, podcast_id, language


class EpisodeAdding:
    """The adding methods of `EpisodeStore`."""

    engine: Engine
    clock: Clock
    archive_required: bool

    def add(
        self,
        episodes: Iterable[NewEpisode],
        *,
        chunk_size: int = 20_000,
        on_progress: Callable[[int], None] | None = None,
    ) -> AddSummary:
        """Add episodes; one already present (same normalized URL) is counted, not duplicated.

        Input is consumed in chunks, each committed on its own, so memory stays flat and an
        interrupted import keeps what it committed (rerunning it adds only the rest). While the
        database writes one chunk, the next is parsed and normalized (at most two in memory).
        """
        summary = AddSummary()
        iterator = iter(episodes)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-add") as writer:
            pending: Future[AddSummary] | None = None
            while chunk := list(islice(iterator, chunk_size)):
                rows, chunk_summary = self._prepare(chunk)
                if pending is not None:
                    summary.merge(pending.result())
                pending = writer.submit(self._insert_chunk, rows, chunk_summary, len(chunk), on_progress)
            if pending is not None:
                summary.merge(pending.result())
        return summary

    def _insert_chunk(
        self,
        rows: list[Row],
        summary: AddSummary,
        size: int,
        on_progress: Callable[[int], None] | None,
    ) -> AddSummary:
        if rows:
            with self.engine.begin() as connection:
                added = insert_new(connection, rows, self.initial_status, self.clock())
            summary.added += added
            summary.present += len(rows) - added
        if on_progress:
            on_progress(size)
        return summary

    def _prepare(self, chunk: list[NewEpisode]) -> tuple[list[Row], AddSummary]:
        summary = AddSummary()
        rows: dict[str, Row] = {}
        for item in chunk:
            try:
                episode = item.check()
            except (InvalidURL, ValueError) as error:
                summary.rejected.append(Rejected(item.line, item.url, str(error)))
                continue
            assert episode.key is not None
            if episode.key in rows:
                summary.present += 1
            else:
                rows[episode.key] = (episode.key, episode.url, episode.podcast_id, episode.language)
        return list(rows.values()), summary

    @property
    def initial_status(self) -> EpisodeStatus:
        """The status new episodes get: waiting for a capture when archives are required."""
        return EpisodeStatus.archive_pending if self.archive_required else EpisodeStatus.pending


def insert_new(connection: Connection, rows: list[Row], status: str, now: datetime) -> int:
    """Insert the episodes of `rows` not stored yet, with `status`; returns how many were new."""
    insert_rows = copy_insert if connection.dialect.name == "postgresql" else sqlite_insert
    return insert_rows(connection, rows, status, now)


def sqlite_insert(connection: Connection, rows: list[Row], status: str, now: datetime) -> int:
    """Insert rows not yet present; returns how many were new (sqlite3 sums executemany rowcounts)."""
    statement = sqlite.insert(_episodes).on_conflict_do_nothing(index_elements=["url_hash"])
    result = connection.execute(
        statement,
        [
            dict(
                url_hash=key, url=url, podcast_id=podcast, language=language, status=status,
                attempts=0, archive_attempts=0, created_at=now, updated_at=now,
            )
            for key, url, podcast, language in rows
        ],
    )
    return result.rowcount


def copy_insert(connection: Connection, rows: list[Row], status: str, now: datetime) -> int:
    """PostgreSQL: COPY, the fastest way in. Returns how many rows were new.

    The chunk is first COPYed straight into `episodes` (inside a savepoint): right for a fresh
    import, where no URL is known yet. At the first URL already there the COPY stops, the
    savepoint is rolled back and the rows are COPYed into a temporary table and merged with
    INSERT ... ON CONFLICT DO NOTHING instead, whose row count is exactly the rows added.
    """
    import psycopg

    cursor: Any = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        with connection.begin_nested():
            with cursor.copy(
                "COPY episodes (url_hash, url, podcast_id, language, status, attempts,"
                " archive_attempts, created_at, updated_at) FROM STDIN"
            ) as copy:
                for row in rows:
                    copy.write_row((*row, str(status), 0, 0, now, now))
        return len(rows)
    except psycopg.errors.UniqueViolation:
        pass  # some are already there: merge below
    connection.exec_driver_sql(
        "CREATE TEMPORARY TABLE import_rows (url_hash text, url text, podcast_id text, language text)"
        " ON COMMIT DROP"
    )
    with cursor.copy("COPY import_rows (url_hash, url, podcast_id, language) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)
    result = connection.execute(
        text(
            "INSERT INTO episodes (url_hash, url, podcast_id, language, status, attempts,"
            " archive_attempts, created_at, updated_at)"
            " SELECT url_hash, url, podcast_id, language, :status, 0, 0, :now, :now FROM import_rows"
            " ON CONFLICT (url_hash) DO NOTHING"
        ),
        {"status": str(status), "now": now},
    )
    return result.rowcount
