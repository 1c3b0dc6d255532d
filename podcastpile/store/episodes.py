"""The episode store: the pipeline's queue (claims with leases) and its record (results, failures).

Every state change is one short transaction. Claims are atomic: PostgreSQL locks the claimed
rows with `FOR UPDATE SKIP LOCKED` so concurrent claimers never wait on or take the same rows;
SQLite serialises writers (`BEGIN IMMEDIATE`, see `engine.py`). A claim hands out a lease token;
every later call about that episode must present it, so a worker whose lease expired and was
given to someone else cannot overwrite the newer worker's work.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from concurrent.futures import Future, ThreadPoolExecutor
from functools import lru_cache
from itertools import islice
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    Engine,
    String,
    bindparam,
    case,
    create_engine,
    cast,
    delete,
    func,
    insert,
    literal,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects import sqlite

from podcastpile.errors import EpisodeError
from podcastpile.machine import local_address
from podcastpile.store.counters import MICROSECONDS_PER_HOUR, read_counts
from podcastpile.store.engine import READ_ONLY, make_engine, migrate
from podcastpile.store.tables import ARCHIVE_WAITING, LEASED, EpisodeStatus
from podcastpile.store.tables import episodes as _episodes
from podcastpile.store.tables import results as _results
from podcastpile.urls import InvalidURL, normalize_url, url_hash
from podcastpile.version import code_version as current_code_version

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from podcastpile.store.rows import Episode

Clock = Callable[[], datetime]
_LANGUAGE = re.compile(r"^[a-z]{2,3}(-[a-z0-9]{2,8})*$")


@lru_cache(maxsize=64)
def _claim_statement(
    dialect: str, by_id: bool = False, languages: int = 0, unknown_language: bool = False
) -> Any:
    """UPDATE … RETURNING that leases the `n` oldest ready episodes, built once per shape with bind params.

    On PostgreSQL the candidate rows are locked `FOR UPDATE SKIP LOCKED` in a materialized CTE,
    so concurrent claimers skip each other's rows instead of waiting or double-claiming.
    `languages` > 0 restricts the claim to `:languages` and their subtags (`:language_prefix_N`
    = `es-%`), and to episodes of no language with `unknown_language`. It filters the rows the
    claim reads in queue order (`ix_episodes_status_id`: pending, oldest first) and stops after
    `n` matches, so the plan is the unfiltered claim's (no scan or sort of the queue); it reads
    more index entries when the languages asked for are rare in the queue.

    The claimer's address is the one the database server sees (PostgreSQL's
    `inet_client_addr()`); where it sees none (SQLite, a Unix socket: the same machine) the
    claimer's own `:local_ip`. A `:worker_ip` the caller gives wins over both.
    """
    column = _episodes.c.language
    ready = _episodes.c.status == EpisodeStatus.pending.value
    if by_id:
        ready = ready & _episodes.c.id.in_(bindparam("ids", expanding=True))
    if languages:
        wanted = [column.in_(bindparam("languages", expanding=True))]
        wanted += [column.like(bindparam(f"language_prefix_{i}")) for i in range(languages)]
        if unknown_language:
            wanted.append(column.is_(None))
        ready = ready & or_(*wanted)
    picked = (
        select(_episodes.c.id)
        .where(ready)
        .order_by(_episodes.c.id)
        .limit(bindparam("n"))
        .with_for_update(skip_locked=True)
        .cte("picked")
        .prefix_with("MATERIALIZED", dialect="postgresql")
    )
    seen_from = [bindparam("worker_ip", type_=String)]
    if dialect == "postgresql":
        seen_from.append(func.host(func.inet_client_addr()))
    seen_from.append(bindparam("local_ip", type_=String))
    return (
        update(_episodes)
        .where(_episodes.c.id.in_(select(picked.c.id)))
        .values(
            status=EpisodeStatus.assigned.value,
            worker_id=bindparam("worker_id"),
            worker_ip=func.coalesce(*seen_from),
            gpu=bindparam("gpu"),
            code_version=bindparam("code_version"),
            claimed_by_run=bindparam("run_id"),
            lease_token=bindparam("token"),
            leased_until=bindparam("until"),
            claimed_at=bindparam("now"),
            attempts=_episodes.c.attempts + 1,
            updated_at=bindparam("now"),
        )
        .returning(
            _episodes.c.id,
            _episodes.c.url,
            _episodes.c.archive_url,
            _episodes.c.archive_digest,
            _episodes.c.language,
            _episodes.c.podcast_id,
            _episodes.c.attempts,
        )
    )


def _language_params(languages: Iterable[str] | None) -> tuple[dict[str, Any], bool]:
    """Bind parameters of the claim's language filter, and whether episodes of no language
    match (they are processed as English, so a worker asked for `en` takes them)."""
    codes = sorted({code for value in languages or () if (code := normalize_language(value))})
    params: dict[str, Any] = {"languages": codes}
    params.update({f"language_prefix_{i}": f"{code}-%" for i, code in enumerate(codes)})
    return (params if codes else {}), any(code in ("en", "eng") for code in codes)


def _queue_engine(engine: Engine) -> Engine:
    """The engine for lease changes (claim, start, renew, fail, release, requeue).

    Each is a single UPDATE, atomic by itself. On PostgreSQL they run in autocommit mode (no
    BEGIN/COMMIT round trips) without waiting for the WAL flush (`synchronous_commit=off`):
    a server crash can forget the last fraction of a second of lease changes, which only means
    an episode is leased again; the forgotten lease token fences the old worker out, so nothing
    is stored twice. Results and imports keep fully durable commits on the main engine.
    SQLite keeps its `BEGIN IMMEDIATE` transactions.
    """
    if engine.dialect.name != "postgresql":
        return engine
    return create_engine(
        engine.url,
        isolation_level="AUTOCOMMIT",
        connect_args={"options": "-c synchronous_commit=off"},
        pool_recycle=3600,
    )


def utcnow() -> datetime:
    """Naive UTC now: the store keeps naive UTC timestamps on every database."""
    return datetime.now(UTC).replace(tzinfo=None)


class LeaseLost(RuntimeError):
    """The caller no longer holds the episode's lease (expired, or given to another worker)."""


class UnknownEpisode(LookupError):
    """No episode has that id."""


@dataclass(frozen=True)
class NewEpisode:
    """An episode to add. `line` is where it came from in an import file, for error reports."""

    url: str
    language: str | None = None
    podcast_id: str | None = None
    line: int | None = None


@dataclass(frozen=True)
class Rejected:
    """An input that was not added, and why."""

    line: int | None
    url: str
    reason: str


@dataclass
class AddSummary:
    """What `EpisodeStore.add` did."""

    added: int = 0
    present: int = 0  # already in the store (or repeated in the input)
    rejected: list[Rejected] = field(default_factory=list)

    def merge(self, other: "AddSummary") -> None:
        self.added += other.added
        self.present += other.present
        self.rejected.extend(other.rejected)


@dataclass(frozen=True)
class Claim:
    """An episode handed to a worker, with the lease the worker must present later."""

    episode_id: int
    url: str
    archive_url: str | None
    language: str | None
    podcast_id: str | None
    lease_token: str
    leased_until: datetime
    attempts: int
    archive_digest: str | None = None  # CDX digest of the archived bytes, when known

    @property
    def download_url(self) -> str:
        """Where to fetch the audio: the archived copy when there is one."""
        return self.archive_url or self.url


@dataclass(frozen=True)
class Stats:
    """Counts for `ppcli stats`."""

    by_status: dict[str, int]
    expired_leases: int
    audio_hours_done: float
    failures_by_reason: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.by_status.values())


@lru_cache(maxsize=1024)  # a few codes repeat across millions of imported rows
def normalize_language(value: str | None) -> str | None:
    """`en`, `EN_us` → `en`, `en-us`; None stays None; anything else raises ValueError."""
    if value is None or not value.strip():
        return None
    code = value.strip().lower().replace("_", "-")
    if not _LANGUAGE.match(code):
        raise ValueError(f"not a language code: {value!r} (expected e.g. en, de, pt-br)")
    return code


class EpisodeStore:
    """Queue and record of episodes over one SQL database (SQLite or PostgreSQL)."""

    def __init__(
        self,
        engine: Engine,
        *,
        lease_seconds: float = 2 * 3600.0,
        max_attempts: int = 3,
        archive_required: bool = True,
        clock: Clock = utcnow,
        reap_every_seconds: float = 10.0,
    ) -> None:
        self.engine = engine
        self.lease = timedelta(seconds=lease_seconds)
        self.max_attempts = max_attempts
        self.archive_required = archive_required
        self.clock = clock
        # Returning expired leases is a scan of the leased rows: do it at most this often per
        # store rather than before every claim.
        self.reap_every = timedelta(seconds=reap_every_seconds)
        self._next_reap: datetime | None = None
        # A single UPDATE is atomic by itself; on PostgreSQL run such statements in autocommit
        # mode, which saves the BEGIN and COMMIT round trips. SQLite keeps BEGIN IMMEDIATE.
        self._writer = _queue_engine(engine)

    def close(self) -> None:
        """Close the store's database connections."""
        self._writer.dispose()
        self.engine.dispose()

    @classmethod
    def open(cls, settings: Any, **kwargs: Any) -> "EpisodeStore":
        """Connect to `settings.database_url`, bring its schema to the newest revision, return a store."""
        engine = make_engine(settings.database_url)
        migrate(engine)
        return cls(
            engine,
            lease_seconds=settings.lease_seconds,
            max_attempts=settings.max_attempts,
            archive_required=settings.archives,
            **kwargs,
        )

    # --- adding ---------------------------------------------------------------------------------

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
        rows: list["_Row"],
        summary: AddSummary,
        size: int,
        on_progress: Callable[[int], None] | None,
    ) -> AddSummary:
        if rows:
            insert_rows = _copy_insert if self.engine.dialect.name == "postgresql" else _sqlite_insert
            with self.engine.begin() as connection:
                added = insert_rows(connection, rows, self.initial_status, self.clock())
            summary.added += added
            summary.present += len(rows) - added
        if on_progress:
            on_progress(size)
        return summary

    def _prepare(self, chunk: list[NewEpisode]) -> tuple[list["_Row"], AddSummary]:
        summary = AddSummary()
        rows: dict[str, _Row] = {}
        for item in chunk:
            try:
                url = normalize_url(item.url)
                language = normalize_language(item.language)
                podcast_id = item.podcast_id.strip() if item.podcast_id else None
                if podcast_id and len(podcast_id) > 64:
                    raise ValueError("podcast_id longer than 64 characters")
            except (InvalidURL, ValueError) as error:
                summary.rejected.append(Rejected(item.line, item.url, str(error)))
                continue
            key = url_hash(url)
            if key in rows:
                summary.present += 1
            else:
                rows[key] = (key, url, podcast_id, language)
        return list(rows.values()), summary

    @property
    def initial_status(self) -> EpisodeStatus:
        return EpisodeStatus.archive_pending if self.archive_required else EpisodeStatus.pending

    # --- archive ----------------------------------------------------------------------------------

    def mark_archived(self, episode_id: int, *, timestamp: str, archive_url: str) -> None:
        """Record the Internet Archive capture of an episode and make it ready to claim."""
        now = self.clock()
        with self.engine.begin() as connection:
            result = connection.execute(
                update(_episodes)
                .where(
                    _episodes.c.id == episode_id,
                    _episodes.c.status.in_(
                        [EpisodeStatus.archive_pending, EpisodeStatus.archiving]
                    ),
                )
                .values(
                    status=EpisodeStatus.pending,
                    archive_timestamp=timestamp,
                    archive_url=archive_url,
                    archived_at=now,
                    updated_at=now,
                )
            )
        if result.rowcount != 1:
            self.get(episode_id)  # raises UnknownEpisode
            raise ValueError(f"episode {episode_id} is not waiting for an archive capture")

    def skip_archive(self, episode_ids: list[int]) -> int:
        """Make episodes waiting for a capture ready at once, for a live download (`--live`).

        Episodes an archive run holds right now are left alone. Returns how many changed.
        """
        now = self.clock()
        with self._writer.begin() as connection:
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
        language_params, unknown_language = _language_params(languages)
        params = {
            "n": n, "worker_id": worker_id, "worker_ip": worker_ip, "local_ip": local_address(),
            "gpu": gpu, "code_version": code_version or current_code_version(), "token": token,
            "run_id": run_id,
            "until": now + self.lease, "now": now,
            **language_params,
        }
        statement = _claim_statement(
            self._writer.dialect.name, episode_ids is not None,
            len(language_params.get("languages", ())), unknown_language,
        )
        if episode_ids is not None:
            params["ids"] = list(episode_ids)
        with self._writer.begin() as connection:
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
            self._leased_update(episode_id, lease_token, {"status": EpisodeStatus.processing})
            return None
        with self.engine.begin() as connection:
            self._leased_update(
                episode_id, lease_token,
                {"status": EpisodeStatus.processing, "audio_sha256": sha256}, connection,
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
            self._leased_update(episode_id, lease_token, {
                "status": EpisodeStatus.duplicate, "duplicate_of": first, "lease_token": None,
                "leased_until": None, "error_code": "duplicate",
                "error": f"same audio (sha256) as episode {first}",
            }, connection)
        return int(first)

    def renew(self, episode_id: int, lease_token: str) -> datetime:
        """Extend the lease by the lease length from now; return the new deadline."""
        until = self.clock() + self.lease
        self._leased_update(episode_id, lease_token, {"leased_until": until})
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
            self._leased_update(episode_id, lease_token, values, connection)
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
        row = self._leased_update(episode_id, lease_token, values)
        return EpisodeStatus(row.status)

    def release(self, episode_id: int, lease_token: str) -> None:
        """Give an episode back unprocessed (e.g. a worker shutting down); the attempt is not counted."""
        values = {
            "status": EpisodeStatus.pending,
            "lease_token": None,
            "leased_until": None,
            "attempts": _episodes.c.attempts - 1,
        }
        self._leased_update(episode_id, lease_token, values)

    def release_claims(self, claims: list[Claim]) -> int:
        """Give back several claims in one statement (a stopping batch); returns how many.

        Only episodes the claims still hold change; their attempt is not counted.
        """
        now = self.clock()
        released = 0
        with self._writer.begin() as connection:
            for token in {claim.lease_token for claim in claims}:
                ids = [claim.episode_id for claim in claims if claim.lease_token == token]
                released += connection.execute(
                    update(_episodes)
                    .where(_episodes.c.id.in_(ids), _episodes.c.lease_token == token,
                           _episodes.c.status.in_(LEASED))
                    .values(status=EpisodeStatus.pending, lease_token=None, leased_until=None,
                            attempts=_episodes.c.attempts - 1, updated_at=now)
                ).rowcount
        return released

    def give_back_abandoned(self, held: Mapping[int, str], reason: str = "run-crashed") -> tuple[int, int]:
        """Give back episodes (id → lease token) whose process died holding them; returns
        (released, requeued).

        Used by the claim guard (`podcastpile.claimguard`) once the batch process that claimed
        them is gone. Episodes not started yet (`assigned`) go back as a release does: they cannot
        have caused the death, so their attempt is not counted. The one in progress
        (`processing`) goes back as a crashed run's does (`requeue_run`): its attempt counts and
        it fails once attempts are used up, so an episode that kills its process every time
        (out of memory, a decoder crash) cannot block the queue. Only episodes still held under
        those lease tokens change.
        """
        now = self.clock()
        released = requeued = 0
        with self._writer.begin() as connection:
            for token in set(held.values()):
                still_held = (
                    _episodes.c.id.in_([episode for episode, t in held.items() if t == token])
                    & (_episodes.c.lease_token == token)
                )
                released += connection.execute(
                    update(_episodes)
                    .where(still_held, _episodes.c.status == EpisodeStatus.assigned.value)
                    .values(status=EpisodeStatus.pending, lease_token=None, leased_until=None,
                            attempts=_episodes.c.attempts - 1, updated_at=now)
                ).rowcount
                requeued += connection.execute(
                    update(_episodes)
                    .where(still_held, _episodes.c.status == EpisodeStatus.processing.value)
                    .values(**self._requeue_values(now, reason, "the batch process holding it died"))
                ).rowcount
        return released, requeued

    def _requeue_values(self, now: datetime, reason: str, why: str) -> dict[str, Any]:
        """Column values that return a dead holder's episode to the queue, attempt counted
        (`failed` once attempts are used up), with `why` and the attempt in its error."""
        exhausted = _episodes.c.attempts >= self.max_attempts
        return dict(
            status=case((exhausted, EpisodeStatus.failed.value), else_=EpisodeStatus.pending.value),
            error_code=reason[:64],
            error=literal(f"{why} (attempt ") + cast(_episodes.c.attempts, String) + f" of {self.max_attempts})",
            lease_token=None,
            leased_until=None,
            updated_at=now,
        )

    def requeue_expired(self) -> int:
        """Return expired leases to the queue, or fail them once attempts are used up.

        Returns how many leases were expired.
        """
        now = self.clock()
        exhausted = _episodes.c.attempts >= self.max_attempts
        statement = (
            update(_episodes)
            .where(_episodes.c.status.in_(LEASED), _episodes.c.leased_until < now)
            .values(
                status=case(
                    (exhausted, EpisodeStatus.failed.value), else_=EpisodeStatus.pending.value
                ),
                error_code="lease-expired",
                error=(
                    literal("lease of worker ")
                    + func.coalesce(_episodes.c.worker_id, "?")
                    + " expired (attempt "
                    + cast(_episodes.c.attempts, String)
                    + f" of {self.max_attempts})"
                ),
                lease_token=None,
                leased_until=None,
                updated_at=now,
            )
        )
        with self._writer.begin() as connection:
            return connection.execute(statement).rowcount

    def requeue_run(self, run_id: str, reason: str = "run-crashed") -> int:
        """Return the episodes a dead run held to the queue now (or fail those out of attempts).

        The claim already counted the attempt, as for an expired lease. Returns how many.
        """
        statement = (
            update(_episodes)
            .where(_episodes.c.claimed_by_run == run_id, _episodes.c.status.in_(LEASED))
            .values(**self._requeue_values(self.clock(), reason, f"the run {run_id} holding it died"))
        )
        with self._writer.begin() as connection:
            return connection.execute(statement).rowcount

    def count_claimable(self) -> int:
        """Episodes a claim would take now: ready ones plus leases already past their deadline."""
        with self.engine.execution_options(**READ_ONLY).connect() as connection:
            ready = read_counts(connection).by_status.get(EpisodeStatus.pending.value, 0)
            return ready + self._count_expired(connection)

    def _count_expired(self, connection: Any) -> int:
        """Held leases past their deadline: a range of the (status, leased_until) index, so the
        cost follows the expired leases, not the table."""
        return connection.execute(
            select(func.count()).where(
                _episodes.c.status.in_(LEASED), _episodes.c.leased_until < self.clock()
            )
        ).scalar_one()

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

    def _leased_update(
        self, episode_id: int, token: str, values: dict[str, Any], connection: Any = None
    ) -> Any:
        """Update an episode only if `lease_token` still holds an unexpired lease on it."""
        now = self.clock()
        statement = (
            update(_episodes)
            .where(
                _episodes.c.id == episode_id,
                _episodes.c.lease_token == token,
                _episodes.c.status.in_(LEASED),
                _episodes.c.leased_until >= now,
            )
            .values(updated_at=now, **values)
            .returning(_episodes.c.status)
        )
        if connection is None:
            with self._writer.begin() as own:
                row = own.execute(statement).first()
        else:
            row = connection.execute(statement).first()
        if row is None:
            raise LeaseLost(self._why_not_held(episode_id, token, now))
        return row

    def _why_not_held(self, episode_id: int, lease_token: str, now: datetime) -> str:
        episode = self.get(episode_id)
        if episode.lease_token and episode.lease_token != lease_token:
            return f"episode {episode_id} is now leased to worker {episode.worker_id}"
        if episode.leased_until is not None and episode.leased_until < now:
            return f"the lease on episode {episode_id} expired at {episode.leased_until:%Y-%m-%d %H:%M:%S} UTC"
        return f"episode {episode_id} is not leased to this worker (status {episode.status})"

    # --- reading ----------------------------------------------------------------------------------

    # Whole rows come back as `Episode` objects through the ORM, imported here on first use:
    # the writes, claims and counts above never need it, and `ppcli stats` skips its imports.

    def _session(self) -> "Session":
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

    def find(self, url: str) -> Episode | None:
        """The episode with this URL (normalized first), or None."""
        from podcastpile.store.rows import Episode

        key = url_hash(normalize_url(url))
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
    ) -> list[Episode]:
        """Episodes, oldest first. `status="expired"` lists held leases past their deadline."""
        from podcastpile.store.rows import Episode

        query = select(Episode).order_by(Episode.id).offset(offset)
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


_Row = tuple[str, str, str | None, str | None]  # url_hash, url, podcast_id, language


def _sqlite_insert(connection: Any, rows: list[_Row], status: str, now: datetime) -> int:
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


def _copy_insert(connection: Any, rows: list[_Row], status: str, now: datetime) -> int:
    """PostgreSQL: COPY, the fastest way in. Returns how many rows were new.

    The chunk is first COPYed straight into `episodes` (inside a savepoint): right for a fresh
    import, where no URL is known yet. At the first URL already there the COPY stops, the
    savepoint is rolled back and the rows are COPYed into a temporary table and merged with
    INSERT ... ON CONFLICT DO NOTHING instead, whose row count is exactly the rows added.
    """
    import psycopg

    cursor = connection.connection.driver_connection.cursor()
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
