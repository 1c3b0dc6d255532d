"""End to end as a user runs it: Prefect server, `prefect deploy` from prefect.yaml, a real
`prefect worker` on pool `gpu`, episodes created with `ppcli create`, nothing else done by hand."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from podcastpile.store import EpisodeStore, make_engine, migrate
from tests import postgres
from tests.pipeline.conftest import AudioHost, pipeline_environment
from tests.prefect_server import PREFECT, prefect_server

ROOT = Path(__file__).resolve().parent.parent.parent


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{args} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[dict[str, str]]:
    """Prefect server + deployments + one worker; yields the environment clients use."""
    with postgres.fresh_database("episodes") as episodes_url, prefect_server(tmp_path) as prefect_env:
        env = {
            **os.environ, **prefect_env, **pipeline_environment(episodes_url),
            "PREFECT_WORKER_QUERY_SECONDS": "2",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        run(["bash", "deployments/setup.sh"], env)
        worker_log = (tmp_path / "worker.log").open("w")
        worker = subprocess.Popen(
            [PREFECT, "worker", "start", "--pool", "gpu", "--limit", "1"],
            cwd=tmp_path, env=env, stdout=worker_log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            yield env
        finally:
            os.killpg(worker.pid, signal.SIGTERM)
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
            worker_log.close()
            print((tmp_path / "worker.log").read_text()[-5000:])


def test_created_episodes_get_processed_by_the_worker(stack: dict[str, str], audio_host: AudioHost, conversation: dict) -> None:
    names = ["good-1.wav", "missing.wav", "good-2.wav"]
    for name in names:
        run([sys.executable, "-m", "podcastpile.cli", "create", audio_host.url(name), "--language", "en"], stack)

    engine = make_engine(stack["DATABASE_URL"])
    migrate(engine)
    store = EpisodeStore(engine, archive_required=False)
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline:
        statuses = [row.status for row in store.list()]
        if all(status in ("completed", "failed") for status in statuses):
            break
        time.sleep(2)
    rows = {row.url.rsplit("/", 1)[1]: row for row in store.list()}
    assert {name: rows[name].status for name in names} == {
        "good-1.wav": "completed", "missing.wav": "failed", "good-2.wav": "completed"}
    assert rows["missing.wav"].error_code == "http-404"
    for name in ("good-1.wav", "good-2.wav"):
        turns = store.result(rows[name].id)["turns"]
        assert [(t["speaker"], t["text"]) for t in turns] == conversation["truth"]
    engine.dispose()

    api = stack["PREFECT_API_URL"]
    deployments = httpx.post(f"{api}/deployments/filter", json={"deployments": {"name": {"any_": ["gpu"]}}}).json()
    batch_runs = httpx.post(
        f"{api}/flow_runs/filter", json={"deployments": {"id": {"any_": [d["id"] for d in deployments]}}}
    ).json()
    finished = [run for run in batch_runs if run["state"]["type"] == "COMPLETED"]
    assert 1 <= len(finished) <= 3, "one batch should have taken all three episodes"
    assert len(batch_runs) <= 4, f"the dispatcher must not flood the pool with runs: {len(batch_runs)}"
