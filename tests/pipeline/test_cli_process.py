"""`ppcli process` as a user runs it: the flows in-process on embedded defaults, then Parquet."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.dataset as ds

from tests.pipeline.conftest import AudioHost, pipeline_environment
from tests.wayback import AdHost, WaybackDouble


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


def test_process_archives_first_then_processes_the_archived_copy(tmp_path: Path, conversation: dict) -> None:
    """The one-command path follows ARCHIVE_MODE=required: archive, then download only the capture."""
    with WaybackDouble(pending_polls=2) as ia, AdHost({"show.wav": conversation["wav"].read_bytes()}) as origin:
        env = pipeline_environment(f"sqlite:///{tmp_path / 'episodes.db'}")
        env.update(PREFECT_HOME=str(tmp_path / "prefect"), WAYBACK_URL=ia.base_url,
                   ARCHIVE_API_URL=ia.base_url, SPN_POLL_SECONDS="0.2",
                   IA_ACCESS_KEY="AK", IA_SECRET_KEY="SK")
        url = origin.url("show.wav")
        result = ppcli(["process", url, "--out", str(tmp_path / "dataset")], tmp_path, env)
        assert result.returncode == 0, result.stderr[-3000:]
        (capture,) = ia.captures[url]
        archived = f"{ia.base_url}/web/{capture.timestamp}id_/{url}"
        # progress lines per episode, then the audio source and the turns
        for line in (f"episode 1: looking up an existing capture of {url}",
                     "episode 1: submitted to Save Page Now (job spn2-000001)",
                     f"episode 1: archived: {archived}"):
            assert line in result.stderr, result.stderr
        assert f"audio source: archived: {archived}" in result.stdout
        for _, text in conversation["truth"]:
            assert text in result.stdout
        assert origin.direct_hits == 0 and len(ia.submissions) == 1
        (row,) = ds.dataset(tmp_path / "dataset" / "data" / "episodes", format="parquet").to_table().to_pylist()
        assert row["archive_url"] == archived and row["archive_timestamp"] is not None

        again = ppcli(["process", url, "--json"], tmp_path, env)  # already done: nothing resubmitted
        assert again.returncode == 0 and len(ia.submissions) == 1
        assert json.loads(again.stdout)[0]["archive_url"] == archived


def test_process_validates_before_it_writes(tmp_path: Path, audio_host: AudioHost) -> None:
    env = pipeline_environment(f"sqlite:///{tmp_path / 'episodes.db'}")
    bad_url = ppcli(["process", "--live", audio_host.url("good-v.wav"), "not a url"], tmp_path, env)
    assert bad_url.returncode == 1 and len(bad_url.stderr.strip().splitlines()) == 1
    no_model = ppcli(["process", "--live", audio_host.url("good-v.wav")], tmp_path,
                     {**env, "DIAR_MODEL": str(tmp_path / "missing.nemo")})
    assert no_model.returncode == 3, no_model.stderr[-2000:]
    (line,) = no_model.stderr.strip().splitlines()  # one line, nothing else (no NeMo noise)
    assert line.startswith("error: cannot load") and "missing.nemo" in line
    listed = ppcli(["list", "--json"], tmp_path, env)
    assert json.loads(listed.stdout) == []  # neither refused command added anything
