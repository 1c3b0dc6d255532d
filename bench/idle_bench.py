"""What an idle manager costs: Prefect database growth, flow runs and CPU while nothing waits.

Sets up what an operator leaves running (issue 23): `ppcli manager` with auth on and one
`ppcli worker -m URL -p PASSWORD` in another directory (no database URL, no password in its
environment), both on this machine over loopback, the tiny CPU models, the loopback Internet
Archive (`tests/wayback.py`) in front of an ad-splicing podcast host, `ARCHIVE_MODE=required`.
Prefect's own settings stay at their defaults (worker polling, scheduler loop), as an operator
would leave them. It creates `--episodes` episodes with `ppcli create`, waits until all are
completed, lets the manager settle for a minute, then measures `--minutes` of idleness:

- Prefect's database growth: the SQLite file with its -wal (or `pg_database_size`), also the
  bytes SQLite actually uses (pages minus the free list), per table where it can tell, and the
  row counts of the tables that grow (events, event_resources, flow_run, flow_run_state,
  task_run, log);
- flow runs created in the window (new ids in `flow_run`, which includes the runs the
  scheduler creates ahead of time, in bursts) and flow runs started in it, by deployment; the
  larger of the two is the figure held to the target;
- the events written in the window, by event name (what writes them);
- CPU seconds of the manager's process tree (server, CPU worker, its flow runs; also split
  into the server and the CPU worker with its runs) and of the worker's tree (user + system
  from /proc, children that exited and were reaped included);

all scaled to an hour. Then it creates one more episode and times `ppcli create` to the
episode being archived, claimed by the worker (leaving `pending`) and completed.

Targets (issue 23): growth ≤ 2 MB per idle hour, ≤ 2 flow runs per idle hour, ≤ 60 CPU seconds
per idle hour (each tree), ≤ 60 s from `ppcli create` to the claim. CPU seconds are the
processes' own CPU time, so they hold on a shared machine; latencies are wall-clock, and on a
busy machine noisy.

Output: the summary on stdout; with `--json`, the figures as JSON on stdout and the summary
on stderr with the progress lines.

With `--processed N` it measures no idle period: N episodes are added at once (as `ppcli
import` adds them; `--audio-seconds` of the fixture's speech each, distinct bytes) and
processed, and it reports Prefect's database and the episode store before and after (file and
pages in use), the bytes per processed episode, the largest tables and the Prefect rows.

Usage (from the repository root, the project's venv):
    .venv/bin/python bench/idle_bench.py [--episodes 10] [--minutes 30] [--postgres] [--json] [--keep]
    .venv/bin/python bench/idle_bench.py --processed 1000 [--audio-seconds 2] [--batch-size 16]
        [--archive-mode off] [--postgres] [--json]

`--postgres` puts both databases on PostgreSQL (`PODCASTPILE_TEST_POSTGRES_URL`, or an
embedded server, as the tests do). `--keep` keeps the working directory (logs, databases).
Every process it starts is stopped at the end, on an error and on Ctrl+C.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import podcastpile
from podcastpile.cli.stopping import children, descendants
from podcastpile.store import EpisodeStore, make_engine, migrate
from tests import postgres
from tests.manager import PPCLI, Manager
from tests.pipeline.conftest import FIXTURES, pipeline_environment
from tests.prefect_server import free_port
from tests.processes import stop_tree
from tests.wayback import AdHost, WaybackDouble, with_ad

PASSWORD = "correct horse battery"
TABLES = ("events", "event_resources", "flow_run", "flow_run_state", "task_run", "log")
TARGETS = {"db_growth_mb_per_hour": 2.0, "flow_runs_per_hour": 2.0, "cpu_seconds_per_hour": 60.0,
           "claim_seconds": 60.0}
# An episode is claimed once it has left every status before the worker's.
UNCLAIMED = ("archive_pending", "archiving", "pending")
MB = 1_000_000
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def say(text: str) -> None:
    """Progress on stderr, so stdout stays the report (or the JSON)."""
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def cpu_seconds(pid: int) -> float:
    """utime + stime + cutime + cstime of one process (0 once it is gone), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    # Fields 14-17 of proc(5); the split starts at field 3 (the state).
    return sum(int(value) for value in fields[11:15]) / CLOCK_TICKS


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of `pid` and its descendants, reaped children included.

    A reaped child's time moves into its parent's cutime/cstime, so summing each live
    process's own and children's times counts every process once, exited or not."""
    return sum(cpu_seconds(each) for each in (pid, *descendants(pid)))


def manager_parts(pid: int) -> dict[str, int]:
    """The manager's two children by what they run, so its CPU time can be split between them."""
    parts = {}
    for child in children(pid):
        with contextlib.suppress(OSError):
            command = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            if "deployments.server" in command:
                parts["manager: Prefect server"] = child
            elif " worker " in command:
                parts["manager: CPU worker + its flow runs"] = child
    return parts


class PrefectDatabase:
    """Prefect's database read from the side (not through the server): size, rows, runs, events."""

    def __init__(self, sqlite_path: Path | None = None, postgres_url: str | None = None) -> None:
        self.sqlite_path, self.postgres_url = sqlite_path, postgres_url

    @contextlib.contextmanager
    def _cursor(self) -> Iterator[object]:
        if self.sqlite_path is not None:
            # Read-only, so the bench never takes the write lock the server needs.
            connection = sqlite3.connect(f"file:{self.sqlite_path}?mode=ro", uri=True, timeout=30)
            try:
                yield connection.cursor()
            finally:
                connection.close()
        else:
            import psycopg

            with psycopg.connect(postgres._libpq(self.postgres_url), autocommit=True) as connection:
                yield connection.cursor()

    def _rows(self, sql: str) -> list[tuple]:
        with self._cursor() as cursor:
            cursor.execute(sql)  # type: ignore[attr-defined]
            return list(cursor.fetchall())  # type: ignore[attr-defined]

    def size_bytes(self) -> int:
        """What the database takes on disk: the file and its write-ahead log, or the database."""
        if self.sqlite_path is not None:
            return sum(path.stat().st_size for path in (self.sqlite_path, Path(f"{self.sqlite_path}-wal"))
                       if path.exists())
        return int(self._rows("SELECT pg_database_size(current_database())")[0][0])

    def used_bytes(self) -> int | None:
        """SQLite's pages in use (the file never shrinks, and reuses freed pages first)."""
        if self.sqlite_path is None:
            return None
        (pages,), = self._rows("PRAGMA page_count")
        (free,), = self._rows("PRAGMA freelist_count")
        (size,), = self._rows("PRAGMA page_size")
        return (pages - free) * size

    def table_bytes(self) -> dict[str, int]:
        """Bytes of each watched table with its indexes (empty where SQLite lacks dbstat)."""
        if self.sqlite_path is None:
            return {table: int(self._rows(f"SELECT pg_total_relation_size('{table}')")[0][0]) for table in TABLES}
        try:
            rows = self._rows("SELECT m.tbl_name, SUM(d.pgsize) FROM dbstat d JOIN sqlite_master m "
                              "ON m.name = d.name GROUP BY m.tbl_name")
        except sqlite3.OperationalError:
            return {}
        sizes = dict(rows)
        return {table: int(sizes.get(table, 0)) for table in TABLES}

    def largest_tables(self, most: int = 8) -> dict[str, int]:
        """The `most` largest tables, bytes with their indexes (empty where SQLite lacks dbstat)."""
        if self.sqlite_path is None:
            rows = self._rows("SELECT tablename, pg_total_relation_size(quote_ident(tablename)) FROM pg_tables "
                              "WHERE schemaname = current_schema()")
        else:
            try:
                rows = self._rows("SELECT m.tbl_name, SUM(d.pgsize) FROM dbstat d JOIN sqlite_master m "
                                  "ON m.name = d.name GROUP BY m.tbl_name")
            except sqlite3.OperationalError:
                return {}
        ordered = sorted(((str(name), int(size)) for name, size in rows), key=lambda item: -item[1])
        return dict(ordered[:most])

    def row_counts(self) -> dict[str, int]:
        return {table: int(self._rows(f"SELECT count(*) FROM {table}")[0][0]) for table in TABLES}

    def flow_runs(self) -> dict[str, tuple[str, bool]]:
        """Every flow run: id -> (deployment name, whether it has started)."""
        rows = self._rows("SELECT r.id, coalesce(d.name, '(no deployment)'), r.start_time IS NOT NULL "
                          "FROM flow_run r LEFT JOIN deployment d ON d.id = r.deployment_id")
        return {str(run_id): (name, bool(started)) for run_id, name, started in rows}

    def events_by_name(self) -> dict[str, int]:
        return {name: int(count) for name, count in self._rows("SELECT event, count(*) FROM events GROUP BY event")}


@dataclass
class Snapshot:
    """What the idle period is measured between."""

    at: float
    size: int
    used: int | None
    table_bytes: dict[str, int]
    rows: dict[str, int]
    runs: dict[str, tuple[str, bool]]
    events: dict[str, int]
    cpu: dict[str, float] = field(default_factory=dict)

    @classmethod
    def take(cls, database: PrefectDatabase, trees: dict[str, int]) -> Snapshot:
        return cls(at=time.monotonic(), size=database.size_bytes(), used=database.used_bytes(),
                   table_bytes=database.table_bytes(), rows=database.row_counts(), runs=database.flow_runs(),
                   events=database.events_by_name(),
                   cpu={name: tree_cpu_seconds(pid) for name, pid in trees.items()})


def idle_figures(start: Snapshot, end: Snapshot) -> dict:
    """The idle period's figures, each also scaled to an hour."""
    hours = (end.at - start.at) / 3600

    def per_hour(value: float) -> float:
        return round(value / hours, 2)

    created = [end.runs[run_id][0] for run_id in end.runs.keys() - start.runs.keys()]
    started = [name for run_id, (name, began) in end.runs.items()
               if began and not start.runs.get(run_id, ("", False))[1]]
    by_deployment: dict[str, dict[str, int]] = {}
    for kind, names in (("created", created), ("started", started)):
        for name in names:
            by_deployment.setdefault(name, {"created": 0, "started": 0})[kind] += 1
    events = {name: count - start.events.get(name, 0) for name, count in end.events.items()}
    figures = {
        "minutes": round(hours * 60, 2),
        "prefect_db_bytes": {"start": start.size, "end": end.size},
        "db_growth_mb_per_hour": per_hour((end.size - start.size) / MB),
        "rows": {table: {"start": start.rows[table], "end": end.rows[table],
                         "per_hour": per_hour(end.rows[table] - start.rows[table])} for table in TABLES},
        "flow_runs_created": len(created),
        "flow_runs_created_per_hour": per_hour(len(created)),
        "flow_runs_started": len(started),
        "flow_runs_started_per_hour": per_hour(len(started)),
        # The scheduler creates runs ahead of time, in bursts: the larger of the two is the rate.
        "flow_runs_per_hour": per_hour(max(len(created), len(started))),
        "flow_runs_by_deployment": by_deployment,
        "events_by_name": dict(sorted(((n, c) for n, c in events.items() if c), key=lambda item: -item[1])),
        "cpu_seconds": {name: round(end.cpu[name] - start.cpu[name], 2) for name in end.cpu},
        "cpu_seconds_per_hour": {name: per_hour(end.cpu[name] - start.cpu[name]) for name in end.cpu},
    }
    if start.used is not None and end.used is not None:
        figures["used_growth_mb_per_hour"] = per_hour((end.used - start.used) / MB)
    if start.table_bytes and end.table_bytes:
        figures["table_growth_mb_per_hour"] = {
            table: per_hour((end.table_bytes[table] - start.table_bytes[table]) / MB) for table in TABLES}
    return figures


def create_episode(url: str, env: dict[str, str], cwd: Path) -> None:
    """`ppcli create URL --language en`, as the operator adds an episode."""
    created = subprocess.run([*PPCLI, "create", url, "--language", "en"], cwd=cwd, env=env,
                             capture_output=True, text=True, timeout=180, check=False)
    if created.returncode != 0:
        raise SystemExit(f"ppcli create failed: {created.stderr[-2000:]}")


def wait_completed(store: EpisodeStore, count: int, timeout: float, processes: dict[str, subprocess.Popen],
                   progress: bool = False) -> None:
    """Until `count` episodes are completed; a failure, a dead process or `timeout` ends the bench."""
    deadline = time.monotonic() + timeout
    said = time.monotonic()
    while True:
        rows = store.list(limit=None)
        statuses = [row.status for row in rows]
        if statuses.count("completed") >= count:
            return
        if progress and time.monotonic() - said > 60:
            said = time.monotonic()
            say(f"{statuses.count('completed')} of {count} completed")
        failed = [(row.url, row.status, row.error) for row in rows
                  if row.status in ("failed", "duplicate")]
        if failed:
            raise SystemExit(f"episodes did not complete: {failed}")
        dead = [name for name, process in processes.items() if process.poll() is not None]
        if dead:
            raise SystemExit(f"{', '.join(dead)} exited")
        if time.monotonic() > deadline:
            raise SystemExit(f"not completed within {timeout:g} s: {sorted(set(statuses))}")
        time.sleep(2)


def time_one_episode(url: str, env: dict[str, str], cwd: Path, store: EpisodeStore, timeout: float) -> dict:
    """Seconds from `ppcli create` (called) to the episode archived, claimed and completed."""
    started = time.monotonic()
    create_episode(url, env, cwd)
    marks: dict[str, float] = {"create_returned_seconds": time.monotonic() - started}
    while time.monotonic() - started < timeout:
        # matched by the file's name: the store may normalise the URL it was given
        name = url.rsplit("/", 1)[1]
        status = next((row.status for row in store.list(limit=None) if row.url.endswith(f"/{name}")), None)
        elapsed = time.monotonic() - started
        if status not in ("archive_pending", "archiving", None):
            marks.setdefault("archived_seconds", elapsed)
        if status not in (*UNCLAIMED, None):
            marks.setdefault("claimed_seconds", elapsed)
        if status == "completed":
            marks["completed_seconds"] = elapsed
            break
        if status in ("failed", "duplicate"):
            raise SystemExit(f"the late episode ended {status}")
        time.sleep(0.5)
    return {name: round(value, 1) for name, value in marks.items()}


def environments(workdir: Path, episodes_url: str, prefect_url: str | None, ia: WaybackDouble,
                 archive_mode: str = "required") -> tuple[dict, dict]:
    """The manager's environment (as tests/service/test_manager.py builds it, without its faster
    Prefect polling) and the GPU machine's (no database URL, no password, its own Prefect home)."""
    manager = {
        **os.environ,
        **pipeline_environment(episodes_url),
        "ARCHIVE_MODE": archive_mode, "WAYBACK_URL": ia.base_url, "ARCHIVE_API_URL": ia.base_url,
        "SPN_POLL_SECONDS": "1", "IA_ACCESS_KEY": "AK", "IA_SECRET_KEY": "SK",
        "DATASET_DIR": str(workdir / "dataset"),
        "PREFECT_HOME": str(workdir / "prefect-home"),
        "WORKER_AUTH_ENABLED": "true", "WORKER_PASSWORD": PASSWORD,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    for name in ("PREFECT_API_URL", "PREFECT_API_AUTH_STRING", "PREFECT_API_DATABASE_CONNECTION_URL"):
        manager.pop(name, None)
    if prefect_url:
        manager["PREFECT_API_DATABASE_CONNECTION_URL"] = prefect_url.replace("+psycopg", "+asyncpg")
    gpu = {key: value for key, value in manager.items()
           if key not in ("DATABASE_URL", "WORKER_PASSWORD", "WORKER_AUTH_ENABLED", "PREFECT_API_DATABASE_CONNECTION_URL")}
    gpu["PREFECT_HOME"] = str(workdir / "gpu-machine-home")
    return manager, gpu


def short_wav(seconds: float) -> bytes:
    """The first `seconds` of the fixture conversation as a WAV file (--processed: many episodes
    through the tiny models in minutes)."""
    import io

    import soundfile

    samples, rate = soundfile.read(FIXTURES / "conversation.wav", dtype="int16")
    out = io.BytesIO()
    soundfile.write(out, samples[: int(seconds * rate)], rate, format="WAV", subtype="PCM_16")
    return out.getvalue()


def directory_bytes(path: Path) -> int:
    """Bytes of the files under `path` (0 if it is not there)."""
    return sum(each.stat().st_size for each in path.rglob("*") if each.is_file()) if path.exists() else 0


def run(args: argparse.Namespace, workdir: Path) -> dict:
    """Start everything, process the episodes, then measure the idle period and the late
    episode, or (--processed N) the databases after N processed episodes."""
    count = args.processed or args.episodes + 1
    wav = short_wav(args.audio_seconds) if args.processed else (FIXTURES / "conversation.wav").read_bytes()
    # Each file its own bytes: the same audio twice would be processed once, the rest duplicates.
    files = {f"ep{i}.wav": with_ad(wav, f"episode {i}".encode()) for i in range(count)}
    with contextlib.ExitStack() as stack:
        ia = stack.enter_context(WaybackDouble(pending_polls=1))
        origin = stack.enter_context(AdHost(files))
        episodes_url = f"sqlite:///{workdir / 'episodes.db'}"
        prefect_url = None
        if args.postgres:
            episodes_url = stack.enter_context(postgres.fresh_database("idle_episodes"))
            prefect_url = stack.enter_context(postgres.fresh_database("idle_prefect"))
        manager_env, gpu_env = environments(workdir, episodes_url, prefect_url, ia, args.archive_mode)
        if args.batch_size:  # the tests' 8 (pipeline_environment) unless asked
            manager_env["BATCH_SIZE"] = gpu_env["BATCH_SIZE"] = str(args.batch_size)
        database = (PrefectDatabase(postgres_url=prefect_url) if prefect_url
                    else PrefectDatabase(sqlite_path=workdir / "prefect-home" / "prefect.db"))

        say("starting the manager")
        manager = Manager(manager_env, workdir / "manager.log", free_port())
        stack.callback(lambda: (say("stopping the manager"), stop_tree(manager.process, grace=90)))
        manager.wait_ready()
        gpu_dir = workdir / "gpu-machine"
        gpu_dir.mkdir()
        say("starting the worker")
        worker_log = stack.enter_context((workdir / "worker.log").open("w"))
        worker = subprocess.Popen([*PPCLI, "worker", "-m", manager.url, "-p", PASSWORD, "-i", "bench-gpu"],
                                  cwd=gpu_dir, env=gpu_env, stdout=worker_log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
        # Callbacks run last-in first-out: the worker stops before the manager, as an operator stops them.
        stack.callback(lambda: (say("stopping the worker"), stop_tree(worker, grace=90)))
        processes = {"the manager": manager.process, "the worker": worker}

        engine = make_engine(episodes_url)
        stack.callback(engine.dispose)
        migrate(engine)
        # New episodes wait for a capture unless ARCHIVE_MODE=off, as the manager's settings say.
        store = EpisodeStore(engine, archive_required=args.archive_mode != "off")
        if args.processed:
            episodes_db = (PrefectDatabase(postgres_url=episodes_url) if args.postgres
                           else PrefectDatabase(sqlite_path=workdir / "episodes.db"))
            return processed_report(args, workdir, store, database, episodes_db, origin, processes)
        say(f"creating {args.episodes} episodes")
        began = time.monotonic()
        for i in range(args.episodes):
            create_episode(origin.url(f"ep{i}.wav"), manager_env, workdir)
        wait_completed(store, args.episodes, args.timeout, processes)
        processed = time.monotonic() - began
        say(f"{args.episodes} completed in {processed:.0f} s; settling for {args.settle:g} s")
        time.sleep(args.settle)

        trees = {"manager": manager.process.pid, **manager_parts(manager.process.pid), "worker": worker.pid}
        load = {"idle_start": os.getloadavg()[0]}
        start = Snapshot.take(database, trees)
        say(f"idle for {args.minutes:g} min")
        for minute in range(int(args.minutes * 60) // 60):
            time.sleep(60)
            say(f"idle minute {minute + 1}: Prefect database {database.size_bytes() / MB:.2f} MB")
        time.sleep(args.minutes * 60 % 60)
        end = Snapshot.take(database, trees)
        load["idle_end"] = os.getloadavg()[0]
        dead = [name for name, process in processes.items() if process.poll() is not None]
        if dead:
            raise SystemExit(f"{', '.join(dead)} exited during the idle period")

        say("one more episode after the idle period")
        late = time_one_episode(origin.url(f"ep{args.episodes}.wav"), manager_env, workdir, store, args.timeout)
        return {
            "code": str(Path(podcastpile.__file__).parent),
            "prefect_database": "postgresql" if prefect_url else "sqlite",
            "episodes": args.episodes,
            "processing_seconds": round(processed, 1),
            "settle_seconds": args.settle,
            # Wall-clock figures (processing, the late episode) swing with the machine's load.
            "cpus": os.cpu_count(),
            "load_average_1min": {name: round(value, 2) for name, value in load.items()},
            "idle": idle_figures(start, end),
            "after_idle": late,
            "targets": TARGETS,
        }


def processed_report(args: argparse.Namespace, workdir: Path, store: EpisodeStore, database: PrefectDatabase,
                     episodes_db: PrefectDatabase, origin: AdHost, processes: dict[str, subprocess.Popen]) -> dict:
    """--processed N: both databases' size once the manager is set up and again after N episodes
    were added (at once, as `ppcli import` adds them) and processed, with the cost per episode."""
    from podcastpile.store.records import NewEpisode

    before = {"prefect": database.size_bytes(), "prefect_used": database.used_bytes(),
              "store": episodes_db.size_bytes(), "store_used": episodes_db.used_bytes()}
    say(f"adding {args.processed} episodes ({args.audio_seconds:g} s of audio each, ARCHIVE_MODE={args.archive_mode})")
    began = time.monotonic()
    store.add(NewEpisode.checked(origin.url(f"ep{i}.wav"), language="en") for i in range(args.processed))
    wait_completed(store, args.processed, args.timeout, processes, progress=True)
    processed = time.monotonic() - began
    say(f"{args.processed} completed in {processed:.0f} s; settling for {args.settle:g} s")
    time.sleep(args.settle)  # the event persister and the task-run recorder flush every few seconds
    after = {"prefect": database.size_bytes(), "prefect_used": database.used_bytes(),
             "store": episodes_db.size_bytes(), "store_used": episodes_db.used_bytes()}

    def per_episode(name: str) -> int | None:
        if before[name] is None or after[name] is None:
            return None
        return round((after[name] - before[name]) / args.processed)

    return {
        "mode": "processed",
        "code": str(Path(podcastpile.__file__).parent),
        "prefect_database": "postgresql" if args.postgres else "sqlite",
        "episodes": args.processed, "audio_seconds": args.audio_seconds, "archive_mode": args.archive_mode,
        "batch_size": args.batch_size or 8,
        "processing_seconds": round(processed, 1),
        "cpus": os.cpu_count(), "load_average_1min": round(os.getloadavg()[0], 2),
        "bytes": {"before": before, "after": after},
        "bytes_per_episode": {name: per_episode(name) for name in before},
        "prefect_largest_tables": database.largest_tables(),
        "prefect_rows": database.row_counts(),
        "prefect_flow_runs": len(database.flow_runs()),
        "store_largest_tables": episodes_db.largest_tables(4),
        "dataset_bytes": directory_bytes(workdir / "dataset"),
    }


def processed_summary(report: dict) -> str:
    """--processed N: the report for a person."""
    size, each = report["bytes"], report["bytes_per_episode"]
    lines = [
        (f"{report['episodes']} episodes ({report['audio_seconds']:g} s of audio each, ARCHIVE_MODE="
         f"{report['archive_mode']}, BATCH_SIZE={report['batch_size']}) processed in {report['processing_seconds']:.0f} s; Prefect database on "
         f"{report['prefect_database']}; {report['cpus']} CPUs, load average {report['load_average_1min']:.1f} at the end"),
        f"code: {report['code']}",
    ]
    for name, label in (("prefect", "Prefect database"), ("prefect_used", "  pages in use"),
                        ("store", "episode store"), ("store_used", "  pages in use")):
        if size["after"][name] is not None:
            lines.append(f"{label:<18} {size['before'][name] / MB:9.2f} -> {size['after'][name] / MB:9.2f} MB, "
                         f"{each[name]:>7} bytes per episode")
    lines.append(f"Prefect: {report['prefect_flow_runs']} flow runs; rows: "
                 + ", ".join(f"{table} {rows}" for table, rows in report["prefect_rows"].items()))
    lines.append("Prefect's largest tables (with indexes):")
    lines += [f"  {table:<28} {size_ / MB:9.2f} MB" for table, size_ in report["prefect_largest_tables"].items()]
    lines.append("the episode store's largest tables (with indexes):")
    lines += [f"  {table:<28} {size_ / MB:9.2f} MB" for table, size_ in report["store_largest_tables"].items()]
    lines.append(f"dataset (Parquet shards): {report['dataset_bytes'] / MB:.2f} MB")
    return "\n".join(lines)


def verdicts(report: dict) -> dict[str, bool]:
    """Whether each target is met (CPU: both trees)."""
    idle, late = report["idle"], report["after_idle"]
    return {
        "db_growth": idle["db_growth_mb_per_hour"] <= TARGETS["db_growth_mb_per_hour"],
        "flow_runs": idle["flow_runs_per_hour"] <= TARGETS["flow_runs_per_hour"],
        "cpu": all(idle["cpu_seconds_per_hour"][tree] <= TARGETS["cpu_seconds_per_hour"] for tree in ("manager", "worker")),
        "claim_latency": late.get("claimed_seconds", float("inf")) <= TARGETS["claim_seconds"],
    }


def summary(report: dict) -> str:
    """The report for a person: each figure next to its target."""
    idle, late, met = report["idle"], report["after_idle"], report["met"]

    def mark(ok: bool) -> str:
        return "met" if ok else "NOT met"

    lines = [
        (f"Idle manager + one worker: Prefect database on {report['prefect_database']}, {report['episodes']} "
         f"episodes processed in {report['processing_seconds']:.0f} s, then {idle['minutes']:g} idle minutes "
         f"measured (after {report['settle_seconds']:g} s settling); figures per idle hour are extrapolated "
         "linearly."),
        (f"code: {report['code']}; {report['cpus']} CPUs, load average "
         f"{report['load_average_1min']['idle_start']:.1f} at the idle start, "
         f"{report['load_average_1min']['idle_end']:.1f} at its end"),
        "",
        (f"Prefect database growth  {idle['db_growth_mb_per_hour']:9.2f} MB/h   (target <= "
         f"{TARGETS['db_growth_mb_per_hour']:g}: {mark(met['db_growth'])}); "
         f"{idle['prefect_db_bytes']['start'] / MB:.2f} -> {idle['prefect_db_bytes']['end'] / MB:.2f} MB"),
    ]
    if "used_growth_mb_per_hour" in idle:
        lines.append(f"  pages in use            {idle['used_growth_mb_per_hour']:9.2f} MB/h")
    for table, growth in idle.get("table_growth_mb_per_hour", {}).items():
        lines.append(f"  {table:<22} {growth:9.2f} MB/h")
    lines.append("rows (start -> end, per hour):")
    for table, rows in idle["rows"].items():
        lines.append(f"  {table:<22} {rows['start']:>8} -> {rows['end']:>8}   {rows['per_hour']:>9.1f}/h")
    lines += [
        (f"flow runs                {idle['flow_runs_per_hour']:9.1f} /h   (target <= "
         f"{TARGETS['flow_runs_per_hour']:g}: {mark(met['flow_runs'])}); in the window {idle['flow_runs_created']} "
         f"created ({idle['flow_runs_created_per_hour']:.1f}/h), {idle['flow_runs_started']} started "
         f"({idle['flow_runs_started_per_hour']:.1f}/h)"),
    ]
    for name, counts in sorted(idle["flow_runs_by_deployment"].items()):
        lines.append(f"  {name:<22} created {counts['created']:>4}, started {counts['started']:>4}")
    lines.append("events written in the window, by name:")
    for name, count in list(idle["events_by_name"].items())[:12]:
        lines.append(f"  {name:<45} {count:>6}")
    for name, seconds in idle["cpu_seconds_per_hour"].items():
        if name in ("manager", "worker"):
            lines.append(f"CPU, {name} tree{'':<{13 - len(name)}} {seconds:9.1f} s/h    (target <= "
                         f"{TARGETS['cpu_seconds_per_hour']:g}); {idle['cpu_seconds'][name]:.1f} s in the window")
        else:  # a part of the manager's tree
            lines.append(f"  {name:<36} {seconds:9.1f} s/h")
    lines.append(f"  CPU target: {mark(met['cpu'])}")
    lines += [
        "episode created after the idle period (wall clock, noisy on a shared machine):",
        (f"  archived {late.get('archived_seconds', '-')} s, claimed {late.get('claimed_seconds', '-')} s "
         f"(target <= {TARGETS['claim_seconds']:g}: {mark(met['claim_latency'])}), completed "
         f"{late.get('completed_seconds', '-')} s after `ppcli create` was called"),
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=10, help="episodes processed before the idle period")
    parser.add_argument("--minutes", type=float, default=30.0, help="idle minutes measured")
    parser.add_argument("--settle", type=float, default=60.0, help="seconds between the last completion and measuring")
    parser.add_argument("--timeout", type=float, default=1200.0, help="seconds the episodes may take")
    parser.add_argument("--processed", type=int, default=0, metavar="N",
                        help="instead of the idle period: both databases' size after N processed episodes")
    parser.add_argument("--audio-seconds", type=float, default=2.0, help="with --processed: each episode's audio")
    parser.add_argument("--batch-size", type=int, default=0, help="BATCH_SIZE (default: the tests' 8)")
    parser.add_argument("--archive-mode", choices=("required", "off"), default="required", help="ARCHIVE_MODE")
    parser.add_argument("--postgres", action="store_true", help="PostgreSQL for both databases")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the working directory (logs, databases)")
    args = parser.parse_args()

    def interrupted(signum: int, frame: FrameType | None) -> None:
        # SIGTERM takes the same road as Ctrl+C, through every cleanup callback.
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, interrupted)
    say(f"podcastpile imported from {Path(podcastpile.__file__).parent}")
    workdir = Path(tempfile.mkdtemp(prefix="idle-bench-"))
    try:
        report = run(args, workdir)
    except BaseException:
        for log in ("manager.log", "worker.log"):
            if (workdir / log).exists():
                print(f"--- {log} (end)\n{(workdir / log).read_text()[-3000:]}", file=sys.stderr)
        raise
    finally:
        if args.keep:
            say(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.processed:
        print(json.dumps(report, indent=2) if args.json else processed_summary(report))
        return
    report["met"] = verdicts(report)
    if args.json:
        print(json.dumps(report, indent=2))
        print(summary(report), file=sys.stderr)
    else:
        print(summary(report))


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # everything started is stopped by then; no traceback for a Ctrl+C
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None
