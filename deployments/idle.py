"""What the manager's Prefect server wakes up for while nothing happens (issue 23).

An idle server's CPU is mostly wake-ups, not work: its event loop woke ~77 times a second,
each wake-up a few hundred microseconds of the loop's and the kernel's time. Three sources
are fixed intervals Prefect exposes no setting for:

- docket, Prefect's in-process task queue, looks for due work every 250 ms (`Worker`'s
  `minimum_check_interval` and `scheduling_resolution`): every second instead;
- docket's cancellation listener asks its in-memory Redis (burner-redis) for a message with a
  0.1 s timeout, in a loop, and each ask is a round trip through a thread-pool thread
  (`asyncio.to_thread(queue.get, True, 0.1)`): ten a second, for a message that comes when a
  task is cancelled. The ask now waits up to a second; a message still returns at once;
- uvicorn's main loop ticks every 0.1 s to see whether it should exit: every second.

Measured side by side on bare servers on PostgreSQL (bench/README.md): 54 -> 27 CPU s/h, the
listener 18 s/h of it, the tick 9. The cost: the server notices a stop up to a second later.

Each change checks that the installed library still has the shape it changes and otherwise
changes nothing (False): an upgrade then costs idle CPU, never correctness.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import queue
from datetime import timedelta
from typing import Any

# docket's checks for due work (its default: every 250 ms). The services themselves run every
# 15 s or more (podcastpile/cli/stack.py IDLE_SERVICES), so a second delays nothing that matters.
QUEUE_CHECK_SECONDS = 1.0
# The longest a wait for a pub/sub message (or a check of uvicorn's exit flag) sleeps at once.
WAIT_SLICE_SECONDS = 1.0


def slower_task_queue(seconds: float = QUEUE_CHECK_SECONDS) -> bool:
    """Make the server's docket worker check for due work every `seconds`; Prefect has no
    setting for it, so its module's `Worker` is wrapped. False (nothing changed) when the
    installed Prefect no longer has that seam or docket's worker takes no such options."""
    from prefect.server.api import background_workers

    worker = getattr(background_workers, "Worker", None)
    if worker is None or isinstance(worker, functools.partial):
        return isinstance(worker, functools.partial)
    options = inspect.signature(worker).parameters
    if not {"minimum_check_interval", "scheduling_resolution"} <= options.keys():
        return False
    every = timedelta(seconds=seconds)
    background_workers.Worker = functools.partial(  # type: ignore[attr-defined]
        worker, minimum_check_interval=every, scheduling_resolution=every)
    return True


def longer_pubsub_waits(seconds: float = WAIT_SLICE_SECONDS) -> bool:
    """Make a short wait for a burner-redis pub/sub message one blocking wait of `seconds` in a
    thread instead of slices of 0.1 s, each its own thread hand-off. A message put meanwhile
    ends the wait at once; only "nothing came" is reported later (docket's listener then just
    asks again). False when burner-redis is not installed or its queue is not where expected."""
    try:
        from burner_redis.pubsub import PubSub
    except ImportError:
        return False
    original = PubSub.__dict__.get("_queue_get")
    if original is None or not inspect.iscoroutinefunction(original):
        return False
    if getattr(original, "_podcastpile_longer", False):
        return True

    async def _queue_get(self: Any, timeout: float | None) -> Any:
        waiting = getattr(self, "_queue", None)
        if timeout is None or not 0 < timeout < seconds or not isinstance(waiting, queue.Queue | queue.SimpleQueue):
            return await original(self, timeout)
        try:
            return await asyncio.to_thread(waiting.get, True, seconds)
        except queue.Empty:
            return None

    _queue_get._podcastpile_longer = True  # type: ignore[attr-defined]
    PubSub._queue_get = _queue_get  # type: ignore[method-assign]
    return True


def quiet_uvicorn_server(seconds: float = WAIT_SLICE_SECONDS) -> type | None:
    """A `uvicorn.Server` whose main loop ticks every `seconds` instead of 0.1 s; None when
    uvicorn's loop no longer counts ticks the way this relies on (`on_tick(counter)`, doing its
    once-a-second work when `counter % 10 == 0`)."""
    import uvicorn

    on_tick = getattr(uvicorn.Server, "on_tick", None)
    if on_tick is None or list(inspect.signature(on_tick).parameters) != ["self", "counter"]:
        return None

    class QuietServer(uvicorn.Server):
        async def main_loop(self) -> None:
            counter = 0
            should_exit = await self.on_tick(counter)
            while not should_exit:
                counter = (counter + 10) % 864000  # a multiple of 10: its once-a-second work, each tick
                await asyncio.sleep(seconds)
                should_exit = await self.on_tick(counter)

    return QuietServer
