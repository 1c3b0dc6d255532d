"""Limits every archive run on every machine shares, held in the store because they share it.

- Save Page Now submissions: at most N in any 60 s (a log of submissions counted under a lock),
  today's captured bytes, and pauses (a Retry-After, a daily quota, refused keys, trouble on
  IA's side).
- Wayback lookups (CDX and the availability API): at most N in any 60 s, and pauses after a
  429. IA firewalls an address whose client ignores 429s for a minute, for an hour, doubling
  each time, and that cuts off every download behind the address too.
- Host pauses: Save Page Now said a host's crawling is paused; only that host waits.

Pauses are rows keyed by reason. The reason's prefix is its scope: `lookup:` pauses lookups,
`host:<host>` pauses one host's submissions, anything else pauses all submissions.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, func, insert, not_, or_, select, update

from podcastpile.store.episodes import EpisodeStore
from podcastpile.store.tables import archive_days as _days
from podcastpile.store.tables import archive_lookups as _lookups
from podcastpile.store.tables import archive_pauses as _pauses
from podcastpile.store.tables import archive_submissions as _submissions

_RATE_LOCK_ID = 0x73_70_6E_32  # "spn2": one submission window per database
_LOOKUP_LOCK_ID = 0x63_64_78_30  # "cdx0": one lookup window per database
# Requests reach the service a little after they are counted here; a window this much
# longer than the nominal one keeps the service's own count within the limit.
WINDOW_MARGIN_SECONDS = 1.0
LOOKUP_SCOPE = "lookup:"
HOST_SCOPE = "host:"
_REASON_LENGTH = 64


def next_utc_midnight(now: datetime) -> datetime:
    """When IA's daily quotas reset (UTC days)."""
    return datetime(now.year, now.month, now.day) + timedelta(days=1)


def host_pause_reason(host: str) -> str:
    """The pause key of one host (long names keep a hash, so two never share a key)."""
    reason = HOST_SCOPE + host.lower()
    if len(reason) <= _REASON_LENGTH:
        return reason
    return reason[: _REASON_LENGTH - 9] + "~" + hashlib.sha1(host.encode()).hexdigest()[:8]


@dataclass(frozen=True)
class Reservation:
    """The answer to asking for a slot: go now, or wait (and why)."""

    granted: bool
    wait_seconds: float = 0.0
    reason: str = ""
    until: datetime | None = None  # for a pause or quota: when it ends


class SharedLimits:
    """The archive stage's shared limits over an `EpisodeStore`'s database."""

    def __init__(self, store: EpisodeStore) -> None:
        self.store = store

    def reserve_submission(
        self, episode_id: int, *, per_minute: float, daily_bytes: int, host: str | None = None,
    ) -> Reservation:
        """Take a Save Page Now submission slot if every limit allows one now.

        Checked under one lock for all runs sharing this database: pauses of all submissions
        (and of `host`'s), today's captured bytes, and at most `per_minute` submissions in any
        window of 60 s. A granted slot is recorded at once, so it counts even if the
        submission then fails.
        """
        now = self.store.clock()
        with self.store.engine.begin() as connection:
            self._lock(connection, _RATE_LOCK_ID)
            scope = and_(not_(_pauses.c.reason.startswith(LOOKUP_SCOPE)),
                         not_(_pauses.c.reason.startswith(HOST_SCOPE)))
            if host:
                scope = or_(scope, _pauses.c.reason == host_pause_reason(host))
            pause = self._pause(connection, now, scope)
            if pause is not None:
                return pause
            used = connection.execute(
                select(_days.c.bytes).where(_days.c.day == now.strftime("%Y-%m-%d"))
            ).scalar() or 0
            if used >= daily_bytes:
                until = next_utc_midnight(now)
                return Reservation(False, (until - now).total_seconds(), "daily-bytes", until)
            waited = self._window(connection, now, _submissions.c.submitted_at, per_minute)
            if waited is not None:
                return waited
            connection.execute(insert(_submissions).values(episode_id=episode_id, submitted_at=now))
            if episode_id % 64 == 0:  # now and then, forget submissions older than a day
                connection.execute(delete(_submissions).where(_submissions.c.submitted_at < now - timedelta(days=1)))
        return Reservation(True)

    def reserve_lookup(self, *, per_minute: float) -> Reservation:
        """Take a lookup slot (one CDX or availability request) if no lookup pause is on and
        fewer than `per_minute` lookups went out in the last 60 s, across every run."""
        now = self.store.clock()
        with self.store.engine.begin() as connection:
            self._lock(connection, _LOOKUP_LOCK_ID)
            pause = self._pause(connection, now, _pauses.c.reason.startswith(LOOKUP_SCOPE))
            if pause is not None:
                return pause
            waited = self._window(connection, now, _lookups.c.at, per_minute)
            if waited is not None:
                return waited
            inserted = connection.execute(insert(_lookups).values(at=now)).inserted_primary_key
            if inserted and inserted[0] % 256 == 0:  # now and then, forget lookups older than an hour
                connection.execute(delete(_lookups).where(_lookups.c.at < now - timedelta(hours=1)))
        return Reservation(True)

    def pause(self, reason: str, until: datetime, detail: str = "") -> None:
        """Pause what `reason`'s scope covers until `until` (a later pause already set stays)."""
        key = reason[:_REASON_LENGTH]
        with self.store.engine.begin() as connection:
            current = connection.execute(select(_pauses.c.until).where(_pauses.c.reason == key)).scalar()
            if current is None:
                connection.execute(insert(_pauses).values(reason=key, until=until, detail=detail))
            elif current < until:
                connection.execute(update(_pauses).where(_pauses.c.reason == key).values(until=until, detail=detail))

    def lookups_paused_until(self) -> datetime | None:
        """When the last pause of lookups (and downloads from the archive) ends, if one is on."""
        now = self.store.clock()
        with self.store.engine.connect() as connection:
            until = connection.execute(
                select(func.max(_pauses.c.until)).where(_pauses.c.reason.startswith(LOOKUP_SCOPE), _pauses.c.until > now)
            ).scalar()
        return until

    def paused_until(self, reason: str) -> datetime | None:
        """When the pause named `reason` ends, if it is on now."""
        with self.store.engine.connect() as connection:
            until = connection.execute(
                select(_pauses.c.until).where(_pauses.c.reason == reason[:_REASON_LENGTH])
            ).scalar()
        return until if until is not None and until > self.store.clock() else None

    # --- inside a transaction ------------------------------------------------------------------

    @staticmethod
    def _lock(connection: Any, lock_id: int) -> None:
        if connection.dialect.name == "postgresql":
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({lock_id})")

    @staticmethod
    def _pause(connection: Any, now: datetime, scope: Any) -> Reservation | None:
        pause = connection.execute(
            select(_pauses.c.reason, _pauses.c.until).where(_pauses.c.until > now, scope)
            .order_by(_pauses.c.until.desc()).limit(1)
        ).first()
        if pause is None:
            return None
        return Reservation(False, (pause.until - now).total_seconds(), pause.reason, pause.until)

    @staticmethod
    def _window(connection: Any, now: datetime, column: Any, per_minute: float) -> Reservation | None:
        """A refusal when `per_minute` requests already went out within the window, else None."""
        allowed, window = (int(per_minute), 60.0) if per_minute >= 1 else (1, 60.0 / per_minute)
        window += WINDOW_MARGIN_SECONDS
        recent = connection.execute(
            select(column).where(column > now - timedelta(seconds=window))
            .order_by(column.desc()).limit(allowed)
        ).scalars().all()
        if len(recent) < allowed:
            return None
        free_at = recent[-1] + timedelta(seconds=window)
        return Reservation(False, max(0.01, (free_at - now).total_seconds()), "rate")
