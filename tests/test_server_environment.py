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
    """deployments/server.py wraps Prefect's docket worker: its 250 ms checks were a quarter of an
    idle server's CPU. In a process of its own: the change is process-wide."""
    import subprocess
    import sys

    code = ("from deployments.server import slower_task_queue\n"
            "from prefect.server.api import background_workers as b\n"
            "assert slower_task_queue() and slower_task_queue(), 'applies, and once only'\n"
            "print(b.Worker.keywords['minimum_check_interval'].total_seconds(),"
            " b.Worker.keywords['scheduling_resolution'].total_seconds(), b.Worker.func.__module__)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1.0", "1.0", "docket.worker"]
