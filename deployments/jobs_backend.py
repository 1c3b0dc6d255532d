"""What the jobs API's routes run on (deployments/jobs_api.py): the store in threads of the
API's own, with connection pools sized for them, answers encoded in those threads, and the
slow parts of `GET /api/stats` from a snapshot (deployments/stats_cache.py).

The routes' database work runs at most `API_THREADS` at once, and the store's connection pools
keep one connection for each (`EpisodeStore.open(..., connections=)`): with SQLAlchemy's default pools under
Starlette's 40 threads, 32 claiming workers made the manager open a new PostgreSQL connection
every three or four claims.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from datetime import date, datetime
from typing import Any, NamedTuple

import anyio
import anyio.to_thread
from fastapi.responses import Response

from deployments.stats_cache import Refreshed
from podcastpile.config import Settings
from podcastpile.jsonviews import archive_stats, stats_dict
from podcastpile.prefect_api import PrefectAPI
from podcastpile.runs import HeldByRuns, RefusedRuns, held_by_runs, refused_runs
from podcastpile.store import EpisodeStore

# Threads running the routes' database work at once; each store pool keeps as many connections.
# More threads than cores plus PostgreSQL's waits only contend for the GIL: 4 claimed faster
# than 16 from 32 clients (bench/README.md, api_bench.py); 8 leaves room for a slow request
# (a 10,000-job POST, a result) beside the claims.
API_THREADS = 8
# How old the slow parts of `GET /api/stats` may be: refreshed in the background past the first,
# computed by the request itself past the second (the first request after a quiet spell).
STATS_REFRESH_SECONDS = 5.0
STATS_MAX_AGE_SECONDS = 15.0


class SlowStats(NamedTuple):
    """The parts of `GET /api/stats` that cost more than the counters."""

    archive: dict[str, Any]
    held: HeldByRuns
    refused: RefusedRuns


class JobsAPI:
    """The store and settings behind the routes; the store is opened on first use."""

    def __init__(self, settings: Settings, *, store: EpisodeStore | None = None,
                 prefect_api: PrefectAPI | None = None, threads: int = API_THREADS) -> None:
        self.settings = settings
        self.prefect_api = prefect_api  # where the stats ask which runs are dead; None: unknown
        self.threads = threads
        self._store = store  # one given is used as it is (its pools are its owner's choice)
        self._lock = threading.Lock()
        self._limiter: anyio.CapacityLimiter | None = None
        self.slow_stats: Refreshed[SlowStats] = Refreshed(
            self._slow_stats, refresh_after=STATS_REFRESH_SECONDS, max_age=STATS_MAX_AGE_SECONDS)

    @property
    def store(self) -> EpisodeStore:
        """The episode store, opened (and migrated) by the first request that needs it."""
        store = self._store
        if store is not None:
            return store
        with self._lock:
            if self._store is None:
                self._store = EpisodeStore.open(self.settings, connections=self.threads)
            return self._store

    async def run(self, function: Callable[..., Any], *args: Any) -> Any:
        """`function(*args)` in one of the API's `threads` threads (so each holds one pooled
        connection at most), its answer encoded there: a dict becomes a JSON response."""
        if self._limiter is None:  # made in the event loop, which anyio requires
            self._limiter = anyio.CapacityLimiter(self.threads)
        return await anyio.to_thread.run_sync(_answering, function, *args, limiter=self._limiter)

    def stats_response(self) -> Response:
        """`ppcli stats --json`'s answer: the counters now, the slower parts from the snapshot."""
        slow = self.slow_stats.get()
        archive, held, refused = slow.value
        body = stats_dict(self.store.stats(), archive, held, refused)
        return json_response(body, headers={"X-Stats-As-Of": slow.as_of.isoformat(), "Cache-Control": "no-store"})

    def _slow_stats(self) -> SlowStats:
        store, api = self.store, self.prefect_api
        return SlowStats(archive_stats(store, self.settings), held_by_runs(store.leased_by_run(), api),
                         refused_runs(api))


def _json_default(value: Any) -> Any:
    # What FastAPI's encoder made of the values the store returns.
    if isinstance(value, datetime | date):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """`body` as a JSON response, encoded with the stdlib alone (no model, no jsonable_encoder)."""
    return Response(json.dumps(body, default=_json_default, separators=(",", ":")).encode(), status,
                    headers=headers, media_type="application/json")


def _answering(function: Callable[..., Any], *args: Any) -> Any:
    answer = function(*args)
    return answer if isinstance(answer, Response) else json_response(answer)
