"""Waking the manager's CPU worker when the manager has just created a run for it (issue 23).

A Prefect worker asks the server for scheduled runs every PREFECT_WORKER_QUERY_SECONDS (10 s),
whether or not any were created: on an idle manager those polls (the server's answer to each,
with its bookkeeping of when the pool, queue and deployments were last polled) are a large
part of the CPU it spends. But the CPU worker's runs are almost all created by the manager's
own control loops (podcastpile/cli/control.py), which know the moment they create one. So
`ppcli manager` gives its CPU worker a wake file: the loops touch it after creating a run, and
the worker (deployments/worker.py) looks at the file every second (a stat, no request) and asks
the server only when it changed, or when IDLE_POLL_SECONDS passed since it last asked (runs
created by others: a batch's export, the job API, an operator in the UI). A run of the loops is
so picked up within about a second instead of up to 10 s; anything else within IDLE_POLL_SECONDS.

Plain Python (no Prefect import): the manager touches, the worker checks. A worker without the
wake file in its environment (every GPU worker) polls as Prefect does.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path

WAKE_FILE, IDLE_POLL = "PODCASTPILE_WORKER_WAKE_FILE", "PODCASTPILE_WORKER_IDLE_POLL_SECONDS"
# Under the foreman's 60 s (PREFECT_SERVER_SERVICES_FOREMAN_WORK_QUEUE_LAST_POLLED_TIMEOUT_SECONDS):
# a queue polled less often than that is shown "not ready" in the UI.
IDLE_POLL_SECONDS = 30.0
# The file is appended to (a byte per wake, so two wakes within the file system's timestamp
# granularity still differ in size) and started again past this size.
MOST_BYTES = 4096


def wake(path: Path) -> None:
    """Tell the worker watching `path` to ask for runs now (a missing file is created)."""
    with path.open("ab") as file:
        file.write(b"\n")
        if file.tell() >= MOST_BYTES:
            file.truncate(0)


class PollGate:
    """Whether the worker's poll (every second) should ask the server this time."""

    def __init__(self, path: Path, idle_seconds: float = IDLE_POLL_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path, self.idle_seconds, self.clock = path, idle_seconds, clock
        self._seen = self._stamp()
        self._asked = -math.inf  # the first poll asks

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> PollGate | None:
        """The gate `ppcli manager` asked for in the worker's environment, or None (poll as Prefect does)."""
        path = environ.get(WAKE_FILE)
        if not path:
            return None
        return cls(Path(path), float(environ.get(IDLE_POLL) or IDLE_POLL_SECONDS))

    def _stamp(self) -> tuple[int, int] | None:
        try:
            status = self.path.stat()
        except OSError:  # not created yet, or gone: no wake seen
            return None
        return status.st_mtime_ns, status.st_size

    def due(self) -> bool:
        """True when the file changed since the last look or the idle interval passed."""
        stamp, now = self._stamp(), self.clock()
        if stamp == self._seen and now - self._asked < self.idle_seconds:
            return False
        self._seen, self._asked = stamp, now
        return True
