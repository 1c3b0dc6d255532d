"""Prefect workers as children of one `ppcli worker`, stopped the way operators expect.

`prefect worker start` alone exits on a first SIGTERM without stopping its running flow runs
(they live in their own sessions, so `kill` of the worker's process group never reaches them
either). The supervisor, on the first SIGTERM or Ctrl+C: sends SIGTERM to every running flow
run of every worker (a batch releases each episode it has not finished, the current one
included, and ends), waits for them up to `grace` seconds, then stops the workers and kills
what is left. A second signal kills everything at once.

With `once`, each worker is watched until the flow run it took has finished (its process is
gone and the API shows a final state), and is then stopped: `prefect worker start --run-once`
polls once and exits when no run is waiting, and does not wait for a run it started (nor does
a worker sent SIGTERM: it exits at once, leaving its run behind, so the run must end first).
Should the worker take a second run in the moment between the first one's end and its stop,
that run is stopped like any other (its episodes are released), not left running.
"""

from __future__ import annotations

import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from podcastpile.cli.display import errors, literal
from podcastpile.cli.manager_api import FINAL_STATES, flow_run_state
from podcastpile.cli.stopping import alive, children, descendants, signal_all
from podcastpile.prefect_api import PrefectAPI

POLL_SECONDS = 0.2
# After a run's process is gone, how long to wait for its final state to show in the API (the
# run reports its own end; a crashed one is reported by its worker).
FINAL_STATE_WAIT_SECONDS = 30.0


@dataclass
class WorkerChild:
    """One `prefect worker start` process and, with --once, the flow run it took."""

    name: str
    process: subprocess.Popen
    run_id: str | None = None
    run_pid: int | None = None
    run_ended_at: float | None = None
    outcome: str | None = None  # the run's final state (--once)
    stopped: bool = False  # stopped by the supervisor, not an exit of its own


def note(message: str) -> None:
    """One line on stderr, never wrapped: logs and scripts read it whole."""
    errors.print(literal(message), soft_wrap=True)


def flow_run_of(pid: int) -> str | None:
    """The flow run a worker's child process runs: the process worker names it in the
    child's environment (`PREFECT__FLOW_RUN_ID`)."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    for entry in environ.split(b"\0"):
        if entry.startswith(b"PREFECT__FLOW_RUN_ID="):
            return entry.split(b"=", 1)[1].decode(errors="replace") or None
    return None


class Supervisor:
    """Watches worker children until a signal, an unexpected exit, or (--once) their runs end."""

    def __init__(self, workers: list[WorkerChild], *, grace: float, once: bool, api: PrefectAPI) -> None:
        self.workers = workers
        self.grace = grace
        self.once = once
        self.api = api  # where --once reads the final state of each worker's run
        self.signals = 0

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        """First signal: the main loop stops everything gracefully; second: kill all now."""
        self.signals += 1
        if self.signals == 1:
            note(f"stopping: flow runs release their unfinished episodes (up to {self.grace:g} s; "
                 "signal again to stop at once)")
        else:
            signal_all([pid for worker in self.workers
                        for pid in (worker.process.pid, *descendants(worker.process.pid))], signal.SIGKILL)

    def run(self) -> int:
        """Watch the workers; returns the exit code for `ppcli worker`.

        0 after a signal stop or, with --once, when every worker's run completed; 1 when a
        --once run ended otherwise; a worker's own exit code when it exits by itself (the
        others are then stopped too, so a service manager restarts the whole set).
        """
        while not self.signals:
            running = [worker for worker in self.workers if not worker.stopped]
            if not running:
                break
            for worker in running:
                if worker.process.poll() is not None:
                    return self._exited(worker)
                if self.once:
                    self._follow_run(worker)
            time.sleep(POLL_SECONDS)
        if self.signals:
            self.stop([worker for worker in self.workers if not worker.stopped])
            return 0
        return 0 if all(worker.outcome == "COMPLETED" for worker in self.workers) else 1

    def _exited(self, worker: WorkerChild) -> int:
        code = worker.process.returncode
        others = [other for other in self.workers if other is not worker and not other.stopped]
        note(f"worker {worker.name} exited with code {code}" + ("; stopping the others" if others else ""))
        worker.stopped = True
        self.stop(others)
        return code if code else 1 if others or self.once else 0

    def _follow_run(self, worker: WorkerChild) -> None:
        """--once: note the run the worker takes; stop the worker once that run has ended."""
        if worker.run_pid is None:
            for pid in children(worker.process.pid):
                if run_id := flow_run_of(pid):
                    worker.run_pid, worker.run_id = pid, run_id
                    note(f"worker {worker.name} took flow run {run_id}; it stops when that run ends (--once)")
                    return
            return
        if alive(worker.run_pid):
            return
        now = time.monotonic()
        if worker.run_ended_at is None:
            worker.run_ended_at = now
        assert worker.run_id is not None
        state = flow_run_state(self.api, worker.run_id)
        if state not in FINAL_STATES and now - worker.run_ended_at < FINAL_STATE_WAIT_SECONDS:
            return
        worker.outcome = state or "UNKNOWN"
        note(f"worker {worker.name}: flow run {worker.run_id} ended {worker.outcome}; stopping it")
        self.stop([worker])

    def stop(self, workers: list[WorkerChild]) -> None:
        """Stop the runs first (each releases its episodes and ends), then the workers, then
        kill whatever outlived `grace`. The runs go first because a worker, once stopped,
        closes the pipes their logs go to."""
        deadline = time.monotonic() + self.grace
        signalled: set[int] = set()

        def terminate_runs() -> None:
            runs = [pid for worker in workers for pid in descendants(worker.process.pid) if pid not in signalled]
            signal_all(runs, signal.SIGTERM)
            signalled.update(runs)

        terminate_runs()
        while time.monotonic() < deadline and any(alive(pid) for pid in signalled):
            time.sleep(POLL_SECONDS)
            terminate_runs()  # a run a worker started meanwhile
        signal_all([worker.process.pid for worker in workers], signal.SIGTERM)  # no new runs; exit
        while any(worker.process.poll() is None for worker in workers) and time.monotonic() < deadline:
            terminate_runs()
            time.sleep(POLL_SECONDS)
        signal_all([pid for worker in workers for pid in (worker.process.pid, *descendants(worker.process.pid))]
                   + [pid for pid in signalled if alive(pid)], signal.SIGKILL)
        for worker in workers:
            worker.process.wait()
            worker.stopped = True
