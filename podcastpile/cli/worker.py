"""`ppcli worker`: a Prefect worker on the GPU pool that stops the way operators expect.

`prefect worker start` alone ignores a first SIGTERM for its running flow runs (it only stops
taking new ones and waits for them, possibly a whole batch), and a flow run lives in its own
session, so `kill` of the worker's process group never reaches it. `ppcli worker` runs the
Prefect worker as a child and, on the first SIGTERM or Ctrl+C: stops the worker from taking
new runs, sends SIGTERM to each running flow run (the batch releases every episode it has not
finished, the current one included, and ends), waits up to `--grace` seconds, then kills what
is left. A second signal kills everything at once. Use it as a container's entrypoint or a
systemd unit's ExecStart.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from podcastpile.cli import app
from podcastpile.cli.display import errors, literal
from podcastpile.cli.episodes import settings
from podcastpile.cli.stopping import descendants, signal_all

PREFECT = str(Path(sys.executable).with_name("prefect"))


def api_url(manager: str) -> str:
    """The Prefect API URL for a manager address: `http://host:8000` → `http://host:8000/api`."""
    url = manager.rstrip("/")
    return url if url.endswith("/api") else url + "/api"


@app.command()
def worker(
    manager: Annotated[str | None, typer.Option("--manager", "-m", help="Manager URL, e.g. http://manager:8000 (default: PREFECT_API_URL).")] = None,
    pool: Annotated[str | None, typer.Option(help="Work pool (default: WORK_POOL, i.e. gpu).")] = None,
    grace: Annotated[float, typer.Option(min=0, help="Seconds a stopping worker gives its runs to release their episodes.")] = 60.0,
) -> None:
    """Run a Prefect worker that takes one batch at a time; SIGTERM/Ctrl+C once stops it cleanly."""
    config = settings()
    env = dict(os.environ)
    if manager:
        env["PREFECT_API_URL"] = api_url(manager)
    command = [PREFECT, "worker", "start", "--pool", pool or config.work_pool, "--limit", "1",
               "--name", config.worker_id]
    child = subprocess.Popen(command, env=env, start_new_session=True)
    signals = {"count": 0}

    def on_signal(signum: int, frame: FrameType | None) -> None:
        signals["count"] += 1
        if signals["count"] == 1:
            errors.print(literal(f"stopping: flow runs release their unfinished episodes (up to {grace:g} s; "
                                 "signal again to stop at once)"))
        else:  # second signal: everything, now
            signal_all([child.pid, *descendants(child.pid)], signal.SIGKILL)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while child.poll() is None and not signals["count"]:
        time.sleep(0.2)
    if signals["count"]:
        _stop(child, grace)
    raise typer.Exit(0 if signals["count"] else child.returncode or 0)


def _stop(child: subprocess.Popen, grace: float) -> None:
    """Stop the runs first (each releases its episodes and ends), then the worker, then kill
    whatever outlived `grace`. The runs go first because the worker, once stopped, closes the
    pipes their logs go to."""
    deadline = time.monotonic() + grace
    signalled: set[int] = set()

    def terminate_runs() -> None:
        runs = [pid for pid in descendants(child.pid) if pid not in signalled]
        signal_all(runs, signal.SIGTERM)
        signalled.update(runs)

    terminate_runs()
    while time.monotonic() < deadline and any(_alive(pid) for pid in signalled):
        time.sleep(0.2)
        terminate_runs()  # a run the worker started meanwhile
    signal_all([child.pid], signal.SIGTERM)  # the worker takes no new runs and exits
    while child.poll() is None and time.monotonic() < deadline:
        terminate_runs()
        time.sleep(0.2)
    signal_all([child.pid, *descendants(child.pid), *[p for p in signalled if _alive(p)]], signal.SIGKILL)
    child.wait()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "Z" not in _state(pid)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "Z"
