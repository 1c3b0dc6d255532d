"""Workers run only this project's code (issue 22): the attack an operator found, as a test.

Whoever can create a deployment on a pool (anyone who reaches an open API; with auth on, anyone
holding the worker password) tries to run a shell command on the workers: a deployment whose
pull step is `run_shell_script`, one named like ours with a command in its job variables, and a
run of our own deployment with its command overridden. On `cpu` (served by `ppcli worker`, as
the manager's own CPU worker is) and on `gpu` (served by a plain `prefect worker start --pool
gpu`, which gets the pool's worker type from `ppcli setup`), with auth off and on: nothing of it
runs, each run ends `Failed` named `Refused` with the reason, and `ppcli stats` and the
dashboard count them. One of our deployments still runs (the stats flow: it writes the
dashboard), so the test cannot pass with workers that run nothing.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.manager import PPCLI, ROOT
from tests.prefect_server import PREFECT, prefect_server
from tests.processes import stop_tree

PASSWORD = "operator:correct horse battery"
FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


class Fleet:
    """A Prefect server set up by `ppcli setup`, a CPU and a GPU worker, and an API client
    holding whatever the attacker holds (nothing, or the password)."""

    def __init__(self, env: dict[str, str], tmp: Path, auth: str | None) -> None:
        self.env, self.tmp = env, tmp
        self.api = env["PREFECT_API_URL"]
        headers = {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()} if auth else {}
        self.client = httpx.Client(base_url=self.api, headers=headers, timeout=30)
        self.ours = {d["name"]: d for d in self.post("/deployments/filter", {})}

    def post(self, path: str, body: dict) -> dict:
        answer = self.client.post(path, json=body)
        assert answer.status_code < 300, (path, answer.status_code, answer.text[:500])
        return answer.json()

    def deployment(self, name: str) -> dict:
        """One of the deployments `ppcli setup` made (an attacker's may share its name)."""
        return self.ours[name]

    def attacker_deployment(self, name: str, pool: str, **fields: object) -> dict:
        flow = self.post("/flows/", {"name": f"attacker-{name}"})
        return self.post("/deployments/", {"name": name, "flow_id": flow["id"], "work_pool_name": pool, **fields})

    def run(self, deployment: dict, **fields: object) -> str:
        """Start a run and wait until it is final; returns its id."""
        run_id = self.post(f"/deployments/{deployment['id']}/create_flow_run", fields)["id"]
        self.final_state(run_id)
        return run_id

    def final_state(self, run_id: str, timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.client.get(f"/flow_runs/{run_id}").json()["state"]
            if state and state["type"] in FINAL:
                return state
            time.sleep(1)
        raise AssertionError(f"run {run_id} not final after {timeout} s: {state}")


@pytest.fixture(scope="module", params=["auth-off", "auth-on"])
def fleet(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    tmp = tmp_path_factory.mktemp(request.param)
    auth = PASSWORD if request.param == "auth-on" else None
    with prefect_server(tmp, auth=auth) as prefect_env:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "WORKER_"))},
            **prefect_env,
            "DATABASE_URL": f"sqlite:///{tmp / 'episodes.db'}", "ARCHIVE_MODE": "off",
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        # Pools left by an older setup, of Prefect's `process` type: setup makes them again as ours.
        headers = {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()} if auth else {}
        for pool in ("gpu", "cpu"):
            httpx.post(f"{env['PREFECT_API_URL']}/work_pools/", json={"name": pool, "type": "process"},
                       headers=headers).raise_for_status()
        setup = subprocess.run([*PPCLI, "setup"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert setup.returncode == 0, setup.stdout + setup.stderr
        fleet = Fleet(env, tmp, auth)
        pools = fleet.post("/work_pools/filter", {})
        assert {p["name"]: p["type"] for p in pools} == {"gpu": "podcastpile", "cpu": "podcastpile"}
        # No schedules: the only runs are the test's (a scheduled stats run would race the count).
        for deployment in fleet.ours.values():
            fleet.client.patch(f"/deployments/{deployment['id']}", json={"paused": True}).raise_for_status()
        workers = []
        for pool, command in (("cpu", [*PPCLI, "worker", "--pool", "cpu", "-i", "cpu-box", "--limit", "4"]),
                              ("gpu", [PREFECT, "worker", "start", "--pool", "gpu", "--name", "gpu-box"])):
            log = (tmp / f"worker-{pool}.log").open("w")
            workers.append((log, subprocess.Popen(command, cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT,
                                                  start_new_session=True)))
        try:
            yield fleet
        finally:
            for log, worker in workers:
                stop_tree(worker, grace=30)
                log.close()
                print(Path(log.name).read_text()[-3000:])
            fleet.client.close()


def attacks(fleet: Fleet, pool: str, ours: str) -> dict[str, tuple[str, Path]]:
    """Every attack on `pool`, one after the other (`stats` takes one run at a time and cancels
    the others); returns the run id and the file each would create, by name."""
    started = {}

    def marker(name: str) -> Path:
        path = fleet.tmp / f"{pool}-{name}.pwned"
        path.unlink(missing_ok=True)
        return path

    touch = marker("shell-pull-step")
    evil = fleet.attacker_deployment(
        f"shell-{pool}", pool, entrypoint="flows/stats.py:stats_flow",
        pull_steps=[{"prefect.deployments.steps.run_shell_script": {"script": f"touch {touch}"}}],
    )
    started["shell-pull-step"] = (fleet.run(evil), touch)

    touch = marker("named-like-ours")
    mimic = fleet.attacker_deployment(
        ours, pool, entrypoint=fleet.deployment(ours)["entrypoint"], job_variables={"command": f"touch {touch}"},
    )
    started["named-like-ours"] = (fleet.run(mimic), touch)

    touch = marker("overridden-command")
    started["overridden-command"] = (fleet.run(fleet.deployment(ours), job_variables={"command": f"touch {touch}"}), touch)

    touch = marker("overridden-env")
    started["overridden-env"] = (
        fleet.run(fleet.deployment(ours), job_variables={"env": {"PYTHONSTARTUP": str(touch)}}), touch)
    return started


@pytest.mark.parametrize(("pool", "ours"), [("cpu", "stats"), ("gpu", "gpu")])
def test_nothing_but_our_deployments_runs_on_a_worker(fleet: Fleet, pool: str, ours: str) -> None:
    started = attacks(fleet, pool, ours)
    for name, (run_id, touched) in started.items():
        state = fleet.final_state(run_id)
        assert (state["type"], state["name"]) == ("FAILED", "Refused"), (name, state)
        assert state["message"].startswith(f"refused by worker {pool}-box"), (name, state["message"])
        assert not touched.exists(), f"{name}: the attacker's command ran on the {pool} worker"
    reasons = {name: fleet.client.get(f"/flow_runs/{run_id}").json()["state"]["message"]
               for name, (run_id, _) in started.items()}
    assert "not in this worker's prefect.yaml" in reasons["shell-pull-step"]
    assert "sets job variables command" in reasons["named-like-ours"]
    assert "overrides job variables command" in reasons["overridden-command"]
    assert "overrides job variables env" in reasons["overridden-env"]


def test_a_run_may_not_choose_where_the_export_writes(fleet: Fleet) -> None:
    """A run of our export deployment with `out=` (or the deployment's parameters changed to
    give one) would have the manager's CPU worker write wherever the password holder says."""
    export = fleet.deployment("export")
    elsewhere = fleet.tmp / "elsewhere"
    runs = [fleet.run(export, parameters={"out": str(elsewhere)})]
    fleet.client.patch(f"/deployments/{export['id']}", json={"parameters": {"out": str(elsewhere)}}).raise_for_status()
    try:
        runs.append(fleet.run(export))
    finally:
        fleet.client.patch(f"/deployments/{export['id']}", json={"parameters": {}}).raise_for_status()
    for run_id in runs:
        state = fleet.final_state(run_id)
        assert (state["type"], state["name"]) == ("FAILED", "Refused"), state
        assert state["message"] == (f"refused by worker cpu-box: parameter 'out' of deployment 'export' is "
                                    f"{str(elsewhere)!r}, but only this worker's prefect.yaml sets it (unset: the "
                                    "flow's default): a run may not choose where the worker writes or what it drives")
    assert not elsewhere.exists()


def test_our_deployment_still_runs_and_refusals_are_counted(fleet: Fleet) -> None:
    started = attacks(fleet, "cpu", "stats")
    allowed = fleet.run(fleet.deployment("stats"))
    assert fleet.final_state(allowed)["type"] == "COMPLETED"

    refused = fleet.post("/flow_runs/count", {"flow_runs": {"state": {"name": {"any_": ["Refused"]}}}})
    assert refused >= len(started)
    stats = subprocess.run([*PPCLI, "stats", "--json"], cwd=fleet.tmp, env=fleet.env, capture_output=True,
                           text=True, timeout=60)
    assert stats.returncode == 0, stats.stderr
    counted = json.loads(stats.stdout)
    assert counted["refused_runs"] == refused and counted["refused_runs_last_reason"].startswith("refused by worker")
    shown = subprocess.run([*PPCLI, "stats"], cwd=fleet.tmp, env=fleet.env, capture_output=True, text=True, timeout=60)
    assert f"flow runs refused by workers: {refused}" in shown.stdout

    # The dashboard the allowed stats run wrote says so too.
    artifact = fleet.client.get("/artifacts/podcastpile-dashboard/latest").json()
    assert "refused by workers" in artifact["data"]


def test_a_pool_template_changed_on_the_server_changes_nothing_a_run_does(fleet: Fleet) -> None:
    """Whoever holds the API can rewrite a pool's job template (its command, its environment):
    the worker builds each run's configuration from its own checkout instead."""
    touched = fleet.tmp / "cpu-template.pwned"
    pool = fleet.client.get("/work_pools/cpu").json()
    template = json.loads(json.dumps(pool["base_job_template"]))
    template["job_configuration"]["command"] = f"touch {touched}"
    template["job_configuration"]["working_dir"] = str(fleet.tmp)
    fleet.client.patch("/work_pools/cpu", json={"base_job_template": template}).raise_for_status()
    try:
        time.sleep(3)  # the worker reads its pool again on its next poll
        run_id = fleet.run(fleet.deployment("stats"))
        assert fleet.final_state(run_id)["type"] == "COMPLETED"
        assert not touched.exists(), "the worker ran the command of the server's template"
    finally:
        fleet.client.patch("/work_pools/cpu", json={"base_job_template": pool["base_job_template"]}).raise_for_status()
