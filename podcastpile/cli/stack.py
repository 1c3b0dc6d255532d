"""The processes `ppcli manager` runs (the Prefect server, then its CPU worker), and when a
dead one is started again."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from podcastpile.cli.common import EXIT_FAILED, EXIT_SETUP, fail
from podcastpile.cli.display import say
from podcastpile.cli.manager_api import ManagerProblem, is_healthy
from podcastpile.cli.stopping import descendants, signal_all
from podcastpile.cli.tls import ServedTLS
from podcastpile.config import Settings
from podcastpile.prefect_api import PrefectAPI
from deployments.wake import IDLE_POLL, IDLE_POLL_SECONDS, WAKE_FILE, wake

ROOT = Path(__file__).resolve().parent.parent.parent


def run_setup(config: Settings, api: PrefectAPI, gpu_pool_limit: int | None) -> None:
    """Set up the server at `api` for the pipeline; a failure is one line and exit 1."""
    from deployments.setup import setup

    try:
        setup(config, api, say=lambda line: say(f"setup: {line}"), gpu_pool_limit=gpu_pool_limit)
    except Exception as error:  # noqa: BLE001 - one line for the operator; details in the chain
        fail(f"setup failed: {type(error).__name__}: {error}", code=EXIT_FAILED)


SERVER, CPU_WORKER = "the Prefect server", "the CPU worker"

# What an idle server spends (issue 23): Prefect runs its services as periodic tasks on an
# in-process queue (docket over an in-memory Redis), about 80 passes a minute by default, and
# each pass costs its query plus the queue's own bookkeeping (claim, complete, reschedule): most
# of an idle server's CPU besides the workers' polls. Slowed where nothing of ours needs the
# speed, kept where something does (the repossessor's 15 s, which frees the deployments'
# concurrency slots of dead runs, is left as it is). Defaults only: an operator's setting wins.
IDLE_SERVICES = {
    # `ppcli manager` pauses every schedule in prefect.yaml and its control loops start those
    # runs (podcastpile/cli/control.py): the scheduler (every 60 s, and every 5 s for recently
    # changed deployments) would only look at paused schedules. A deployment an operator adds
    # with a schedule of its own needs PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED=true.
    "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false",
    # Late runs only renames a waiting run "Late" in the UI; dispatch finds overdue runs by
    # their expected start time, not that name: a minute instead of 5 s.
    "PREFECT_SERVER_SERVICES_LATE_RUNS_LOOP_SECONDS": "60",
    # No flow of ours pauses or suspends: expirations of pauses every 5 minutes, not 5 s.
    "PREFECT_SERVER_SERVICES_PAUSE_EXPIRATIONS_LOOP_SECONDS": "300",
    # A run stuck in Cancelling is cancelled after 300 s of it anyway; the three cleanup passes
    # (that timeout, child task runs, subflows) every 60 s instead of 20 s.
    "PREFECT_SERVER_SERVICES_CANCELLATION_CLEANUP_LOOP_SECONDS": "60",
    # Redelivers worker-channel cleanup messages whose lease expired (a failure path only).
    "PREFECT_SERVER_SERVICES_CLEANUP_RECONCILER_LOOP_SECONDS": "30",
    # The foreman marks a worker offline after 3 missed 30 s heartbeats; looking every 30 s
    # instead of 15 s changes that by seconds (a worker is online again at its next heartbeat).
    "PREFECT_SERVER_SERVICES_FOREMAN_LOOP_SECONDS": "30",
    # The crash-detection automation (deployments/automations.yaml) fires 90 s after a run's
    # last heartbeat; evaluating it every 15 s instead of 5 s marks a dead run crashed 90-105 s
    # after it died (dispatch's own fallback is 5 minutes). The triggers service stays on.
    "PREFECT_SERVER_EVENTS_PROACTIVE_GRANULARITY": "PT15S",
}


def absolute_location(location: str, base: Path | None = None) -> str:
    """`location` (DATASET_DIR: a folder or an fsspec URL) with a local path made absolute
    against `base` (default: the current directory); a URL such as s3://bucket/ds as it is.

    The CPU worker and its export runs work in the checkout, not where the operator started
    `ppcli manager` (where its .env is): "./dataset" must mean the operator's ./dataset."""
    if "://" in location and not location.startswith("file://"):
        return location
    path = os.path.expanduser(location.removeprefix("file://"))
    resolved = os.path.abspath(os.path.join(base or Path.cwd(), path))  # an absolute `path` wins
    return f"file://{resolved}" if location.startswith("file://") else resolved


# The CPU worker's polling (issue 23; deployments/wake.py): it looks at its wake file every
# second, a stat and no request, and asks the server for runs when the control loops woke it or
# every 30 s: Prefect's default asks every 10 s, six requests a minute the server answers (with
# its bookkeeping of the pool's, queue's and deployments' last poll) whether or not anything
# waits. Safe: the loops' runs are picked up within about a second (sooner than at 10 s), other
# runs on the CPU pool (a batch's export, the job API) within 30 s, under the foreman's 60 s
# after which the queue would show "not ready". Its heartbeat (the worker's status, the pool's
# readiness; nothing of ours reads the CPU worker's) every 60 s instead of 30 s: marked offline
# after 3 missed, 180 s. The operator's own settings win.
WORKER_POLLING = {"PREFECT_WORKER_QUERY_SECONDS": "1", IDLE_POLL: f"{IDLE_POLL_SECONDS:g}",
                  "PREFECT_WORKER_HEARTBEAT_SECONDS": "60"}


def wake_file_for(port: int) -> Path:
    """The wake file of the manager on `port` (deployments/wake.py), created if missing: in
    Prefect's home (PREFECT_HOME, default ~/.prefect), this user's, not the shared temporary
    folder, and named by the port, so a SIGKILLed manager's file is the one its restart uses,
    not one left behind per start."""
    home = Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser()
    home.mkdir(parents=True, exist_ok=True)
    path = home / f"podcastpile-wake-{port}"
    path.touch()
    return path


class Restarts:
    """When to start a dead server or CPU worker again: at once the first time, then after 2, 4,
    8, ... s (a crash loop must not spin); more than LIMIT deaths within WINDOW s is not a
    passing fault, and the manager stops with the reason (a supervisor such as systemd decides)."""

    LIMIT, WINDOW, LONGEST = 5, 600.0, 60.0

    def __init__(self) -> None:
        self._deaths: list[float] = []

    def next_wait(self) -> float | None:
        """Seconds to wait before the restart of a death just seen; None: too many, give up."""
        now = time.monotonic()
        self._deaths = [t for t in self._deaths if now - t < self.WINDOW] + [now]
        if len(self._deaths) > self.LIMIT:
            return None
        return 0.0 if len(self._deaths) == 1 else min(2.0 ** (len(self._deaths) - 1), self.LONGEST)


class Stack:
    """The processes the manager runs: the Prefect server, then (after setup) a CPU worker."""

    def __init__(self, host: str, port: int, auth: str | None, api: PrefectAPI, config: Settings,
                 gpu_pool_limit: int | None, cpu_runs: int, tls: ServedTLS | None = None,
                 insecure_warning: str | None = None) -> None:
        """`insecure_warning`: what the dashboard says when auth is off beyond loopback (None: nothing)."""
        self.host, self.port, self.auth, self.api, self.config = host, port, auth, api, config
        self.insecure_warning = insecure_warning
        self.gpu_pool_limit, self.cpu_runs, self.tls = gpu_pool_limit, cpu_runs, tls
        self.server: subprocess.Popen | None = None
        self.worker: subprocess.Popen | None = None
        self.wake_file: Path | None = None

    def start(self) -> None:
        """Start the server, wait until it is healthy, set it up, then start the CPU worker."""
        self.server = subprocess.Popen(
            [sys.executable, "-m", "deployments.server", "--host", self.host, "--port", str(self.port),
             *(["--ssl-certfile", self.tls.cert, "--ssl-keyfile", self.tls.key] if self.tls else [])],
            cwd=ROOT, env=self._server_environment(), start_new_session=True,
        )
        self._wait_healthy()
        run_setup(self.config, self.api, self.gpu_pool_limit)
        self._record_insecure()
        self.start_worker()

    def start_worker(self) -> None:
        """Start the CPU worker (archive, dispatch, export and stats runs)."""
        # The worker runs in the project root, where this directory's .env is not read: its
        # client settings come along in its environment.
        if self.wake_file is None:
            self.wake_file = wake_file_for(self.port)
        self.worker = subprocess.Popen(
            [sys.executable, "-m", "podcastpile.cli", "worker", "--pool", "cpu", "-m", self.api.url,
             "--limit", str(self.cpu_runs), "--id", f"{socket.gethostname()}-cpu", "--grace", "30"],
            cwd=ROOT, env=self._worker_environment(), start_new_session=True,
        )

    def wake_worker(self) -> None:
        """Have the CPU worker ask for runs now: the control loops just created one (deployments/wake.py)."""
        if self.wake_file is not None:
            with contextlib.suppress(OSError):  # it then finds the run at its idle poll
                wake(self.wake_file)

    def _record_insecure(self) -> None:
        """Put the --insecure warning on the dashboard too (or take an old one off)."""
        from deployments.setup import record_insecure

        try:
            record_insecure(self.api, self.insecure_warning)
        except Exception as error:  # noqa: BLE001 - the start-up banner has said it already
            say(f"could not put the --insecure warning on the dashboard: {type(error).__name__}: {error}")

    def _worker_environment(self) -> dict[str, str]:
        """The CPU worker's environment: this manager's API, password and CA for the worker and
        its flow runs; TLS_CA_FILE too, which would otherwise come from the root's .env."""
        env = {**WORKER_POLLING, **os.environ, **self.api.client_environment(), "TLS_CA_FILE": self.api.ca_file or "",
               "DATASET_DIR": absolute_location(self.config.dataset_dir)}
        if self.wake_file is not None:
            env[WAKE_FILE] = str(self.wake_file)
        return env

    def _server_environment(self) -> dict[str, str]:
        """The server's environment: the project's settings as Prefect server settings."""
        env = dict(os.environ)
        env.pop("PREFECT_API_URL", None)  # the server's UI would otherwise point at it
        env.pop("PREFECT_API_AUTH_STRING", None)
        env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        # The browser reaches the API wherever it reached the UI: a relative URL works for
        # every name and address the manager is known by (0.0.0.0 would not).
        env.setdefault("PREFECT_UI_API_URL", "/api")
        env.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "WARNING")
        # Retention: a year of batches must not grow Prefect's database without bound.
        env.setdefault("PREFECT_SERVER_SERVICES_DB_VACUUM_ENABLED", "events,flow_runs")
        env.setdefault("PREFECT_SERVER_SERVICES_DB_VACUUM_RETENTION_PERIOD",
                       str(int(self.config.run_retention_days * 86400)))
        # Events are most of an active server's database (issue 23): kept days, not Prefect's week.
        env.setdefault("PREFECT_SERVER_EVENTS_RETENTION_PERIOD", f"PT{int(self.config.event_retention_days * 86400)}S")
        for name, value in IDLE_SERVICES.items():
            env.setdefault(name, value)
        if self.auth:
            env["PREFECT_SERVER_API_AUTH_STRING"] = self.auth
        # The server runs in the checkout, not here: its job API (deployments/jobs_api.py) reads
        # the project's settings from this command's .env, so both see the same store.
        env["PODCASTPILE_ENV_FILE"] = str(Path(".env").absolute())
        if self.config.trusted_proxies:  # .env is not the server's: pass the setting along
            env["TRUSTED_PROXIES"] = self.config.trusted_proxies
        return env

    def _wait_healthy(self, timeout: float = 180.0) -> None:
        """Until the server answers its health check; its exit or `timeout` ends the command."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.server is not None and self.server.poll() is not None:
                fail(f"the Prefect server exited with code {self.server.returncode}", code=EXIT_FAILED)
            try:
                if is_healthy(self.api):
                    return
            except ManagerProblem as problem:  # its own certificate: waiting will not help
                fail(str(problem), code=EXIT_SETUP)
            time.sleep(0.5)
        fail(f"the Prefect server did not become healthy within {timeout:g} s", code=EXIT_FAILED)

    def dead(self) -> str | None:
        """Which process died on its own, if any."""
        for name, process in ((SERVER, self.server), (CPU_WORKER, self.worker)):
            if process is not None and process.poll() is not None:
                return f"{name} (exit code {process.returncode})"
        return None

    def restart(self) -> None:
        """Start again what died: the CPU worker alone (its runs were crash-detected or give their
        episodes back), or the server and its setup; GPU workers reconnect by themselves."""
        if self.server is not None and self.server.poll() is not None:
            self.stop()  # the CPU worker too: it would only fail against a server that is starting
            self.start()
        elif self.worker is not None and self.worker.poll() is not None:
            signal_all(descendants(self.worker.pid), signal.SIGKILL)  # flow runs of a killed worker
            self.start_worker()

    def stop(self) -> None:
        """The CPU worker first (its runs release what they hold), then the server."""
        for process, grace in ((self.worker, 45.0), (self.server, 20.0)):
            if process is None or process.poll() is not None:
                continue
            signal_all([process.pid], signal.SIGTERM)
            try:
                process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                signal_all([process.pid, *descendants(process.pid)], signal.SIGKILL)
                process.wait()
        self.worker = self.server = None
        if self.wake_file is not None:
            self.wake_file.unlink(missing_ok=True)
            self.wake_file = None

    def kill(self) -> None:
        """Kill every process of the stack at once (a second signal)."""
        for process in (self.worker, self.server):
            if process is not None:
                signal_all([process.pid, *descendants(process.pid)], signal.SIGKILL)
