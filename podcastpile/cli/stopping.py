"""Stopping on a signal the way operators expect: the first SIGTERM/Ctrl+C stops gracefully,
a second one stops at once.

`graceful_signals()` turns the first SIGTERM into a KeyboardInterrupt in the main thread (so
`finally` blocks run: a batch releases the episodes it has not finished) and makes a second
SIGTERM or Ctrl+C end the process immediately. With a `grace`, a stop that is still not done
after that many seconds ends the process too: the batch's claim guard gives its episodes back.
"""

from __future__ import annotations

import faulthandler
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

EXIT_INTERRUPTED = 130


@contextmanager
def graceful_signals(grace: float | None = None) -> Iterator[None]:
    """First SIGTERM or SIGINT: KeyboardInterrupt (clean up), within `grace` seconds if given;
    second: exit now."""
    received = {"count": 0}

    def handle(signum: int, frame: FrameType | None) -> None:
        received["count"] += 1
        if received["count"] > 1:
            os._exit(EXIT_INTERRUPTED)
        if grace is not None:
            # The interrupt lands wherever the main thread is; a step that will not end (or a
            # lock the interrupt left held) must not keep the process up for ever.
            deadline = threading.Timer(grace, _stop_overdue, args=(grace,))
            deadline.daemon = True
            deadline.start()
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _stop_overdue(grace: float) -> None:
    """The graceful stop outlived its grace: say where each thread was, stop our children (such
    as Prefect's temporary server), end. Claim guards ignore the signal and give back the claims."""
    try:
        print(f"stopping took longer than {grace:g} s; exiting now: the unfinished episodes are given back "
              "to the queue by the claim guard. Where each thread was:", file=sys.stderr, flush=True)
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    except (OSError, ValueError, AttributeError):  # no usable stderr: exit all the same
        pass
    finally:
        signal_all(children(os.getpid()), signal.SIGTERM)
        os._exit(EXIT_INTERRUPTED)


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
