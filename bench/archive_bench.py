"""Archive stage throughput against the loopback Internet Archive (tests/wayback.py).

Two measurements, one invocation, printed as JSON:

1. rate: `--episodes` waiting episodes, SPN_CAPTURES_PER_MINUTE=`--per-minute`, `--runs`
   archive runs in separate processes (each claiming ARCHIVE_BATCH_SIZE at a time, as the
   scheduled flow runs do) for `--seconds`. Counted on the double's side: submissions per
   minute while work waits (target >= 0.95x the configured rate) and the most submissions in
   any 60 s window (must never exceed the rate).
2. reuse: `--episodes` episodes that all have a capture already; one run archives them all
   without submitting (target >= 20 episodes/s).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from podcastpile.archive.stage import ArchiveLimits, ArchiveStage  # noqa: E402
from podcastpile.archive.wayback import WaybackClient  # noqa: E402
from podcastpile.store import EpisodeStore, NewEpisode, make_engine, migrate  # noqa: E402
from podcastpile.store.archive import ArchiveQueue  # noqa: E402
from tests.wayback import AdHost, WaybackDouble  # noqa: E402

WAV = (ROOT / "tests" / "fixtures" / "speech" / "conversation.wav").read_bytes()


def _run_loop(database_url: str, wayback_url: str, name: str, per_minute: float, batch: int,
              seconds: float, start: float) -> int:
    """One archive 'deployment run' after another until the time is up; returns submissions."""
    store = EpisodeStore(make_engine(database_url), archive_required=True)
    queue = ArchiveQueue(store)
    limits = ArchiveLimits(per_minute=per_minute, poll_seconds=0.5)
    submitted = 0
    with WaybackClient(wayback_url, wayback_url) as client:
        while (left := start + seconds - time.time()) > 1:
            claims = queue.claim(name, batch)
            if not claims:
                time.sleep(0.5)
                continue
            submitted += ArchiveStage(queue, client, limits).run(claims, max_seconds=left).submitted
    store.close()
    return submitted


def _store(folder: Path, urls: list[str]) -> str:
    url = f"sqlite:///{folder / 'episodes.db'}"
    engine = make_engine(url)
    migrate(engine)
    EpisodeStore(engine, archive_required=True).add([NewEpisode(u) for u in urls])
    engine.dispose()
    return url


def rate(args: argparse.Namespace) -> dict:
    names = [f"ep{i}.wav" for i in range(args.episodes)]
    with tempfile.TemporaryDirectory() as folder, WaybackDouble() as ia, AdHost({n: WAV for n in names}) as origin:
        database = _store(Path(folder), [origin.url(n) for n in names])
        start = time.time() + 2  # every process starts its loop at the same moment
        context = multiprocessing.get_context("spawn")
        with context.Pool(args.runs) as pool:
            results = [pool.apply_async(_run_loop, (database, ia.base_url, f"run-{i}", args.per_minute,
                                                    args.batch, args.seconds, start)) for i in range(args.runs)]
            submitted = [r.get(timeout=args.seconds + 120) for r in results]
        times = sorted(ia.submissions)
        remaining = args.episodes - len(times)
        # While work waited the whole time, the rate is submissions over the span they covered,
        # measured in whole windows from the first submission.
        span = times[-1] - times[0] if len(times) > 1 else 0.0
        windows = int(span // 60)
        sustained = sum(1 for t in times if t < times[0] + 60 * windows) / windows if windows else float("nan")
        return {
            "per_minute_configured": args.per_minute,
            "runs": args.runs,
            "seconds": args.seconds,
            "submitted": len(times),
            "submitted_by_run": submitted,
            "work_still_waiting_at_end": remaining,
            "sustained_per_minute": round(sustained, 2),
            "sustained_ratio": round(sustained / args.per_minute, 3),
            "max_in_any_60s": ia.max_in_window(60.0),
        }


def reuse(args: argparse.Namespace) -> dict:
    names = [f"ep{i}.wav" for i in range(args.episodes)]
    with tempfile.TemporaryDirectory() as folder, WaybackDouble() as ia, AdHost({}) as origin:
        for name in names:
            ia.add_capture(origin.url(name), WAV)
        database = _store(Path(folder), [origin.url(n) for n in names])
        store = EpisodeStore(make_engine(database), archive_required=True)
        queue = ArchiveQueue(store)
        started = time.perf_counter()
        done = 0
        with WaybackClient(ia.base_url, ia.base_url) as client:
            while claims := queue.claim("reuse", 50):
                summary = ArchiveStage(queue, client, ArchiveLimits()).run(claims)
                done += summary.counts.get("reused", 0)
        elapsed = time.perf_counter() - started
        store.close()
        return {"episodes": args.episodes, "reused": done, "submitted": len(ia.submissions),
                "seconds": round(elapsed, 2), "episodes_per_second": round(done / elapsed, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--per-minute", type=float, default=60.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=50, help="ARCHIVE_BATCH_SIZE of each run")
    parser.add_argument("--seconds", type=float, default=150.0, help="how long the rate part runs")
    args = parser.parse_args()
    print(json.dumps({"reuse": reuse(args), "rate": rate(args)}, indent=2))


if __name__ == "__main__":
    main()
