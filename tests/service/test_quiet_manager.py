"""A quiet manager (issue 23): with nothing to do, `ppcli manager` starts no archive or dispatch
runs (the schedules of prefect.yaml are paused, its control loops ask the store instead); an
episode added while idle is dispatched within seconds; the dashboard shows the loops alive.
The figures (database growth, runs and CPU per idle hour) are bench/idle_bench.py's."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.manager import PPCLI, Manager
from tests.prefect_server import busy_retried, free_port, send_heartbeat
from tests.processes import stop_tree

CONTROLLED = {"archive": "archive", "dispatch": "dispatch", "stats": "stats", "export-dataset": "export"}


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[Manager]:
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("PREFECT_", "WORKER_", "HOST", "PORT", "DATABASE_URL"))}
    env.update({
        "DATABASE_URL": f"sqlite:///{tmp_path / 'episodes.db'}", "ARCHIVE_MODE": "off",
        "PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "2", "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5",
        "CONTROL_CHECK_SECONDS": "2",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    })
    running = Manager(env, tmp_path / "manager.log", free_port())
    try:
        running.wait_ready()
        yield running
    finally:
        stop_tree(running.process, grace=60)
        print(running.output()[-4000:])


def runs_by_deployment(manager: Manager) -> dict[str, list[dict]]:
    deployments = {d["id"]: d["name"] for d in httpx.post(f"{manager.api}/deployments/filter", json={}).json()}
    runs: dict[str, list[dict]] = {name: [] for name in deployments.values()}
    for run in httpx.post(f"{manager.api}/flow_runs/filter", json={"limit": 200}).json():
        runs[deployments.get(run["deployment_id"], "?")].append(run)
    return runs


def test_an_idle_manager_starts_nothing_and_a_new_episode_is_dispatched_at_once(manager: Manager, tmp_path: Path) -> None:
    for flow, name in CONTROLLED.items():
        deployment = httpx.get(f"{manager.api}/deployments/name/{flow}/{name}").json()
        assert deployment["paused"], f"{name}: its schedule would start runs for nothing"

    time.sleep(30)  # idle: fifteen checks of the store
    runs = runs_by_deployment(manager)
    assert runs["archive"] == [] and runs["dispatch"] == [] and runs["export"] == [], {k: len(v) for k, v in runs.items()}
    assert len(runs["stats"]) == 1  # the dashboard at start, then hourly while nothing changes

    created = subprocess.run([*PPCLI, "create", "https://podcasts.example.org/ep1.mp3", "--language", "en"],
                             cwd=tmp_path, env=manager.env, capture_output=True, text=True, timeout=60)
    assert created.returncode == 0, created.stderr
    added = time.monotonic()
    while not runs_by_deployment(manager)["gpu"]:
        assert time.monotonic() - added < 60, manager.output()[-3000:]
        time.sleep(1)
    assert len(runs_by_deployment(manager)["dispatch"]) == 1
    time.sleep(10)  # nothing changed since: no second dispatch (the waiting batch run is enough)
    assert len(runs_by_deployment(manager)["dispatch"]) == 1

    # The dashboard of the stats run says what each loop last saw.
    artifact = httpx.get(f"{manager.api}/artifacts/podcastpile-dashboard/latest").json()
    assert "Control loops" in artifact["data"] and "not checked yet" not in artifact["data"]


def test_a_started_run_that_found_nothing_to_do_is_not_kept(manager: Manager, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run the loops start may find its work gone (another run took it first): it ends
    Completed "nothing to do" and the loop that started it deletes it a while after it is over
    (once the server has recorded its task runs); a run that did something stays. Meanwhile the
    loops check every FOLLOW_SECONDS."""
    from podcastpile.cli import control
    from podcastpile.cli.control import FOLLOW_SECONDS, ControlLoops

    monkeypatch.setattr(control, "DISCARD_AFTER", 8.0)
    from podcastpile.config import Settings
    from podcastpile.prefect_api import PrefectAPI

    config = Settings(_env_file=None, database_url=manager.env["DATABASE_URL"], archive_mode="off",
                      control_check_seconds=10)
    loops = ControlLoops(PrefectAPI(manager.api), config, say=lambda line: None)
    try:
        assert loops.wait_seconds() == 10
        # ARCHIVE_MODE=off (the manager's too): the archive run finds nothing, as after a race.
        loops._start(loops.loops["archive"], {})
        loops._start(loops.loops["stats"], {"loops": {}})  # always does something: kept
        ids = {name: run_id for run_id, (name, _) in loops._followed.items()}
        assert loops.wait_seconds() == FOLLOW_SECONDS
        began = time.monotonic()
        while loops._followed:
            assert time.monotonic() - began < 120, manager.output()[-3000:]
            loops.check()
            time.sleep(FOLLOW_SECONDS)
        assert httpx.get(f"{manager.api}/flow_runs/{ids['archive']}").status_code == 200  # not at once
        while loops._discard:
            assert time.monotonic() - began < 180, manager.output()[-3000:]
            loops.check()
            time.sleep(FOLLOW_SECONDS)
        assert httpx.get(f"{manager.api}/flow_runs/{ids['archive']}").status_code == 404
        time.sleep(3)  # the server's event consumers had the time to trip over it, had it been early
        assert "FOREIGN KEY constraint failed" not in manager.output()
        assert "fk_task_run__flow_run_id" not in manager.output()
        # kept, whatever its end (its deployment's limit may cancel it beside the manager's own)
        assert httpx.get(f"{manager.api}/flow_runs/{ids['stats']}").status_code == 200
        assert loops.loops["archive"].discarded == 1 and loops.loops["stats"].discarded == 0
        assert loops.wait_seconds() == 10
    finally:
        loops.close()


def test_a_run_stranded_in_pending_or_silent_in_running_is_crashed_and_frees_its_deployments_slot(
        manager: Manager, monkeypatch: pytest.MonkeyPatch) -> None:
    """A CPU worker killed between submitting a run (PENDING) and its process starting the flow
    left the run PENDING for good, holding the dispatch deployment's only concurrency slot: every
    later dispatch run was cancelled and the queue never moved again (the chaos soak found it).
    The control loops mark such a run crashed, which gives the slot back; and a run RUNNING
    without heartbeats, which the heartbeat automation missed (CI's soak: no dispatch after a
    Prefect database outage), unless it still beats."""
    from datetime import UTC, datetime, timedelta

    from podcastpile.cli import control
    from podcastpile.config import Settings
    from podcastpile.prefect_api import PrefectAPI

    dispatch = httpx.get(f"{manager.api}/deployments/name/dispatch/dispatch").json()["id"]
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()  # no worker takes it meanwhile

    def submitted() -> tuple[str, str]:
        """A dispatch run proposed PENDING as a worker submitting it would: its state after."""
        run = busy_retried(lambda: httpx.post(
            f"{manager.api}/deployments/{dispatch}/create_flow_run",
            json={"state": {"type": "SCHEDULED", "state_details": {"scheduled_time": later}}})).json()
        answer = busy_retried(lambda: httpx.post(f"{manager.api}/flow_runs/{run['id']}/set_state",
                                                 json={"state": {"type": "PENDING"}})).json()
        return run["id"], answer["state"]["type"]

    stranded, state = submitted()
    assert state == "PENDING"
    assert submitted()[1] == "CANCELLED", "the stranded run holds the only slot (CANCEL_NEW)"

    config = Settings(_env_file=None, database_url=manager.env["DATABASE_URL"], archive_mode="off")
    loops = control.ControlLoops(PrefectAPI(manager.api), config, say=lambda line: None)
    assert loops.crash_stranded_runs() == [], "a run PENDING for seconds is starting, not stranded"
    monkeypatch.setattr(control, "STRANDED_SECONDS", 0.0)
    # Any run PENDING now counts at 0 s: also the manager's own `stats` run its CPU worker has
    # just submitted (CI), so the stranded one is among those crashed.
    assert stranded in loops.crash_stranded_runs()
    assert httpx.get(f"{manager.api}/flow_runs/{stranded}").json()["state"]["type"] == "CRASHED"
    slot_holder, state = submitted()
    assert state == "PENDING", "the slot is free again"

    # The same run started (RUNNING), then its process died with the CPU worker, and the
    # heartbeat automation missed it (its window ended while Prefect's database was down).
    set_running = busy_retried(lambda: httpx.post(f"{manager.api}/flow_runs/{slot_holder}/set_state",
                                                  json={"state": {"type": "RUNNING"}, "force": True}))
    assert set_running.json()["status"] == "ACCEPT", set_running.text
    assert submitted()[1] == "CANCELLED", "the silent run holds the only slot"
    stats = httpx.get(f"{manager.api}/deployments/name/stats/stats").json()["id"]
    beating = busy_retried(lambda: httpx.post(f"{manager.api}/deployments/{stats}/create_flow_run", json={
        "state": {"type": "RUNNING"}})).json()["id"]
    both_running = time.monotonic()
    time.sleep(8.0)
    send_heartbeat(manager.api, beating)
    # A window both runs have been RUNNING for, with the heartbeat (sent 8 s in) inside it.
    monkeypatch.setattr(control, "SILENT_SECONDS", time.monotonic() - both_running - 0.5)
    crashed = loops.crash_silent_runs()  # (the manager's own runs started at most seconds ago)
    assert slot_holder in crashed and beating not in crashed, crashed
    states = [httpx.get(f"{manager.api}/flow_runs/{run}").json()["state"]["type"] for run in (slot_holder, beating)]
    assert states == ["CRASHED", "RUNNING"], "a run that sends heartbeats is alive"
    assert submitted()[1] == "PENDING", "the slot is free again"

