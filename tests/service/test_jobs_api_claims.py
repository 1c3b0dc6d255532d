"""Claims through the job API (deployments/jobs_api.py) beyond tests/service/test_jobs_api.py's
ARCHIVE_MODE=off server: with archiving required, a worker is sent the archived copy and an
episode without one is failed, not handed out; behind a trusted reverse proxy (TRUSTED_PROXIES or
its alias FORWARDED_ALLOW_IPS) the worker is recorded with the forwarded address, from anyone
else the header is ignored. The API's app is served in this process (uvicorn on loopback), as
deployments/server.py composes it, over a real SQLite store.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi import FastAPI

from deployments.jobs_api import JobsAPI, create_jobs_app, with_jobs_api
from deployments.server import protect, trusted_proxies_from
from podcastpile.cli.stack import Stack
from podcastpile.config import load_settings
from podcastpile.store import EpisodeStatus, EpisodeStore
from tests.service.test_login_limit import client, serving
from tests.storehelpers import mark_archived

PASSWORD = "correct horse battery"
WORKER = {"X-Worker-Password": PASSWORD}
CAPTURED = "20260314150926"  # the capture's timestamp, part of its playback URL


def prefect_standin() -> FastAPI:
    """Prefect's app as the dispatcher needs it (an ASGI app with FastAPI's `openapi`)."""
    return FastAPI(docs_url=None, redoc_url=None)


def test_with_archiving_required_a_worker_gets_the_archived_copy_and_never_the_live_url(tmp_path: Path) -> None:
    settings = load_settings(env_file=None, database_url=f"sqlite:///{tmp_path / 'episodes.db'}",
                             archive_mode="required", allow_private_addresses=False)
    store = EpisodeStore.open(settings)
    archived, live = "https://podcasts.example/show/archived.mp3", "https://podcasts.example/show/live.mp3"
    playback = f"https://web.archive.org/web/{CAPTURED}id_/{archived}"
    app = protect(with_jobs_api(prefect_standin(), create_jobs_app(JobsAPI(settings, store=store)), PASSWORD), PASSWORD)
    try:
        with serving(app) as url, client(url) as http:
            added = http.post("/api/jobs", headers=WORKER, json=[
                {"episode_url": archived, "language": "en"}, {"episode_url": live, "language": "en"}])
            assert added.json()["added"] == 2
            first, second = (store.find(address) for address in (archived, live))
            assert first is not None and second is not None
            assert {first.status, second.status} == {EpisodeStatus.archive_pending}
            # Nothing is ready before the archive stage: no job, nothing failed.
            assert http.post("/api/jobs/request", json={"worker_id": "gpu-1"}, headers=WORKER).status_code == 204
            mark_archived(store, first.id, timestamp=CAPTURED, archive_url=playback)  # as the archive stage records it
            store.skip_archive([second.id])  # ready without a capture (an operator's `--live`)

            claim = http.post("/api/jobs/request", json={"worker_id": "gpu-1"}, headers=WORKER).json()
            assert (claim["id"], claim["url"], claim["episode_url"], claim["archived"]) == (first.id, playback, archived, True)
            # The live-only episode is claimed, failed as not archived, and no job is handed out.
            nothing = http.post("/api/jobs/request", json={"worker_id": "gpu-1"}, headers=WORKER)
            assert nothing.status_code == 204 and nothing.content == b""
            listed = {job["id"]: job for job in http.get("/api/jobs", headers=WORKER).json()["jobs"]}
        assert (listed[second.id]["status"], listed[second.id]["error_code"]) == ("failed", "not-archived")
        assert (listed[first.id]["status"], listed[first.id]["worker_id"]) == ("assigned", "gpu-1")
        assert store.get(second.id).worker_id == "gpu-1"  # it was claimed, not skipped
    finally:
        store.close()


def test_a_worker_behind_a_trusted_proxy_is_recorded_with_the_forwarded_address(tmp_path: Path) -> None:
    settings = load_settings(env_file=None, database_url=f"sqlite:///{tmp_path / 'episodes.db'}", archive_mode="off",
                             allow_private_addresses=True)
    store = EpisodeStore.open(settings)
    proxies = trusted_proxies_from(None, {"FORWARDED_ALLOW_IPS": "127.0.0.2"})  # the original's name for it
    assert proxies == ["127.0.0.2"]
    app = protect(with_jobs_api(prefect_standin(), create_jobs_app(JobsAPI(settings, store=store)), PASSWORD),
                  PASSWORD, proxies)
    forwarded = {**WORKER, "X-Forwarded-For": "203.0.113.7"}
    try:
        with serving(app) as url, client(url, "127.0.0.2") as proxy, client(url, "127.0.0.3") as stranger:
            new_jobs = [{"episode_url": f"https://podcasts.example/proxied/{n}.mp3"} for n in range(2)]
            assert proxy.post("/api/jobs", json=new_jobs, headers=WORKER).json()["added"] == 2
            behind = proxy.post("/api/jobs/request", json={"worker_id": "behind-proxy"}, headers=forwarded).json()
            direct = stranger.post("/api/jobs/request", json={"worker_id": "direct"}, headers=forwarded).json()
        assert store.get(behind["id"]).worker_ip == "203.0.113.7"
        assert store.get(direct["id"]).worker_ip == "127.0.0.3"  # not a trusted proxy: its header is ignored
    finally:
        store.close()


def test_forwarded_allow_ips_is_read_as_trusted_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRUSTED_PROXIES", raising=False)
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "10.0.0.5,10.1.0.0/16")
    config = load_settings(env_file=None)
    assert config.trusted_proxies == "10.0.0.5,10.1.0.0/16"
    # `ppcli manager` hands it to its server under the one name the server reads first.
    stack = Stack("127.0.0.1", 8000, None, None, config, None, 1)  # type: ignore[arg-type]
    assert stack._server_environment()["TRUSTED_PROXIES"] == "10.0.0.5,10.1.0.0/16"
    monkeypatch.setenv("TRUSTED_PROXIES", "192.0.2.1")
    assert load_settings(env_file=None).trusted_proxies == "192.0.2.1"  # the project's own name wins
    assert trusted_proxies_from(None, {"TRUSTED_PROXIES": "192.0.2.1", "FORWARDED_ALLOW_IPS": "10.0.0.5"}) == ["192.0.2.1"]
