"""The batch flow on an in-process Prefect test server: it removes the temporary audio of dead
processes when it starts, and a password in an episode URL never reaches Prefect's database."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.events.filters import EventFilter, EventNameFilter
from prefect.events.worker import EventsWorker
from prefect.logging.handlers import APILogHandler
from prefect.settings import get_current_settings
from prefect.testing.utilities import prefect_test_harness

from flows.process import process_batch
from podcastpile.store import EpisodeStore, NewEpisode
from tests.loopback import LoopbackServer, Reply

SECRET = "S3cret"


@pytest.fixture
def prefect_server() -> Iterator[None]:
    with prefect_test_harness(server_startup_timeout=120):
        yield


def test_batch_start_removes_orphaned_downloads(
    prefect_server: None, pipeline_store: EpisodeStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the system temp folder, for this test
    exited = subprocess.Popen([sys.executable, "-c", "pass"])
    exited.wait()
    orphan = tmp_path / f"podcastpile-{exited.pid}-left.audio"
    orphan.write_bytes(b"audio")

    assert process_batch() == {"claimed": 0, "outcomes": [], "models_loaded": 0}

    assert not orphan.exists()


def _text_of_every_table(database: Path) -> str:
    with sqlite3.connect(database) as connection:
        tables = [row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return "\n".join(
            repr(row) for table in tables for row in connection.execute(f'SELECT * FROM "{table}"')
        )


def _wait_until_stored(needle: str) -> None:
    """Until the server has stored a log line with `needle` and the failed task's event: both
    reach it in the background."""
    APILogHandler().flush()
    EventsWorker.drain_all()
    deadline = time.monotonic() + 60
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            logged = any(needle in log.message for log in client.read_logs())
            failed = client.read_events(EventFilter(event=EventNameFilter(name=["prefect.task-run.Failed"])), limit=50)
            if logged and failed.events:
                return
            time.sleep(0.5)
    raise AssertionError(f"no log line mentions {needle!r}, or no task-run.Failed event")


def test_a_password_in_an_episode_url_never_reaches_prefect(pipeline_store: EpisodeStore) -> None:
    loop = {"/loop.mp3": lambda request: Reply(302, b"", {"Location": "/loop.mp3"})}
    with LoopbackServer(loop) as host, prefect_test_harness(server_startup_timeout=120):
        database = Path(get_current_settings().server.database.connection_url.get_secret_value().split("///", 1)[1])
        url = f"http://user:{SECRET}@127.0.0.1:{host.port}/loop.mp3"
        pipeline_store.add([NewEpisode(url, language="en")])
        (outcome,) = process_batch()["outcomes"]
        _wait_until_stored("too-many-redirects")
    assert outcome["status"] == "failed" and outcome["reason"].startswith("too-many-redirects")
    (row,) = pipeline_store.list()
    assert row.url == url  # the store keeps the URL as given
    assert SECRET not in row.error and "user:***@127.0.0.1" in row.error

    # The server has stopped, so its database is read without getting in its way: the failure is
    # in it (task state, log line, event, artifact), the password nowhere.
    everything = _text_of_every_table(database)
    assert everything.count("too-many-redirects") >= 4
    assert "user:***@127.0.0.1" in everything
    assert SECRET not in everything
