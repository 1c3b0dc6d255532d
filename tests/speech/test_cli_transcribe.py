"""`ppcli transcribe` end to end on the tiny models: JSON, the table, and one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from podcastpile.cli import app
from tests.speech.conftest import FIXTURES


@pytest.fixture
def tiny_env(monkeypatch):
    monkeypatch.setenv("ASR_MODEL", str(FIXTURES / "tiny_asr.nemo"))
    monkeypatch.setenv("ASR_MODEL_MULTILINGUAL", str(FIXTURES / "tiny_asr.nemo"))
    monkeypatch.setenv("DIAR_MODEL", str(FIXTURES / "tiny_diar.nemo"))
    monkeypatch.setenv("DEVICE", "cpu")


def test_json_output_has_the_turns(tiny_env, conversation):
    result = CliRunner().invoke(app, ["transcribe", str(conversation["wav"]), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [(t["speaker"], t["text"]) for t in data["turns"]] == [
        (turn["speaker"], turn["text"]) for turn in conversation["turns"]
    ]
    assert data["rtf"] > 0 and data["sha256"]


def test_table_output_shows_turns_and_rtf(tiny_env, conversation):
    result = CliRunner().invoke(app, ["transcribe", str(conversation["wav"])])
    assert result.exit_code == 0, result.output
    assert "speaker_1" in result.stdout and "thanks for having me" in result.stdout
    assert "RTF" in result.stdout


@pytest.mark.parametrize("source, code", [("/nonexistent/episode.mp3", "not-found"),
                                          (str(FIXTURES / "conversation.json"), "not-audio")])
def test_bad_input_is_one_line_on_stderr(tiny_env, source, code):
    result = CliRunner().invoke(app, ["transcribe", source])
    assert result.exit_code == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and code in lines[0] and "Traceback" not in result.stderr


def test_missing_model_is_one_line_and_exit_3(tiny_env, conversation, monkeypatch, tmp_path):
    monkeypatch.setenv("DIAR_MODEL", str(tmp_path / "missing.nemo"))
    result = CliRunner().invoke(app, ["transcribe", str(conversation["wav"])])
    assert result.exit_code == 3
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot load" in lines[0] and "missing.nemo" in lines[0]


def test_cli_import_does_not_load_torch():
    code = "import sys, podcastpile.cli; assert 'torch' not in sys.modules and 'nemo' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_json_run_keeps_stderr_free_of_nemo_telemetry_noise(conversation, tmp_path):
    # A real process: NeMo's telemetry library warns at import time, before any test fixture
    # could configure logging in this one.
    env = {**os.environ, "ASR_MODEL": str(FIXTURES / "tiny_asr.nemo"), "DEVICE": "cpu",
           "ASR_MODEL_MULTILINGUAL": str(FIXTURES / "tiny_asr.nemo"), "DIAR_MODEL": str(FIXTURES / "tiny_diar.nemo")}
    child = subprocess.run([sys.executable, "-m", "podcastpile.cli", "transcribe", str(conversation["wav"]), "--json"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert child.returncode == 0, child.stderr[-2000:]
    assert json.loads(child.stdout)["turns"]
    assert "OneLogger" not in child.stderr and "No exporters" not in child.stderr, child.stderr[-2000:]
