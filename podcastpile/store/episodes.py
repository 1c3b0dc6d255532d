"""The episode store: the pipeline's queue (claims with leases) and its record (results, failures).

Every state change is one short transaction. Claims are atomic: PostgreSQL locks the claimed
rows with `FOR UPDATE SKIP LOCKED` so concurrent claimers never wait on or take the same rows;
SQLite serialises writers (`BEGIN IMMEDIATE`, see `engine.py`). A claim hands out a lease token;
every later call about that episode must present it (`EpisodeStore.fenced_update`), so a worker
whose lease expired and was given to someone else cannot overwrite the newer worker's work.

`EpisodeStore` gathers adding episodes from `bulk.py`, its reads from `reads.py` and its lease
recovery (expired leases, dead runs) from `recovery.py`; opening, claiming and recording work
are here.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any, Protocol, TypedDict, Unpack

from sqlalchemy import Connection, Engine, case, delete, func, insert, select, update

from podcastpile.errors import EpisodeError
from podcastpile.machine import local_address
from podcastpile.store.bulk import EpisodeAdding
from podcastpile.store.claims import claim_statement, language_params
from podcastpile.store.clock import Clock, utcnow
from podcastpile.store.engine import make_engine, make_queue_engine, migrate as migrate_schema, pool_options
from podcastpile.store.reads import EpisodeReads
from podcastpile.store.records import Claim, LeaseLost
from podcastpile.store.recovery import LeaseRecovery
from podcastpile.store.tables import ARCHIVE_WAITING, LEASED, EpisodeStatus
from podcastpile.store.tables import episodes as _episodes
from podcastpile.store.tables import results as _results
from podcastpile.version import code_version as current_code_version


class StoreSettings(Protocol):
    """What `EpisodeStore.open` reads from the settings (`podcastpile.config.Settings` has it all).

    A protocol rather than the settings class, so the store does not depend on the
    configuration layer above it.
    """

    @property
    def database_url(self) -> str: ...

    @property
    def lease_seconds(self) -> float: ...

    @property
    def max_attempts(self) -> int: ...

    @property
    def archives(self) -> bool: ...

    @property
    def archive_only(self) -> bool: ...


class StoreOptions(TypedDict, total=False):
    """`EpisodeStore`'s keyword options, for the openers that pass them on."""

    lease_seconds: float
    max_attempts: int
    archive_required: bool
    archive_only: bool
    clock: Clock
    reap_every_seconds: float
    connections: int | None


class EpisodeStore(EpisodeAdding, EpisodeReads, LeaseRecovery):
    """Queue and record of episodes over one SQL database (SQLite or PostgreSQL)."""

    def __init__(
        self,
        engine: Engine,
        *,
        lease_seconds: float = 2 * 3600.0,
        max_attempts: int = 3,
        archive_required: bool = True,
        archive_only: bool = False,
        clock: Clock = utcnow,
        reap_every_seconds: float = 10.0,
        connections: int | None = None,
    ) -> None:
        """`connections`: pooled connections to keep on the queue engine, for a store shared by
        that many threads (the jobs API); None keeps SQLAlchemy's default pool."""
        self.engine = engine
        self.lease = timedelta(seconds=lease_seconds)
        self.max_attempts = max_attempts
        self.archive_required = archive_required  # new episodes wait for a capture
        self.archive_only = archive_only  # claims may download archived copies only
        self.clock = clock
        # Returning expired leases is a scan of the leased rows: do it at most this often per
        # store rather than before every claim.
        self.reap_every = timedelta(seconds=reap_every_seconds)
        self._next_reap: datetime | None = None
        # Lease changes (claims, fenced updates, recovery) are single UPDATEs and run here; on
        # PostgreSQL in autocommit mode (see `make_queue_engine`). The archive queue's lease
        # changes use it too.
        self.queue_engine = make_queue_engine(engine, **pool_options(engine.dialect.name, connections))

    def close(self) -> None:
        """Close the store's database connections."""
        self.queue_engine.dispose()
        self.engine.dispose()

    @classmethod
    def open_url(
        cls, database_url: str, *, migrate: bool = True, **options: Unpack[StoreOptions]
    ) -> EpisodeStore:
        """Connect to `database_url`, bring its schema to the newest revision, return a store.

        How the CLI, the flows' tasks and the claim guard open the store (`open` reads the same
        from the settings); `options` go to the constructor. `migrate=False` skips the schema
        check, for a process that must be ready at once on a database others already opened
        (the claim guard). Raises `StoreUnavailable` when the database cannot be reached.
        """
        engine = make_engine(database_url, connections=options.get("connections"))
        if migrate:
            migrate_schema(engine)
        return cls(engine, **options)

    @classmethod
    def open(
        cls, settings: StoreSettings, *, migrate: bool = True, **options: Unpack[StoreOptions]
    ) -> EpisodeStore:
        """`open_url` with the database, lease length, attempts and archive mode of `settings`."""
        return cls.open_url(
            settings.database_url,
            migrate=migrate,
            lease_seconds=settings.lease_seconds,
            max_attempts=settings.max_attempts,
            archive_required=settings.archives,
            archive_only=settings.archive_only,
            **options,
        )

    # --- archive ------------------------------------------------------------------------------

    def skip_archive(self, episode_ids: list[int]) -> int:
        """Make episodes waiting for a capture ready at once, for a live download (`--live`).

        Episodes an archive run holds right now are left alone. Returns how many changed.
        """
        now = self.clock()
        with self.queue_engine.begin() as connection:
            return connection.execute(
                update(_episodes)
                .where(
                    _episodes.c.id.in_(list(episode_ids)),
                    _episodes.c.status.in_([s.value for s in ARCHIVE_WAITING]),
                    (_episodes.c.leased_until.is_(None)) | (_episodes.c.leased_until < now),
                )
                .values(status=EpisodeStatus.pending, archive_job_id=None, archive_not_before=None,
                        lease_token=None, leased_until=None, updated_at=now)
            ).rowcount

    # --- leases -----------------------------------------------------------------------------------

    def claim_batch(
        self,
        worker_id: str,
        n: int,
        *,
        worker_ip: str | None = None,
        gpu: str | None = None,
        code_version: str | None = None,
        languages: Iterable[str] | None = None,
        episode_ids: list[int] | None = None,
        run_id: str | None = None,
    ) -> list[Claim]:
        """Atomically lease up to `n` ready episodes (oldest first) to `worker_id`.

        Each claimed row records who took it: `worker_id`, the address the database sees the
        claim come from (`worker_ip` overrides it), the `gpu` it runs on and the
        `code_version` claiming (default: this process's). `languages` (codes such as `es`,
        `pt-br`) restricts the claim to episodes in those languages or their subtags (`es`
        takes `es-mx` too); `en` also takes episodes of no language, which are processed as
        English. `episode_ids` limits the claim to those episodes (an ad-hoc run of chosen
        episodes). `run_id` names the orchestrator run that claims, so `requeue_run` can return
        its episodes at once if that run is found dead.
        Expired leases are returned to the queue first, so a crashed worker's episodes come back.
        """
        if n < 1:
            return []
        now = self.clock()
        if self._next_reap is None or now >= self._next_reap:
            self.requeue_expired()
            self._next_reap = now + self.reap_every
        token = uuid.uuid4().hex
        language_filter, unknown_language = language_params(languages)
        params = {
            "n": n, "worker_id": worker_id, "worker_ip": worker_ip, "local_ip": local_address(),
            "gpu": gpu, "code_version": code_version or current_code_version(), "token": token,
            "run_id": run_id,
            "until": now + self.lease, "now": now,
            **language_filter,
        }
        statement = claim_statement(
            self.queue_engine.dialect.name, episode_ids is not None,
            len(language_filter.get("languages", ())), unknown_language,
        )
        if episode_ids is not None:
            params["ids"] = list(episode_ids)
        with self.queue_engine.begin() as connection:
            rows = connection.execute(statement, params).all()
        claims = [
            Claim(
                episode_id=row.id,
                url=row.url,
                archive_url=row.archive_url,
                language=row.language,
                podcast_id=row.podcast_id,
                lease_token=token,
                leased_until=now + self.lease,
                attempts=row.attempts,
                archive_digest=row.archive_digest,
                archive_only=self.archive_only,
            )
            for row in rows
        ]
        return sorted(claims, key=lambda claim: claim.episode_id)

    def start(self, episode_id: int, lease_token: str, sha256: str | None = None) -> int | None:
        """Note that the worker began processing (assigned → processing).

        With the audio's `sha256`: if another episode already holds the same audio (completed,
        or being processed under a lower id), this one is marked `duplicate` of it and its
        lease ends; returns that episode's id (else None) so the caller skips the work.
        """
        if sha256 is None:
            self.fenced_update(episode_id, lease_token, {"status": EpisodeStatus.processing})
            return None
        with self.engine.begin() as connection:
            self.fenced_update(
                episode_id, lease_token,
                {"status": EpisodeStatus.processing, "audio_sha256": sha256}, connection=connection,
            )
            first = connection.execute(
                select(func.min(_episodes.c.id)).where(
                    _episodes.c.audio_sha256 == sha256,
                    _episodes.c.id != episode_id,
                    (_episodes.c.status == EpisodeStatus.completed.value)
                    | ((_episodes.c.status == EpisodeStatus.processing.value) & (_episodes.c.id < episode_id)),
                )
            ).scalar()
            if first is None:
                return None
            self.fenced_update(episode_id, lease_token, {
                "status": EpisodeStatus.duplicate, "duplicate_of": first, "lease_token": None,
                "leased_until": None, "error_code": "duplicate",
                "error": f"same audio (sha256) as episode {first}",
            }, connection=connection)
        return int(first)

    def renew(self, episode_id: int, lease_token: str) -> datetime:
        """Extend the lease by the lease length from now; return the new deadline."""
        until = self.clock() + self.lease
        self.fenced_update(episode_id, lease_token, {"leased_until": until})
        return until

    def complete(self, episode_id: int, lease_token: str, result: Mapping[str, Any]) -> None:
        """Store an episode's result and mark it completed. Refused (`LeaseLost`) without the lease.

        `result` is the JSON-able result dict; its `duration`, `sha256`, `md5`,
        `processing_seconds` and `code_version` are also kept on the episode for queries.
        """
        now = self.clock()
        with self.engine.begin() as connection:
            values = {
                "status": EpisodeStatus.completed,
                "completed_at": now,
                "lease_token": None,
                "leased_until": None,
                "duration_seconds": result.get("duration"),
                "audio_sha256": result.get("sha256"),
                "audio_md5": result.get("md5"),
                "processing_seconds": result.get("processing_seconds"),
                "code_version": result.get("code_version"),
                "error_code": None,
                "error": None,
            }
            self.fenced_update(episode_id, lease_token, values, connection=connection)
            connection.execute(delete(_results).where(_results.c.episode_id == episode_id))
            connection.execute(
                insert(_results).values(episode_id=episode_id, payload=dict(result), created_at=now)
            )

    def fail(self, episode_id: int, lease_token: str, error: EpisodeError) -> EpisodeStatus:
        """Record a failure. Permanent ones fail the episode; transient ones requeue it while
        attempts remain. Returns the episode's new status."""
        exhausted = _episodes.c.attempts >= self.max_attempts
        if error.permanent:
            new_status: Any = EpisodeStatus.failed
        else:
            new_status = case(
                (exhausted, EpisodeStatus.failed.value), else_=EpisodeStatus.pending.value
            )
        values = {
            "status": new_status,
            "lease_token": None,
            "leased_until": None,
            "error_code": error.code[:64],
            "error": error.reason,
        }
        return self.fenced_update(episode_id, lease_token, values)

    def fenced_update(
        self,
        episode_id: int,
        lease_token: str,
        values: Mapping[str, Any],
        *,
        held: Iterable[EpisodeStatus] = LEASED,
        connection: Connection | None = None,
        lost_message: str | None = None,
    ) -> EpisodeStatus:
        """Set `values` on an episode only while `lease_token` holds an unexpired lease on it.

        The fence of both lease queues: the GPU workers' (statuses `held` by default: assigned,
        processing) and the archive runs' (`held=ARCHIVE_WAITING`). `updated_at` is set too.
        Runs in `connection` when given (part of a larger transaction), else in a transaction
        of its own on the queue engine. Returns the episode's status after the update.

        Raises `LeaseLost` and changes nothing when the lease is not held (expired, given to
        another holder, or the episode moved on); its message is `lost_message`, or else says
        which of those happened.
        """
        now = self.clock()
        statement = (
            update(_episodes)
            .where(
                _episodes.c.id == episode_id,
                _episodes.c.lease_token == lease_token,
                _episodes.c.status.in_([EpisodeStatus(status).value for status in held]),
                _episodes.c.leased_until >= now,
            )
            .values(updated_at=now, **values)
            .returning(_episodes.c.status)
        )
        if connection is None:
            with self.queue_engine.begin() as own:
                row = own.execute(statement).first()
        else:
            row = connection.execute(statement).first()
        if row is None:
            raise LeaseLost(lost_message or self._why_not_held(episode_id, lease_token, now))
        return EpisodeStatus(row.status)

    def _why_not_held(self, episode_id: int, lease_token: str, now: datetime) -> str:
        episode = self.get(episode_id)
        if episode.lease_token and episode.lease_token != lease_token:
            return f"episode {episode_id} is now leased to worker {episode.worker_id}"
        if episode.leased_until is not None and episode.leased_until < now:
            return f"the lease on episode {episode_id} expired at {episode.leased_until:%Y-%m-%d %H:%M:%S} UTC"
        return f"episode {episode_id} is not leased to this worker (status {episode.status})"
