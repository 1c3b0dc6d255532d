"""A manager whose CPU worker or server dies starts it again, instead of stopping everything
(found by the chaos soak: one SIGKILLed CPU worker used to take the whole manager down)."""

from __future__ import annotations

import signal
import time

from podcastpile.cli.stopping import descendants, signal_all
from tests.manager import Manager
from tests.processes import alive
from tests.service.test_quiet_manager import manager  # noqa: F401  (a fixture)


def _cpu_worker(running: Manager) -> int:
    for pid in descendants(running.process.pid):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as command:
                parts = command.read().split(b"\0")
        except OSError:
            continue
        if b"podcastpile.cli" in parts and b"worker" in parts and b"cpu" in parts:
            return pid
    raise AssertionError(f"no CPU worker under the manager:\n{running.output()[-3000:]}")


def test_a_killed_cpu_worker_or_server_is_started_again(manager: Manager) -> None:  # noqa: F811
    first = _cpu_worker(manager)
    signal_all([first, *descendants(first)], signal.SIGKILL)
    manager.wait_ready(timeout=120, times=2)  # "ready: open ... (restarted)"
    assert manager.process.poll() is None
    assert "the CPU worker (exit code -9) exited; starting it again in 0 s" in manager.output()
    second = _cpu_worker(manager)
    assert second != first and alive(second)

    server = next(pid for pid in descendants(manager.process.pid)
                  if b"deployments.server" in open(f"/proc/{pid}/cmdline", "rb").read())
    signal_all([server], signal.SIGKILL)
    manager.wait_ready(timeout=240, times=3)
    assert "the Prefect server (exit code -9) exited; starting it again in 2 s" in manager.output()
    time.sleep(2)
    assert manager.process.poll() is None and alive(_cpu_worker(manager))
