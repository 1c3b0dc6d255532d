"""The job API of a real manager server without a password (WORKER_AUTH_ENABLED off): every
route answers without one, and a worker whose lease ran out cannot complete the job another
worker now holds (issue 20: "real manager over loopback")."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from podcastpile.store import EpisodeStore
from tests.dataset.conftest import synthetic_result
from tests.manager import ROOT
from tests.prefect_server import free_port, wait_healthy
from tests.processes import stop_tree
from tests.service.test_jobs_api import ROUTES

LEASE_SECONDS = 3.0


@pytest.fixture(scope="module")
def open_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    home = tmp_path_factory.mktemp("jobs-api-open")
    port = free_port()
    database = home / "episodes.db"
    env = {**os.environ, "PREFECT_HOME": str(home / "prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_SERVER_LOGGING_LEVEL": "WARNING", "DATABASE_URL": f"sqlite:///{database}",
           "ARCHIVE_MODE": "off", "JOB_TIMEOUT_HOURS": str(LEASE_SECONDS / 3600)}
    for name in ("PREFECT_API_URL", "PREFECT_API_AUTH_STRING", "PREFECT_SERVER_API_AUTH_STRING",
                 "PREFECT_API_DATABASE_CONNECTION_URL", "TRUSTED_PROXIES", "WORKER_AUTH_ENABLED", "WORKER_PASSWORD"):
        env.pop(name, None)
    log = home / "server.log"
    with log.open("w") as output:
        process = subprocess.Popen([sys.executable, "-m", "deployments.server", "--host", "127.0.0.1", "--port", str(port)],
                                   cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(f"{url}/api/health", process, log)
        yield url, database
    finally:
        stop_tree(process, grace=20)


def test_every_route_answers_without_a_password(open_server: tuple[str, Path]) -> None:
    url, _ = open_server
    with httpx.Client(base_url=url, trust_env=False, timeout=30) as http:
        for method, path, body in ROUTES:
            answer = http.request(method, path, json=body)
            assert answer.status_code not in (401, 403, 429), (method, path, answer.status_code, answer.text)
            assert answer.status_code < 500, (method, path, answer.text)


def test_a_late_complete_after_the_lease_ran_out_is_409_and_stores_nothing(open_server: tuple[str, Path]) -> None:
    url, database = open_server
    with httpx.Client(base_url=url, trust_env=False, timeout=30) as http:
        job = {"episode_url": "https://podcasts.example/late/0.mp3", "language": "sv"}  # this test's alone
        assert http.post("/api/jobs", json=job).json()["added"] == 1
        first = http.post("/api/jobs/request", json={"worker_id": "slow", "languages": ["sv"]}).json()
        # the lease runs out; the store requeues expired leases at a claim, every 10 s at most
        deadline = time.monotonic() + LEASE_SECONDS + 30
        while True:
            answer = http.post("/api/jobs/request", json={"worker_id": "fast", "languages": ["sv"]})
            if answer.status_code == 200:
                break
            assert answer.status_code == 204 and time.monotonic() < deadline, answer.text
            time.sleep(1.0)
        second = answer.json()
        assert second["id"] == first["id"] and second["lease_token"] != first["lease_token"]
        late = http.post(f"/api/jobs/{first['id']}/complete",
                         json={"lease_token": first["lease_token"], "result": synthetic_result(3).to_dict()})
        assert late.status_code == 409 and "leased to worker fast" in late.json()["detail"]
        store = EpisodeStore.open_url(f"sqlite:///{database}")
        try:
            assert store.result(first["id"]) is None and store.get(first["id"]).worker_ip == "127.0.0.1"
        finally:
            store.close()
        done = http.post(f"/api/jobs/{second['id']}/complete",
                         json={"lease_token": second["lease_token"], "result": synthetic_result(3).to_dict()})
        assert done.status_code == 200, done.text
