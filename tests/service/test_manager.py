"""The service as an operator runs it: `ppcli manager` on one machine, `ppcli worker -m URL -p
PASSWORD` on a "GPU machine" (another directory, no DATABASE_URL: it gets the store from the
manager), auth on, episodes created with `ppcli create`, then nothing else: they are archived
through the loopback Internet Archive, processed and published as Parquet."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pandas as pd
import pytest

from podcastpile.store import EpisodeStore, make_engine, migrate
from tests import postgres
from tests.pipeline.conftest import pipeline_environment
from tests.manager import PPCLI, ROOT, Manager
from tests.prefect_server import free_port
from podcastpile.cli.stopping import descendants
from tests.processes import alive, stop_tree
from tests.wayback import AdHost, WaybackDouble

PASSWORD = "correct horse battery"


def basic(secret: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(secret.encode()).decode()}


@pytest.fixture
def internet_archive(conversation: dict) -> Iterator[tuple[WaybackDouble, AdHost]]:
    wav = conversation["wav"].read_bytes()
    with WaybackDouble(pending_polls=1) as ia, AdHost({"one.wav": wav, "two.wav": wav[:-2] + b"\x00\x00"}) as origin:
        yield ia, origin


def manager_environment(tmp_path: Path, episodes_url: str, ia: WaybackDouble, **extra: str) -> dict[str, str]:
    env = {
        **os.environ,
        **pipeline_environment(episodes_url),
        "ARCHIVE_MODE": "required", "WAYBACK_URL": ia.base_url, "ARCHIVE_API_URL": ia.base_url,
        "SPN_POLL_SECONDS": "1", "IA_ACCESS_KEY": "AK", "IA_SECRET_KEY": "SK",
        "DATASET_DIR": str(tmp_path / "dataset"),
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        **extra,
    }
    for name in ("PREFECT_API_URL", "PREFECT_API_AUTH_STRING", "PREFECT_API_DATABASE_CONNECTION_URL"):
        env.pop(name, None)
    env.update(extra)
    return env


@pytest.fixture
def manager(tmp_path: Path, internet_archive: tuple[WaybackDouble, AdHost]) -> Iterator[Manager]:
    """`ppcli manager` with auth on and both databases on PostgreSQL (the scale setup)."""
    ia, _ = internet_archive
    with postgres.fresh_database("episodes") as episodes_url, postgres.fresh_database("prefect") as prefect_url:
        env = manager_environment(
            tmp_path, episodes_url, ia,
            WORKER_AUTH_ENABLED="true", WORKER_PASSWORD=PASSWORD,
            PREFECT_API_DATABASE_CONNECTION_URL=prefect_url.replace("+psycopg", "+asyncpg"),
        )
        running = Manager(env, tmp_path / "manager.log", free_port())
        try:
            running.wait_ready()
            yield running
        finally:
            stop_tree(running.process, grace=90)
            print(running.output()[-6000:])


def gpu_machine_environment(manager: Manager, tmp_path: Path) -> dict[str, str]:
    """A GPU machine's environment: models and device, but no episode database and no password."""
    env = {key: value for key, value in manager.env.items()
           if key not in ("DATABASE_URL", "WORKER_PASSWORD", "WORKER_AUTH_ENABLED", "PREFECT_API_DATABASE_CONNECTION_URL")}
    env["PREFECT_HOME"] = str(tmp_path / "gpu-machine-home")
    return env


def test_manager_and_one_worker_take_created_episodes_to_the_dataset(
    manager: Manager, internet_archive: tuple[WaybackDouble, AdHost], tmp_path: Path, conversation: dict
) -> None:
    ia, origin = internet_archive
    gpu_env = gpu_machine_environment(manager, tmp_path)
    gpu_dir = tmp_path / "gpu-machine"
    gpu_dir.mkdir()

    # Everything but health answers 401 without the password, the docs included.
    assert httpx.get(f"{manager.api}/health").status_code == 200
    for method, path in (("POST", "/api/deployments/filter"), ("GET", "/docs"), ("GET", "/openapi.json"),
                         ("GET", "/api/docs")):
        assert httpx.request(method, manager.url + path).status_code == 401, path
    assert httpx.post(f"{manager.api}/deployments/filter", headers=basic(PASSWORD)).status_code == 200
    assert httpx.get(f"{manager.url}/docs", auth=("operator", PASSWORD)).status_code == 200

    # A worker without the password is refused with one line.
    refused = subprocess.run([*PPCLI, "worker", "-m", manager.url], cwd=gpu_dir, env=gpu_env,
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.strip().count("\n") == 0 and "password" in refused.stderr, refused.stderr
    assert PASSWORD not in refused.stdout + refused.stderr

    worker_log = (tmp_path / "worker.log").open("w")
    worker = subprocess.Popen([*PPCLI, "worker", "-m", manager.url, "-p", PASSWORD, "-i", "gpu-box"],
                              cwd=gpu_dir, env=gpu_env, stdout=worker_log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        for name in ("one.wav", "two.wav"):
            created = subprocess.run([*PPCLI, "create", origin.url(name), "--language", "en"],
                                     cwd=tmp_path, env=manager.env, capture_output=True, text=True, timeout=120)
            assert created.returncode == 0, created.stderr

        engine = make_engine(manager.env["DATABASE_URL"])
        migrate(engine)
        store = EpisodeStore(engine)
        episodes = tmp_path / "dataset" / "data" / "episodes"
        deadline = time.monotonic() + 420
        while time.monotonic() < deadline:
            rows = store.list()
            # the export loop may publish the first episode before the second is done: wait for both
            if all(row.status == "completed" for row in rows) and list(episodes.glob("*.parquet")) \
                    and len(pd.read_parquet(episodes, columns=["episode_url"])) == len(rows):
                break
            time.sleep(2)
        rows = store.list()
        assert [row.status for row in rows] == ["completed", "completed"], [(r.status, r.error) for r in rows]
        for row in rows:
            assert row.archive_url and row.archive_url.startswith(f"{ia.base_url}/web/")
            # who took it: the worker's name (and run), its address, its device, the code
            assert row.worker_id.startswith("gpu-box/") and row.gpu == "cpu"
            assert row.worker_ip and row.code_version
            assert [(t["speaker"], t["text"]) for t in store.result(row.id)["turns"]] == conversation["truth"]
        assert origin.direct_hits == 0  # only the archived copies were downloaded
        engine.dispose()
        published = pd.read_parquet(episodes)
        assert sorted(published["episode_url"]) == sorted(origin.url(n) for n in ("one.wav", "two.wav"))
    finally:
        stop_tree(worker, grace=90)
        worker_log.close()
        print((tmp_path / "worker.log").read_text()[-4000:])

    # The worker never had the database's password or URL: it came from the manager's block.
    assert "DATABASE_URL" not in gpu_env

    # setup again (as after an upgrade) changes nothing twice: one crash automation, same deployments.
    again = subprocess.run([*PPCLI, "setup", "-m", manager.url, "-p", PASSWORD], cwd=tmp_path,
                           env=manager.env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    automations = httpx.post(f"{manager.api}/automations/filter", json={}, headers=basic(PASSWORD)).json()
    assert [a["name"] for a in automations].count("podcastpile-crash-silent-runs") == 1

    # Ctrl+C once stops everything the manager started.
    children = descendants(manager.process.pid)
    manager.process.send_signal(signal.SIGINT)
    assert manager.process.wait(timeout=120) == 0, manager.output()[-3000:]
    time.sleep(1)
    assert not [pid for pid in children if alive(pid)], "the manager left processes behind"




def test_manager_on_a_sqlite_prefect_database_runs_one_batch_at_a_time(
    tmp_path: Path, internet_archive: tuple[WaybackDouble, AdHost]
) -> None:
    """Prefect's default database is SQLite, which fails under concurrent runs: the manager says
    so and caps the gpu pool at one running batch (unless --allow-sqlite-workers)."""
    ia, _ = internet_archive
    env = manager_environment(tmp_path, f"sqlite:///{tmp_path / 'episodes.db'}", ia)
    running = Manager(env, tmp_path / "manager.log", free_port(), "--reload")
    try:
        running.wait_ready()
        pool = httpx.get(f"{running.api}/work_pools/gpu").json()
        assert pool["concurrency_limit"] == 1
        assert "Prefect database: SQLite (one batch at a time" in running.output()
        assert "auth: off" in running.output()
        # --reload: a changed source file restarts the server and the CPU worker.
        server_before = descendants(running.process.pid)
        watched = ROOT / "deployments" / "__init__.py"
        os.utime(watched)
        running.wait_ready(times=2)
        assert "code changed" in running.output()
        assert not [pid for pid in server_before if alive(pid)], "the old server and worker must be gone"
        assert httpx.get(f"{running.api}/work_pools/gpu").json()["concurrency_limit"] == 1
    finally:
        running.process.send_signal(signal.SIGTERM)
        code = running.process.wait(timeout=120)
        print(running.output()[-3000:])
    assert code == 0
