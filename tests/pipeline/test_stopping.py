"""One SIGTERM stops gracefully: not-started episodes go back to the queue within seconds."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from podcastpile.store import EpisodeStore, NewEpisode, make_engine, migrate
from tests.loopback import LoopbackServer
from tests.pipeline.conftest import pipeline_environment


def test_one_sigterm_to_ppcli_process_releases_unfinished_episodes(
    tmp_path: Path, slow_host: LoopbackServer
) -> None:
    database = f"sqlite:///{tmp_path / 'episodes.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(pipeline_environment(database), PREFECT_HOME=str(tmp_path / "prefect"), ALLOW_PRIVATE_ADDRESSES="true")
    urls = [slow_host.url(f"/ep/show-{i}.wav") for i in range(4)]
    process = subprocess.Popen([sys.executable, "-m", "podcastpile.cli", "process", "--live", *urls],
                               cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    engine = make_engine(database)
    migrate(engine)
    store = EpisodeStore(engine, archive_required=False)
    deadline = time.monotonic() + 180
    while not any(row.status == "completed" for row in store.list()):
        assert time.monotonic() < deadline and process.poll() is None, process.communicate()
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    _, stderr = process.communicate(timeout=60)
    assert time.monotonic() - signalled < 30
    assert process.returncode == 130, stderr[-2000:]
    assert "given back to the queue" in stderr and "Traceback" not in stderr
    statuses = [row.status for row in store.list()]
    assert "completed" in statuses and set(statuses) <= {"completed", "pending"}, statuses
    assert all(row.lease_token is None for row in store.list())  # nothing left leased
    engine.dispose()


def test_ppcli_process_waits_for_episodes_another_process_holds(tmp_path: Path, slow_host: LoopbackServer) -> None:
    """Episodes held by another process are waited for (and said so), not reported as failures."""
    database = f"sqlite:///{tmp_path / 'episodes.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(pipeline_environment(database), ALLOW_PRIVATE_ADDRESSES="true", PREFECT_HOME=str(tmp_path / "prefect"))
    engine = make_engine(database)
    migrate(engine)
    store = EpisodeStore(engine, archive_required=False)
    shared = [slow_host.url(f"/ep/shared-{i}.wav") for i in range(2)]
    store.add([NewEpisode(url) for url in shared])
    held = store.claim_batch("another-process", 2)  # as a concurrent `ppcli process` would
    own = slow_host.url("/ep/own.wav")
    log = tmp_path / "stderr.log"
    with log.open("w") as errors:
        run = subprocess.Popen([sys.executable, "-m", "podcastpile.cli", "process", "--live", *shared, own],
                               cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=errors, text=True)
        deadline = time.monotonic() + 180
        while "episode 2: held by another-process (assigned); waiting for it" not in log.read_text():
            assert time.monotonic() < deadline and run.poll() is None, log.read_text()[-3000:]
            time.sleep(0.5)
        assert store.find(own).status == "completed"  # its own episode did not wait
        assert [store.get(c.episode_id).status for c in held] == ["assigned", "assigned"]
        store.release_claims(held)  # the other process gives them back (or finishes them)
        run.communicate(timeout=180)
    assert run.returncode == 0, log.read_text()[-3000:]
    assert [row.status for row in store.list()] == ["completed"] * 3
    engine.dispose()
