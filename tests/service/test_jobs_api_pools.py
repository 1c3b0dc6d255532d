"""The job API under many clients: its store's pools (one connection per request thread, not
one per claim) and `GET /api/stats`'s snapshot of the slow parts (deployments/stats_cache.py).

The API's app is served in this process by uvicorn on loopback (as tests/service/test_jobs_api.py
does for its no-password cases), over a real store.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from deployments.jobs_api import (
    API_THREADS, STATS_MAX_AGE_SECONDS, STATS_REFRESH_SECONDS, JobsAPI, create_jobs_app, with_jobs_api,
)
from deployments.stats_cache import Refreshed
from podcastpile.config import load_settings
from podcastpile.store import EpisodeStore, NewEpisode
from tests import postgres
from tests.service.test_login_limit import client as plain_client
from tests.service.test_login_limit import serving


class Clock:
    """A monotonic clock moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def counting(values: list[int]) -> Any:
    """A computation that returns 1, 2, 3, ... and records each call."""
    def compute() -> int:
        values.append(len(values) + 1)
        return values[-1]
    return compute


def test_a_fresh_snapshot_is_handed_out_without_computing() -> None:
    calls: list[int] = []
    clock = Clock()
    cache = Refreshed(counting(calls), refresh_after=5, max_age=15, clock=clock)
    first = cache.get()
    clock.now += 4.9
    assert cache.get() is first and first.value == 1 and calls == [1]


def test_a_stale_snapshot_is_handed_out_while_the_next_is_computed_behind() -> None:
    calls: list[int] = []
    release = threading.Event()
    clock = Clock()

    def slow() -> int:
        if calls:  # the background computation waits until the test has its stale answer
            assert release.wait(10)
        return counting(calls)()

    cache = Refreshed(slow, refresh_after=5, max_age=15, clock=clock)
    cache.get()
    clock.now += 6
    stale = cache.get()
    assert stale.value == 1  # handed out at once, though a refresh is due
    assert cache.get().value == 1 and len(calls) == 1  # one refresh at a time, still running
    release.set()
    deadline = time.monotonic() + 10
    while cache.get().value != 2:
        assert time.monotonic() < deadline, "the background refresh never finished"
        time.sleep(0.01)
    assert calls == [1, 2]


def test_a_snapshot_older_than_the_limit_is_computed_by_the_caller() -> None:
    calls: list[int] = []
    clock = Clock()
    cache = Refreshed(counting(calls), refresh_after=5, max_age=15, clock=clock)
    cache.get()
    clock.now += 15.1
    assert cache.get().value == 2 and calls == [1, 2]


def test_a_failed_refresh_keeps_the_old_snapshot_until_it_is_too_old() -> None:
    clock = Clock()
    outcomes: list[Any] = [1, RuntimeError("database gone"), RuntimeError("still gone")]

    def compute() -> int:
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    cache = Refreshed(compute, refresh_after=5, max_age=15, clock=clock)
    cache.get()
    clock.now += 6
    assert cache.get().value == 1  # its refresh fails in the background
    deadline = time.monotonic() + 10
    while len(outcomes) > 1:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert cache.get().value == 1
    clock.now += 10  # past the limit: the caller computes, and sees the error
    with pytest.raises(RuntimeError, match="still gone"):
        cache.get()


class PrefectStandIn:
    """Prefect's app in the API's place: everything else on the port answers "prefect"."""

    openapi_schema = None

    def openapi(self) -> dict[str, Any]:
        return {}

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b'"prefect"'})


@pytest.fixture
def postgres_url() -> Iterator[str]:
    with postgres.fresh_database("jobs_api_pools") as url:
        yield url


def test_many_claiming_workers_reuse_the_api_stores_connections(postgres_url: str) -> None:
    """Claims from more workers than the default pool keeps (5 + 10) open no new connection
    each: before the pools were sized, one claim in three or four opened one."""
    settings = load_settings(env_file=None, database_url=postgres_url, archive_mode="off")
    jobs = JobsAPI(settings)  # opens its own store, as the manager does
    store = jobs.store
    opened: list[int] = []
    for engine in (store.engine, store.queue_engine):
        event.listen(engine, "connect", lambda *_: opened.append(1))
    workers, per_worker = 24, 25
    store.add([NewEpisode(f"https://podcasts.example/pool/{i}.mp3", language="en") for i in range(workers * per_worker)])
    got: list[list[int]] = [[] for _ in range(workers)]
    start = threading.Barrier(workers)
    try:
        with serving(with_jobs_api(PrefectStandIn(), create_jobs_app(jobs), None)) as url:
            def work(index: int) -> None:
                with plain_client(url) as http:
                    start.wait()
                    while (answer := http.post("/api/jobs/request", json={"worker_id": f"w{index}"})).status_code == 200:
                        got[index].append(answer.json()["id"])
                    assert answer.status_code == 204, answer.text

            threads = [threading.Thread(target=work, args=(i,)) for i in range(workers)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=120)
    finally:
        store.close()
    claimed = [job for mine in got for job in mine]
    assert len(claimed) == len(set(claimed)) == workers * per_worker
    # The claims' engine keeps one per request thread (API_THREADS), the other engine served the
    # add; with the store's default pools (5 kept) this opened 25-32 here, and ~80 with 16 threads.
    assert len(opened) <= API_THREADS + 4, len(opened)


def test_stats_read_the_counters_now_and_the_slow_parts_from_a_snapshot(tmp_path: Path) -> None:
    settings = load_settings(env_file=None, database_url=f"sqlite:///{tmp_path / 'episodes.db'}", archive_mode="off")
    store = EpisodeStore.open_url(settings.database_url, archive_required=False)
    jobs = JobsAPI(settings, store=store)
    clock = Clock()
    jobs.slow_stats.clock = clock
    try:
        with serving(with_jobs_api(PrefectStandIn(), create_jobs_app(jobs), None)) as url, plain_client(url) as http:
            http.post("/api/jobs", json=[{"episode_url": f"https://podcasts.example/s/{i}.mp3"} for i in range(3)])
            first = http.get("/api/stats")
            taken = datetime.fromisoformat(first.headers["x-stats-as-of"])
            assert first.json()["by_status"]["pending"] == 3 and first.json()["held_by_runs_unknown_to_prefect"] == 0
            assert http.post("/api/jobs/request", json={"worker_id": "w"}).status_code == 200
            clock.now += STATS_REFRESH_SECONDS - 0.5
            second = http.get("/api/stats")
            # The counters at once; the held leases (a GROUP BY) as of the snapshot.
            assert second.json()["by_status"]["assigned"] == 1 and second.json()["by_status"]["pending"] == 2
            assert second.json()["held_by_runs_unknown_to_prefect"] == 0
            assert datetime.fromisoformat(second.headers["x-stats-as-of"]) == taken
            clock.now += STATS_MAX_AGE_SECONDS  # too old: this request computes it anew
            third = http.get("/api/stats")
            assert third.json()["held_by_runs_unknown_to_prefect"] == 1
            assert datetime.fromisoformat(third.headers["x-stats-as-of"]) > taken
    finally:
        store.close()
