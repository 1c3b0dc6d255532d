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


def children(pid: int) -> list[int]:
    """The live processes `pid` started itself (one level down)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (Prefect starts flow runs in their own sessions, so a
    signal to the worker's process group does not reach them)."""
    found: list[int] = []
    todo = [pid]
    while todo:
        below = children(todo.pop())
        found += below
        todo += below
    return found


def alive(pid: int) -> bool:
    """Whether `pid` exists and is not a zombie (a dead child not yet waited for)."""
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


def signal_all(pids: list[int], signum: int) -> None:
    """Send `signum` to each pid that still exists."""
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass
