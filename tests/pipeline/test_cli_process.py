"""`ppcli process` as a user runs it: the flows in-process on embedded defaults, then Parquet."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow.dataset as ds

from tests.pipeline.conftest import AudioHost, pipeline_environment


def ppcli(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    environment.update(env, COLUMNS="200")
    environment.pop("ARCHIVE_MODE", None)  # the command's flags decide
    return subprocess.run([sys.executable, "-m", "podcastpile.cli", *args], cwd=cwd, env=environment,
                          capture_output=True, text=True, timeout=600)


def test_process_live_urls_and_export(tmp_path: Path, audio_host: AudioHost, conversation: dict) -> None:
    env = pipeline_environment(f"sqlite:///{tmp_path / 'episodes.db'}")
    env["PREFECT_HOME"] = str(tmp_path / "prefect")  # Prefect's temporary server keeps its files here
    out = tmp_path / "dataset"
    result = ppcli(["process", "--live", audio_host.url("good-cli.wav"), audio_host.url("gone.wav"),
                    "--out", str(out)], tmp_path, env)
    assert result.returncode == 1, result.stderr[-3000:]  # one of the two episodes failed
    for _, text in conversation["truth"]:
        assert text in result.stdout
    assert "failed" in result.stdout and "HTTP 404" in result.stdout
    assert "Traceback" not in result.stderr
    rows = ds.dataset(out / "data" / "episodes", format="parquet").to_table().to_pylist()
    assert [row["episode_url"] for row in rows] == [audio_host.url("good-cli.wav")]


def test_process_refuses_live_download_without_the_flag(tmp_path: Path, audio_host: AudioHost) -> None:
    env = pipeline_environment(f"sqlite:///{tmp_path / 'episodes.db'}")
    result = ppcli(["process", audio_host.url("good-x.wav")], tmp_path, env)
    assert result.returncode == 1
    assert "Internet Archive" in result.stderr and "--live" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
