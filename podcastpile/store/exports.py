"""The store's side of dataset exports: which episodes still need exporting, and what went where.

One `ExportLedger` serves one dataset destination (a folder or URL), so a store can feed several
datasets. The ledger is the commit point of an export: a shard counts as published once its row
is committed here (the files were fully written first); `manifest.json` and the dataset card are
rendered from these rows, so a crash between the two is repaired by rendering them again.

Reprocessing replaces an episode's `results` row (delete + insert, new `created_at`); an export
remembers the `created_at` of the result it holds, so a differing timestamp marks it stale.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, and_, func, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from podcastpile.store.engine import READ_ONLY
from podcastpile.store.clock import utcnow
from podcastpile.store.tables import EpisodeStatus
from podcastpile.store.tables import dataset_exports as _exports
from podcastpile.store.tables import dataset_shards as _shards
from podcastpile.store.tables import episodes as _episodes
from podcastpile.store.tables import results as _results

# How long an export waits for the lock of a run that was just killed (PostgreSQL frees it when
# the dead run's server process notices).
LOCK_WAIT_SECONDS = 10.0



@dataclass(frozen=True)
class ExportKey:
    """What the ledger needs to record one exported row (kept per shard, so: small)."""

    episode_id: int
    result_created_at: datetime
    previously_exported: bool  # True: this row replaces one an earlier generation held


@dataclass(frozen=True)
class ExportableEpisode:
    """A completed episode whose current result the dataset does not hold yet."""

    episode_id: int
    url_hash: str
    url: str
    podcast_id: str | None
    language: str | None
    archive_url: str | None
    archive_timestamp: str | None
    result: dict[str, Any]
    result_created_at: datetime
    previously_exported: bool  # True: this row replaces one an earlier generation held

    @property
    def key(self) -> ExportKey:
        """The part of this episode the ledger records once its row is published."""
        return ExportKey(self.episode_id, self.result_created_at, self.previously_exported)


@dataclass(frozen=True)
class ShardRecord:
    """A shard as the ledger knows it. `files` maps a dataset configuration to {path, rows, bytes}."""

    id: int
    name: str
    generation: int
    episodes: int
    replaced: int
    carried: int
    audio_seconds: float
    files: dict[str, dict[str, Any]]
    created_at: datetime
    removed_generation: int | None


@dataclass(frozen=True)
class NewShard:
    """What the writer reports about a shard it finished, before the ledger records it."""

    name: str
    generation: int
    files: dict[str, dict[str, Any]]
    audio_seconds: float
    episodes: int


class ExportBusy(RuntimeError):
    """Another export to the same dataset is running."""


def dataset_key(location: str) -> str:
    """The name the ledger keeps a dataset under: a local folder's absolute path, a URL without
    its trailing slash (`open_destination(location).url`, computed without opening anything)."""
    if "://" not in location or location.startswith("file://"):
        return os.path.abspath(os.path.expanduser(location.removeprefix("file://")))
    return location.rstrip("/")


class ExportLedger:
    """Export bookkeeping for one dataset destination in the episode store."""

    def __init__(self, engine: Engine, dataset: str) -> None:
        self.engine = engine
        self.dataset = dataset
        self._reader = engine.execution_options(**READ_ONLY)

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the dataset's export lock for the block; raise `ExportBusy` if another run has it.

        Two runs at once would write the same shard names and clean up each other's staging.
        PostgreSQL: a session advisory lock keyed by the dataset (freed if the process dies).
        SQLite (one machine): an flock on a file beside the database (freed likewise).
        """
        if self.engine.dialect.name == "postgresql":
            key = int.from_bytes(hashlib.md5(self.dataset.encode()).digest()[:8], "big", signed=True)
            with self.engine.connect() as connection:
                # A killed export's lock outlives it until its server process notices the
                # closed connection (a moment, longer on a busy server): wait that long.
                deadline = time.monotonic() + LOCK_WAIT_SECONDS
                while True:
                    got = connection.execute(select(func.pg_try_advisory_lock(key))).scalar_one()
                    connection.commit()  # the lock is the session's; do not sit idle in a transaction
                    if got:
                        break
                    if time.monotonic() > deadline:
                        raise ExportBusy(f"another export to {self.dataset} is running")
                    time.sleep(0.5)
                try:
                    yield
                finally:
                    connection.execute(select(func.pg_advisory_unlock(key)))
                    connection.commit()
            return
        database = self.engine.url.database
        if not database or database == ":memory:" or database.startswith("file:"):
            yield  # a private database: nobody else can export from it
            return
        digest = hashlib.md5(self.dataset.encode()).hexdigest()[:12]
        lock_path = Path(database).with_name(f"{Path(database).name}.export-{digest}.lock")
        with lock_path.open("a") as lock_file:
            try:
                fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ExportBusy(f"another export to {self.dataset} is running") from None
            try:
                yield
            finally:
                fcntl.flock(lock_file, fcntl.LOCK_UN)

    # --- reading ----------------------------------------------------------------------------------

    def next_generation(self) -> int:
        """The generation number a new export run should use (1 for a new dataset)."""
        with self._reader.connect() as connection:
            latest = connection.execute(
                select(func.max(_shards.c.generation)).where(_shards.c.dataset == self.dataset)
            ).scalar_one()
        return (latest or 0) + 1

    def shards(self, *, live: bool | None = None) -> list[ShardRecord]:
        """This dataset's shards in name order: all, only live (`live=True`) or only retired."""
        query = select(_shards).where(_shards.c.dataset == self.dataset).order_by(_shards.c.name)
        if live is True:
            query = query.where(_shards.c.removed_generation.is_(None))
        elif live is False:
            query = query.where(_shards.c.removed_generation.is_not(None))
        with self._reader.connect() as connection:
            rows = connection.execute(query).mappings().all()
        return [
            ShardRecord(**{key: row[key] for key in ShardRecord.__dataclass_fields__}) for row in rows
        ]

    def pending(self, *, chunk_size: int = 32) -> Iterator[list[ExportableEpisode]]:
        """Completed episodes whose current result the dataset lacks, oldest first, in chunks.

        Keyset pagination (`id > last`) rather than one long cursor: each chunk is its own short
        read, so a slow writer holds no transaction open and memory is one chunk of payloads.
        Episodes whose stale row still sits in a live shard are left out until `retire` takes
        it out, so no episode is ever in the dataset twice.
        """
        query = self._needing_export(
            _episodes.c.id, _episodes.c.url_hash, _episodes.c.url, _episodes.c.podcast_id,
            _episodes.c.language, _episodes.c.archive_url, _episodes.c.archive_timestamp,
            _results.c.payload, _results.c.created_at,
            previously_exported=True, still_in_live_shard=False,
        ).order_by(_episodes.c.id)
        after = 0
        while True:
            with self._reader.connect() as connection:
                rows = connection.execute(
                    query.where(_episodes.c.id > after).limit(chunk_size)
                ).all()
            if not rows:
                return
            after = rows[-1].id
            yield [
                ExportableEpisode(
                    episode_id=row.id, url_hash=row.url_hash, url=row.url,
                    podcast_id=row.podcast_id, language=row.language,
                    archive_url=row.archive_url, archive_timestamp=row.archive_timestamp,
                    result=row.payload, result_created_at=row.created_at,
                    previously_exported=bool(row.previously_exported),
                )
                for row in rows
            ]

    def count_pending(self) -> int:
        """How many episodes this export run will write: those `pending` yields now, plus the
        reprocessed ones still in a live shard, which `pending` yields once they are retired
        (for a progress bar's total)."""
        query = self._needing_export(func.count(), previously_exported=False, still_in_live_shard=True)
        with self._reader.connect() as connection:
            return connection.execute(query).scalar_one()

    def has_pending(self) -> bool:
        """Whether an export run would write anything: one row is enough to say (no count)."""
        query = self._needing_export(_episodes.c.id, previously_exported=False, still_in_live_shard=True).limit(1)
        with self._reader.connect() as connection:
            return connection.execute(query).first() is not None

    def _needing_export(
        self, *columns: Any, previously_exported: bool, still_in_live_shard: bool
    ) -> Any:
        """SELECT `columns` over completed episodes whose current result the dataset lacks.

        `still_in_live_shard=False` leaves out episodes whose stale row still sits in a live
        shard; `previously_exported` adds a boolean column saying whether it was exported before.
        """
        exported = _exports.alias("exported")
        stale = exported.c.result_created_at != _results.c.created_at
        if not still_in_live_shard:
            stale = and_(exported.c.shard_id.is_(None), stale)
        if previously_exported:
            columns = (*columns, exported.c.episode_id.is_not(None).label("previously_exported"))
        return (
            select(*columns)
            .select_from(_episodes)
            .join(_results, _results.c.episode_id == _episodes.c.id)
            .outerjoin(
                exported,
                and_(exported.c.episode_id == _episodes.c.id, exported.c.dataset == self.dataset),
            )
            .where(
                _episodes.c.status == EpisodeStatus.completed.value,
                or_(exported.c.episode_id.is_(None), stale),
            )
        )

    def stale_shards(self) -> list[ShardRecord]:
        """Live shards holding a row whose episode has since been reprocessed (and completed)."""
        stale_ids = (
            select(_exports.c.shard_id)
            .join(_results, _results.c.episode_id == _exports.c.episode_id)
            .join(_episodes, _episodes.c.id == _exports.c.episode_id)
            .where(
                _exports.c.dataset == self.dataset,
                _exports.c.shard_id.is_not(None),
                _exports.c.result_created_at != _results.c.created_at,
                _episodes.c.status == EpisodeStatus.completed.value,
            )
            .distinct()
        )
        with self._reader.connect() as connection:
            ids = set(connection.execute(stale_ids).scalars())
        return [shard for shard in self.shards(live=True) if shard.id in ids]

    def stale_rows(self, shard_id: int) -> dict[str, int]:
        """The stale rows of one shard: stable episode id (url_hash) → store id."""
        query = (
            select(_episodes.c.url_hash, _episodes.c.id)
            .join(_exports, _exports.c.episode_id == _episodes.c.id)
            .join(_results, _results.c.episode_id == _episodes.c.id)
            .where(
                _exports.c.dataset == self.dataset,
                _exports.c.shard_id == shard_id,
                _exports.c.result_created_at != _results.c.created_at,
                _episodes.c.status == EpisodeStatus.completed.value,
            )
        )
        with self._reader.connect() as connection:
            return {key: episode_id for key, episode_id in connection.execute(query)}

    # --- recording --------------------------------------------------------------------------------

    def record_shard(self, shard: NewShard, episodes: Sequence[ExportKey]) -> int:
        """Commit a finished shard of new rows and point each episode's export at it; returns its id."""
        now = utcnow()
        replaced = sum(1 for episode in episodes if episode.previously_exported)
        with self.engine.begin() as connection:
            shard_id = self._insert_shard(connection, shard, replaced=replaced, carried=0, now=now)
            rows = [
                {
                    "dataset": self.dataset, "episode_id": episode.episode_id,
                    "shard_id": shard_id, "generation": shard.generation,
                    "result_created_at": episode.result_created_at, "exported_at": now,
                }
                for episode in episodes
            ]
            if rows:
                dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
                statement = dialect.insert(_exports)
                connection.execute(
                    statement.on_conflict_do_update(
                        index_elements=["dataset", "episode_id"],
                        set_={
                            "shard_id": statement.excluded.shard_id,
                            "generation": statement.excluded.generation,
                            "result_created_at": statement.excluded.result_created_at,
                            "exported_at": statement.excluded.exported_at,
                        },
                    ),
                    rows,
                )
        return shard_id

    def record_rewrite(
        self, old: ShardRecord, generation: int, replacement: NewShard | None,
        dropped_episode_ids: Sequence[int],
    ) -> int | None:
        """Commit that `old` was rewritten without `dropped_episode_ids` (as `replacement`, or as
        nothing when no row was left). The dropped episodes' exports lose their shard, which makes
        them pending again; the kept ones move to the replacement. Returns the replacement's id."""
        now = utcnow()
        with self.engine.begin() as connection:
            connection.execute(
                update(_shards).where(_shards.c.id == old.id).values(removed_generation=generation)
            )
            connection.execute(
                update(_exports)
                .where(
                    _exports.c.dataset == self.dataset,
                    _exports.c.shard_id == old.id,
                    _exports.c.episode_id.in_(list(dropped_episode_ids)),
                )
                .values(shard_id=None)
            )
            if replacement is None:
                return None
            new_id = self._insert_shard(
                connection, replacement, replaced=0, carried=replacement.episodes, now=now
            )
            connection.execute(
                update(_exports)
                .where(_exports.c.dataset == self.dataset, _exports.c.shard_id == old.id)
                .values(shard_id=new_id)
            )
        return new_id

    def _insert_shard(
        self, connection: Any, shard: NewShard, *, replaced: int, carried: int, now: datetime
    ) -> int:
        return connection.execute(
            insert(_shards)
            .values(
                dataset=self.dataset, name=shard.name, generation=shard.generation,
                episodes=shard.episodes, replaced=replaced, carried=carried,
                audio_seconds=shard.audio_seconds, files=shard.files, created_at=now,
                removed_generation=None,
            )
            .returning(_shards.c.id)
        ).scalar_one()
