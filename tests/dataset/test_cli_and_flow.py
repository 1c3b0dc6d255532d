"""`ppcli export` as a user runs it, and the Prefect export flow run for real."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from podcastpile.store import EpisodeStore, make_engine, migrate
from tests.dataset.conftest import add_completed

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[tuple[str, EpisodeStore]]:
    url = f"sqlite:///{tmp_path / 'episodes.db'}"
    engine = make_engine(url)
    migrate(engine)
    yield url, EpisodeStore(engine, archive_required=False)
    engine.dispose()


def ppcli(*args: str, database_url: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": database_url, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "podcastpile.cli", *args], cwd=cwd, env=env,
        capture_output=True, text=True, timeout=120,
    )


def test_ppcli_export_json_then_nothing_twice(sqlite_store, tmp_path: Path) -> None:
    url, store = sqlite_store
    add_completed(store, [f"https://example.com/c-{n}.mp3" for n in range(3)])
    out = tmp_path / "out"
    first = ppcli("export", "--out", str(out), "--json", database_url=url, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    summary = json.loads(first.stdout)
    assert summary["episodes_written"] == 3 and summary["dataset_episodes"] == 3
    assert (out / "README.md").exists() and (out / "manifest.json").exists()

    second = ppcli("export", "--out", str(out), database_url=url, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "nothing new to export" in second.stdout and "3 episodes" in second.stdout


def test_ppcli_export_bad_destination_is_one_line(sqlite_store, tmp_path: Path) -> None:
    url, _ = sqlite_store
    result = ppcli("export", "--out", "nosuchscheme://bucket/ds", database_url=url, cwd=tmp_path)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "nosuchscheme" in lines[0]
    assert "Traceback" not in result.stderr


def test_ppcli_export_defaults_to_dataset_dir(sqlite_store, tmp_path: Path) -> None:
    url, store = sqlite_store
    add_completed(store, ["https://example.com/d.mp3"])
    env_dir = tmp_path / "from-settings"
    result = subprocess.run(
        [sys.executable, "-m", "podcastpile.cli", "export", "--json"], cwd=tmp_path,
        env={**os.environ, "DATABASE_URL": url, "DATASET_DIR": str(env_dir), "PYTHONPATH": str(REPO)},
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["dataset"] == str(env_dir)


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def test_export_flow(prefect_harness, sqlite_store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.export import export_flow

    url, store = sqlite_store
    add_completed(store, [f"https://example.com/f-{n}.mp3" for n in range(2)])
    monkeypatch.chdir(tmp_path)  # no stray .env
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("DATASET_DIR", str(tmp_path / "flow-dataset"))
    summary = export_flow()
    assert summary["episodes_written"] == 2
    assert json.loads((tmp_path / "flow-dataset" / "manifest.json").read_text())["episodes"] == 2
    assert export_flow()["episodes_written"] == 0
