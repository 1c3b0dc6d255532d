"""The store's side of the archive stage: who is archiving which episode, and the shared limits.

Archive runs claim episodes waiting for a capture with the same lease discipline as the GPU
workers (a lease token fences a run that lost its episode; an expired lease makes the episode
claimable again, so a crashed run loses nothing). The Save Page Now job id is stored before
anyone polls it, so a restarted run resumes polling instead of submitting again.

Limits shared by every run on every machine live here too, because every run shares the
store: the per-minute submission window (a log of submissions, counted under a lock), the
bytes captured per UTC day, and pauses (Retry-After, exhausted daily quotas).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, and_, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from podcastpile.store.archive_limits import HOST_SCOPE, LOOKUP_SCOPE, SharedLimits
from podcastpile.store.clock import Clock
from podcastpile.store.counters import read_counts
from podcastpile.store.engine import READ_ONLY
from podcastpile.store.episodes import EpisodeStore
from podcastpile.store.tables import ARCHIVE_WAITING, EpisodeStatus
from podcastpile.store.tables import archive_days as _days
from podcastpile.store.tables import archive_pauses as _pauses
from podcastpile.store.tables import episodes as _episodes



# Pauses and deferrals that are not a daily quota, as one line for people (`ppcli stats`,
# `ppcli list`, `ppcli process`): the code alone would not say what to do about them.
KEYS_REFUSED = "ia-keys-refused"
KEYS_MISSING = "ia-keys-missing"
LOOKUPS_THROTTLED = LOOKUP_SCOPE + "429"
SAVES_THROTTLED = "save-429"
PLAYBACK_THROTTLED = LOOKUP_SCOPE + "playback-429"
SERVICE_TROUBLE = "ia-service-trouble"
ACCOUNT_DAILY_CAP = "account-daily-captures"
URL_DAILY_CAP = "too-many-daily-captures"
HOST_PAUSED = "host-crawling-paused"
LOOKUP_WAIT = "cdx-lookup-wait"
REPLAY_LAG = "archive-replay-lag"
SAME_JOB_FAILED = "spn-same-job-failed"
PAUSE_TEXT = {
    KEYS_REFUSED: "the Internet Archive refused the keys (HTTP 401 on /save); check IA_ACCESS_KEY and IA_SECRET_KEY",
    KEYS_MISSING: "Save Page Now needs archive.org keys for a new capture; set IA_ACCESS_KEY and IA_SECRET_KEY",
    LOOKUPS_THROTTLED: "the Wayback Machine answered 429 to a lookup: lookups paused (IA sends no Retry-After)",
    SAVES_THROTTLED: "Save Page Now answered 429: submissions paused (IA sends no Retry-After)",
    PLAYBACK_THROTTLED: "the Wayback Machine answered 429 to a download: downloads and lookups paused",
    SERVICE_TROUBLE: "Save Page Now reports trouble on its side: submissions paused, no episode charged",
    ACCOUNT_DAILY_CAP: "the account's daily capture cap is used up: submissions wait for 00:00 UTC",
    URL_DAILY_CAP: "this URL was captured as often as IA allows today: it waits for 00:00 UTC",
    HOST_PAUSED: "Save Page Now paused crawling this host: its episodes wait",
    LOOKUP_WAIT: "waiting for a Wayback lookup slot (CDX_REQUESTS_PER_MINUTE, shared by every run)",
    REPLAY_LAG: "captured; waiting until the Wayback Machine lists and replays the capture",
    SAME_JOB_FAILED: ("Save Page Now answers with its failed job of this URL until the job expires "
                      "(about an hour): submitted again then"),
}


def pause_text(reason: str) -> str:
    """One line on why submissions are paused or an episode waits, for a pause/deferral code."""
    if reason.startswith(HOST_SCOPE):
        return f"Save Page Now paused crawling {reason.removeprefix(HOST_SCOPE)}: its episodes wait"
    return PAUSE_TEXT.get(reason, f"daily quota used up ({reason})")


@dataclass(frozen=True)
class ArchiveClaim:
    """An episode handed to an archive run.

    `job_id` is set when a capture was submitted and not yet seen through; `capture` when the
    job succeeded but the Wayback Machine did not list the capture yet (replay lag);
    `redirects` is the enclosure's redirect chain (JSON) once resolved.
    """

    episode_id: int
    url: str
    job_id: str | None
    submitted_at: datetime | None
    attempts: int
    lease_token: str
    capture: "Capture | None" = None
    redirects: str | None = None


@dataclass(frozen=True)
class Capture:
    """An Internet Archive capture of an episode's audio."""

    timestamp: str  # 14 digits, UTC
    url: str  # the id_ playback URL of the original bytes
    digest: str | None = None  # CDX digest: base32 SHA-1 of the bytes as archived
    length: int | None = None  # bytes: CDX's compressed record size until the download counts them
    original: str | None = None  # the URL captured (after redirects), when it is not the episode's


@dataclass(frozen=True)
class ArchiveStats:
    """The archive stage at a glance, for `ppcli stats`."""

    waiting: int
    submitted: int
    archived_new: int
    archived_reused: int
    deferred: dict[str, int]  # error code -> episodes waiting for a quota reset or a backoff
    deferred_until: datetime | None  # the earliest time a deferred episode becomes eligible
    bytes_today: int
    captures_today: int
    daily_bytes: int
    pauses: dict[str, datetime]  # reason -> until


# What an episode that starts over (or falls back to its live URL) must not keep: a job, or a
# capture that was never listed, which a download would otherwise try.
_NO_CAPTURE: dict[str, Any] = dict(archive_job_id=None, archive_timestamp=None, archive_url=None, archive_digest=None)


class ArchiveQueue:
    """Archive-stage operations over an `EpisodeStore`'s database."""

    def __init__(
        self,
        store: EpisodeStore,
        *,
        max_attempts: int = 5,
        lease_seconds: float = 600.0,
        fallback_to_live: bool = False,
    ) -> None:
        self.store = store
        self.max_attempts = max_attempts
        self.lease = timedelta(seconds=lease_seconds)
        # ARCHIVE_MODE=prefer: a permanent archive failure makes the episode ready for a live download.
        self.fallback_to_live = fallback_to_live
        self.limits = SharedLimits(store)

    @property
    def clock(self) -> Clock:
        """The store's clock: the archive stage and the store agree on the time."""
        return self.store.clock

    # --- claims ---------------------------------------------------------------------------------

    def count_due(self) -> int:
        """How many episodes a claim would take now: what tells the manager an archive run has
        work (a run for nothing costs a flow run, its states and events)."""
        query = select(func.count()).select_from(_episodes).where(self._claimable(self.clock()))
        with self.store.engine.execution_options(**READ_ONLY).connect() as connection:
            return connection.execute(query).scalar_one()

    @staticmethod
    def _claimable(now: datetime) -> Any:
        """Waiting for a capture, not leased, not deferred."""
        return and_(
            _episodes.c.status.in_([s.value for s in ARCHIVE_WAITING]),
            or_(_episodes.c.leased_until.is_(None), _episodes.c.leased_until < now),
            or_(_episodes.c.archive_not_before.is_(None), _episodes.c.archive_not_before <= now),
        )

    def claim(self, worker_id: str, n: int, *, episode_ids: list[int] | None = None) -> list[ArchiveClaim]:
        """Lease up to `n` episodes waiting for a capture (oldest first), skipping deferred ones."""
        now = self.clock()
        token = uuid.uuid4().hex
        eligible = self._claimable(now)
        if episode_ids is not None:
            eligible = and_(eligible, _episodes.c.id.in_(list(episode_ids)))
        picked = (
            select(_episodes.c.id).where(eligible).order_by(_episodes.c.id).limit(n)
            .with_for_update(skip_locked=True).cte("picked")
            .prefix_with("MATERIALIZED", dialect="postgresql")
        )
        statement = (
            update(_episodes)
            .where(_episodes.c.id.in_(select(picked.c.id)))
            .values(lease_token=token, leased_until=now + self.lease, worker_id=worker_id, updated_at=now)
            .returning(
                _episodes.c.id, _episodes.c.url, _episodes.c.status, _episodes.c.archive_job_id,
                _episodes.c.archive_submitted_at, _episodes.c.archive_attempts, _episodes.c.archive_timestamp,
                _episodes.c.archive_url, _episodes.c.archive_digest, _episodes.c.archive_bytes,
                _episodes.c.archive_redirects,
            )
        )
        with self.store.queue_engine.begin() as connection:
            rows = connection.execute(statement).all()
        claims = [
            ArchiveClaim(row.id, row.url, row.archive_job_id, row.archive_submitted_at,
                         row.archive_attempts, token, capture=_awaited_capture(row), redirects=row.archive_redirects)
            for row in rows
        ]
        return sorted(claims, key=lambda claim: claim.episode_id)

    def renew(self, claim: ArchiveClaim) -> None:
        """Extend the claim's lease (a long poll keeps its episodes)."""
        self._update(claim, leased_until=self.clock() + self.lease)

    def release(self, claim: ArchiveClaim) -> None:
        """Give the episode back as it is; a submitted job id stays, so the next run polls it."""
        self._update(claim, lease_token=None, leased_until=None)

    # --- outcomes -------------------------------------------------------------------------------

    def submitted(self, claim: ArchiveClaim, job_id: str) -> ArchiveClaim:
        """Record a Save Page Now job before anyone polls it; returns the updated claim."""
        now = self.clock()
        self._update(
            claim, status=EpisodeStatus.archiving.value, archive_job_id=job_id[:64],
            archive_submitted_at=now,
        )
        return replace(claim, job_id=job_id, submitted_at=now, capture=None)

    def captured(self, claim: ArchiveClaim, capture: Capture) -> ArchiveClaim:
        """A job succeeded, but the Wayback Machine does not list the capture yet: remember
        it (the job id is no longer needed) until CDX does; returns the updated claim."""
        self._update(
            claim, status=EpisodeStatus.archiving.value, archive_job_id=None,
            archive_timestamp=capture.timestamp, archive_url=capture.url, archive_digest=capture.digest,
            archive_bytes=capture.length,
        )
        return replace(claim, job_id=None, capture=capture)

    def redirected(self, claim: ArchiveClaim, chain: str) -> ArchiveClaim:
        """Record the enclosure's resolved redirect chain (JSON); returns the updated claim."""
        self._update(claim, archive_redirects=chain)
        return replace(claim, redirects=chain)

    def recheck_later(self, claim: ArchiveClaim, code: str, reason: str, until: datetime) -> None:
        """Nothing to do until `until` (a lookup slot, replay lag, a paused host): give the
        episode back as it is (job id or capture kept), with no attempt counted."""
        self._update(
            claim, archive_not_before=until, error_code=code[:64], error=reason,
            lease_token=None, leased_until=None,
        )

    def archived(self, claim: ArchiveClaim, capture: Capture, *, reused: bool) -> None:
        """Store the capture and make the episode ready for the GPU workers.

        A new capture's bytes count against today's quota.
        """
        now = self.clock()
        with self.store.engine.begin() as connection:
            self._update(
                claim, connection=connection,
                status=EpisodeStatus.pending.value, archive_timestamp=capture.timestamp,
                archive_url=capture.url, archive_digest=capture.digest, archive_bytes=capture.length,
                archive_reused=reused, archived_at=now, archive_job_id=None, archive_not_before=None,
                archive_error=None, error_code=None, error=None, lease_token=None, leased_until=None,
                worker_id=None,
            )
            if not reused:
                # the capture's own day: a capture recorded after midnight still counts for its day
                self._add_to_day(connection, _day_of(capture.timestamp), captures=1, size=capture.length or 0)

    def retry_later(self, claim: ArchiveClaim, code: str, reason: str, delay_seconds: float) -> EpisodeStatus:
        """A transient failure: count an attempt and back off, or give up after `max_attempts`."""
        attempts = claim.attempts + 1
        if attempts >= self.max_attempts:
            return self.give_up(
                claim, code, f"{reason} (archive attempt {attempts} of {self.max_attempts})",
                attempts=attempts,
            )
        self._update(
            claim, status=EpisodeStatus.archive_pending.value, archive_attempts=attempts,
            **_NO_CAPTURE, archive_not_before=self.clock() + timedelta(seconds=delay_seconds),
            error_code=code[:64], error=reason, lease_token=None, leased_until=None,
        )
        return EpisodeStatus.archive_pending

    def defer(self, claim: ArchiveClaim, code: str, reason: str, until: datetime) -> None:
        """A quota is used up: wait until it resets. Not a failure, and no attempt is counted."""
        self._update(
            claim, status=EpisodeStatus.archive_pending.value, **_NO_CAPTURE,
            archive_not_before=until, error_code=code[:64], error=reason,
            lease_token=None, leased_until=None,
        )

    def give_up(self, claim: ArchiveClaim, code: str, reason: str, *, attempts: int | None = None) -> EpisodeStatus:
        """No capture can be had. ARCHIVE_MODE=prefer: ready for a live download; else failed."""
        values: dict[str, Any] = dict(
            **_NO_CAPTURE, archive_not_before=None, lease_token=None, leased_until=None,
            archive_error=f"{code}: {reason}",
        )
        if attempts is not None:
            values["archive_attempts"] = attempts
        if self.fallback_to_live:
            self._update(claim, status=EpisodeStatus.pending.value, error_code=None, error=None, **values)
            return EpisodeStatus.pending
        self._update(claim, status=EpisodeStatus.failed.value, error_code=code[:64], error=reason, **values)
        return EpisodeStatus.failed

    def _update(self, claim: ArchiveClaim, connection: Connection | None = None, **values: Any) -> None:
        """Update the claimed episode only while `claim` still holds its lease."""
        self.store.fenced_update(
            claim.episode_id, claim.lease_token, values, held=ARCHIVE_WAITING, connection=connection,
            lost_message=f"archive run no longer holds episode {claim.episode_id}",
        )

    def count_downloaded_bytes(self, episode_id: int, size: int) -> int:
        """Count a new capture's downloaded size against its capture day's bytes; returns the
        bytes added.

        CDX's `length` (counted when the capture was recorded) is the compressed WARC record,
        not the body: the download knows the real size, so the day is corrected by the
        difference, once (a second download of the same capture adds nothing). Reused
        captures cost the account nothing and are not counted.
        """
        with self.store.engine.begin() as connection:
            row = connection.execute(
                select(_episodes.c.archive_bytes, _episodes.c.archive_reused, _episodes.c.archive_timestamp,
                       _episodes.c.archive_bytes_downloaded)
                .where(_episodes.c.id == episode_id)
            ).first()
            if row is None or row.archive_reused is not False or not row.archive_timestamp:
                return 0
            if row.archive_bytes_downloaded:
                return 0
            added = size - (row.archive_bytes or 0)
            connection.execute(
                update(_episodes).where(_episodes.c.id == episode_id)
                .values(archive_bytes=size, archive_bytes_downloaded=True)
            )
            self._add_to_day(connection, _day_of(row.archive_timestamp), captures=0, size=added)
        return added

    # --- shared limits --------------------------------------------------------------------------

    @staticmethod
    def _add_to_day(connection: Any, day: str, *, captures: int, size: int) -> None:
        # One statement (INSERT … ON CONFLICT DO UPDATE): runs finishing captures at the same
        # moment on a new day would otherwise both try to insert the day's row.
        upsert = postgresql_insert if connection.dialect.name == "postgresql" else sqlite_insert
        statement = upsert(_days).values(day=day, captures=captures, bytes=size)
        connection.execute(statement.on_conflict_do_update(
            index_elements=[_days.c.day],
            set_={"captures": _days.c.captures + statement.excluded.captures,
                  "bytes": _days.c.bytes + statement.excluded.bytes},
        ))

    # --- reading --------------------------------------------------------------------------------

    def stats(self, daily_bytes: int) -> ArchiveStats:
        """The archive stage's counts (waiting, submitted, archived, deferred, today's usage).

        Status and capture counts come from the episode counters; deferred episodes (those
        with a back-off or quota time still ahead) from the partial index on
        `archive_not_before`, so nothing here scans the episodes waiting for a capture.
        """
        now = self.clock()
        deferred_rows = and_(
            _episodes.c.status == EpisodeStatus.archive_pending.value,
            _episodes.c.archive_not_before.is_not(None),  # the partial index's condition
            _episodes.c.archive_not_before > now,
        )
        with self.store.engine.execution_options(**READ_ONLY).connect() as connection:
            counts = read_counts(connection)
            deferred = dict(connection.execute(
                select(func.coalesce(_episodes.c.error_code, "backoff"), func.count())
                .where(deferred_rows).group_by(_episodes.c.error_code)
            ).all())
            deferred_until = connection.execute(
                select(func.min(_episodes.c.archive_not_before)).where(deferred_rows)
            ).scalar()
            today = connection.execute(
                select(_days.c.captures, _days.c.bytes).where(_days.c.day == now.strftime("%Y-%m-%d"))
            ).first()
            pauses = dict(connection.execute(
                select(_pauses.c.reason, _pauses.c.until).where(_pauses.c.until > now)
            ).all())
        waiting = counts.by_status.get(EpisodeStatus.archive_pending.value, 0) - sum(deferred.values())
        return ArchiveStats(
            waiting=waiting,
            submitted=counts.by_status.get(EpisodeStatus.archiving.value, 0),
            archived_new=counts.archived.get("new", 0),
            archived_reused=counts.archived.get("reused", 0),
            deferred=deferred,
            deferred_until=deferred_until,
            bytes_today=today.bytes if today else 0,
            captures_today=today.captures if today else 0,
            daily_bytes=daily_bytes,
            pauses=pauses,
        )


def archive_queue_for(store: EpisodeStore, settings: Any) -> ArchiveQueue:
    """The archive queue over `store` with the settings' attempt limit and ARCHIVE_MODE."""
    return ArchiveQueue(
        store,
        max_attempts=settings.archive_max_attempts,
        fallback_to_live=str(settings.archive_mode) == "prefer",
    )


def _day_of(timestamp: str) -> str:
    """The UTC day (YYYY-MM-DD) of a 14-digit Wayback timestamp."""
    return f"{timestamp[:4]}-{timestamp[4:6]}-{timestamp[6:8]}"


def _awaited_capture(row: Any) -> Capture | None:
    """The capture an `archiving` episode waits to see listed, if its job already succeeded."""
    if row.status != EpisodeStatus.archiving.value or row.archive_job_id or not row.archive_timestamp:
        return None
    original = (row.archive_url or "").partition("id_/")[2] or None
    return Capture(row.archive_timestamp, row.archive_url, row.archive_digest, row.archive_bytes, original)
