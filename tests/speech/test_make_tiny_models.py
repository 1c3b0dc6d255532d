"""scripts/make_tiny_models.py still works: quick mode builds models the real code paths can load and run."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from podcastpile.speech.audio import decode
from podcastpile.speech.nemo_models import SpeechModels
from tests.speech.conftest import FIXTURES

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "make_tiny_models.py"


def load_script():
    spec = importlib.util.spec_from_file_location("make_tiny_models", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_build_gives_loadable_models(tmp_path):
    script = load_script()
    # In-process: NeMo is imported once per test session, and a subprocess would import it again.
    assert script.main(["--quick", "--out", str(tmp_path)]) == 0
    for name in ("tiny_asr.nemo", "tiny_diar.nemo", "conversation.wav", "conversation.json"):
        assert (tmp_path / name).stat().st_size > 0
    assert (tmp_path / "tiny_asr.nemo").stat().st_size < 3_000_000
    assert (tmp_path / "tiny_diar.nemo").stat().st_size < 3_000_000
    info = json.loads((tmp_path / "conversation.json").read_text())
    assert [(t["speaker"], t["text"]) for t in info["turns"]] == script.CONVERSATION

    # Random (2-step) weights: the output is noise, but every real code path runs.
    models = SpeechModels(diar_model=str(tmp_path / "tiny_diar.nemo"), asr_model=str(tmp_path / "tiny_asr.nemo"),
                          device="cpu")
    audio = decode(tmp_path / "conversation.wav")
    assert abs(audio.duration - info["duration"]) < 0.01
    diarization = models.diarize(audio)
    assert all(s.start < s.end for s in diarization.segments)
    transcript = models.transcribe(audio)
    assert isinstance(transcript.text, str)
    assert transcript.fingerprint == models.asr().fingerprint != models.diarizer().fingerprint


def test_committed_fixtures_match_the_script():
    script = load_script()
    info = json.loads((FIXTURES / "conversation.json").read_text())
    assert [(t["speaker"], t["text"]) for t in info["turns"]] == script.CONVERSATION
    assert info["voices"] == script.VOICES
    assert abs(decode(FIXTURES / "conversation.wav").duration - info["duration"]) < 0.01
