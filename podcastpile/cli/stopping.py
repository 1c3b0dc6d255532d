"""Stopping on a signal the way operators expect: the first SIGTERM/Ctrl+C stops gracefully,
a second one stops at once.

`graceful_signals()` turns the first SIGTERM into a KeyboardInterrupt in the main thread (so
`finally` blocks run: a batch releases the episodes it has not finished) and makes a second
SIGTERM or Ctrl+C end the process immediately.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

EXIT_INTERRUPTED = 130


@contextmanager
def graceful_signals() -> Iterator[None]:
    """First SIGTERM or SIGINT: KeyboardInterrupt (clean up); second: exit now."""
    received = {"count": 0}

    def handle(signum: int, frame: FrameType | None) -> None:
        received["count"] += 1
        if received["count"] > 1:
            os._exit(EXIT_INTERRUPTED)
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (Prefect starts flow runs in their own sessions, so a
    signal to the worker's process group does not reach them)."""
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = [int(child) for child in (task / "children").read_text().split()]
            except OSError:
                continue
            found += children
            todo += children
    return found


def signal_all(pids: list[int], signum: int) -> None:
    """Send `signum` to each pid that still exists."""
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass
