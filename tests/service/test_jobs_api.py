"""The manager's own HTTP API (deployments/jobs_api.py), served for real.

One `python -m deployments.server` for the module (Prefect's app on SQLite, the episode store on
SQLite, a password, HTTPS with a test CA's certificate), reached over loopback as workers and
scripts reach it. Clients that guess
wrong passwords connect from their own 127.0.0.x, so the login limit never blocks the others.
The lease-expiry and no-password cases serve the API's app in this process (uvicorn on
loopback, a real store with a one-second lease): the same routes, without waiting on Prefect.
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme

from deployments.jobs_api import JobsAPI, create_jobs_app, with_jobs_api
from deployments.server import job_settings
from podcastpile.config import load_settings
from podcastpile.store import EpisodeStore
from tests.dataset.conftest import synthetic_result
from tests.loopback import LoopbackServer, Reply
from tests.pipeline.conftest import FIXTURES
from tests.manager import PPCLI, ROOT
from tests.prefect_server import free_port
from tests.processes import stop_tree
from tests.service.test_login_limit import client as plain_client
from tests.service.test_login_limit import serving

PASSWORD = "correct horse battery"
WORKER = {"X-Worker-Password": PASSWORD}


def basic(secret: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(secret.encode()).decode()}


class Server:
    """The running server: its URL, log, the environment its settings came from, its CA."""

    def __init__(self, url: str, log: Path, env: dict[str, str], ca: Path) -> None:
        self.url, self.log, self.env, self.ca = url, log, env, ca


def client(server: Server, address: str = "127.0.0.1") -> httpx.Client:
    """An HTTPS client of `server` trusting its CA, connecting from `address`."""
    context = ssl.create_default_context(cafile=str(server.ca))
    return httpx.Client(base_url=server.url, transport=httpx.HTTPTransport(local_address=address, verify=context),
                        trust_env=False, timeout=30)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("jobs-api")
    port = free_port()
    ca = trustme.CA()
    served = ca.issue_cert("127.0.0.1")
    (home / "ca.pem").write_bytes(ca.cert_pem.bytes())
    (home / "cert.pem").write_bytes(served.cert_chain_pems[0].bytes() + ca.cert_pem.bytes())
    (home / "key.pem").write_bytes(served.private_key_pem.bytes())
    env = {**os.environ, "PREFECT_HOME": str(home / "prefect-home"),
           "PREFECT_SERVER_API_AUTH_STRING": PASSWORD, "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
           "DATABASE_URL": f"sqlite:///{home / 'episodes.db'}", "ARCHIVE_MODE": "off",
           "ALLOW_PRIVATE_ADDRESSES": "false"}
    for name in ("PREFECT_API_URL", "PREFECT_API_AUTH_STRING", "PREFECT_API_DATABASE_CONNECTION_URL",
                 "TRUSTED_PROXIES", "WORKER_AUTH_ENABLED", "WORKER_PASSWORD"):
        env.pop(name, None)
    log = home / "server.log"
    with log.open("w") as output:
        process = subprocess.Popen([sys.executable, "-m", "deployments.server", "--host", "127.0.0.1", "--port", str(port),
                                    "--ssl-certfile", str(home / "cert.pem"), "--ssl-keyfile", str(home / "key.pem")],
                                   cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    running = Server(f"https://127.0.0.1:{port}", log, env, home / "ca.pem")
    try:
        deadline = time.monotonic() + 120
        with client(running) as http:
            while True:
                try:
                    if http.get("/api/health", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.25)
        yield running
    finally:
        stop_tree(process, grace=20)
    assert PASSWORD not in log.read_text()


def jobs(n: int, tag: str) -> list[dict[str, Any]]:
    return [{"episode_url": f"https://podcasts.example/{tag}/{i}.mp3", "language": "en"} for i in range(n)]


ROUTES: list[tuple[str, str, Any]] = [
    ("GET", "/api/stats", None),
    ("POST", "/api/jobs", {"episode_url": "https://podcasts.example/auth.mp3"}),
    ("GET", "/api/jobs", None),
    ("GET", "/api/jobs/1", None),
    ("POST", "/api/jobs/request", {"worker_id": "auth-check", "languages": ["xx"]}),
    ("POST", "/api/jobs/1/start", {"lease_token": "nope"}),
    ("POST", "/api/jobs/1/renew", {"lease_token": "nope"}),
    ("POST", "/api/jobs/1/complete", {"lease_token": "nope", "result": {}}),
    ("POST", "/api/jobs/1/fail", {"lease_token": "nope", "error_code": "x", "reason": "y"}),
]


def test_every_route_wants_the_password_in_either_header(server: Server) -> None:
    with client(server) as anonymous, client(server, "127.0.0.2") as guesser, client(server) as worker:
        worker.post("/api/jobs", json={"episode_url": "https://podcasts.example/first.mp3"}, headers=WORKER)
        for method, path, body in ROUTES:
            refused = anonymous.request(method, path, json=body)
            assert refused.status_code == 401 and "password" in refused.json()["detail"], (path, refused.text)
            wrong = guesser.request(method, path, json=body, headers={"X-Worker-Password": "swordfish"})
            assert wrong.status_code == 401, path
            for headers in (WORKER, basic(PASSWORD), basic(f"any-user:{PASSWORD}")):
                answered = worker.request(method, path, json=body, headers=headers)
                assert answered.status_code not in (401, 403, 429), (path, answered.text)
                if answered.status_code != 204:  # a request with no job ready: no body at all
                    assert answered.headers["content-type"] == "application/json", path
        # A right password next to a wrong one is a wrong guess, not a way in.
        mixed = guesser.get("/api/stats", headers={**WORKER, **basic("swordfish")})
        assert mixed.status_code == 401


def test_a_wrong_x_worker_password_is_a_guess_to_the_login_limit(server: Server) -> None:
    with client(server, "127.0.0.3") as guesser, client(server, "127.0.0.4") as worker:
        codes = [guesser.get("/api/jobs", headers={"X-Worker-Password": f"guess-{n}"}).status_code for n in range(11)]
        assert codes == [401] * 10 + [429]
        assert guesser.get("/api/jobs", headers=WORKER).status_code == 429  # the right one too, while blocked
        assert guesser.get("/api/health").status_code == 200
        assert worker.get("/api/jobs", headers=WORKER).status_code == 200
    text = server.log.read_text()
    assert "blocking 127.0.0.3" in text and "GET /api/jobs" in text
    assert not any(f"guess-{n}" in text for n in range(11))


def test_the_docs_list_the_routes_behind_the_password(server: Server) -> None:
    with client(server) as http:
        assert http.get("/openapi.json").status_code == 401
        paths = http.get("/openapi.json", auth=("operator", PASSWORD)).json()["paths"]
        for path in ("/api/stats", "/api/jobs", "/api/jobs/{job_id}", "/api/jobs/request", "/api/jobs/{job_id}/complete"):
            assert path in paths
        assert "/flows/filter" in paths  # Prefect's own are still there
        assert http.get("/docs", auth=("operator", PASSWORD)).status_code == 200


def test_adding_jobs_answers_as_import_does(server: Server) -> None:
    body = [
        {"episode_url": "https://podcasts.example/add/one.mp3", "language": "EN", "podcast_id": "show"},
        {"episode_url": "HTTPS://Podcasts.Example/add/one.mp3"},  # the same once normalized
        {"episode_url": "ftp://podcasts.example/x.mp3"},
        {"language": "en"},
        {"episode_url": "http://user:hunter2@10.1.2.3/private.mp3"},
        {"episode_url": "https://podcasts.example/add/bad-language.mp3", "language": "not a language!"},
    ]
    with client(server) as http:
        answer = http.post("/api/jobs", json=body, headers=WORKER)
        assert answer.status_code == 200, answer.text
        summary = answer.json()
        assert (summary["added"], summary["present"]) == (2, 1)
        assert [item["line"] for item in summary["rejected"]] == [3, 4, 6]
        assert "no episode_url" in summary["rejected"][1]["reason"]
        assert [item["line"] for item in summary["private_addresses"]] == [5]
        assert "10.1.2.3 is a private address" in summary["private_addresses"][0]["reason"]
        assert "hunter2" not in answer.text
        again = http.post("/api/jobs", json=body[0], headers=WORKER).json()  # one job, not a list
        assert (again["added"], again["present"], again["rejected"]) == (0, 1, [])
        listed = http.get("/api/jobs", params={"language": "en", "limit": 1000}, headers=WORKER).json()["jobs"]
        (one,) = [job for job in listed if job["url"] == "https://podcasts.example/add/one.mp3"]
        assert (one["podcast_id"], one["status"]) == ("show", "pending")
        job = http.get(f"/api/jobs/{one['id']}", headers=WORKER).json()
        assert job["id"] == one["id"] and job["result"] is None
        missing = http.get("/api/jobs/999999", headers=WORKER)
        assert missing.status_code == 404 and "999999" in missing.json()["detail"]
        bad = http.get("/api/jobs", params={"status": "sleeping"}, headers=WORKER)
        assert bad.status_code == 422 and "sleeping" in bad.json()["detail"]


def test_more_than_ten_thousand_jobs_or_ten_megabytes_is_413(server: Server) -> None:
    with client(server) as http:
        before = http.get("/api/stats", headers=WORKER).json()["total"]
        refused = http.post("/api/jobs", json=jobs(10_001, "too-many"), headers=WORKER)
        assert refused.status_code == 413 and "10,000" in refused.json()["detail"]
        huge = b'{"episode_url": "https://podcasts.example/' + b"x" * (10 * 1024 * 1024) + b'.mp3"}'
        assert http.post("/api/jobs", content=huge, headers={**WORKER, "Content-Type": "application/json"}).status_code == 413

        def chunks() -> Iterator[bytes]:  # no Content-Length: refused once it passes the limit
            yield b'{"episode_url": "https://podcasts.example/'
            for _ in range(11):
                yield b"x" * (1024 * 1024)
            yield b'.mp3"}'

        assert http.post("/api/jobs", content=chunks(), headers={**WORKER, "Content-Type": "application/json"}).status_code == 413
        assert http.get("/api/stats", headers=WORKER).json()["total"] == before
        accepted = http.post("/api/jobs", json=jobs(10_000, "just-enough"), headers=WORKER)
        assert accepted.status_code == 200 and accepted.json()["added"] == 10_000


def test_cursor_pages_are_stable_while_jobs_are_added(server: Server) -> None:
    with client(server) as http:
        http.post("/api/jobs", json=jobs(25, "paged"), headers=WORKER)
        seen: list[int] = []
        cursor = None
        pages = 0
        while True:
            page = http.get("/api/jobs", params={"limit": 7, **({"cursor": cursor} if cursor else {})}, headers=WORKER).json()
            seen += [job["id"] for job in page["jobs"]]
            pages += 1
            if pages == 2:  # new jobs while paging: they come at the end, nothing repeats or is skipped
                http.post("/api/jobs", json=jobs(5, "paged-later"), headers=WORKER)
            cursor = page["next_cursor"]
            if cursor is None:
                break
        everything = []
        cursor = None
        while True:
            page = http.get("/api/jobs", params={"limit": 1000, **({"cursor": cursor} if cursor else {})}, headers=WORKER).json()
            everything += [job["id"] for job in page["jobs"]]
            if (cursor := page["next_cursor"]) is None:
                break
    assert seen == sorted(set(seen)) == everything


def test_stats_are_what_ppcli_stats_json_prints(server: Server) -> None:
    with client(server) as http:
        # A job of its own: the module's server is shared, and this test may run first.
        http.post("/api/jobs", json={"episode_url": "https://example.com/stats-test.mp3"}, headers=WORKER).raise_for_status()
        api = http.get("/api/stats", headers=WORKER).json()
    env = {**server.env, "PREFECT_API_URL": server.url + "/api", "PREFECT_API_AUTH_STRING": PASSWORD,
           "TLS_CA_FILE": str(server.ca)}
    printed = subprocess.run([*PPCLI, "stats", "--json"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert printed.returncode == 0, printed.stderr
    assert api == json.loads(printed.stdout)
    # It asked its own Prefect API which runs were refused (without one: unknown, "no Prefect server").
    assert api["total"] > 0 and api["refused_runs"] == 0 and api["refused_runs_unknown_reason"] is None


def test_ppcli_reaches_an_https_manager_with_its_ca(server: Server, tmp_path: Path) -> None:
    """`ppcli stats -m https://...` verifies the manager's certificate with --ca (or TLS_CA_FILE)."""
    env = {key: value for key, value in server.env.items() if key not in ("DATABASE_URL", "PREFECT_HOME")}
    env.update(WORKER_PASSWORD=PASSWORD, PREFECT_HOME=str(tmp_path / "prefect"))
    run = [*PPCLI, "stats", "--json", "-m", server.url]
    unverified = subprocess.run(run, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert unverified.returncode == 2 and unverified.stdout == ""
    assert unverified.stderr.startswith(f"error: cannot verify the certificate of the manager at {server.url}")
    assert "--ca FILE or TLS_CA_FILE" in unverified.stderr and unverified.stderr.count("\n") == 1
    verified = subprocess.run([*run, "--ca", str(server.ca)], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=120)
    assert verified.returncode == 0, verified.stderr
    with client(server) as http:
        assert json.loads(verified.stdout)["total"] == http.get("/api/stats", headers=WORKER).json()["total"]
    assert not list(tmp_path.glob("*.db"))


def test_two_workers_requesting_at_once_never_get_the_same_job(server: Server) -> None:
    with client(server) as http:
        http.post("/api/jobs", json=[{"episode_url": f"https://podcasts.example/race/{i}.mp3", "language": "sv"}
                                     for i in range(30)], headers=WORKER)
    start = threading.Barrier(6)
    got: list[list[int]] = [[] for _ in range(6)]

    def work(index: int) -> None:
        with client(server) as http:
            start.wait()
            while True:
                answer = http.post("/api/jobs/request", json={"worker_id": f"racer-{index}", "languages": ["sv"]}, headers=WORKER)
                if answer.status_code == 204:
                    return
                assert answer.status_code == 200, answer.text
                got[index].append(answer.json()["id"])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    claimed = [job for worker in got for job in worker]
    assert len(claimed) == len(set(claimed)) == 30
    assert sum(1 for worker in got if worker) > 1  # they did race


def test_a_worker_takes_a_job_through_to_its_result(server: Server) -> None:
    with client(server) as http:
        http.post("/api/jobs", json={"episode_url": "https://podcasts.example/flow/one.mp3", "language": "fi"}, headers=WORKER)
        claim = http.post("/api/jobs/request", json={"worker_id": "gpu-1", "languages": ["fi"]}, headers=WORKER).json()
        assert claim["url"] == "https://podcasts.example/flow/one.mp3" and not claim["archived"]
        job_id, token = claim["id"], claim["lease_token"]
        assert http.post(f"/api/jobs/{job_id}/start", json={"lease_token": "someone-else"}, headers=WORKER).status_code == 409
        assert http.post(f"/api/jobs/{job_id}/start", json={"lease_token": token}, headers=WORKER).json() == {"status": "processing"}
        listed = http.get(f"/api/jobs/{job_id}", headers=WORKER).json()
        assert listed["worker_id"] == "gpu-1" and listed["status"] == "processing"

        result = synthetic_result(7).to_dict()
        malformed = {key: value for key, value in result.items() if key != "sha256"}
        refused = http.post(f"/api/jobs/{job_id}/complete", json={"lease_token": token, "result": malformed}, headers=WORKER)
        assert refused.status_code == 422 and "sha256" in refused.json()["detail"]
        after = http.get(f"/api/jobs/{job_id}", headers=WORKER).json()
        assert after["status"] == "processing" and after["result"] is None  # stored nowhere

        done = http.post(f"/api/jobs/{job_id}/complete", json={"lease_token": token, "result": result}, headers=WORKER)
        assert done.status_code == 200, done.text
        summary = http.get(f"/api/jobs/{job_id}", headers=WORKER).json()
        assert summary["status"] == "completed" and summary["result"]["sha256"] == result["sha256"]
        assert summary["result"]["words"] == sum(len(turn["words"]) for turn in result["turns"])
        assert "turns" in summary["result"] and not isinstance(summary["result"]["turns"], list)
        full = http.get(f"/api/jobs/{job_id}", params={"full": "true"}, headers=WORKER).json()
        assert full["result"]["turns"] == result["turns"]
        again = http.post(f"/api/jobs/{job_id}/complete", json={"lease_token": token, "result": result}, headers=WORKER)
        assert again.status_code == 409  # the lease ended with the result

        http.post("/api/jobs", json={"episode_url": "https://podcasts.example/flow/two.mp3", "language": "fi"}, headers=WORKER)
        second = http.post("/api/jobs/request", json={"worker_id": "gpu-1", "languages": ["fi"]}, headers=WORKER).json()
        failed = http.post(f"/api/jobs/{second['id']}/fail", headers=WORKER, json={
            "lease_token": second["lease_token"], "error_code": "http-404", "reason": "gone", "permanent": True})
        assert failed.json() == {"status": "failed"}
        assert http.get(f"/api/jobs/{second['id']}", headers=WORKER).json()["error_code"] == "http-404"


def test_without_a_password_the_routes_are_open_and_a_late_complete_is_409(tmp_path: Path) -> None:
    settings = load_settings(env_file=None, database_url=f"sqlite:///{tmp_path / 'episodes.db'}", archive_mode="off")
    store = EpisodeStore.open_url(settings.database_url, lease_seconds=1.0, archive_required=False,
                                  reap_every_seconds=0.0)
    app = create_jobs_app(JobsAPI(settings, store=store))
    try:
        with serving(with_jobs_api(_prefect_standin(), app, None)) as url, plain_client(url) as http:
            assert http.post("/api/jobs", json=jobs(2, "open")).json()["added"] == 2
            assert http.get("/api/stats").json()["by_status"]["pending"] == 2
            first = http.post("/api/jobs/request", json={"worker_id": "slow"}).json()
            assert first["url"] == "https://podcasts.example/open/0.mp3"
            time.sleep(1.5)  # the lease runs out; another worker gets the job
            second = http.post("/api/jobs/request", json={"worker_id": "fast"}).json()
            assert second["id"] == first["id"] and second["lease_token"] != first["lease_token"]
            assert store.get(first["id"]).worker_ip == "127.0.0.1"  # the request's peer
            late = http.post(f"/api/jobs/{first['id']}/complete",
                             json={"lease_token": first["lease_token"], "result": synthetic_result(3).to_dict()})
            assert late.status_code == 409 and "leased to worker fast" in late.json()["detail"]
            assert store.result(first["id"]) is None
            assert http.get("/elsewhere").text == '"prefect"'  # everything else is Prefect's
    finally:
        store.close()


def test_the_example_http_worker_takes_jobs_to_results(server: Server, conversation: dict) -> None:
    """examples/http_worker.py with the tiny models, no database and no Prefect: a job to its
    turns, a missing file to a permanent failure."""
    wav = conversation["wav"].read_bytes()
    with LoopbackServer({"/ep/talk.wav": lambda r: Reply(200, wav, {"Content-Type": "audio/wav"})}) as host:
        with client(server) as http:
            added = http.post("/api/jobs", headers=WORKER, json=[
                {"episode_url": host.url("/ep/talk.wav"), "language": "nl"},
                {"episode_url": host.url("/ep/missing.wav"), "language": "nl"}])
            assert added.json()["added"] == 2
        env = {key: value for key, value in server.env.items() if key != "DATABASE_URL"}
        env.update(WORKER_PASSWORD=PASSWORD, TLS_CA_FILE=str(server.ca), WORKER_LANGUAGES="nl", DEVICE="cpu",
                   DIAR_MODEL=str(FIXTURES / "tiny_diar.nemo"), ASR_MODEL=str(FIXTURES / "tiny_asr.nemo"),
                   ASR_MODEL_MULTILINGUAL=str(FIXTURES / "tiny_asr.nemo"), ALLOW_PRIVATE_ADDRESSES="true")
        worked = subprocess.run([sys.executable, "examples/http_worker.py", server.url, "--once", "--worker-id", "http-1"],
                                cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert worked.returncode == 0, worked.stdout[-2000:] + worked.stderr[-4000:]
    assert "completed" in worked.stdout and "failed" in worked.stdout, worked.stdout
    with client(server) as http:
        listed = http.get("/api/jobs", params={"language": "nl"}, headers=WORKER).json()["jobs"]
        done, missing = sorted(listed, key=lambda job: job["url"].endswith("missing.wav"))
        assert (done["status"], done["worker_id"]) == ("completed", "http-1")
        assert (missing["status"], missing["error_code"]) == ("failed", "http-404")
        result = http.get(f"/api/jobs/{done['id']}", params={"full": "true"}, headers=WORKER).json()["result"]
    assert [(turn["speaker"], turn["text"]) for turn in result["turns"]] == conversation["truth"]


def test_the_server_reads_the_settings_where_ppcli_manager_ran(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DATABASE_URL", "ARCHIVE_MODE", "ARCHIVE_REQUIRED"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / ".env").write_text("DATABASE_URL=sqlite:///./data/episodes.db\nARCHIVE_MODE=prefer\n")
    settings = job_settings({"PODCASTPILE_ENV_FILE": str(tmp_path / ".env")})
    assert settings.database_url == f"sqlite:///{tmp_path}/data/episodes.db"
    assert settings.archive_mode == "prefer"


def _prefect_standin() -> Any:
    """What the dispatcher needs of Prefect's app: an ASGI app with FastAPI's `openapi`."""
    from fastapi import FastAPI

    standin = FastAPI(docs_url=None, redoc_url=None)

    @standin.get("/elsewhere")
    def elsewhere() -> str:
        return "prefect"

    return standin
