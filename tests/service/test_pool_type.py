"""A worker's type comes from its own `--type`, never from the pool on the server (issue 22).

A plain `prefect worker start --pool gpu` takes its worker type from the pool. Whoever holds
the password can delete the `gpu` pool and make it again as Prefect's `process` type; at its
next restart such a worker is Prefect's process worker and runs a deployment's shell pull step.
The documented command, `prefect worker start --pool gpu --type podcastpile`, still refuses it,
and `ppcli worker` (which passes `--type` too) says in one line that the pool is not ours. The
same attack on a worker without `--type` shows that the test's deployment would run otherwise.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.manager import PPCLI
from tests.prefect_server import PREFECT, prefect_server
from tests.processes import stop_tree

PASSWORD = "operator:correct horse battery"
FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, str], httpx.Client, Path]]:
    tmp = tmp_path_factory.mktemp("pool-type")
    with prefect_server(tmp, auth=PASSWORD) as prefect_env:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "WORKER_"))},
            **prefect_env,
            "DATABASE_URL": f"sqlite:///{tmp / 'episodes.db'}", "ARCHIVE_MODE": "off",
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        headers = {"Authorization": "Basic " + base64.b64encode(PASSWORD.encode()).decode()}
        with httpx.Client(base_url=env["PREFECT_API_URL"], headers=headers, timeout=30) as client:
            yield env, client, tmp


def _ok(answer: httpx.Response) -> dict:
    assert answer.status_code < 300, (answer.request.url, answer.status_code, answer.text[:500])
    return answer.json() if answer.content else {}


def _final_state(client: httpx.Client, run_id: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    state = None
    while time.monotonic() < deadline:
        state = client.get(f"/flow_runs/{run_id}").json()["state"]
        if state and state["type"] in FINAL:
            return state
        time.sleep(1)
    raise AssertionError(f"run {run_id} not final after {timeout} s: {state}")


def _worker(env: dict[str, str], tmp: Path, name: str, command: list[str]) -> tuple[subprocess.Popen, Path]:
    log = tmp / f"{name}.log"
    with log.open("w") as out:
        process = subprocess.Popen(command, cwd=tmp, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    return process, log


def test_a_pool_made_again_as_process_changes_nothing_for_a_typed_worker(server) -> None:
    env, client, tmp = server
    # What `ppcli setup` made, then the attacker's pool of the same name: a pool's type cannot
    # be changed, but a password holder can delete it and make it again.
    _ok(client.post("/work_pools/", json={"name": "gpu", "type": "podcastpile"}))
    _ok(client.delete("/work_pools/gpu"))
    _ok(client.post("/work_pools/", json={"name": "gpu", "type": "process"}))
    flow = _ok(client.post("/flows/", json={"name": "attacker"}))
    touched = tmp / "gpu-shell.pwned"
    evil = _ok(client.post("/deployments/", json={
        "name": "shell", "flow_id": flow["id"], "work_pool_name": "gpu", "entrypoint": "flows/stats.py:stats_flow",
        "pull_steps": [{"prefect.deployments.steps.run_shell_script": {"script": f"touch {touched}"}}],
    }))

    # `ppcli worker` says so in one line at start (and passes --type itself).
    ppcli, log = _worker(env, tmp, "ppcli-box", [*PPCLI, "worker", "--pool", "gpu", "-i", "ppcli-box",
                                                 "-m", env["PREFECT_API_URL"], "-p", PASSWORD])
    try:
        deadline = time.monotonic() + 120
        while "warning: pool 'gpu' is of type 'process'" not in log.read_text():
            assert ppcli.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
    finally:
        stop_tree(ppcli, grace=30)
    warnings = [line for line in log.read_text().splitlines() if line.startswith("warning: pool")]
    assert warnings == [("warning: pool 'gpu' is of type 'process', not 'podcastpile': this worker still runs only "
                         "its own deployments (--type podcastpile), but a worker started there without --type would "
                         "run anything; `ppcli setup` makes it of our type again")]

    # The documented plain command refuses the shell pull step: nothing of it runs.
    typed, log = _worker(env, tmp, "typed-box", [PREFECT, "worker", "start", "--pool", "gpu", "--type", "podcastpile",
                                                 "--name", "typed-box"])
    try:
        run_id = _ok(client.post(f"/deployments/{evil['id']}/create_flow_run", json={}))["id"]
        state = _final_state(client, run_id)
    finally:
        stop_tree(typed, grace=30)
    assert (state["type"], state["name"]) == ("FAILED", "Refused"), (state, log.read_text()[-3000:])
    assert state["message"].startswith("refused by worker typed-box: deployment 'shell' is not in this worker's")
    assert not touched.exists(), "a --type podcastpile worker ran the shell pull step of a process pool's deployment"

    # Without --type the same worker is Prefect's process worker, which runs it: what the
    # documentation no longer recommends, and proof that the attack above is a real one.
    untyped, log = _worker(env, tmp, "untyped-box", [PREFECT, "worker", "start", "--pool", "gpu",
                                                     "--name", "untyped-box"])
    try:
        run_id = _ok(client.post(f"/deployments/{evil['id']}/create_flow_run", json={}))["id"]
        _final_state(client, run_id)
    finally:
        stop_tree(untyped, grace=30)
    assert touched.exists(), log.read_text()[-3000:]
