"""The manager's hourly export starts a run only when the dataset lacks some completed episode:
after a batch's own export (it publishes a drained queue at once) the loop starts nothing."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from podcastpile.cli.control import ControlLoops
from podcastpile.config import Settings
from podcastpile.dataset.export import export_dataset
from podcastpile.prefect_api import PrefectAPI
from podcastpile.store import EpisodeStore
from tests.dataset.conftest import add_completed
from tests.loopback import LoopbackServer, Reply

JSON = {"Content-Type": "application/json"}


def test_the_hourly_export_skips_a_dataset_that_holds_every_completed_episode(
    store: EpisodeStore, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)  # DATASET_DIR "./dataset" is the manager's ./dataset
    created: list[str] = []

    def answer(request):  # type: ignore[no-untyped-def]
        if request.path.endswith("/create_flow_run"):
            created.append(request.path)
            return Reply(201, json.dumps({"id": f"run-{len(created)}"}).encode(), JSON)
        return Reply(200, b'{"id": "export-deployment"}', JSON)

    add_completed(store, ["https://host.example/a.mp3", "https://host.example/b.mp3"])
    export_dataset(store.engine, str(tmp_path / "dataset"))  # what a drained batch's export does
    with LoopbackServer({"/deployments/*": answer}) as server:
        config = Settings(_env_file=None, database_url="sqlite://", dataset_dir="./dataset")
        loops = ControlLoops(PrefectAPI(server.base_url), config, say=lambda line: None)
        export = loops.loops["export"]
        export.seen = 0  # the manager started before the two completed

        loops._export(store, 2, datetime.now(UTC))
        assert created == [] and export.seen == 2 and "all exported" in export.found

        add_completed(store, ["https://host.example/c.mp3"], seed=7)
        loops._export(store, 3, datetime.now(UTC))
        assert created == ["/deployments/export-deployment/create_flow_run"] and export.seen == 3

        # Exported elsewhere (another DATASET_DIR) does not count.
        other = ControlLoops(PrefectAPI(server.base_url), config.model_copy(update={"dataset_dir": "./other"}),
                             say=lambda line: None)
        other.loops["export"].seen = 0
        other._export(store, 3, datetime.now(UTC))
        assert len(created) == 2
