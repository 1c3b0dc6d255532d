"""A value that is slow to compute, kept in memory and refreshed behind the callers' backs.

`GET /api/stats` (deployments/jobs_api.py) answers from the episode counters on every request,
which costs a few milliseconds, but three of its parts cost ten times that: the held leases
grouped by run (a GROUP BY over every held lease), and two calls to the manager's own Prefect
API (which of those runs are dead, how many runs workers refused). A dashboard polling the
route would pay them every time. `Refreshed` computes them at most once per `refresh_after`
seconds while requests keep coming, in a background thread, so a request waits for them only
when the last value is older than `max_age` (the first request, or one after a quiet spell).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Generic, TypeVar

T = TypeVar("T")
log = logging.getLogger("podcastpile.manager")


@dataclass(frozen=True)
class Snapshot(Generic[T]):
    """A computed value and when its computation began (UTC): nothing in it is older."""

    value: T
    as_of: datetime
    taken: float  # the monotonic clock at the same moment, for its age


class Refreshed(Generic[T]):
    """`compute()`'s latest value, never more than `max_age` seconds old when handed out.

    Up to `refresh_after` seconds old it is handed out as it is; older, it is still handed out
    and a background thread computes the next one (one at a time); older than `max_age` (or
    never computed) the caller computes it and waits. A failed background computation is
    logged and leaves the old value to age out, so the next caller past `max_age` sees the error.
    """

    def __init__(self, compute: Callable[[], T], *, refresh_after: float, max_age: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not 0 <= refresh_after <= max_age:
            raise ValueError("need 0 <= refresh_after <= max_age")
        self.compute, self.refresh_after, self.max_age, self.clock = compute, refresh_after, max_age, clock
        self._latest: Snapshot[T] | None = None
        self._state = threading.Lock()  # guards _latest and _refreshing; held only briefly
        self._computing = threading.Lock()  # one computation at a time
        self._refreshing = False

    def get(self) -> Snapshot[T]:
        """The latest snapshot, computing one here only when there is none young enough."""
        with self._state:
            latest = self._latest
            if latest is not None and self.clock() - latest.taken <= self.max_age:
                if self.clock() - latest.taken > self.refresh_after and not self._refreshing:
                    self._refreshing = True
                    threading.Thread(target=self._refresh, name="stats-refresh", daemon=True).start()
                return latest
        return self._compute_now()

    def _compute_now(self) -> Snapshot[T]:
        with self._computing:
            with self._state:  # another caller may have computed it while this one waited
                latest = self._latest
                if latest is not None and self.clock() - latest.taken <= self.refresh_after:
                    return latest
            return self._take()

    def _take(self) -> Snapshot[T]:
        """Compute and keep a snapshot (the caller holds `_computing`)."""
        taken, as_of = self.clock(), datetime.now(UTC)
        snapshot = Snapshot(self.compute(), as_of, taken)
        with self._state:
            if self._latest is None or self._latest.taken < snapshot.taken:
                self._latest = snapshot
        return snapshot

    def _refresh(self) -> None:
        try:
            with self._computing:
                self._take()
        except Exception:  # noqa: BLE001 - a background thread has no caller to raise to
            log.exception("refreshing the statistics failed; the last ones age out")
        finally:
            with self._state:
                self._refreshing = False
