"""`ppcli manager` and `ppcli setup`: the Prefect server, set up for the pipeline, as one command.

The manager is the one service every worker talks to: it starts Prefect's server (API, /docs
and the UI on one port; deployments/server.py) with the project's settings, waits until it is
healthy, runs setup (store migrated, work pools, deployments, automations, the store block)
and runs a CPU worker for what belongs next to the server (archive, dispatch, export, stats).
A one-machine install is `ppcli manager` plus one `ppcli worker`; more GPU machines only run
`ppcli worker -m http://manager:PORT`.

With WORKER_AUTH_ENABLED the server's auth string is WORKER_PASSWORD: the API and the UI ask
for it (only /api/health and /api/ready stay open; deployments/server.py closes the docs), and
workers pass it with `-p` or their own WORKER_PASSWORD. `ppcli setup` finds its server and
password by the rule every command follows (`podcastpile.prefect_api`), without the guess of a
manager on this machine: setting up the wrong server would be worse than naming one.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from podcastpile.cli.application import app
from podcastpile.cli.common import EXIT_FAILED, EXIT_SETUP, fail, settings
from podcastpile.cli.display import errors, literal, say
from podcastpile.cli.manager_api import ManagerProblem, check_manager, is_healthy, online_workers
from podcastpile.cli.stopping import descendants, signal_all
from podcastpile.config import Settings, safe_database_url
from podcastpile.prefect_api import PrefectAPI, find_prefect_api, server_password

ROOT = Path(__file__).resolve().parent.parent.parent
# What --reload watches: the pipeline's code and configuration.
WATCHED = ("podcastpile", "tasks", "flows", "deployments")
WATCHED_FILES = ("prefect.yaml", ".env")
EXIT_STOPPED = 0


@app.command("setup")
def setup_command(
    manager: Annotated[str | None, typer.Option("--manager", "-m", help="Manager URL, e.g. http://manager:8000 (default: PREFECT_API_URL).")] = None,
    password: Annotated[str | None, typer.Option("--password", "-p", help="The manager's password (default: WORKER_PASSWORD, else PREFECT_API_AUTH_STRING).")] = None,
    one_batch_at_a_time: Annotated[bool, typer.Option(help="Cap the gpu pool at one running batch (for a SQLite Prefect database).")] = False,
) -> None:
    """Create or update everything the pipeline needs on a Prefect server; safe to rerun."""
    config = settings()
    api = find_prefect_api(config, manager=manager, password=password)
    if api is None:
        fail("no Prefect server named: use -m http://host:port or set PREFECT_API_URL", code=EXIT_SETUP)
    try:
        check_manager(api)
    except ManagerProblem as problem:
        fail(str(problem), code=EXIT_SETUP)
    _run_setup(config, api, 1 if one_batch_at_a_time else None)


def _run_setup(config: Settings, api: PrefectAPI, gpu_pool_limit: int | None) -> None:
    """Set up the server at `api` for the pipeline; a failure is one line and exit 1."""
    from deployments.setup import setup

    try:
        setup(config, api, say=lambda line: say(f"setup: {line}"), gpu_pool_limit=gpu_pool_limit)
    except Exception as error:  # noqa: BLE001 - one line for the operator; details in the chain
        fail(f"setup failed: {type(error).__name__}: {error}", code=EXIT_FAILED)


@app.command()
def manager(
    port: Annotated[int | None, typer.Option("--port", "-p", help="Port (default: PORT, 8000).")] = None,
    host: Annotated[str | None, typer.Option(help="Address to bind (default: HOST, 0.0.0.0).")] = None,
    reload: Annotated[bool, typer.Option(help="Restart everything when the code or .env changes (development).")] = False,
    allow_sqlite_workers: Annotated[bool, typer.Option(help="Let several batches run at once although Prefect's database is SQLite.")] = False,
    cpu_runs: Annotated[int, typer.Option(min=1, help="Flow runs the manager's CPU worker runs at once (archive, dispatch, export, stats).")] = 6,
) -> None:
    """Run the Prefect server with the pipeline set up, plus its CPU worker; Ctrl+C stops all."""
    config = settings()
    port = port or config.port
    host = host or config.host
    auth = server_password(config)  # what the server demands; None: it is open
    local = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    # Its own calls to the server follow the rule every client follows, given this address
    # and the password the server demands.
    api = find_prefect_api(config, manager=f"http://{local}:{port}", password=auth)
    assert api is not None  # named explicitly
    sqlite = _prefect_database_is_sqlite()
    # At most one batch at a time on SQLite: concurrent runs make it fail (database is locked).
    gpu_pool_limit = 1 if sqlite and not allow_sqlite_workers else None
    stack = _Stack(host, port, auth, api, config, gpu_pool_limit, cpu_runs)
    public = f"http://{socket.gethostname() if local == '127.0.0.1' else local}:{port}"
    _announce(config, public, auth, sqlite, gpu_pool_limit)

    signals = {"count": 0}

    def on_signal(signum: int, frame: FrameType | None) -> None:
        signals["count"] += 1
        if signals["count"] == 1:
            errors.print(literal("stopping the manager (signal again to stop at once)"))
        else:
            stack.kill()
            os._exit(130)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        stack.start()
        say(f"ready: open {public} (API docs: {public}/docs)")
        stamp = _code_stamp() if reload else None
        warned_workers = False
        while not signals["count"]:
            time.sleep(1)
            dead = stack.dead()
            if dead:
                fail(f"{dead} exited; stopping the manager", code=EXIT_FAILED)
            if reload and _code_stamp() != stamp:
                say("code changed: restarting the server and the CPU worker")
                stack.stop()
                stack.start()
                stamp = _code_stamp()
                say(f"ready: open {public} (restarted)")
            if gpu_pool_limit and not warned_workers and online_workers(api, config.work_pool) > 1:
                warned_workers = True
                errors.print(literal(
                    "several GPU workers are online but Prefect's database is SQLite: batches run one "
                    "at a time. Set PREFECT_API_DATABASE_CONNECTION_URL=postgresql+asyncpg://... "
                    "and restart the manager to run them side by side."))
    finally:
        stack.stop()
    raise typer.Exit(EXIT_STOPPED)


def _announce(config: Settings, public: str, auth: str | None, sqlite: bool, gpu_pool_limit: int | None) -> None:
    """What the manager serves and how GPU machines join it, printed once at start."""
    say(f"Podcast Pile manager: {public}")
    say(f"  episode database: {safe_database_url(config.database_url)}")
    say(f"  auth: {'on (the UI and workers need WORKER_PASSWORD)' if auth else 'off'}")
    if sqlite:
        note = ("one batch at a time across all GPU workers; for several set "
                "PREFECT_API_DATABASE_CONNECTION_URL=postgresql+asyncpg://...") if gpu_pool_limit else "several batches allowed"
        say(f"  Prefect database: SQLite ({note})")
    else:
        say("  Prefect database: PostgreSQL")
    joining = f"ppcli worker -m {public}" + (" -p PASSWORD" if auth else "")
    say(f"  GPU machines join with: {joining}")


class _Stack:
    """The processes the manager runs: the Prefect server, then (after setup) a CPU worker."""

    def __init__(self, host: str, port: int, auth: str | None, api: PrefectAPI, config: Settings,
                 gpu_pool_limit: int | None, cpu_runs: int) -> None:
        self.host, self.port, self.auth, self.api, self.config = host, port, auth, api, config
        self.gpu_pool_limit, self.cpu_runs = gpu_pool_limit, cpu_runs
        self.server: subprocess.Popen | None = None
        self.worker: subprocess.Popen | None = None

    def start(self) -> None:
        """Start the server, wait until it is healthy, set it up, then start the CPU worker."""
        self.server = subprocess.Popen(
            [sys.executable, "-m", "deployments.server", "--host", self.host, "--port", str(self.port)],
            cwd=ROOT, env=self._server_environment(), start_new_session=True,
        )
        self._wait_healthy()
        _run_setup(self.config, self.api, self.gpu_pool_limit)
        # The worker runs in the project root, where this directory's .env is not read: its
        # client settings come along in its environment.
        self.worker = subprocess.Popen(
            [sys.executable, "-m", "podcastpile.cli", "worker", "--pool", "cpu", "-m", self.api.url,
             "--limit", str(self.cpu_runs), "--id", f"{socket.gethostname()}-cpu", "--grace", "30"],
            cwd=ROOT, env={**os.environ, **self.api.client_environment()}, start_new_session=True,
        )

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
        if self.auth:
            env["PREFECT_SERVER_API_AUTH_STRING"] = self.auth
        return env

    def _wait_healthy(self, timeout: float = 180.0) -> None:
        """Until the server answers its health check; its exit or `timeout` ends the command."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.server is not None and self.server.poll() is not None:
                fail(f"the Prefect server exited with code {self.server.returncode}", code=EXIT_FAILED)
            if is_healthy(self.api):
                return
            time.sleep(0.5)
        fail(f"the Prefect server did not become healthy within {timeout:g} s", code=EXIT_FAILED)

    def dead(self) -> str | None:
        """Which process died on its own, if any."""
        for name, process in (("the Prefect server", self.server), ("the CPU worker", self.worker)):
            if process is not None and process.poll() is not None:
                return name
        return None

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

    def kill(self) -> None:
        """Kill every process of the stack at once (a second signal)."""
        for process in (self.worker, self.server):
            if process is not None:
                signal_all([process.pid, *descendants(process.pid)], signal.SIGKILL)


def _prefect_database_is_sqlite() -> bool:
    """Whether the server will keep its own state in SQLite (Prefect's default)."""
    from prefect.settings import get_current_settings

    url = get_current_settings().server.database.connection_url
    return url is None or url.get_secret_value().startswith("sqlite")


def _code_stamp() -> tuple[float, ...]:
    """The newest modification time of the watched code and configuration."""
    stamps = [path.stat().st_mtime for folder in WATCHED for path in (ROOT / folder).rglob("*")
              if path.suffix in (".py", ".yaml", ".json") and path.is_file()]
    stamps += [(ROOT / name).stat().st_mtime for name in WATCHED_FILES if (ROOT / name).exists()]
    return (max(stamps, default=0.0), float(len(stamps)))
