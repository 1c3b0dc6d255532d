"""One signal stops gracefully, but within a bound: a stop that hangs ends the process anyway."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from podcastpile.cli.stopping import EXIT_INTERRUPTED, alive

# A command whose cleanup never ends (a step that ignores the interrupt, a lock left held), with a
# child of its own, as Prefect's temporary server is one of `ppcli process`.
HANGING_STOP = textwrap.dedent("""
    import subprocess, sys, threading, time
    from podcastpile.cli.stopping import graceful_signals
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    with graceful_signals(grace=float(sys.argv[1])):
        try:
            # Ready only once the handlers are in place and the cleanup below is armed: a signal
            # between this line and a `try` after it raised KeyboardInterrupt with no cleanup
            # to run, and the process died of it (-2) instead of exiting 130.
            print(child.pid, flush=True)
            time.sleep(300)
        finally:  # as a batch's `finally` releasing its episodes
            print("cleaning up", file=sys.stderr, flush=True)
            threading.Event().wait()  # never done
""")


def run_until_ready(tmp_path: Path, grace: str) -> tuple[subprocess.Popen, int, Path]:
    log = tmp_path / "stderr.log"
    with log.open("w") as errors:
        process = subprocess.Popen([sys.executable, "-c", HANGING_STOP, grace], stdout=subprocess.PIPE,
                                   stderr=errors, text=True, cwd=Path(__file__).resolve().parent.parent)
    assert process.stdout is not None
    child = int(process.stdout.readline())
    return process, child, log


def test_a_stop_that_hangs_ends_after_its_grace(tmp_path: Path) -> None:
    process, child, log = run_until_ready(tmp_path, "1.5")
    process.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    assert process.wait(timeout=30) == EXIT_INTERRUPTED
    assert 1.5 <= time.monotonic() - signalled < 20
    stderr = log.read_text()
    assert "cleaning up" in stderr  # the graceful part ran first
    assert "stopping took longer than 1.5 s; exiting now" in stderr
    assert "Thread 0x" in stderr or "Current thread 0x" in stderr  # where it hung, for the operator
    deadline = time.monotonic() + 10
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(child), "its children are stopped too"


def test_a_second_signal_ends_at_once(tmp_path: Path) -> None:
    process, child, log = run_until_ready(tmp_path, "120")
    process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 20
    while "cleaning up" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=10) == EXIT_INTERRUPTED
    assert "exiting now" not in log.read_text()
    subprocess.run(["kill", str(child)])
