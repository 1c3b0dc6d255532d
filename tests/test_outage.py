"""`ride_out`: connection failures are retried with backoff within a budget; other errors are not."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import OperationalError, ProgrammingError

from podcastpile.store.outage import StoreOutage, ride_out


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def down(times: int):  # type: ignore[no-untyped-def]
    calls = {"n": 0}

    def call() -> str:
        calls["n"] += 1
        if calls["n"] <= times:
            raise OperationalError("SELECT 1", {}, Exception("server closed the connection unexpectedly"))
        return "stored"

    return call, calls


def test_connection_failures_are_retried_with_growing_delays() -> None:
    clock = Clock()
    call, calls = down(6)
    assert ride_out(call, budget_seconds=300, sleep=clock.sleep, clock=clock) == "stored"
    assert calls["n"] == 7
    assert clock.sleeps == [0.5, 1.0, 2.0, 4.0, 8.0, 15.0]


def test_budget_spent_raises_store_outage() -> None:
    clock = Clock()
    call, calls = down(10**6)
    with pytest.raises(StoreOutage, match="over 60 s"):
        ride_out(call, budget_seconds=60, sleep=clock.sleep, clock=clock)
    assert 60 <= clock.now <= 61 and calls["n"] > 5


def test_other_errors_are_not_retried() -> None:
    calls = {"n": 0}

    def bad() -> None:
        calls["n"] += 1
        raise ProgrammingError("SELECT nope", {}, Exception("syntax error"))

    with pytest.raises(ProgrammingError):
        ride_out(bad, budget_seconds=300, sleep=lambda s: None)
    assert calls["n"] == 1
