"""Episode tails: the CPU end of an episode's chain run beside the next episode's GPU steps.

The batch runs an episode's download and GPU steps (decode → diarize → transcribe → merge) in
the flow's own thread, then hands the rest (quality scores, storing the result) to an
`EpisodeTails` and goes on with the next episode at once, so the GPU does not sit idle while
DNSMOS runs on CPU. Mechanics, kept out of the flow:

- **Bounded.** At most `max_waiting` tails are in flight; `submit` blocks until one is done.
  Each holds its episode's decoded audio, so this bounds memory (at most `max_waiting + 1`
  episodes decoded at once). `max_waiting=0` runs each tail inline: the serial batch.
- **Own threads.** Tails run on their own small executor, not on the quality pool
  (`podcastpile.speech.pipeline.quality_pool`): a tail waits on the per-turn scores it submits
  to that pool, and a pool thread waiting on its own pool deadlocks once every thread does.
- **Prefect context.** Each tail runs in a copy of the submitter's context variables (as
  Prefect's own thread pool task runner does), so the tasks it calls are task runs of the flow.
- **Settled once.** `finished()` and `drain()` hand each tail's return value to the caller
  exactly once, in the caller's thread; an exception a tail let through (a StoreOutage) is
  raised there. A tail's result waits there until asked for, so a finished tail frees its
  place (and its audio) at once. `on_done(key)` runs in the tail's thread as soon as it ends (to stop renewing
  its lease without waiting for the flow to look).
- **Stopping.** `stop()` cancels tails not started and sets `stopping`, which a tail checks
  before doing anything that records; a tail already running is left to end on its own, and
  the caller treats every key it has not been handed as unfinished (its claim is released).
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from types import TracebackType
from typing import Generic, TypeVar

T = TypeVar("T")


class EpisodeTails(Generic[T]):
    """Up to `max_waiting` episode tails in background threads, keyed by episode id."""

    def __init__(self, max_waiting: int, on_done: Callable[[int], None] | None = None) -> None:
        self.max_waiting = max_waiting
        self.stopping = threading.Event()
        self._on_done = on_done
        self._executor = (
            ThreadPoolExecutor(max_waiting, thread_name_prefix="episode-tail") if max_waiting > 0 else None
        )
        self._running: dict[int, Future[T]] = {}  # submitted, not ended
        self._ready: dict[int, Future[T]] = {}  # ended, not handed back yet

    def __enter__(self) -> EpisodeTails[T]:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self.stop()

    def submit(self, key: int, work: Callable[[], T]) -> None:
        """Run `work` in the background once fewer than `max_waiting` tails are in flight
        (inline when `max_waiting` is 0). Its result comes back from `finished` or `drain`."""
        if self._executor is None:
            future: Future[T] = Future()
            try:
                future.set_result(work())
            except Exception as error:  # handed back by `finished`, as a background tail's is
                future.set_exception(error)
            finally:
                self._ended(key)
            self._ready[key] = future
            return
        while len(self._running) >= self.max_waiting:
            wait(list(self._running.values()), return_when=FIRST_COMPLETED)
            self._collect()
        if self.stopping.is_set():  # stopped while it waited for room: never run, still unsettled
            return
        context = contextvars.copy_context()  # one copy per tail: a context runs in one thread at a time
        self._running[key] = self._executor.submit(context.run, self._run, key, work)

    def in_flight(self) -> set[int]:
        """Keys submitted whose result has not been handed back yet."""
        return set(self._running) | set(self._ready)

    def finished(self) -> dict[int, T]:
        """The results of tails that have ended since the last call, each handed back once.
        Raises the first exception a tail let through (the batch then stops: the others'
        results are already stored, and releasing their claims leaves them as they are)."""
        self._collect()
        ready, self._ready = self._ready, {}
        results: dict[int, T] = {}
        failure: BaseException | None = None
        for key, future in ready.items():
            if future.cancelled():  # dropped by `stop` before it ran: no result, still unsettled
                continue
            if future.exception() is not None:
                failure = failure or future.exception()
                continue
            results[key] = future.result()
        if failure is not None:
            raise failure
        return results

    def drain(self) -> dict[int, T]:
        """Wait for every tail in flight and return what `finished` has not returned yet."""
        results: dict[int, T] = {}
        while self._running:
            wait(list(self._running.values()), return_when=FIRST_COMPLETED)
            results.update(self.finished())
        results.update(self.finished())
        return results

    def stop(self) -> None:
        """Tell running tails to record nothing more and drop those not started (no waiting)."""
        self.stopping.set()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    def _run(self, key: int, work: Callable[[], T]) -> T:
        try:
            return work()
        finally:
            self._ended(key)

    def _ended(self, key: int) -> None:
        if self._on_done is not None:
            self._on_done(key)

    def _collect(self) -> None:
        for key, future in list(self._running.items()):
            if future.done():
                self._ready[key] = self._running.pop(key)
