"""The manager's CPU worker gets an absolute DATASET_DIR: its export runs work in the checkout,
so a relative one must be resolved where the operator started `ppcli manager` (issue 23)."""

from __future__ import annotations

from pathlib import Path

import pytest

from podcastpile.cli.stack import Stack, absolute_location
from podcastpile.config import Settings
from podcastpile.prefect_api import PrefectAPI


def worker_environment(tmp_path: Path, **settings: str) -> dict[str, str]:
    config = Settings(_env_file=None, database_url=f"sqlite:///{tmp_path / 'episodes.db'}", **settings)
    return Stack("127.0.0.1", 4200, None, PrefectAPI("http://127.0.0.1:4200/api"), config, None, 1)._worker_environment()


def test_a_relative_dataset_dir_resolves_where_the_manager_started(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    operator = tmp_path / "operator"
    operator.mkdir()
    monkeypatch.chdir(operator)
    monkeypatch.delenv("DATASET_DIR", raising=False)
    assert worker_environment(tmp_path)["DATASET_DIR"] == str(operator / "dataset")  # the default ./dataset
    assert worker_environment(tmp_path, dataset_dir="../shared/ds")["DATASET_DIR"] == str(tmp_path / "shared" / "ds")
    # Set in the manager's environment (which the worker inherits), still resolved here.
    monkeypatch.setenv("DATASET_DIR", "out")
    assert worker_environment(tmp_path)["DATASET_DIR"] == str(operator / "out")


@pytest.mark.parametrize("location", ["s3://bucket/dataset", "hf://datasets/me/pods", "gs://b/x/"])
def test_a_url_is_passed_as_it_is(tmp_path: Path, location: str) -> None:
    assert worker_environment(tmp_path, dataset_dir=location)["DATASET_DIR"] == location


def test_absolute_location_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert absolute_location("/srv/ds", base=tmp_path) == "/srv/ds"
    assert absolute_location("./a/../b", base=tmp_path) == str(tmp_path / "b")
    assert absolute_location("~/ds", base=tmp_path) == str(tmp_path / "home" / "ds")
    assert absolute_location("file://ds", base=tmp_path) == f"file://{tmp_path / 'ds'}"
    assert absolute_location("file:///srv/ds", base=tmp_path) == "file:///srv/ds"
