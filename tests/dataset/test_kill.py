"""An export killed mid-shard leaves no partial file visible; the next run repairs and completes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from podcastpile.dataset.export import export_dataset
from podcastpile.store.exports import ExportBusy
from podcastpile.store import EpisodeStore
from tests.dataset.conftest import add_completed
from tests.dataset.slow_export import LIMITS

REPO = Path(__file__).resolve().parents[2]
EPISODES = 20


def _half_written(out: Path) -> list[Path]:
    """Staged episode files holding at least one row group but no footer yet."""
    staging = out / ".incomplete" / "data" / "episodes"
    return [path for path in staging.glob("*.parquet") if path.stat().st_size > 4]


def _published_episodes(out: Path) -> int:
    try:
        return json.loads((out / "manifest.json").read_text())["episodes"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return 0


def test_kill_mid_shard_then_rerun(store: EpisodeStore, database_url: str, tmp_path: Path) -> None:
    add_completed(store, [f"https://example.com/k-{n}.mp3" for n in range(EPISODES)])
    out = tmp_path / "dataset"
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.dataset.slow_export", database_url, str(out)],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        deadline = time.monotonic() + 120
        # Kill once one shard is published and the next one is half-written.
        while not (_published_episodes(out) >= LIMITS.max_rows and _half_written(out)):
            if child.poll() is not None:
                pytest.fail(f"the export ended (rc {child.returncode}) before it could be killed")
            if time.monotonic() > deadline:
                pytest.fail("the export never reached a half-written shard")
            time.sleep(0.005)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == -signal.SIGKILL

    # What a reader sees now: only complete, listed shards.
    partial = _half_written(out)
    assert partial, "the kill should have left the shard being written in staging"
    with pytest.raises(Exception):
        pq.read_metadata(partial[0])  # no footer: it really was partial
    manifest = json.loads((out / "manifest.json").read_text())
    listed = {path for config in manifest["configs"].values() for path in config["files"]}
    visible = {str(path.relative_to(out)) for path in (out / "data").rglob("*.parquet")}
    assert visible == listed
    for path in listed:
        assert pq.read_metadata(out / path).num_rows > 0
    killed_at = manifest["episodes"]
    assert 0 < killed_at < EPISODES

    summary = export_dataset(store.engine, str(out), limits=LIMITS)
    assert summary.repaired_files >= 1
    assert summary.episodes_written == EPISODES - killed_at
    manifest = json.loads((out / "manifest.json").read_text())
    ids = [
        row["episode_id"]
        for path in manifest["configs"]["episodes"]["files"]
        for row in pq.read_table(out / path, columns=["episode_id"]).to_pylist()
    ]
    assert len(ids) == len(set(ids)) == EPISODES == manifest["episodes"]
    assert {episode.url_hash for episode in store.list(limit=None)} == set(ids)
    assert not list((out / ".incomplete").rglob("*.parquet"))
    assert sum(shard["episodes"] for shard in manifest["shards"]) == EPISODES


def test_second_export_to_the_same_dataset_is_refused_until_the_first_dies(
    store: EpisodeStore, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Refused at once, not after waiting out a lock that might be a dead run's.
    monkeypatch.setattr("podcastpile.store.exports.LOCK_WAIT_SECONDS", 0.0)
    add_completed(store, [f"https://example.com/busy-{n}.mp3" for n in range(EPISODES)])
    out = tmp_path / "dataset"
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.dataset.slow_export", database_url, str(out), "0.5"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        deadline = time.monotonic() + 120
        while not _half_written(out):  # the child holds the lock and is writing
            assert child.poll() is None and time.monotonic() < deadline
            time.sleep(0.005)
        with pytest.raises(ExportBusy, match="another export"):
            export_dataset(store.engine, str(out), limits=LIMITS)
        assert _half_written(out), "the refused run must not touch the running export's files"
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    # The dead run's lock went with its process (flock / PostgreSQL session).
    deadline = time.monotonic() + 30
    while True:
        try:
            summary = export_dataset(store.engine, str(out), limits=LIMITS)
            break
        except ExportBusy:  # PostgreSQL may take a moment to notice the dead session
            assert time.monotonic() < deadline
            time.sleep(0.2)
    assert summary.dataset_episodes == EPISODES
