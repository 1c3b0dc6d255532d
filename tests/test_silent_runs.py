"""Dispatch's backstop for the heartbeat automation: a batch run still RUNNING but silent for
longer than the window is marked CRASHED (its episodes then go back to the queue); a run that
sends heartbeats, or one that started within the window, is left alone. Against a real Prefect
server, with real heartbeat events."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
from prefect.settings import PREFECT_API_URL, temporary_settings

from tasks.dispatch import crash_silent_runs
from tests.prefect_server import prefect_server, send_heartbeat

# Seconds of silence that count as dead here (5 minutes in production): long enough that the
# beating run's heartbeat, sent after the wait, is still inside it once the server has stored it.
WINDOW = 15.0


def _running(api: str, deployment_id: str, flow_id: str) -> str:
    run = httpx.post(f"{api}/deployments/{deployment_id}/create_flow_run", json={}).json()
    answer = httpx.post(f"{api}/flow_runs/{run['id']}/set_state", json={"state": {"type": "RUNNING"}, "force": True})
    assert answer.status_code in (200, 201), answer.text
    return str(run["id"])


def _state(api: str, run_id: str) -> str:
    return httpx.get(f"{api}/flow_runs/{run_id}").json()["state"]["type"]


def test_a_silent_running_batch_is_marked_crashed_and_a_beating_one_is_not(tmp_path: Path) -> None:
    with prefect_server(tmp_path) as prefect_env:
        api = prefect_env["PREFECT_API_URL"]
        flow_id = httpx.post(f"{api}/flows/", json={"name": "process-batch"}).json()["id"]
        deployment_id = httpx.post(f"{api}/deployments/", json={"name": "gpu", "flow_id": flow_id}).json()["id"]
        silent, beating = _running(api, deployment_id, flow_id), _running(api, deployment_id, flow_id)
        time.sleep(WINDOW + 1)  # both have run longer than the window
        send_heartbeat(api, beating)
        young = _running(api, deployment_id, flow_id)  # started within the window

        with temporary_settings(updates={PREFECT_API_URL: api}):
            crashed = crash_silent_runs.fn("process-batch/gpu", silent_seconds=WINDOW)

        assert crashed == [silent]
        assert (_state(api, silent), _state(api, beating), _state(api, young)) == ("CRASHED", "RUNNING", "RUNNING")
        message = httpx.get(f"{api}/flow_runs/{silent}").json()["state"]["message"]
        assert f"No heartbeat for {WINDOW:g} s" in message
