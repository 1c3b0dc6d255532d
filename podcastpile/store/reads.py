"""The episode store's reads: single episodes, listings, results and counts.

Counts come from the counters the database keeps (`counters.py`), so they answer in the same
time however large the table grows. Whole rows come back as `Episode` objects through the ORM,
imported on first use: the writes, claims and counts never need it, and `ppcli stats` skips
its imports.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, func, select

from podcastpile.net.urls import normalize_url, url_hash
from podcastpile.store.clock import Clock
from podcastpile.store.counters import MICROSECONDS_PER_HOUR, read_counts
from podcastpile.store.engine import READ_ONLY
from podcastpile.store.languages import normalize_language
from podcastpile.store.records import NewEpisode, Stats, UnknownEpisode
from podcastpile.store.tables import LEASED, EpisodeStatus
from podcastpile.store.tables import episodes as _episodes
from podcastpile.store.tables import results as _results

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from podcastpile.store.rows import Episode


class EpisodeReads:
    """Reading methods of `EpisodeStore`; none of them changes the database."""

    engine: Engine
    clock: Clock

    def _session(self) -> Session:
        from sqlalchemy.orm import Session

        return Session(self.engine.execution_options(**READ_ONLY), expire_on_commit=False)

    def get(self, episode_id: int) -> Episode:
        """One episode by id; raises `UnknownEpisode`."""
        from podcastpile.store.rows import Episode

        with self._session() as session:
            episode = session.get(Episode, episode_id)
        if episode is None:
            raise UnknownEpisode(f"no episode with id {episode_id}")
        return episode

    def find(self, url: str | NewEpisode) -> Episode | None:
        """The episode with this URL (normalized first) or of this checked `NewEpisode`, or None."""
        from podcastpile.store.rows import Episode

        key = url.check().key if isinstance(url, NewEpisode) else url_hash(normalize_url(url))
        with self._session() as session:
            return session.scalars(select(Episode).where(Episode.url_hash == key)).first()

    def result(self, episode_id: int) -> dict[str, Any] | None:
        """The stored result dict of a completed episode, or None."""
        with self.engine.execution_options(**READ_ONLY).connect() as connection:
            return connection.execute(
                select(_results.c.payload).where(_results.c.episode_id == episode_id)
            ).scalar_one_or_none()

    def list(
        self,
        *,
        status: str | None = None,
        language: str | None = None,
        limit: int | None = 100,
        offset: int = 0,
        after: int | None = None,
    ) -> list[Episode]:
        """Episodes, oldest first. `status="expired"` lists held leases past their deadline.

        `after` starts the list past that id: pages by id stay stable while episodes are added
        (an offset would shift under inserts and repeat or skip rows).
        """
        from podcastpile.store.rows import Episode

        query = select(Episode).order_by(Episode.id).offset(offset)
        if after is not None:
            query = query.where(Episode.id > after)
        if status == "expired":
            query = query.where(Episode.status.in_(LEASED), Episode.leased_until < self.clock())
        elif status is not None:
            query = query.where(Episode.status == EpisodeStatus(status))
        if language is not None:
            query = query.where(Episode.language == normalize_language(language))
        if limit is not None:
            query = query.limit(limit)
        with self._session() as session:
            return list(session.scalars(query))

    def count(self, status: EpisodeStatus) -> int:
        """How many episodes have `status` (e.g. how many are ready for workers)."""
        with self.engine.execution_options(**READ_ONLY).connect() as connection:
            return read_counts(connection).by_status.get(EpisodeStatus(status).value, 0)

    def count_claimable(self) -> int:
        """Episodes a claim would take now: ready ones plus leases already past their deadline."""
        with self.engine.execution_options(**READ_ONLY).connect() as connection:
            ready = read_counts(connection).by_status.get(EpisodeStatus.pending.value, 0)
            return ready + self._count_expired(connection)

    def count_leased(self) -> int:
        """Episodes held by a claim now (assigned or processing), expired leases included."""
        with self.engine.execution_options(**READ_ONLY).connect() as connection:
            counts = read_counts(connection).by_status
        return sum(counts.get(status.value, 0) for status in LEASED)

    def leased_by_run(self) -> dict[str | None, int]:
        """Leased (assigned or processing) episodes per claiming flow run id (None: claimed
        with no run recorded). Reads only leased rows, through the status index."""
        with self.engine.execution_options(**READ_ONLY).connect() as connection:
            rows = connection.execute(
                select(_episodes.c.claimed_by_run, func.count())
                .where(_episodes.c.status.in_(LEASED))
                .group_by(_episodes.c.claimed_by_run)
            ).all()
        return {run: count for run, count in rows}

    def stats(self) -> Stats:
        """Counts by status, expired leases, hours of audio completed, failures by reason.

        Read from the counters the database keeps (`counters.py`) plus the expired leases, so
        the time does not grow with the table.
        """
        with self.engine.execution_options(**READ_ONLY).connect() as connection:
            counts = read_counts(connection)
            expired = self._count_expired(connection)
        by_status = {status.value: 0 for status in EpisodeStatus}
        by_status.update(counts.by_status)
        done_us = counts.duration_us_by_status.get(EpisodeStatus.completed.value, 0)
        return Stats(
            by_status=by_status,
            expired_leases=expired,
            audio_hours_done=done_us / MICROSECONDS_PER_HOUR,
            failures_by_reason=counts.failures_by_reason,
        )

    def _count_expired(self, connection: Connection) -> int:
        """Held leases past their deadline: a range of the (status, leased_until) index, so the
        cost follows the expired leases, not the table."""
        return connection.execute(
            select(func.count()).where(
                _episodes.c.status.in_(LEASED), _episodes.c.leased_until < self.clock()
            )
        ).scalar_one()
