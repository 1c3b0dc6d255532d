"""The manager's dispatch loop while every episode is leased to runs that look alive: no dispatch
per check, but one every DISPATCH_SAFETY, so dispatch's backstop (a batch run whose heartbeats
stopped unnoticed) runs even when nothing else would start it (CI's soak: six episodes held for
nine minutes by a batch run killed while Prefect's database was down)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

from podcastpile.cli import control
from podcastpile.config import Settings
from podcastpile.prefect_api import PrefectAPI
from podcastpile.store import EpisodeStore, NewEpisode
from tests.loopback import LoopbackServer, Reply

JSON = {"Content-Type": "application/json"}


def test_leases_held_by_running_runs_start_a_dispatch_every_safety_interval(
        store: EpisodeStore, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    run_id = str(uuid.uuid4())
    store.add([NewEpisode(f"https://host.example/{i}.mp3") for i in range(3)])
    assert len(store.claim_batch("gpu-0", 3, run_id=run_id)) == 3
    created: list[str] = []

    def deployments(request):  # type: ignore[no-untyped-def]
        if request.path.endswith("/create_flow_run"):
            created.append(request.path)
            return Reply(201, json.dumps({"id": str(uuid.uuid4())}).encode(), JSON)
        return Reply(200, b'{"id": "dispatch-deployment"}', JSON)

    routes = {
        "/deployments/*": deployments,
        "/flow_runs/filter": lambda request: Reply(200, json.dumps(
            [{"id": run_id, "state": {"type": "RUNNING"}}]).encode(), JSON),  # the holder looks alive
        "/work_pools/*": lambda request: Reply(200, b"[]", JSON),
    }
    with LoopbackServer(routes) as server:
        config = Settings(_env_file=None, database_url="sqlite://", archive_mode="off")
        loops = control.ControlLoops(PrefectAPI(server.base_url), config, say=lambda line: None)
        loops._dispatch(store, datetime.now(UTC))
        assert len(created) == 1 and "3 leased" in loops.loops["dispatch"].found, "the first look dispatches"
        loops._dispatch(store, datetime.now(UTC))
        assert len(created) == 1, "not again at the next check"
        monkeypatch.setattr(control, "DISPATCH_SAFETY", 0.0)
        loops._dispatch(store, datetime.now(UTC))
        assert len(created) == 2, "again once DISPATCH_SAFETY has passed"
