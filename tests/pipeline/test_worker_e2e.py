"""End to end as a user runs it, on the default path: Prefect server, `prefect deploy` from
prefect.yaml, real `prefect worker`s on pools `cpu` (archive, dispatch) and `gpu` (batches),
episodes created with `ppcli create`, archived through the loopback Internet Archive, only the
archived copies downloaded; nothing else done by hand."""

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
from tests.pipeline.conftest import pipeline_environment
from tests.prefect_server import PREFECT, prefect_server
from tests.wayback import AdHost, WaybackDouble

ROOT = Path(__file__).resolve().parent.parent.parent


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{args} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture
def internet_archive(conversation: dict) -> Iterator[tuple[WaybackDouble, AdHost]]:
    wav = conversation["wav"].read_bytes()
    with WaybackDouble(pending_polls=2) as ia, AdHost({"good-1.wav": wav, "good-2.wav": wav}) as origin:
        yield ia, origin


@pytest.fixture
def stack(tmp_path: Path, internet_archive: tuple[WaybackDouble, AdHost]) -> Iterator[dict[str, str]]:
    """Prefect server + deployments + a CPU and a GPU worker; yields the environment clients use."""
    ia, _ = internet_archive
    with postgres.fresh_database("episodes") as episodes_url, prefect_server(tmp_path) as prefect_env:
        env = {
            **os.environ, **prefect_env, **pipeline_environment(episodes_url),
            "ARCHIVE_MODE": "required", "WAYBACK_URL": ia.base_url, "ARCHIVE_API_URL": ia.base_url,
            "SPN_POLL_SECONDS": "1", "IA_ACCESS_KEY": "AK", "IA_SECRET_KEY": "SK",
            "PREFECT_WORKER_QUERY_SECONDS": "2",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        run(["bash", "deployments/setup.sh"], env)
        workers = []
        for pool, limit in (("cpu", "4"), ("gpu", "1")):
            log = (tmp_path / f"worker-{pool}.log").open("w")
            workers.append((log, subprocess.Popen(
                [PREFECT, "worker", "start", "--pool", pool, "--limit", limit],
                cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )))
        try:
            yield env
        finally:
            for log, worker in workers:
                os.killpg(worker.pid, signal.SIGTERM)
                try:
                    worker.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(worker.pid, signal.SIGKILL)
                log.close()
                print(Path(log.name).read_text()[-4000:])


def test_created_episodes_get_archived_and_processed_by_the_workers(
    stack: dict[str, str], internet_archive: tuple[WaybackDouble, AdHost], conversation: dict
) -> None:
    ia, origin = internet_archive
    names = ["good-1.wav", "missing.wav", "good-2.wav"]
    for name in names:
        run([sys.executable, "-m", "podcastpile.cli", "create", origin.url(name), "--language", "en"], stack)

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
    assert rows["missing.wav"].error_code == "not-found"  # the archive could not capture it
    for name in ("good-1.wav", "good-2.wav"):
        turns = store.result(rows[name].id)["turns"]
        assert [(t["speaker"], t["text"]) for t in turns] == conversation["truth"]
        assert rows[name].archive_url.startswith(f"{ia.base_url}/web/")
    assert origin.direct_hits == 0  # the GPU worker only ever downloaded archived copies
    engine.dispose()

    api = stack["PREFECT_API_URL"]
    deployments = httpx.post(f"{api}/deployments/filter", json={"deployments": {"name": {"any_": ["gpu"]}}}).json()
    # The last episode is stored before its batch run ends (the run still publishes and reports),
    # so wait for the run's own terminal state rather than reading it at once.
    deadline = time.monotonic() + 60
    while True:
        batch_runs = httpx.post(
            f"{api}/flow_runs/filter", json={"deployments": {"id": {"any_": [d["id"] for d in deployments]}}}
        ).json()
        finished = [run for run in batch_runs if run["state"]["type"] == "COMPLETED"]
        if finished or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert 1 <= len(finished) <= 3, f"one batch should have taken the archived episodes: {batch_runs}"
    assert len(batch_runs) <= 4, f"the dispatcher must not flood the pool with runs: {len(batch_runs)}"
