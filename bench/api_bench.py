"""The manager's HTTP API (deployments/jobs_api.py, issue 20) against the store's own calls, one run.

Starts a private PostgreSQL (the episode store; Prefect's own database stays SQLite) and a real
`ppcli manager` (ARCHIVE_MODE=off so jobs are claimable at once, WORKER_AUTH_ENABLED with a
password that every request sends as X-Worker-Password), then:

1. Claims: CLAIM_JOBS jobs put in by the store, then 32 concurrent clients (asyncio httpx, one
   connection each) `POST /api/jobs/request` until the queue answers 204. Claims/s and double
   claims (each id handed out once, and in the database every job assigned exactly once, to the
   worker that got it). Baseline: the same number of jobs in a second database, claimed by
   `EpisodeStore.claim_batch(worker, 1)` from 32 threads of this process until empty, with a
   pool of 32 connections, and again (a third database) with SQLAlchemy's default pool, the
   one the manager's store has. New database connections opened meanwhile are counted
   (pg_stat_database.sessions), and the CPU seconds of the manager (its tree, and its API server
   process alone), PostgreSQL and this process; the race starts once the manager's start-up
   work has settled (`settle`).
   Target: ≥ 500 claims/s over HTTP, 0 double claims.
2. Adding: `POST /api/jobs` with batches of 1,000 from a few concurrent clients, JOBS jobs in
   all; baseline: `EpisodeStore.add` (the COPY path of `ppcli import`) of the same records into
   the second database, in one call and in batches of 1,000. Both tables hold the same rows
   before. Target: ≥ 20,000 jobs/s over HTTP.
3. Stats: the manager's table filled to EPISODES rows in the database (the bulk fill of
   store_bench.py: `INSERT ... SELECT` over generate_series, through the counter triggers),
   then `GET /api/stats` p50/p99 over sequential requests, beside the store's calls that the
   route makes (`stats()`, the archive stats, `leased_by_run()`) in this process, and the
   Prefect API call it makes too (`refused_runs`, to the manager's own port). The route reads
   `stats()` per request and the rest from a snapshot (deployments/stats_cache.py), so it is
   also given against `stats()` alone. Target: p99 ≤ 20 ms at 1M episodes.

Usage: python bench/api_bench.py [--jobs 100000] [--claim-jobs 5000] [--clients 32]
           [--post-clients 4] [--batch 1000] [--episodes 1000000] [--stats-requests 300]
           [--only claims,add,stats]
Every process it starts (PostgreSQL, the manager and its children) is stopped at the end, on
Ctrl+C and on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Self

import httpx
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.store_bench import fill, libpq
from deployments.jobs_api import MAX_JOBS_PER_REQUEST
from podcastpile.config import load_settings
from podcastpile.jsonviews import archive_stats
from podcastpile.prefect_api import PrefectAPI
from podcastpile.runs import refused_runs
from podcastpile.store import EpisodeStore, NewEpisode, make_engine, migrate
from tests import postgres
from tests.manager import Manager
from tests.prefect_server import free_port
from tests.processes import stop_tree

PASSWORD = "api bench password"
HEADERS = {"X-Worker-Password": PASSWORD}
ADD_TARGET = 20_000
CLAIM_TARGET = 500
STATS_P99_TARGET_MS = 20.0


def _terminated(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def records(n: int, tag: str) -> list[dict[str, str]]:
    """`n` distinct jobs, the shape `ppcli import` reads (one podcast per 50 episodes)."""
    return [{"episode_url": f"https://feeds.bench{i % 97}.example.com/{tag}/show-{i // 50}/ep-{i}.mp3",
             "language": "en", "podcast_id": f"show-{i // 50}"} for i in range(n)]


def new_episodes(items: list[dict[str, str]]) -> list[NewEpisode]:
    return [NewEpisode(item["episode_url"], podcast_id=item["podcast_id"], language=item["language"])
            for item in items]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def create_database(server: str, name: str) -> str:
    with psycopg.connect(libpq(server), autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    return server.rsplit("/", 1)[0] + "/" + name


def open_store(url: str) -> EpisodeStore:
    engine = make_engine(url)
    migrate(engine)
    return EpisodeStore(engine, archive_required=False)


# --- where the CPU goes ------------------------------------------------------------------------------


def _cpu(pid: int, with_children: bool) -> float:
    """CPU seconds of `pid` (and of its children it has waited for), 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = sum(int(value) for value in fields[11:15 if with_children else 13])
    return ticks / os.sysconf("SC_CLK_TCK")


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process tree: the root with its reaped children, the live ones below."""
    from podcastpile.cli.stopping import descendants

    return _cpu(pid, True) + sum(_cpu(child, False) for child in descendants(pid))


def server_pid(manager_pid: int) -> int:
    """The manager's `python -m deployments.server` (the API's process), 0 if not found."""
    from podcastpile.cli.stopping import descendants

    for pid in descendants(manager_pid):
        try:
            if b"deployments.server" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return pid
        except OSError:
            continue
    return 0


def settle(pid: int, *, busy_below: float = 0.25, window: float = 2.0, limit: float = 90.0) -> dict[str, float]:
    """Wait until the manager's tree uses under `busy_below` of a core over `window` seconds
    (Prefect's start-up work, block registration and the first control-loop rounds, runs after
    it answers ready and would otherwise be counted against the claims); at most `limit` s."""
    started = time.perf_counter()
    while True:
        before = tree_cpu(pid)
        time.sleep(window)
        rate = (tree_cpu(pid) - before) / window
        waited = time.perf_counter() - started
        if rate < busy_below or waited >= limit:
            return {"waited_seconds": round(waited, 1), "manager_cpu_per_second_idle": round(rate, 3)}


class CPU:
    """CPU seconds spent meanwhile by the manager's tree, the API's server process alone within
    it, PostgreSQL's tree and this process."""

    manager_pid = 0
    server_pid = 0
    postgres_pid = 0

    def __enter__(self) -> Self:
        self.start = self._now()
        self.wall = time.perf_counter()
        return self

    def _now(self) -> tuple[float, float, float, float]:
        own = os.times()
        return (tree_cpu(self.manager_pid), _cpu(self.server_pid, False), tree_cpu(self.postgres_pid),
                own.user + own.system)

    def __exit__(self, *exc: object) -> None:
        end, wall = self._now(), time.perf_counter() - self.wall
        names = ("manager", "manager_api_server", "postgres", "bench")
        self.seconds = {name: round(b - a, 1) for name, a, b in zip(names, self.start, end)}
        self.seconds["wall"] = round(wall, 1)


def sessions(url: str) -> int:
    """Connections the database has accepted so far (PostgreSQL's cumulative statistics)."""
    time.sleep(1.5)  # backends report their session at exit, at most once a second
    with psycopg.connect(libpq(url)) as connection:
        return connection.execute(
            "SELECT sessions FROM pg_stat_database WHERE datname = current_database()").fetchone()[0] - 1


# --- claims ----------------------------------------------------------------------------------------


async def _api_claims(api: str, clients: int) -> tuple[list[tuple[str, int]], float, Counter]:
    got: list[tuple[str, int]] = []
    statuses: Counter = Counter()
    start_line = asyncio.Event()

    async def worker(index: int, http: httpx.AsyncClient) -> None:
        name = f"api-w{index}"
        await http.post("/stats")  # open the connection before the race (405 is fine)
        await start_line.wait()
        while True:
            answer = await http.post("/jobs/request", json={"worker_id": name})
            statuses[answer.status_code] += 1
            if answer.status_code == 204:
                return
            answer.raise_for_status()
            got.append((name, answer.json()["id"]))

    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with _clients(api, clients, limits) as https:
        tasks = [asyncio.create_task(worker(i, http)) for i, http in enumerate(https)]
        await asyncio.sleep(0.5)
        start = time.perf_counter()
        start_line.set()
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
    return got, elapsed, statuses


class _clients:
    """`n` AsyncClients of the API, each its own connection, closed together."""

    def __init__(self, api: str, n: int, limits: httpx.Limits) -> None:
        self.https = [httpx.AsyncClient(base_url=api, headers=HEADERS, limits=limits, timeout=120, trust_env=False)
                      for _ in range(n)]

    async def __aenter__(self) -> list[httpx.AsyncClient]:
        return self.https

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.gather(*(http.aclose() for http in self.https))


def store_claims(url: str, threads: int, pooled: bool = True) -> tuple[list[tuple[str, int]], float]:
    """`pooled`: a pool as large as the threads, so each keeps its connection; else SQLAlchemy's
    default pool as the manager's store has it (5 kept, 10 more opened when needed and closed
    when given back)."""
    engine = make_engine(url, pool_size=threads, max_overflow=0) if pooled else make_engine(url)
    store = EpisodeStore(engine, archive_required=False)
    got: list[tuple[str, int]] = []
    lock = threading.Lock()
    barrier = threading.Barrier(threads + 1)

    def worker(index: int) -> None:
        name = f"store-w{index}"
        store.claim_batch(name, 0)
        mine = []
        barrier.wait()
        while claims := store.claim_batch(name, 1):
            mine.extend((name, claim.episode_id) for claim in claims)
        with lock:
            got.extend(mine)

    running = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for thread in running:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in running:
        thread.join()
    elapsed = time.perf_counter() - start
    store.close()
    return got, elapsed


def check_claims(got: list[tuple[str, int]], url: str, jobs: int) -> dict[str, Any]:
    """Double claims as the clients saw them and as the database holds them."""
    counts = Counter(episode for _, episode in got)
    with psycopg.connect(libpq(url)) as connection:
        rows = connection.execute("SELECT id, status, worker_id, attempts FROM episodes").fetchall()
    held = {episode_id: (status, worker, attempts) for episode_id, status, worker, attempts in rows}
    wrong = sum(1 for worker, episode in got
                if held.get(episode, (None, None, None))[:2] != ("assigned", worker))
    return {
        "claimed": len(got),
        "distinct": len(counts),
        "double_claims": sum(1 for c in counts.values() if c > 1),
        "db_assigned": sum(1 for status, _, _ in held.values() if status == "assigned"),
        "db_left_unclaimed": sum(1 for status, _, _ in held.values() if status == "pending"),
        "db_claimed_more_than_once": sum(1 for _, _, attempts in held.values() if attempts > 1),
        "db_not_held_by_the_claimer": wrong,
        "all_claimed_once": len(got) == len(counts) == jobs,
    }


def bench_claims(manager: Manager, api_url: str, store_url: str, pool_url: str, jobs: int,
                 clients: int) -> dict[str, Any]:
    items = records(jobs, "claims")
    for url in (api_url, store_url, pool_url):
        store = open_store(url)
        assert store.add(new_episodes(items)).added == jobs
        store.close()
    before = sessions(api_url)
    quiet = settle(manager.process.pid)
    with CPU() as api_cpu:
        got, api_s, statuses = asyncio.run(_api_claims(manager.api, clients))
    api_connections = sessions(api_url) - before
    api = {"seconds": round(api_s, 2), "claims_per_s": round(len(got) / api_s),
           "responses": dict(statuses), "cpu_seconds": api_cpu.seconds, "manager_before": quiet,
           "manager_api_server_cpu_ms_per_claim": round(api_cpu.seconds["manager_api_server"] / max(1, len(got)) * 1000, 2),
           "new_database_connections": api_connections, **check_claims(got, api_url, jobs)}
    before = sessions(store_url)
    with CPU() as store_cpu:
        got, store_s = store_claims(store_url, clients)
    store_connections = sessions(store_url) - before
    own = {"seconds": round(store_s, 2), "claims_per_s": round(len(got) / store_s),
           "cpu_seconds": store_cpu.seconds, "new_database_connections": store_connections, **check_claims(got, store_url, jobs)}
    before = sessions(pool_url)
    with CPU() as pool_cpu:
        got, pool_s = store_claims(pool_url, clients, pooled=False)
    default_pool = {"seconds": round(pool_s, 2), "claims_per_s": round(len(got) / pool_s),
                    "cpu_seconds": pool_cpu.seconds, "new_database_connections": sessions(pool_url) - before,
                    **check_claims(got, pool_url, jobs)}
    return {"jobs": jobs, "clients": clients, "api": api, "store_claim_batch_1_threads": own,
            "store_claim_batch_1_threads_default_pool": default_pool,
            "api_vs_store_default_pool": round(api["claims_per_s"] / default_pool["claims_per_s"], 3),
            "api_vs_store": round(api["claims_per_s"] / own["claims_per_s"], 3),
            "api_vs_target": round(api["claims_per_s"] / CLAIM_TARGET, 3)}


# --- adding ----------------------------------------------------------------------------------------


async def _api_add(api: str, batches: list[list[dict[str, str]]], clients: int) -> tuple[float, dict[str, int], list[float]]:
    queue: asyncio.Queue = asyncio.Queue()
    for batch in batches:
        queue.put_nowait(json.dumps(batch).encode())  # encoded before the clock starts
    totals: Counter = Counter()
    latencies: list[float] = []

    async def client(http: httpx.AsyncClient) -> None:
        while not queue.empty():
            body = queue.get_nowait()
            sent = time.perf_counter()
            answer = await http.post("/jobs", content=body, headers={"content-type": "application/json"})
            latencies.append(time.perf_counter() - sent)
            answer.raise_for_status()
            summary = answer.json()
            totals.update(added=summary["added"], present=summary["present"], rejected=len(summary["rejected"]))

    async with _clients(api, clients, httpx.Limits(max_connections=1)) as https:
        for http in https:
            await http.post("/stats")  # connect first
        start = time.perf_counter()
        await asyncio.gather(*(client(http) for http in https))
        elapsed = time.perf_counter() - start
    return elapsed, dict(totals), latencies


def bench_add(manager: Manager, api_url: str, store_url: str, jobs: int, batch: int, clients: int) -> dict[str, Any]:
    assert batch <= MAX_JOBS_PER_REQUEST
    items = records(jobs, "added")
    batches = [items[i:i + batch] for i in range(0, jobs, batch)]
    with CPU() as api_cpu:
        api_s, totals, latencies = asyncio.run(_api_add(manager.api, batches, clients))
    assert totals.get("added") == jobs, totals

    # The store's own path for the same records: one call (chunks of 20,000, as `ppcli import`),
    # then, into a fresh copy of the names, in batches of the API's size one after the other.
    store = open_store(store_url)
    with CPU() as store_cpu:
        start = time.perf_counter()
        summary = store.add(new_episodes(items))
        one_call_s = time.perf_counter() - start
    assert summary.added == jobs, summary
    again = records(jobs, "added-in-batches")
    start = time.perf_counter()
    added = sum(store.add(new_episodes(again[i:i + batch])).added for i in range(0, jobs, batch))
    batched_s = time.perf_counter() - start
    assert added == jobs
    store.close()
    api_rate = jobs / api_s
    return {
        "jobs": jobs, "batch": batch, "clients": clients,
        "api_seconds": round(api_s, 2), "api_jobs_per_s": round(api_rate), "api_cpu_seconds": api_cpu.seconds,
        "store_add_one_call_cpu_seconds": store_cpu.seconds,
        "api_request_ms_p50": round(percentile(latencies, 50) * 1000, 1),
        "api_request_ms_p99": round(percentile(latencies, 99) * 1000, 1),
        "store_add_one_call_seconds": round(one_call_s, 2), "store_add_one_call_jobs_per_s": round(jobs / one_call_s),
        "store_add_batches_seconds": round(batched_s, 2), "store_add_batches_jobs_per_s": round(jobs / batched_s),
        "api_vs_store_one_call": round(one_call_s / api_s, 3),
        "api_vs_store_batches": round(batched_s / api_s, 3),
        "api_vs_target": round(api_rate / ADD_TARGET, 3),
    }


# --- stats ------------------------------------------------------------------------------------------


def bench_stats(manager: Manager, api_url: str, episodes: int, requests: int) -> dict[str, Any]:
    with psycopg.connect(libpq(api_url)) as connection:
        have = connection.execute("SELECT count(*) FROM episodes").fetchone()[0]
    fill_s = fill(api_url, episodes - have) if episodes > have else 0.0
    settings = load_settings()
    store = EpisodeStore(make_engine(api_url), archive_required=False)
    timings: dict[str, list[float]] = {"api": [], "stats": [], "archive_stats": [], "leased_by_run": [],
                                       "route_calls": [], "refused_runs": []}
    # The route also asks Prefect's API (on the manager's own port) how many runs were refused.
    prefect = PrefectAPI(manager.api, auth_string=PASSWORD)
    with httpx.Client(base_url=manager.api, headers=HEADERS, trust_env=False, timeout=60) as http, CPU() as cpu:
        answer = http.get("/stats")
        answer.raise_for_status()
        answered = answer.json()
        total = answered.get("total")
        prefect_check = {key: answered.get(key) for key in ("refused_runs", "refused_runs_unknown_reason",
                                                             "held_by_runs_unknown_reason")}
        for _ in range(5):  # warm both sides
            http.get("/stats")
            store.stats()
        for _ in range(requests):  # interleaved, so load swings hit both alike
            start = time.perf_counter()
            http.get("/stats").raise_for_status()
            timings["api"].append(time.perf_counter() - start)
            start = time.perf_counter()
            store.stats()
            timings["stats"].append(time.perf_counter() - start)
            start = time.perf_counter()
            archive_stats(store, settings)
            timings["archive_stats"].append(time.perf_counter() - start)
            start = time.perf_counter()
            store.leased_by_run()
            timings["leased_by_run"].append(time.perf_counter() - start)
            timings["route_calls"].append(timings["stats"][-1] + timings["archive_stats"][-1]
                                          + timings["leased_by_run"][-1])
            start = time.perf_counter()
            refused_runs(prefect)
            timings["refused_runs"].append(time.perf_counter() - start)
    store.close()
    ms = {name: (percentile(values, 50) * 1000, percentile(values, 99) * 1000) for name, values in timings.items()}
    return {
        "episodes": episodes, "answered_total": total, "answered_prefect_part": prefect_check, "cpu_seconds_all_requests_and_calls": cpu.seconds, "fill_seconds": round(fill_s, 1), "requests": requests,
        "api_ms_p50": round(ms["api"][0], 2), "api_ms_p99": round(ms["api"][1], 2),
        "store_stats_ms_p50": round(ms["stats"][0], 2), "store_stats_ms_p99": round(ms["stats"][1], 2),
        "store_archive_stats_ms_p50": round(ms["archive_stats"][0], 2),
        "store_leased_by_run_ms_p50": round(ms["leased_by_run"][0], 2),
        "store_route_calls_ms_p50": round(ms["route_calls"][0], 2),
        "prefect_refused_runs_ms_p50": round(ms["refused_runs"][0], 2),
        "prefect_refused_runs_ms_p99": round(ms["refused_runs"][1], 2),
        "store_route_calls_ms_p99": round(ms["route_calls"][1], 2),
        "api_p50_vs_route_calls_p50": round(ms["api"][0] / ms["route_calls"][0], 2),
        # The route reads the counters per request and the rest from a snapshot: against stats().
        "api_p50_vs_store_stats_p50": round(ms["api"][0] / ms["stats"][0], 2),
        "api_p99_vs_store_stats_p99": round(ms["api"][1] / ms["stats"][1], 2),
        "snapshot_as_of_header": answer.headers.get("x-stats-as-of"),
        "api_p99_vs_target": round(ms["api"][1] / STATS_P99_TARGET_MS, 3),
    }


# --- the run ----------------------------------------------------------------------------------------


def _excerpt(lines: list[str], first: int) -> list[str]:
    """A log line, or a traceback's last frame and its exception line (and what it chains to)."""
    if "Traceback" not in lines[first]:
        return lines[first:first + 1]
    end = first + 1
    while end < len(lines) and (lines[end].startswith((" ", "\t")) or not lines[end].strip()):
        end += 1
    return lines[max(first + 1, end - 3):end + 1]


def start_manager(home: Path, database_url: str) -> Manager:
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("PREFECT_", "WORKER_", "HOST", "PORT", "DATABASE_URL", "MANAGER_URL", "TLS_"))}
    env.update({
        "DATABASE_URL": database_url, "ARCHIVE_MODE": "off", "ALLOW_PRIVATE_ADDRESSES": "false",
        "WORKER_AUTH_ENABLED": "true", "WORKER_PASSWORD": PASSWORD,
        "PREFECT_HOME": str(home / "prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
        # The manager's export loop publishes completed episodes (the stats fill makes 700,000
        # of them, without results): into the bench's directory, never the checkout's ./dataset.
        "DATASET_DIR": str(home / "dataset"),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    })
    return Manager(env, home / "manager.log", free_port(), cwd=home)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=100_000, help="jobs POSTed (and added by the store)")
    parser.add_argument("--batch", type=int, default=1000, help="jobs per POST /api/jobs")
    parser.add_argument("--post-clients", type=int, default=4, help="concurrent POST /api/jobs clients")
    parser.add_argument("--claim-jobs", type=int, default=5000, help="jobs claimed one by one")
    parser.add_argument("--clients", type=int, default=32, help="concurrent claimers (HTTP and store threads)")
    parser.add_argument("--episodes", type=int, default=1_000_000, help="table size for the stats")
    parser.add_argument("--stats-requests", type=int, default=300)
    parser.add_argument("--manager-log", default=None, help="keep the manager's log in this file")
    parser.add_argument("--only", default="claims,add,stats", help="sections to run")
    args = parser.parse_args()
    sections = set(args.only.split(","))
    signal.signal(signal.SIGTERM, _terminated)
    report: dict[str, Any] = {"load_average_before": [round(x, 2) for x in os.getloadavg()],
                              "cpus": os.cpu_count()}
    manager = None
    with tempfile.TemporaryDirectory(prefix="api-bench-") as workdir, postgres.tcp_server() as server:
        try:
            home = Path(workdir)
            api_url, store_url = create_database(server, "api"), create_database(server, "store")
            pool_url = create_database(server, "store_default_pool")
            open_store(api_url).close()  # migrated before the manager opens it
            started = time.perf_counter()
            manager = start_manager(home, api_url)
            manager.wait_ready()
            report["manager_start_seconds"] = round(time.perf_counter() - started, 1)
            CPU.manager_pid = manager.process.pid
            CPU.server_pid = server_pid(manager.process.pid)
            with psycopg.connect(libpq(api_url)) as connection:  # its backend's parent, while it lives
                backend = connection.execute("SELECT pg_backend_pid()").fetchone()[0]
                CPU.postgres_pid = int(Path(f"/proc/{backend}/stat").read_text().rsplit(")", 1)[1].split()[1])
            with httpx.Client(base_url=manager.api, trust_env=False) as http:
                assert http.get("/stats").status_code == 401, "auth is not on"
            if "claims" in sections:
                report["claims"] = bench_claims(manager, api_url, store_url, pool_url, args.claim_jobs,
                                                args.clients)
                print(json.dumps(report["claims"]), file=sys.stderr)
            if "add" in sections:
                report["add"] = bench_add(manager, api_url, store_url, args.jobs, args.batch, args.post_clients)
                print(json.dumps(report["add"]), file=sys.stderr)
            if "stats" in sections:
                report["stats"] = bench_stats(manager, api_url, args.episodes, args.stats_requests)
            report["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
        finally:
            if manager is not None:
                stop_tree(manager.process, grace=30)
                log = manager.output()
                if PASSWORD in log:
                    report["password_in_manager_log"] = True
                lines = log.splitlines()
                errors = [i for i, line in enumerate(lines) if "Traceback" in line or " 500 " in line]
                if errors:  # what went wrong, the first few with the lines after them
                    report["manager_log_errors"] = len(errors)
                    report["manager_log_error_excerpts"] = [_excerpt(lines, i) for i in errors[:6]]
                if args.manager_log:
                    Path(args.manager_log).write_text(log)
    print(json.dumps(report, indent=2))
    lines = []
    if "claims" in report:
        c = report["claims"]
        lines.append(f"claims: {c['api']['claims_per_s']}/s over HTTP from {c['clients']} clients = "
                     f"{c['api_vs_target']:.2f}x the 500/s target, {c['api']['double_claims']} double "
                     f"(db: {c['api']['db_claimed_more_than_once']}); store claim_batch(1) from {c['clients']} threads "
                     f"{c['store_claim_batch_1_threads']['claims_per_s']}/s (ratio {c['api_vs_store']:.2f}), with the "
                     f"manager's default pool {c['store_claim_batch_1_threads_default_pool']['claims_per_s']}/s "
                     f"(ratio {c['api_vs_store_default_pool']:.2f})")
    if "add" in report:
        a = report["add"]
        lines.append(f"POST /api/jobs: {a['api_jobs_per_s']} jobs/s = {a['api_vs_target']:.2f}x the 20,000 target; "
                     f"store.add one call {a['store_add_one_call_jobs_per_s']}/s (ratio {a['api_vs_store_one_call']:.2f}), "
                     f"in batches of {a['batch']} {a['store_add_batches_jobs_per_s']}/s (ratio {a['api_vs_store_batches']:.2f})")
    if "stats" in report:
        s = report["stats"]
        lines.append(f"GET /api/stats at {s['episodes']:,}: p50 {s['api_ms_p50']} ms, p99 {s['api_ms_p99']} ms "
                     f"= {s['api_p99_vs_target']:.2f}x the 20 ms target; the route's store calls in-process "
                     f"p50 {s['store_route_calls_ms_p50']} ms, stats() alone p50 {s['store_stats_ms_p50']} ms, "
                     f"p99 {s['store_stats_ms_p99']} ms (route / stats(): p50 {s['api_p50_vs_store_stats_p50']}x, "
                     f"p99 {s['api_p99_vs_store_stats_p99']}x)")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
