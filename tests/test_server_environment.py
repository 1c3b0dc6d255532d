"""The Prefect server's environment under `ppcli manager` (issue 23): Prefect's idle services
slowed by default, an operator's own setting kept, and what the pipeline needs left on."""

from __future__ import annotations

from pathlib import Path

import pytest

from podcastpile.cli.stack import IDLE_SERVICES, Stack
from podcastpile.config import Settings
from podcastpile.prefect_api import PrefectAPI


def server_environment(tmp_path: Path) -> dict[str, str]:
    config = Settings(_env_file=None, database_url=f"sqlite:///{tmp_path / 'episodes.db'}")
    return Stack("127.0.0.1", 4200, None, PrefectAPI("http://127.0.0.1:4200/api"), config, None, 1)._server_environment()


def test_idle_services_are_slowed_and_an_operator_setting_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in IDLE_SERVICES:
        monkeypatch.delenv(name, raising=False)
    assert server_environment(tmp_path)["PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED"] == "false"
    monkeypatch.setenv("PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED", "true")
    env = server_environment(tmp_path)
    assert env["PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED"] == "true"  # the operator's
    assert env["PREFECT_SERVER_SERVICES_LATE_RUNS_LOOP_SECONDS"] == "60"

    # Prefect reads them as meant (a misspelt name would be ignored silently).
    from prefect.settings.models.server.events import ServerEventsSettings
    from prefect.settings.models.server.services import ServerServicesSettings

    for name, value in env.items():
        if name.startswith("PREFECT_SERVER_"):
            monkeypatch.setenv(name, value)
    services, events = ServerServicesSettings(), ServerEventsSettings()
    assert services.scheduler.enabled
    assert services.late_runs.loop_seconds == 60 and services.pause_expirations.loop_seconds == 300
    assert services.cancellation_cleanup.loop_seconds == 60 and services.cleanup_reconciler.loop_seconds == 30
    assert services.foreman.loop_seconds == 30 and events.proactive_granularity.total_seconds() == 15
    # What the pipeline needs stays on: crash detection (triggers), worker status (foreman),
    # the deployments' concurrency slots of dead runs (repossessor, at Prefect's pace).
    assert services.triggers.enabled and services.foreman.enabled and services.repossessor.enabled
    assert services.repossessor.loop_seconds == 15


def test_the_cpu_worker_is_woken_and_polls_the_server_every_30_s(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """deployments/wake.py: a look at its wake file every second, a request when woken or every 30 s."""
    from deployments.wake import IDLE_POLL, WAKE_FILE, PollGate

    for name in ("PREFECT_WORKER_QUERY_SECONDS", IDLE_POLL, WAKE_FILE):
        monkeypatch.delenv(name, raising=False)
    config = Settings(_env_file=None, database_url=f"sqlite:///{tmp_path / 'episodes.db'}")
    stack = Stack("127.0.0.1", 4200, None, PrefectAPI("http://127.0.0.1:4200/api"), config, None, 1)
    stack.wake_file = tmp_path / "wake"
    env = stack._worker_environment()
    assert env["PREFECT_WORKER_QUERY_SECONDS"] == "1" and env[WAKE_FILE] == str(tmp_path / "wake")
    gate = PollGate.from_environment(env)
    assert gate is not None and gate.idle_seconds == 30

    from prefect.settings.models.worker import WorkerSettings

    monkeypatch.setenv("PREFECT_WORKER_QUERY_SECONDS", env["PREFECT_WORKER_QUERY_SECONDS"])
    assert WorkerSettings().query_seconds == 1  # Prefect reads it as meant
    monkeypatch.setenv("PREFECT_WORKER_QUERY_SECONDS", "5")
    assert stack._worker_environment()["PREFECT_WORKER_QUERY_SECONDS"] == "5"  # the operator's

    assert gate.due() and not gate.due()  # the first poll asks; then only when woken
    stack.wake_worker()
    assert gate.due() and not gate.due()
    stack.wake_file.unlink()
    stack.wake_file = None
    stack.wake_worker()  # no wake file (no worker started): nothing to do, no error
    assert WAKE_FILE not in stack._worker_environment()


def test_the_servers_task_queue_checks_every_second_not_every_quarter_second() -> None:
    """deployments/idle.py wraps Prefect's docket worker: its 250 ms checks were a quarter of an
    idle server's CPU. In a process of its own: the change is process-wide."""
    import subprocess
    import sys

    code = ("from deployments.idle import slower_task_queue\n"
            "from prefect.server.api import background_workers as b\n"
            "assert slower_task_queue() and slower_task_queue(), 'applies, and once only'\n"
            "print(b.Worker.keywords['minimum_check_interval'].total_seconds(),"
            " b.Worker.keywords['scheduling_resolution'].total_seconds(), b.Worker.func.__module__)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1.0", "1.0", "docket.worker"]


def test_a_short_pubsub_wait_is_one_thread_hand_off_and_a_message_still_ends_it_at_once() -> None:
    """docket's cancellation listener waits 0.1 s for a message, in a loop; burner-redis made each
    wait a thread hand-off, ten a second while idle. Patched (deployments/idle.py), a short wait
    blocks once for up to a second, and a message published meanwhile is returned at once."""
    import subprocess
    import sys

    code = """
import asyncio, time
from unittest import mock
from deployments.idle import longer_pubsub_waits
assert longer_pubsub_waits() and longer_pubsub_waits(), 'applies, and once only'
from burner_redis import BurnerRedis

async def main():
    redis = BurnerRedis()
    pubsub = redis.pubsub()
    await pubsub.psubscribe('cancel:*')
    assert (await pubsub.get_message(timeout=1.0))['type'] == 'psubscribe'
    real = asyncio.to_thread
    with mock.patch('asyncio.to_thread', side_effect=real) as hand_offs:
        started = time.monotonic()
        assert await pubsub.get_message(timeout=0.1) is None
        quiet = time.monotonic() - started
    later = asyncio.get_running_loop().call_later(0.3, lambda: asyncio.ensure_future(redis.publish('cancel:x', 'go')))
    started = time.monotonic()
    message = await pubsub.get_message(timeout=0.1)
    print(hand_offs.call_count, round(quiet, 1), message and message['type'], round(time.monotonic() - started, 1))

asyncio.run(main())
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0, done.stderr
    hand_offs, quiet, kind, waited = done.stdout.split()
    assert (hand_offs, quiet) == ("1", "1.0"), "one wait of a second, not ten of 0.1 s"
    assert kind == "pmessage" and float(waited) < 0.9, "a message ends the wait when it comes"


def test_the_quiet_uvicorn_server_serves_and_stops_within_a_second() -> None:
    """uvicorn's main loop woke every 0.1 s to see whether to exit; the manager's ticks every
    second (deployments/idle.py): it still serves, and stops at most a second after asked."""
    import asyncio
    import socket
    import threading
    import time

    import httpx
    import uvicorn

    from deployments.idle import quiet_uvicorn_server

    quiet = quiet_uvicorn_server()
    assert quiet is not None and issubclass(quiet, uvicorn.Server)

    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = quiet(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "never started"
        time.sleep(0.05)
    answer = httpx.get(f"http://127.0.0.1:{port}/")
    assert (answer.status_code, answer.text) == (200, "ok")
    assert answer.headers.get("date"), "the once-a-second work (the Date header) still runs"
    asked = time.monotonic()
    server.should_exit = True
    thread.join(10)
    assert not thread.is_alive() and time.monotonic() - asked < 2.5
