"""`ppcli stats` counts episodes held by dead flow runs, asking a real Prefect server which runs
are dead, and says why when it cannot know."""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path

import httpx

from podcastpile.store import EpisodeStore, NewEpisode, make_engine, migrate
from tests import postgres
from tests.loopback import LoopbackServer, Reply
from tests.prefect_server import free_port, prefect_server
from tests.test_cli import ppcli


def _run_in_state(api: str, flow_id: str, state: str) -> str:
    """A flow run of `flow_id` in state `state` (set by force, as Prefect itself marks crashes)."""
    run = httpx.post(f"{api}/flow_runs/", json={"flow_id": flow_id, "state": {"type": "PENDING"}}).json()
    for step in ("RUNNING", state) if state != "RUNNING" else ("RUNNING",):
        answer = httpx.post(f"{api}/flow_runs/{run['id']}/set_state", json={"state": {"type": step}, "force": True})
        assert answer.status_code in (200, 201), answer.text
    return str(run["id"])


def _stats(tmp_path: Path, database_url: str, **env: str) -> tuple[dict, str]:
    env = {"PREFECT_HOME": str(tmp_path / "no-profiles"), "PREFECT_API_URL": "", **env}
    as_json = ppcli("stats", "--json", cwd=tmp_path, database_url=database_url, env=env)
    text = ppcli("stats", cwd=tmp_path, database_url=database_url, env=env)
    assert as_json.returncode == text.returncode == 0, as_json.stderr + text.stderr
    line = next(line for line in text.stdout.splitlines() if line.startswith("held by dead runs:"))
    return json.loads(as_json.stdout), line


def test_stats_counts_episodes_held_by_dead_runs_until_they_are_requeued(tmp_path: Path) -> None:
    with postgres.fresh_database("episodes") as database_url, prefect_server(tmp_path) as prefect_env:
        api = prefect_env["PREFECT_API_URL"]
        flow_id = httpx.post(f"{api}/flows/", json={"name": "process-batch"}).json()["id"]
        crashed = _run_in_state(api, flow_id, "CRASHED")
        cancelled = _run_in_state(api, flow_id, "CANCELLED")
        running = _run_in_state(api, flow_id, "RUNNING")
        elsewhere = str(uuid.uuid4())  # e.g. a run of ppcli process's temporary server
        engine = make_engine(database_url)
        migrate(engine)
        store = EpisodeStore(engine, archive_required=False)
        store.add([NewEpisode(f"https://example.com/{i}.mp3") for i in range(8)])
        for run, n in ((crashed, 3), (cancelled, 1), (running, 2), (elsewhere, 1), (None, 1)):
            store.claim_batch("gpu-1", n, run_id=run)

        stats, line = _stats(tmp_path, database_url, PREFECT_API_URL=api)
        assert (stats["held_by_dead_runs"], stats["held_by_runs_unknown_to_prefect"]) == (4, 2)
        assert stats["held_by_runs_unknown_reason"] is None
        assert line == "held by dead runs: 4 (and 2 by runs this Prefect server does not know)"

        assert store.requeue_run(crashed) == 3 and store.requeue_run(cancelled) == 1  # what dispatch does
        stats, line = _stats(tmp_path, database_url, PREFECT_API_URL=api)
        assert stats["held_by_dead_runs"] == 0 and line.startswith("held by dead runs: 0 ")

        # No server to ask: unknown, with the reason; never a failure.
        stats, line = _stats(tmp_path, database_url)
        assert (stats["held_by_dead_runs"], stats["held_by_runs_unknown_reason"]) == (None, "no Prefect server")
        assert line == "held by dead runs: unknown (no Prefect server)"
        stats, line = _stats(tmp_path, database_url, PREFECT_API_URL=f"http://127.0.0.1:{free_port()}/api")
        assert line == "held by dead runs: unknown (Prefect server unreachable)"
        engine.dispose()


def test_nothing_leased_needs_no_server(tmp_path: Path) -> None:
    database_url = f"sqlite:///{tmp_path / 'episodes.db'}"
    stats, line = _stats(tmp_path, database_url)
    assert (stats["held_by_dead_runs"], stats["held_by_runs_unknown_to_prefect"]) == (0, 0)
    assert line == "held by dead runs: 0"


def test_stats_sends_the_api_auth_string_and_reads_the_active_profile(tmp_path: Path) -> None:
    run = str(uuid.uuid4())
    seen: list[tuple[str | None, dict]] = []

    def flow_runs(request):  # type: ignore[no-untyped-def]
        seen.append((request.headers.get("authorization"), json.loads(request.body)))
        if request.headers.get("authorization") != "Basic " + base64.b64encode(b"admin:pass").decode():
            return Reply(401, b'{"detail": "unauthorized"}')
        return Reply(200, json.dumps([{"id": run, "state": {"type": "CRASHED"}}]).encode())

    database_url = f"sqlite:///{tmp_path / 'episodes.db'}"
    engine = make_engine(database_url)
    migrate(engine)
    store = EpisodeStore(engine, archive_required=False)
    store.add([NewEpisode("https://example.com/a.mp3")])
    store.claim_batch("gpu-1", 1, run_id=run)
    with LoopbackServer({"/api/flow_runs/filter": flow_runs}) as prefect:
        home = tmp_path / "prefect-home"
        home.mkdir()
        (home / "profiles.toml").write_text(
            f'active = "manager"\n[profiles.manager]\nPREFECT_API_URL = "{prefect.url("/api")}"\n')
        stats, _ = _stats(tmp_path, database_url, PREFECT_HOME=str(home), PREFECT_API_AUTH_STRING="admin:pass")
        assert stats["held_by_dead_runs"] == 1
        assert seen[0][1]["flow_runs"] == {"id": {"any_": [run]}}
        _, line = _stats(tmp_path, database_url, PREFECT_HOME=str(home), PREFECT_API_AUTH_STRING="admin:wrong")
        assert line == "held by dead runs: unknown (Prefect server answered 401)"
    engine.dispose()
