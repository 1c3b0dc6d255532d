"""`ppcli worker` as an operator runs it against a manager that requires the worker password.

One real Prefect server on PostgreSQL for the module, started with the password as its API
auth string (as the manager runs it), `deployments/setup.sh` run with that string, and
`ppcli worker` as a subprocess: refused without the password, one worker per listed GPU
(simulated: DEVICE=cpu), and --once with --languages processing one batch and exiting.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from podcastpile.cli.stopping import alive, children, descendants
from podcastpile.machine import local_address
from podcastpile.prefect_api import auth_headers
from podcastpile.store import EpisodeStore, NewEpisode, make_engine, migrate
from podcastpile.version import code_version
from tests import postgres
from tests.pipeline.conftest import AudioHost, pipeline_environment
from tests.pipeline.test_worker_e2e import run
from tests.prefect_server import PREFECT, prefect_server

PASSWORD = "s3cret-worker-pass"


@dataclass
class Manager:
    """The running stack: where the manager is and the environment `ppcli worker` starts in."""

    address: str  # http://127.0.0.1:PORT, as operators pass it to -m
    api: str
    env: dict[str, str]  # no password in it
    episodes_url: str
    home: Path


@pytest.fixture(scope="module")
def manager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Manager]:
    home = tmp_path_factory.mktemp("manager")
    with postgres.fresh_database("episodes") as episodes_url, prefect_server(home, auth=PASSWORD) as prefect_env:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "WORKER_"))},
            **prefect_env, **pipeline_environment(episodes_url),
            "PREFECT_WORKER_QUERY_SECONDS": "2",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        run(["bash", "deployments/setup.sh"], env)  # with the auth string, as an operator would
        env.pop("PREFECT_API_AUTH_STRING")
        api = prefect_env["PREFECT_API_URL"]
        yield Manager(api.removesuffix("/api"), api, env, episodes_url, home)


def ppcli_worker(manager: Manager, *args: str, log: Path, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "podcastpile.cli", "worker", "-m", manager.address, "--grace", "30", *args],
        cwd=manager.home, env={**manager.env, **env}, stdout=log.open("w"), stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def worker_statuses(manager: Manager) -> dict[str, str]:
    answer = httpx.post(f"{manager.api}/work_pools/gpu/workers/filter", json={}, headers=auth_headers(PASSWORD))
    answer.raise_for_status()
    return {worker["name"]: worker["status"] for worker in answer.json()}


def wait_for(condition: Callable[[], bool], process: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"ppcli worker exited {process.returncode}:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.5)


def stop(process: subprocess.Popen) -> None:
    """Tidy up after a failed test: nothing it started may outlive it."""
    if process.poll() is None:
        for pid in [process.pid, *descendants(process.pid)]:
            os.kill(pid, signal.SIGKILL)
        process.wait(timeout=30)


def test_worker_is_refused_without_the_password_and_joins_the_pool_with_it(manager: Manager, tmp_path: Path) -> None:
    refusals = {
        (): f"error: the manager at {manager.address} requires the worker password (-p/--password or WORKER_PASSWORD)",
        ("-p", "not-the-password"): f"error: the manager at {manager.address}: wrong worker password (-p/--password or WORKER_PASSWORD)",
    }
    for args, line in refusals.items():
        refused = subprocess.run(
            [sys.executable, "-m", "podcastpile.cli", "worker", "-m", manager.address, "-i", "auth-worker", *args],
            cwd=tmp_path, env=manager.env, capture_output=True, text=True, timeout=120,
        )
        assert refused.returncode == 2, refused.stderr
        assert refused.stderr.strip().splitlines() == [line] and refused.stdout == ""
        assert "not-the-password" not in refused.stderr
    log = tmp_path / "worker.log"
    worker = ppcli_worker(manager, "-i", "auth-worker", log=log, WORKER_PASSWORD=PASSWORD)
    try:
        wait_for(lambda: worker_statuses(manager).get("auth-worker") == "ONLINE", worker, log)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0, log.read_text()[-3000:]
    finally:
        stop(worker)
    assert PASSWORD not in log.read_text()


def test_one_worker_per_listed_gpu_and_one_sigterm_stops_them_all(manager: Manager, tmp_path: Path) -> None:
    host = socket.gethostname()
    expected = {f"{host}-gpu0": "0", f"{host}-gpu1": "1"}
    log = tmp_path / "worker.log"
    worker = ppcli_worker(manager, "--gpus", "0,1", log=log, WORKER_PASSWORD=PASSWORD)  # DEVICE=cpu
    try:
        wait_for(lambda: all(worker_statuses(manager).get(name) == "ONLINE" for name in expected), worker, log)
        workers = children(worker.pid)
        seen = {}
        for pid in workers:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            environ = dict(entry.split(b"=", 1) for entry in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if b"=" in entry)
            name = command[command.index(b"--name") + 1].decode()
            assert environ[b"WORKER_ID"].decode() == name  # what its flow runs record as the claimer
            assert environ[b"PREFECT_API_AUTH_STRING"].decode() == PASSWORD
            seen[name] = environ[b"CUDA_VISIBLE_DEVICES"].decode()
        assert seen == expected
        worker.send_signal(signal.SIGTERM)  # one signal stops both
        assert worker.wait(timeout=60) == 0, log.read_text()[-3000:]
        assert not [pid for pid in workers if alive(pid)]
    finally:
        stop(worker)


def test_once_processes_one_batch_of_its_languages_then_exits(
    manager: Manager, tmp_path: Path, audio_host: AudioHost
) -> None:
    engine = make_engine(manager.episodes_url)
    migrate(engine)
    store = EpisodeStore(engine, archive_required=False)
    languages = {"good-es-1.wav": "es", "good-en.wav": "en", "good-es-2.wav": "es-mx"}
    store.add([NewEpisode(audio_host.url(name), language=language) for name, language in languages.items()])
    log = tmp_path / "worker.log"
    worker = ppcli_worker(manager, "--once", "--languages", "es", "-i", "once-worker", log=log, WORKER_PASSWORD=PASSWORD)
    try:
        wait_for(lambda: worker_statuses(manager).get("once-worker") == "ONLINE", worker, log)
        run([PREFECT, "deployment", "run", "process-batch/gpu"], {**manager.env, "PREFECT_API_AUTH_STRING": PASSWORD})
        assert worker.wait(timeout=400) == 0, log.read_text()[-4000:]
    finally:
        stop(worker)
    assert "worker once-worker: flow run" in log.read_text() and "ended COMPLETED; stopping it" in log.read_text()
    rows = {row.url.rsplit("/", 1)[1]: row for row in store.list()}
    assert {name: row.status for name, row in rows.items()} == {
        "good-es-1.wav": "completed", "good-en.wav": "pending", "good-es-2.wav": "completed"}
    for name in ("good-es-1.wav", "good-es-2.wav"):
        row = rows[name]
        assert row.worker_id.startswith("once-worker/")  # WORKER_ID/<flow run>
        assert (row.gpu, row.code_version) == ("cpu", code_version())
        assert row.worker_ip == local_address()  # the test PostgreSQL has only a Unix socket (TCP: test_claim_languages)
    assert rows["good-en.wav"].worker_id is None
    runs = httpx.post(f"{manager.api}/flow_runs/filter", json={}, headers=auth_headers(PASSWORD)).json()
    batches = [r for r in runs if r["name"] and r["state"]["type"] != "SCHEDULED" and "batch" in (r.get("tags") or [])]
    assert [r["state"]["type"] for r in batches] == ["COMPLETED"]
    engine.dispose()
