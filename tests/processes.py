"""Run functions in separate processes that start their real work at the same moment."""

from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import subprocess
import traceback
from collections.abc import Callable, Sequence
from typing import Any

_context = multiprocessing.get_context("spawn")  # no inherited connections or threads


def _run(index: int, target: Callable[..., Any], args: tuple, barrier: Any, results: Any) -> None:
    try:
        results.put((index, True, target(*args, barrier)))
    except BaseException:  # report, so the parent fails with the child's traceback
        results.put((index, False, traceback.format_exc()))


def run_together(target: Callable[..., Any], calls: Sequence[tuple], timeout: float = 300.0) -> list[Any]:
    """Call `target(*args, barrier)` for each args tuple, each in its own process; return results in order.

    `target` must call `barrier.wait()` once it is ready, so the processes race for real.
    A child that raises, dies or hangs fails the whole call instead of hanging it.
    """
    barrier = _context.Barrier(len(calls), timeout=timeout)
    results = _context.Queue()
    processes = [
        _context.Process(target=_run, args=(i, target, args, barrier, results), daemon=True)
        for i, args in enumerate(calls)
    ]
    for process in processes:
        process.start()
    collected: dict[int, Any] = {}
    try:
        while len(collected) < len(calls):
            try:
                index, ok, value = results.get(timeout=timeout)
            except queue.Empty:
                dead = [p.pid for p in processes if not p.is_alive() and p.exitcode]
                raise RuntimeError(f"worker processes hung or died (dead: {dead})") from None
            if not ok:
                raise RuntimeError(f"worker process {index} failed:\n{value}")
            collected[index] = value
    finally:
        for process in processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
    return [collected[i] for i in range(len(calls))]


def stop_tree(process: subprocess.Popen, grace: float = 60.0) -> None:
    """Stop a command the way an operator does (one SIGTERM), then kill whatever is left of its
    process tree after `grace` seconds, flow runs in their own sessions included."""
    from podcastpile.cli.stopping import descendants, signal_all

    tree = [process.pid, *descendants(process.pid)]
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    signal_all([pid for pid in tree if pid != os.getpid()] + descendants(process.pid), signal.SIGKILL)
    process.wait()


def alive(pid: int) -> bool:
    """Whether `pid` is a running process (a zombie waiting to be reaped counts as gone)."""
    from pathlib import Path

    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"
