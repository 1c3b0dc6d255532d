"""Dispatch runs that fell late while no CPU worker was up are cancelled, not executed one after
another, when a worker comes back; and none of them ever goes to the GPU pool.

`prefect.yaml` gives the `dispatch` deployment `concurrency_limit: {limit: 1,
collision_strategy: CANCEL_NEW}`. A worker without a limit (as the README starts it) submits
the late runs it finds together; the server lets the first take the deployment's one slot and
answers the others' PENDING proposal with CANCELLED. A worker taking one run at a time
(`--limit 1`, `ppcli worker`'s default) would start them one after another (measured: all
six ran, 6 s apart); there the first dispatch run cancels the other late ones before any
worker takes them. Either way no cancelled run starts a process. Real Prefect server on
PostgreSQL, `deployments/setup.sh`, a real `prefect worker start --pool cpu`.
"""

from __future__ import annotations

import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from podcastpile.store import make_engine, migrate
from tests import postgres
from tests.pipeline.test_crash_recovery import kill_tree, stack_environment
from tests.pipeline.test_worker_e2e import run
from tests.prefect_server import PREFECT, prefect_server

FINAL = {"COMPLETED", "CANCELLED", "FAILED", "CRASHED"}


@pytest.mark.parametrize("limit", [None, 1], ids=["no-limit", "limit-1"])
def test_late_dispatch_runs_are_cancelled_not_run_one_after_another(tmp_path: Path, limit: int | None) -> None:
    with postgres.fresh_database("episodes") as episodes_url, prefect_server(tmp_path) as prefect_env:
        env = stack_environment(prefect_env, episodes_url)
        run(["bash", "deployments/setup.sh"], env)
        api = prefect_env["PREFECT_API_URL"]
        dispatch = httpx.get(f"{api}/deployments/name/dispatch/dispatch").json()
        assert dispatch["work_pool_name"] == "cpu"

        # Six runs of the last three minutes that no worker took, as the schedule leaves them
        # while the CPU worker is down.
        now = datetime.now(UTC)
        late = []
        for minutes in range(6):
            when = (now - timedelta(seconds=180 - 30 * minutes)).isoformat()
            created = httpx.post(f"{api}/deployments/{dispatch['id']}/create_flow_run", json={
                "state": {"type": "SCHEDULED", "state_details": {"scheduled_time": when}}})
            assert created.status_code in (200, 201), created.text
            late.append(created.json()["id"])

        engine = make_engine(episodes_url)
        migrate(engine)  # dispatch reads the episode store
        engine.dispose()
        log = tmp_path / "cpu.log"
        command = [PREFECT, "worker", "start", "--pool", "cpu", *(["--limit", str(limit)] if limit else [])]
        worker = subprocess.Popen(command, cwd=tmp_path, env=env,
                                  stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 180
            while True:
                runs = {r["id"]: r for r in httpx.post(f"{api}/flow_runs/filter", json={
                    "flow_runs": {"id": {"any_": late}}}).json()}
                if all(r["state"]["type"] in FINAL for r in runs.values()):
                    break
                assert time.monotonic() < deadline, (
                    [(r["state"]["type"], r["state"]["name"]) for r in runs.values()], log.read_text()[-3000:])
                time.sleep(1)
        finally:
            kill_tree(worker)

        outcomes = sorted(r["state"]["type"] for r in runs.values())
        executed = [r for r in runs.values() if r["state"]["type"] == "COMPLETED"]
        assert 1 <= len(executed) <= 2 and outcomes.count("CANCELLED") == 6 - len(executed), (
            outcomes, log.read_text()[-3000:])
        cancelled = [r["id"] for r in runs.values() if r["state"]["type"] == "CANCELLED"]
        tasks = httpx.post(f"{api}/task_runs/filter", json={"flow_runs": {"id": {"any_": cancelled}}}).json()
        assert tasks == [], "a cancelled late run did none of dispatch's work"

        # The GPU pool never gets a dispatch run: every run of the deployment is on `cpu`, and
        # nothing on `gpu` belongs to it.
        everything = httpx.post(f"{api}/flow_runs/filter", json={
            "deployments": {"id": {"any_": [dispatch["id"]]}}, "limit": 200}).json()
        assert everything and {r["work_pool_name"] for r in everything} == {"cpu"}
        on_gpu = httpx.post(f"{api}/flow_runs/filter", json={"work_pools": {"name": {"any_": ["gpu"]}}}).json()
        assert dispatch["id"] not in {r["deployment_id"] for r in on_gpu}
