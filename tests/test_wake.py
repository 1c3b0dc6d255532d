"""The manager's CPU worker asks the server for runs when woken or every 30 s, not every 10 s
(issue 23; deployments/wake.py): the gate, the worker's poll behind it, the manager's side."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from deployments.wake import IDLE_POLL, MOST_BYTES, WAKE_FILE, PollGate, wake


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_gate_asks_when_woken_or_idle_long_enough(tmp_path: Path) -> None:
    clock, path = Clock(), tmp_path / "wake"
    gate = PollGate(path, idle_seconds=30, clock=clock)
    assert gate.due(), "the first poll asks"
    clock.now += 1
    assert not gate.due()
    wake(path)  # the file did not exist: created, and seen as a wake
    assert gate.due() and not gate.due()
    wake(path)
    wake(path)  # two wakes before a look: one poll finds both runs
    assert gate.due() and not gate.due()
    clock.now += 29.5
    assert not gate.due()
    clock.now += 0.5
    assert gate.due(), "30 s without asking: asks anyway (runs nobody woke it for)"
    assert not gate.due()


def test_wakes_in_one_timestamp_tick_still_differ_and_the_file_stays_small(tmp_path: Path) -> None:
    clock, path = Clock(), tmp_path / "wake"
    path.touch()
    gate = PollGate(path, idle_seconds=30, clock=clock)
    assert gate.due()
    for _ in range(3 * MOST_BYTES):
        wake(path)
        assert gate.due(), "every wake is seen, whatever the file system's timestamp granularity"
    assert path.stat().st_size < MOST_BYTES


def test_only_the_managers_worker_has_a_gate(tmp_path: Path) -> None:
    assert PollGate.from_environment({}) is None  # a GPU worker polls as Prefect does
    gate = PollGate.from_environment({WAKE_FILE: str(tmp_path / "w"), IDLE_POLL: "12"})
    assert gate is not None and gate.path == tmp_path / "w" and gate.idle_seconds == 12


def test_the_worker_asks_the_server_only_when_its_gate_says(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.workers.process import ProcessWorker

    from deployments.worker import PodcastPileWorker

    asked: list[int] = []

    async def asking(self: Any) -> list:
        asked.append(1)
        return []

    monkeypatch.setattr(ProcessWorker, "get_and_submit_flow_runs", asking)
    monkeypatch.setenv(WAKE_FILE, str(tmp_path / "wake"))
    worker = PodcastPileWorker(work_pool_name="cpu")
    for _ in range(5):
        asyncio.run(worker.get_and_submit_flow_runs())
    assert len(asked) == 1
    wake(tmp_path / "wake")
    asyncio.run(worker.get_and_submit_flow_runs())
    assert len(asked) == 2

    monkeypatch.delenv(WAKE_FILE)
    plain = PodcastPileWorker(work_pool_name="gpu")
    for _ in range(3):
        asyncio.run(plain.get_and_submit_flow_runs())
    assert len(asked) == 5, "without a wake file every poll asks"


def test_the_control_loops_wake_the_worker_after_creating_a_run(tmp_path: Path) -> None:
    from podcastpile.cli.control import ControlLoops
    from podcastpile.config import Settings
    from podcastpile.prefect_api import PrefectAPI

    config = Settings(_env_file=None, database_url=f"sqlite:///{tmp_path / 'episodes.db'}")
    woken: list[int] = []
    loops = ControlLoops(PrefectAPI("http://127.0.0.1:9/api"), config, say=lambda line: None,
                         started=lambda: woken.append(len(calls)))
    calls: list[str] = []

    def http(method: str, path: str, body: dict | None = None, missing_ok: bool = False) -> Any:
        calls.append(path)
        return {"id": "run-1"} if path.endswith("/create_flow_run") else {"id": "deployment-1"}

    loops._http = http  # type: ignore[method-assign]
    loops._start(loops.loops["dispatch"], {})
    assert woken == [2], "woken once, after the run was created (not before: it would find nothing)"
