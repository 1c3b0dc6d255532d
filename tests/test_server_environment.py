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
