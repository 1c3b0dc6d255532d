"""Archive stage throughput against the loopback Internet Archive (tests/wayback.py).

Two measurements by default, one invocation, printed as JSON:

1. rate: `--episodes` waiting episodes, SPN_CAPTURES_PER_MINUTE=`--per-minute`, `--runs`
   archive runs in separate processes (each claiming ARCHIVE_BATCH_SIZE at a time, as the
   scheduled flow runs do) for `--seconds`. Counted on the double's side: submissions per
   minute while work waits (target >= 0.95x the configured rate) and the most submissions in
   any 60 s window (must never exceed the rate).
2. reuse: `--episodes` episodes that all have a capture already; one run archives them all
   without submitting (target >= 20 episodes/s).

`--realistic` measures instead against `WaybackDouble.realistic` (replay lag, a lookup limit
answered with 429s, keys required, "same snapshot" answers), with IA's limits and every
duration of the stage scaled by `--scale` (time runs `--scale` times faster; the 60 s windows
stay, the counts allowed in them are multiplied):

3. realistic: `--episodes` (1,000) episodes of `--podcasts` (20) podcasts, one folder each
   (`show{p}/ep{i}.wav`), a third with captures already; `--runs` (3) run loops in separate
   processes on one store until every episode is archived. Submissions per minute while work
   waits over the configured rate (target >= 0.95x), the most lookups in any 60 s against the
   limit (never above), 429s (0), lookups per episode (target <= 0.1), split by what asked.
4. reuse at the lookup limit: every episode already captured, (a) in the podcasts' folders,
   (b) each at the host's root (one lookup each); episodes per minute, and the time to clear a
   backlog of 1M episodes at the real limit (24 lookups a minute).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import multiprocessing
import os
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import func, select  # noqa: E402

from podcastpile.archive.stage import ArchiveLimits, ArchiveStage  # noqa: E402
from podcastpile.archive.wayback import WaybackClient  # noqa: E402
from podcastpile.store import EpisodeStore, NewEpisode, make_engine, migrate  # noqa: E402
from podcastpile.store.archive import ArchiveQueue  # noqa: E402
from podcastpile.store.archive_limits import WINDOW_MARGIN_SECONDS  # noqa: E402
from podcastpile.store.tables import ARCHIVE_WAITING  # noqa: E402
from podcastpile.store.tables import episodes as episodes_table  # noqa: E402
from tests import wayback_cdx  # noqa: E402
from tests.loopback import Reply, Request  # noqa: E402
from tests.wayback import AdHost, WaybackDouble  # noqa: E402

WAV = (ROOT / "tests" / "fixtures" / "speech" / "conversation.wav").read_bytes()

# IA's real limits the realistic mode scales (../shared/reference/spn2-real-service.md):
REAL_CAPTURES_PER_MINUTE = 7.0  # SPN2, authenticated [S8][S9]
REAL_LOOKUP_LIMIT = 30  # CDX + availability per minute, answered with 429 above it [S4 #206]
REAL_LOOKUPS_PER_MINUTE = 24.0  # CDX_REQUESTS_PER_MINUTE: 80 % of the hard limit [S4]
REAL_POLL_SECONDS = 5.0  # SPN_POLL_SECONDS' default
PARTS = ("realistic", "folders", "root")
BACKLOG = 1_000_000


def _run_loop(database_url: str, wayback_url: str, name: str, limits: ArchiveLimits, batch: int,
              seconds: float, start: float, until_done: bool = False) -> dict:
    """One archive 'deployment run' after another until the time is up (or, `until_done`, until no
    episode waits for the archive any more); returns what the runs did."""
    store = EpisodeStore(make_engine(database_url), archive_required=True)
    queue = ArchiveQueue(store)
    submitted, lookups, runs, counts = 0, 0, 0, Counter()
    time.sleep(max(0.0, start - time.time()))
    with WaybackClient(wayback_url, wayback_url, access_key="AK", secret_key="SK") as client:
        while (left := start + seconds - time.time()) > 1:
            claims = queue.claim(name, batch)
            if not claims:
                if until_done and _waiting(store) == 0:
                    break
                time.sleep(0.2 if until_done else 0.5)
                continue
            summary = ArchiveStage(queue, client, limits).run(claims, max_seconds=left)
            submitted += summary.submitted
            lookups += summary.lookups
            counts.update(summary.counts)
            runs += 1
    store.close()
    return {"submitted": submitted, "lookups": lookups, "runs": runs, "counts": dict(counts)}


def _waiting(store: EpisodeStore) -> int:
    """Episodes still waiting for the archive (deferred ones included)."""
    with store.engine.connect() as connection:
        return connection.execute(
            select(func.count()).select_from(episodes_table)
            .where(episodes_table.c.status.in_([s.value for s in ARCHIVE_WAITING]))
        ).scalar_one()


def _store(folder: Path, urls: list[str]) -> str:
    url = f"sqlite:///{folder / 'episodes.db'}"
    _fill(url, urls)
    return url


def _fill(url: str, urls: list[str]) -> None:
    engine = make_engine(url)
    migrate(engine)
    EpisodeStore(engine, archive_required=True).add([NewEpisode(u) for u in urls])
    engine.dispose()


def rate(args: argparse.Namespace) -> dict:
    names = [f"ep{i}.wav" for i in range(args.episodes)]
    with tempfile.TemporaryDirectory() as folder, WaybackDouble() as ia, AdHost({n: WAV for n in names}) as origin:
        database = _store(Path(folder), [origin.url(n) for n in names])
        start = time.time() + 2  # every process starts its loop at the same moment
        limits = ArchiveLimits(per_minute=args.per_minute, poll_seconds=0.5)
        context = multiprocessing.get_context("spawn")
        with context.Pool(args.runs) as pool:
            results = [pool.apply_async(_run_loop, (database, ia.base_url, f"run-{i}", limits,
                                                    args.batch, args.seconds, start)) for i in range(args.runs)]
            submitted = [r.get(timeout=args.seconds + 120)["submitted"] for r in results]
        times = sorted(ia.submissions)
        remaining = args.episodes - len(times)
        sustained = _sustained(times)
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


def _sustained(times: list[float]) -> float:
    """Submissions per minute while work waited: over whole 60 s windows from the first
    submission that end before the last one (work still waited then)."""
    times = sorted(times)
    span = times[-1] - times[0] if len(times) > 1 else 0.0
    windows = int(span // 60)
    return sum(1 for t in times if t < times[0] + 60 * windows) / windows if windows else float("nan")


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
        with WaybackClient(ia.base_url, ia.base_url, access_key="AK", secret_key="SK") as client:
            while claims := queue.claim("reuse", 50):
                summary = ArchiveStage(queue, client, ArchiveLimits()).run(claims)
                done += summary.counts.get("reused", 0)
        elapsed = time.perf_counter() - started
        store.close()
        return {"episodes": args.episodes, "reused": done, "submitted": len(ia.submissions),
                "seconds": round(elapsed, 2), "episodes_per_second": round(done / elapsed, 1)}


# --- realistic mode ---------------------------------------------------------------------------


class CountingDouble(WaybackDouble):
    """The realistic double, also keeping each CDX query's parameters (to tell a folder lookup
    from a check that a fresh capture is listed)."""

    def __post_init__(self) -> None:
        self.cdx_queries: list[dict[str, list[str]]] = []
        super().__post_init__()

    def _cdx(self, request: Request) -> Reply:
        self.cdx_queries.append(dict(request.query))
        return super()._cdx(request)


def _memoize_cdx_digests() -> None:
    """The double's CDX answer hashes every stored body on every request (SHA-1 of 1,000 x 265 KB
    is ~0.15 s here), which would bound the bench by the double itself: remember each body's
    digest (same answers; bytes objects keep their own hash)."""
    if not hasattr(wayback_cdx.sha1_base32, "cache_info"):
        wayback_cdx.sha1_base32 = functools.lru_cache(maxsize=None)(wayback_cdx.sha1_base32)


def _lookup_kinds(queries: list[dict[str, list[str]]], started: datetime) -> dict[str, int]:
    """Folder (prefix) and single-URL lookups for existing captures (`from` far back: the reuse
    window) apart from checks that a fresh capture is listed (`from` = that capture's time)."""
    recent = (started - timedelta(days=1)).strftime("%Y%m%d%H%M%S")
    kinds: Counter[str] = Counter()
    for query in queries:
        since = (query.get("from") or [""])[0]
        prefix = (query.get("matchType") or [""])[0] == "prefix"
        what = "listed_check" if since >= recent else "find"
        kinds[f"{what}_{'folder' if prefix else 'url'}"] += 1
    return dict(sorted(kinds.items()))


@contextmanager
def _database(folder: Path, name: str, database_url: str | None) -> Iterator[str]:
    """A fresh store: a SQLite file in `folder`, or a new database on DATABASE_URL's PostgreSQL
    server (dropped afterwards)."""
    if not database_url or database_url.startswith("sqlite"):
        yield f"sqlite:///{folder / (name + '.db')}"
        return
    import psycopg
    from sqlalchemy.engine import make_url

    base = make_url(database_url)
    libpq = base.set(drivername="postgresql").render_as_string(hide_password=False)
    database = f"archive_bench_{name}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(libpq, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{database}"')
    try:
        yield base.set(drivername="postgresql+psycopg", database=database).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(libpq, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def _double(args: argparse.Namespace) -> CountingDouble:
    """The realistic double with its lookup limit and replay lag scaled like the stage."""
    return CountingDouble.realistic(replay_lag_seconds=args.replay_lag / args.scale,
                                    lookups_per_minute=int(REAL_LOOKUP_LIMIT * args.scale), keys={"AK:SK"})


def _scaled_limits(scale: float) -> ArchiveLimits:
    """The stage's defaults with time running `scale` times faster: the per-minute counts times
    `scale`, every duration divided by it."""
    real = ArchiveLimits()
    return ArchiveLimits(
        # the day is not scaled: 667 WAVs of 265 KB stay far below SPN_DAILY_BYTES' 5 GB
        per_minute=REAL_CAPTURES_PER_MINUTE * scale, daily_bytes=real.daily_bytes,
        reuse_days=real.reuse_days, poll_seconds=REAL_POLL_SECONDS / scale,
        lookups_per_minute=REAL_LOOKUPS_PER_MINUTE * scale, stale_seconds=real.stale_seconds / scale,
        host_pause_seconds=real.host_pause_seconds / scale, recheck_seconds=real.recheck_seconds / scale,
        listed_after_seconds=real.listed_after_seconds / scale,
    )


def _podcast_names(episodes: int, podcasts: int, order: str) -> list[str]:
    """`show{p}/ep{i}.wav`, as many per podcast as fit (the remainder to the first ones), in the
    order they are added: a podcast after another (`grouped`), or round robin (`interleaved`)."""
    per = [episodes // podcasts + (1 if p < episodes % podcasts else 0) for p in range(podcasts)]
    if order == "grouped":
        return [f"show{p}/ep{i}.wav" for p in range(podcasts) for i in range(per[p])]
    return [f"show{p}/ep{i}.wav" for i in range(max(per)) for p in range(podcasts) if i < per[p]]


def _run_all(database: str, ia: WaybackDouble, limits: ArchiveLimits, args: argparse.Namespace,
             seconds: float) -> tuple[list[dict], float, float]:
    """`--runs` run loops in separate processes until every episode is archived (or `seconds`
    pass); returns what each did, and when they started and ended (wall clock)."""
    start = time.time() + 4  # every process starts its loop at the same moment, once spawned
    context = multiprocessing.get_context("spawn")
    with context.Pool(args.runs) as pool:
        results = [pool.apply_async(_run_loop, (database, ia.base_url, f"run-{i}", limits, args.batch,
                                                seconds, start, True)) for i in range(args.runs)]
        done = [r.get(timeout=seconds + 120) for r in results]
    return done, start, time.time()


def _outcome(database: str, start: float) -> dict:
    """Archived (new and reused), still waiting, and when the last episode was archived."""
    engine = make_engine(database)
    t = episodes_table
    with engine.connect() as connection:
        rows = connection.execute(
            select(t.c.archive_reused, func.count(), func.max(t.c.archived_at))
            .where(t.c.archived_at.is_not(None)).group_by(t.c.archive_reused)
        ).all()
        waiting = connection.execute(
            select(t.c.error_code, func.count()).where(t.c.status.in_([s.value for s in ARCHIVE_WAITING]))
            .group_by(t.c.error_code)
        ).all()
    engine.dispose()
    last = max((row[2] for row in rows), default=None)
    began = datetime.fromtimestamp(start, UTC).replace(tzinfo=None)
    return {
        "archived_new": sum(n for reused, n, _ in rows if not reused),
        "archived_reused": sum(n for reused, n, _ in rows if reused),
        "still_waiting": {code or "-": n for code, n in waiting},
        "seconds_to_last_archived": round((last - began).total_seconds(), 1) if last else None,
    }


def realistic_rate(args: argparse.Namespace, folder: Path) -> dict:
    """1,000 episodes of 20 podcasts, a third captured already, through `--runs` run loops."""
    scale = args.scale
    limits = _scaled_limits(scale)
    names = _podcast_names(args.episodes, args.podcasts, args.order)
    captured = {name for j, name in enumerate(names) if j % 3 == 2}
    with (_double(args) as ia,
          AdHost({n: WAV for n in names}) as origin,
          _database(folder, "realistic", args.database_url) as database):
        for name in captured:
            ia.add_capture(origin.url(name), WAV, datetime.now(UTC) - timedelta(days=30))
        _fill(database, [origin.url(n) for n in names])
        started_utc = datetime.now(UTC).replace(tzinfo=None)
        runs, start, end = _run_all(database, ia, limits, args, args.seconds)
        outcome = _outcome(database, start)
        submissions = sorted(ia.submissions)
        sustained = _sustained(submissions)
        lookups = len(ia.lookup_times)
        archived = outcome["archived_new"] + outcome["archived_reused"]
        return {
            "episodes": len(names),
            "podcasts": args.podcasts,
            "order": args.order,
            "already_captured": len(captured),
            "runs": args.runs,
            "database": "postgresql" if "postgresql" in database else "sqlite",
            "captures_per_minute_configured": limits.per_minute,
            "lookups_per_minute_configured": limits.lookups_per_minute,
            "lookup_429_above_per_minute": ia.lookups_per_minute,
            "replay_lag_seconds": round(args.replay_lag / scale, 3),
            "poll_seconds": round(limits.poll_seconds, 3),
            **outcome,
            "archived": archived,
            "submissions": len(submissions),
            "submissions_by_run": [r["submitted"] for r in runs],
            "stage_runs": sum(r["runs"] for r in runs),
            "outcomes": dict(sum((Counter(r["counts"]) for r in runs), Counter())),
            # None: the submissions fit in one window (no whole minute while work waited)
            "submit_rate_per_minute": None if math.isnan(sustained) else round(sustained, 2),
            "submit_rate_ratio": None if math.isnan(sustained) else round(sustained / limits.per_minute, 3),
            "max_submissions_in_60s": ia.max_in_window(60.0),
            "lookups": lookups,
            "lookups_by_kind": _lookup_kinds(ia.cdx_queries, started_utc),
            "max_lookups_in_60s": ia.max_lookups_in_window(60.0),
            "max_lookups_ratio": round(ia.max_lookups_in_window(60.0) / limits.lookups_per_minute, 3),
            "lookups_refused": ia.lookups_refused,
            "requests_during_lookup_pause": ia.requests_during_lookup_pause,
            "lookups_per_episode": round(lookups / len(names), 4),
            # when the time ran out first, per episode archived (and listing checks per new capture)
            "lookups_per_archived_episode": round(lookups / archived, 4) if archived else None,
            "listed_checks_per_new_capture": round(
                sum(n for k, n in _lookup_kinds(ia.cdx_queries, started_utc).items() if k.startswith("listed"))
                / outcome["archived_new"], 3) if outcome["archived_new"] else None,
            "wall_seconds": round(end - start, 1),
        }


def realistic_reuse(args: argparse.Namespace, folder: Path, layout: str) -> dict:
    """Every episode captured already; `layout` "folders": the podcasts' folders, "root": each
    episode at the host's root (no folder to share, so one lookup each)."""
    scale = args.scale
    limits = _scaled_limits(scale)
    if layout == "folders":
        paths = [f"/audio/{n}" for n in _podcast_names(args.episodes, args.podcasts, args.order)]
    else:
        paths = [f"/ep{i}.wav" for i in range(args.episodes)]
    with (_double(args) as ia,
          AdHost({}) as origin,  # never fetched: every episode is captured already
          _database(folder, f"reuse_{layout}", args.database_url) as database):
        urls = [origin.server.url(p) for p in paths]
        for url in urls:
            ia.add_capture(url, WAV, datetime.now(UTC) - timedelta(days=30))
        _fill(database, urls)
        _, start, end = _run_all(database, ia, limits, args, args.seconds)
        outcome = _outcome(database, start)
        lookups = len(ia.lookup_times)
        per_episode = lookups / len(urls)
        seconds = outcome["seconds_to_last_archived"] or (end - start)
        measured = outcome["archived_reused"] / (seconds / 60)
        # At the real limit the store's window lets 24 lookups out per 61 s (1 s of margin): the
        # lookup bound, unless this machine's own pace (measured, with `scale` times the lookups
        # allowed) is slower.
        per_minute = REAL_LOOKUPS_PER_MINUTE * 60 / (60 + WINDOW_MARGIN_SECONDS)
        lookup_bound = per_minute / per_episode if per_episode else float("inf")
        real_rate = min(lookup_bound, measured)
        minutes = BACKLOG / real_rate
        return {
            "layout": layout,
            "episodes": len(urls),
            "folders": len({p.rpartition("/")[0] for p in paths}) if layout == "folders" else 0,
            **outcome,
            "submissions": len(ia.submissions),
            "lookups": lookups,
            "lookups_per_episode": round(per_episode, 4),
            "max_lookups_in_60s": ia.max_lookups_in_window(60.0),
            "lookups_per_minute_configured": limits.lookups_per_minute,
            "lookups_refused": ia.lookups_refused,
            "requests_during_lookup_pause": ia.requests_during_lookup_pause,
            "episodes_per_minute_measured": round(measured, 1),
            "episodes_per_minute_measured_over_scale": round(measured / scale, 1),
            "episodes_per_minute_lookup_bound_at_24": round(lookup_bound, 1),
            "episodes_per_minute_at_24": round(real_rate, 1),
            "bound_by": "lookups" if lookup_bound <= measured else "this machine (store and loopback)",
            "backlog_1M_minutes_at_24": round(minutes),
            "backlog_1M_days_at_24": round(minutes / 1440, 2),
            "wall_seconds": round(end - start, 1),
        }


def realistic(args: argparse.Namespace) -> dict:
    _memoize_cdx_digests()
    parts = args.only.split(",") if args.only else list(PARTS)
    with tempfile.TemporaryDirectory() as folder:
        started = time.time()
        out: dict = {
            "scale": args.scale,
            "scale_note": (f"time runs {args.scale:g}x faster: captures {REAL_CAPTURES_PER_MINUTE:g}/min, "
                           f"lookups {REAL_LOOKUPS_PER_MINUTE:g}/min (429 above {REAL_LOOKUP_LIMIT}/min) and "
                           f"every duration of the stage scaled by it; the 60 s windows stay"),
            "limits_scaled": asdict(_scaled_limits(args.scale)),
            "replay_lag_seconds_real": args.replay_lag,
        }
        if "realistic" in parts:
            out["realistic"] = realistic_rate(args, Path(folder))
        reuse_parts = {layout: realistic_reuse(args, Path(folder), layout)
                       for layout in ("folders", "root") if layout in parts}
        if reuse_parts:
            out["reuse_at_lookup_limit"] = reuse_parts
        out["wall_seconds"] = round(time.time() - started, 1)
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--realistic", action="store_true",
                        help="the realistic double, IA's limits scaled by --scale (see the module docstring)")
    parser.add_argument("--episodes", type=int, default=None, help="default 200 (1,000 with --realistic)")
    parser.add_argument("--per-minute", type=float, default=60.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=50, help="ARCHIVE_BATCH_SIZE of each run")
    parser.add_argument("--seconds", type=float, default=None,
                        help="how long the rate part runs (150); with --realistic the most each part may take (400)")
    parser.add_argument("--podcasts", type=int, default=20, help="--realistic: podcasts (one folder each)")
    parser.add_argument("--scale", type=float, default=30.0, help="--realistic: how much faster time runs")
    parser.add_argument("--replay-lag", type=float, default=15.0,
                        help="--realistic: seconds (real, before scaling) until CDX lists a fresh capture")
    parser.add_argument("--order", choices=["grouped", "interleaved"], default="grouped",
                        help="--realistic: episodes added a podcast after another, or round robin")
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL"),
                        help="--realistic: a PostgreSQL server to make fresh databases on (default: SQLite files)")
    parser.add_argument("--only", default=None, help=f"--realistic: some of {','.join(PARTS)} (default: all)")
    args = parser.parse_args()
    if args.realistic:
        args.episodes = args.episodes or 1000
        args.seconds = args.seconds or 400.0
        print(json.dumps(realistic(args), indent=2))
        return
    args.episodes = args.episodes or 200
    args.seconds = args.seconds or 150.0
    print(json.dumps({"reuse": reuse(args), "rate": rate(args)}, indent=2))


if __name__ == "__main__":
    main()
