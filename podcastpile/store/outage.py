"""Riding out a database outage: retry a store call with backoff for up to a time budget.

A worker's finished result is hours of GPU time. When the episode database restarts or is
unreachable for a while, the call that stores a result (or records a failure, a start, a
release) waits and retries instead of throwing the result away; the result stays in memory
meanwhile and is stored, still fenced by its lease token, when the database is back. Only a
connection-level failure is retried: a lost lease or a bad statement fails at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.exc import DBAPIError, OperationalError

log = logging.getLogger(__name__)
T = TypeVar("T")
FIRST_DELAY_SECONDS = 0.5
MAX_DELAY_SECONDS = 15.0


class StoreOutage(RuntimeError):
    """The episode database stayed unreachable for longer than the outage budget."""


def is_connection_failure(error: BaseException) -> bool:
    """True for errors that mean "the database is not reachable now", not "this call is wrong"."""
    if isinstance(error, OperationalError):
        return True
    return isinstance(error, DBAPIError) and bool(error.connection_invalidated)


def ride_out(
    call: Callable[[], T],
    *,
    budget_seconds: float,
    what: str = "store call",
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """Run `call`, retrying connection failures with exponential backoff for `budget_seconds`.

    Raises `StoreOutage` once the budget is spent (chained to the last error).
    """
    deadline = clock() + budget_seconds
    delay = FIRST_DELAY_SECONDS
    attempt = 0
    while True:
        attempt += 1
        try:
            return call()
        except Exception as error:
            if not is_connection_failure(error):
                raise
            left = deadline - clock()
            if left <= 0:
                raise StoreOutage(
                    f"episode database unreachable for over {budget_seconds:g} s ({what}, {attempt} tries)"
                ) from error
            if attempt == 1 or attempt % 10 == 0:
                first = (str(getattr(error, "orig", error)).strip().splitlines() or [""])[0][:200]
                log.warning("%s: database unreachable (%s); retrying for up to %.0f s more", what, first, left)
            sleep(min(delay, left))
            delay = min(delay * 2, MAX_DELAY_SECONDS)
