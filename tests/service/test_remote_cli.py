"""The queue managed from a laptop: `ppcli create | import | list | stats | retry | invalidate`
given `-m URL` (or MANAGER_URL) and the worker password, and no DATABASE_URL.

One real `ppcli manager` for the module (auth on, the episode store on SQLite, no archiving),
reached over loopback. The "laptop" is an empty directory and an environment without
DATABASE_URL; what it prints is compared with what the same commands print on the manager's
machine, with DATABASE_URL. Failed and completed episodes are made through the workers' routes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from podcastpile.config import load_settings
from podcastpile.manager_client import ManagerClient, ManagerError
from podcastpile.prefect_api import find_prefect_api
from tests.dataset.conftest import synthetic_result
from tests.manager import PPCLI, Manager
from tests.prefect_server import free_port
from tests.processes import stop_tree

PASSWORD = "correct horse battery"
WORKER = {"X-Worker-Password": PASSWORD}
N = 10_000


@pytest.fixture(scope="module")
def manager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Manager]:
    home = tmp_path_factory.mktemp("remote-manager")
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("PREFECT_", "WORKER_", "HOST", "PORT", "DATABASE_URL", "MANAGER_URL", "TLS_"))}
    env.update({
        "DATABASE_URL": f"sqlite:///{home / 'episodes.db'}", "ARCHIVE_MODE": "off",
        "ALLOW_PRIVATE_ADDRESSES": "false", "WORKER_AUTH_ENABLED": "true", "WORKER_PASSWORD": PASSWORD,
        "PREFECT_HOME": str(home / "prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    })
    running = Manager(env, home / "manager.log", free_port())
    try:
        running.wait_ready()
        yield running
    finally:
        stop_tree(running.process, grace=60)
    assert PASSWORD not in running.output()


@pytest.fixture(scope="module")
def laptop(manager: Manager, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, str]]]:
    """An empty directory and an environment with the manager's address and password, no database."""
    home = tmp_path_factory.mktemp("laptop")
    env = {key: value for key, value in manager.env.items() if key not in ("DATABASE_URL", "ARCHIVE_MODE")}
    env.update({"WORKER_PASSWORD": PASSWORD, "WORKER_AUTH_ENABLED": "false", "PREFECT_HOME": str(home / "prefect")})
    yield home, env
    assert not list(home.glob("*.db")), "a remote command opened a database of its own"


def ppcli(*args: str, env: dict[str, str], cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PPCLI, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def remote(laptop: tuple[Path, dict[str, str]], manager: Manager, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`ppcli ARGS -m URL` on the laptop."""
    home, base = laptop
    return ppcli(*args, "-m", manager.url, env={**base, **env}, cwd=home)


def local(manager: Manager, *args: str) -> subprocess.CompletedProcess[str]:
    """`ppcli ARGS` on the manager's machine: DATABASE_URL, and its Prefect API for the runs."""
    env = {**manager.env, "PREFECT_API_URL": manager.api}
    return ppcli(*args, env=env, cwd=manager.log.parent)


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout


def worker_http(manager: Manager) -> httpx.Client:
    return httpx.Client(base_url=manager.url, headers=WORKER, trust_env=False, timeout=60)


def test_ten_thousand_urls_imported_listed_and_counted_through_the_manager(
        manager: Manager, laptop: tuple[Path, dict[str, str]]) -> None:
    source = laptop[0] / "episodes.jsonl"
    lines = [{"episode_url": f"https://podcasts.example/bulk/{i}.mp3", "language": "en"} for i in range(N)]
    lines[5_000] = {"language": "en"}  # no URL: rejected while reading the file
    lines += [
        {"episode_url": "https://podcasts.example/bulk/0.mp3"},  # already there (an earlier batch)
        {"episode_url": "ftp://user:hunter2@podcasts.example/x.mp3"},  # rejected by the manager, batch 2
        {"episode_url": "http://10.1.2.3/private.mp3", "language": "en"},  # stored, with a warning
        {"episode_url": "https://podcasts.example/bulk/last.mp3", "language": "not a language!"},
    ]
    source.write_text("".join(json.dumps(line) + "\n" for line in lines))

    imported = json.loads(ok(remote(laptop, manager, "import", str(source), "--json")))
    assert (imported["added"], imported["present"]) == (N, 1)  # 9,999 + the private one
    assert [item["line"] for item in imported["rejected"]] == [5_001, 10_002, 10_004]
    assert imported["rejected"][1]["url"] == "ftp://user:hunter2@podcasts.example/x.mp3"  # as in the file
    assert [item["line"] for item in imported["private_addresses"]] == [10_003]
    # The same file into the database directly: the same report, every URL now present.
    again_remote = json.loads(ok(remote(laptop, manager, "import", str(source), "--json")))
    again_local = json.loads(ok(local(manager, "import", str(source), "--json")))
    assert again_remote == again_local
    assert again_local["rejected"] == imported["rejected"] and again_local["present"] == N + 1
    people = remote(laptop, manager, "import", str(source))
    assert ok(people).startswith(f"added 0, already present {N + 1}, rejected 3")
    assert "hunter2" not in people.stdout + people.stderr and "line 10003" in people.stderr

    listed = json.loads(ok(remote(laptop, manager, "list", "--limit", str(N + 10), "--json")))
    assert len(listed) == N and listed == json.loads(ok(local(manager, "list", "--limit", str(N + 10), "--json")))
    assert {job["url"] for job in listed} >= {f"https://podcasts.example/bulk/{i}.mp3" for i in (1, 4_999, 9_999)}
    table = ok(remote(laptop, manager, "list", "--limit", "5", "--language", "en", "--status", "pending"))
    assert table == ok(local(manager, "list", "--limit", "5", "--language", "en", "--status", "pending"))
    assert "podcasts.example/bulk/1.mp3" in table

    stats = json.loads(ok(remote(laptop, manager, "stats", "--json")))
    assert stats == json.loads(ok(local(manager, "stats", "--json")))
    assert stats["total"] >= N and stats["refused_runs"] == 0  # the manager asked its Prefect API
    assert ok(remote(laptop, manager, "stats")) == ok(local(manager, "stats"))


def test_create_retry_and_invalidate_through_the_manager(manager: Manager, laptop: tuple[Path, dict[str, str]]) -> None:
    home, base = laptop
    with_url = {**base, "MANAGER_URL": manager.url}  # the setting instead of -m
    url = "https://podcasts.example/remote/one.mp3"
    created = ok(ppcli("create", url, "--language", "fi", env=with_url, cwd=home))
    assert created.startswith("added episode ") and created.rstrip().endswith(f"(pending) {url}")
    again = ok(ppcli("create", "HTTPS://Podcasts.Example/remote/one.mp3", env=with_url, cwd=home))
    assert again.startswith("already present: episode ")
    private = ppcli("create", "http://user:hunter2@192.168.1.9/x.mp3", env=with_url, cwd=home)
    assert "192.168.1.9 is a private address" in ok(private) + private.stderr and "hunter2" not in private.stdout
    invalid = ppcli("create", "ftp://podcasts.example/x.mp3", env=with_url, cwd=home)
    assert invalid.returncode == 1 and invalid.stderr == local(manager, "create", "ftp://podcasts.example/x.mp3").stderr

    with worker_http(manager) as http:
        claim = http.post("/api/jobs/request", json={"worker_id": "gpu-9", "languages": ["fi"]}).json()
        http.post(f"/api/jobs/{claim['id']}/fail", json={"lease_token": claim["lease_token"], "error_code": "http-404",
                                                          "reason": "gone", "permanent": True}).raise_for_status()
        http.post("/api/jobs", json={"episode_url": "https://podcasts.example/remote/two.mp3", "language": "sv"})
        done = http.post("/api/jobs/request", json={"worker_id": "gpu-9", "languages": ["sv"]}).json()
        result = {**synthetic_result(3).to_dict(), "code_version": "v-remote-old"}  # the version that made it
        http.post(f"/api/jobs/{done['id']}/complete",
                  json={"lease_token": done["lease_token"], "result": result}).raise_for_status()

    dry = ["retry", "--reason", "http-404", "--since", "2000-01-01T00:00+02:00", "--json"]
    preview = json.loads(ok(remote(laptop, manager, *dry)))
    assert preview == json.loads(ok(local(manager, *dry)))
    assert preview["dry_run"] and preview["matching"] == 1 and preview["sample"][0]["id"] == claim["id"]
    shown = ok(remote(laptop, manager, "retry", "--reason", "http-404"))
    assert shown == ok(local(manager, "retry", "--reason", "http-404")) and "would go back" in shown
    applied = json.loads(ok(remote(laptop, manager, "retry", "--reason", "http-404", "--yes", "--json")))
    assert applied == {"dry_run": False, "changed": 1}
    bad = remote(laptop, manager, "retry", "--status", "completed")
    assert bad.returncode == 1 and "cannot retry status 'completed'" in bad.stderr

    criteria = ["invalidate", "--code-version", "v-remote-old", "--json"]
    preview = json.loads(ok(remote(laptop, manager, *criteria)))
    assert preview == json.loads(ok(local(manager, *criteria))) and preview["matching"] == 1
    assert ok(remote(laptop, manager, "invalidate", "--code-version", "v-remote-old", "--yes")) == \
        "sent 1 completed episode(s) back to the queue\n"
    none = remote(laptop, manager, "invalidate")
    assert none.returncode == 1 and "say which results" in none.stderr

    after = {job["id"]: job for job in json.loads(ok(remote(laptop, manager, "list", "--limit", "100000", "--json")))}
    assert after[claim["id"]]["status"] == "pending" and after[claim["id"]]["error_code"] is None
    assert after[done["id"]]["status"] == "pending"


def test_a_wrong_or_missing_password_and_no_manager_are_one_line(
        manager: Manager, laptop: tuple[Path, dict[str, str]]) -> None:
    wrong = remote(laptop, manager, "stats", WORKER_PASSWORD="swordfish")
    assert wrong.returncode == 2 and wrong.stdout == ""
    assert wrong.stderr == f"error: the manager at {manager.url}: wrong worker password (-p/--password or WORKER_PASSWORD)\n"
    home, base = laptop
    anonymous = {key: value for key, value in base.items() if key != "WORKER_PASSWORD"}
    missing = ppcli("list", "-m", manager.url, env=anonymous, cwd=home)
    assert missing.returncode == 2 and "requires the worker password" in missing.stderr
    assert ok(ppcli("list", "-m", manager.url, "-p", PASSWORD, "--limit", "1", env=anonymous, cwd=home))
    nobody = ppcli("stats", "-m", f"http://127.0.0.1:{free_port()}", env=base, cwd=home)
    assert nobody.returncode == 2 and nobody.stderr.startswith("error: cannot reach the manager at http://127.0.0.1:")
    assert nobody.stderr.count("\n") == 1
    stray = ppcli("stats", "--ca", "ca.pem", env={**base, "DATABASE_URL": "sqlite:///./x.db"}, cwd=home)
    assert stray.returncode == 2 and "name it with -m" in stray.stderr


def test_the_client_says_413_and_422_in_one_line(manager: Manager) -> None:
    settings = load_settings(env_file=None, worker_password=PASSWORD)
    api = find_prefect_api(settings, manager=manager.url, environ={})
    assert api is not None
    with ManagerClient(api) as client:
        with pytest.raises(ManagerError) as too_many:
            client.add([{"episode_url": f"https://podcasts.example/over/{i}.mp3"} for i in range(10_001)])
        assert too_many.value.status == 413 and "too large: at most 10,000 jobs per request" in str(too_many.value)
        with pytest.raises(ManagerError) as refused:
            client.retry(status="processing")
        assert refused.value.status == 422 and not refused.value.setup
        assert str(refused.value) == (f"the manager at {manager.url} refused the request: cannot retry status "
                                      "'processing'; choose from failed, duplicate")
        with pytest.raises(ManagerError) as vague:
            client.invalidate()
        assert vague.value.status == 422 and "code_version, model or completed_after" in str(vague.value)


NEW_ROUTES: list[tuple[str, dict[str, Any]]] = [
    ("/api/jobs/retry", {"status": "failed"}),
    ("/api/jobs/invalidate", {"code_version": "nothing-made-by-this"}),
]


def test_the_new_routes_want_the_password(manager: Manager) -> None:
    anonymous = httpx.Client(base_url=manager.url, trust_env=False, timeout=30)
    # Wrong guesses from an address of their own: the login limit never blocks the other tests.
    guesser = httpx.Client(base_url=manager.url, trust_env=False, timeout=30,
                           transport=httpx.HTTPTransport(local_address="127.0.0.2"))
    with anonymous, guesser, worker_http(manager) as worker:
        for path, body in NEW_ROUTES:
            refused = anonymous.post(path, json={**body, "apply": True})
            assert refused.status_code == 401 and "password" in refused.json()["detail"], path
            assert guesser.post(path, json={**body, "apply": True}, headers={"X-Worker-Password": "nope"}).status_code == 401
            answered = worker.post(path, json=body)
            assert answered.status_code == 200, answered.text
            assert answered.json()["dry_run"] is True and isinstance(answered.json()["matching"], int)
        paths = worker.get("/openapi.json", auth=("operator", PASSWORD)).json()["paths"]
        assert {"/api/jobs/retry", "/api/jobs/invalidate"} <= set(paths)
