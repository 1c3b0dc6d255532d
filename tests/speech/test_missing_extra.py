"""Without the `worker` extra (torch, NeMo, PyAV) the speech commands say so in one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from podcastpile.speech.nemo_models import MissingExtra, ModelLoadError, SpeechModels, require_worker_extra

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "speech" / "conversation.wav"

# Runs `ppcli ARGS` in a fresh interpreter where importing NeMo fails as on a core-only install.
WITHOUT_NEMO = """
import sys
class NoNemo:
    def find_spec(self, name, path=None, target=None):
        if name == "nemo" or name.startswith("nemo."):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return None
sys.meta_path.insert(0, NoNemo())
from podcastpile.cli import main
sys.argv = ["ppcli", *sys.argv[1:]]
main()
"""


def test_transcribe_without_nemo_is_one_line_naming_the_extra(tmp_path: Path) -> None:
    child = subprocess.run(
        [sys.executable, "-c", WITHOUT_NEMO, "transcribe", str(FIXTURE)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )
    assert child.returncode == 3, child.stderr
    assert "Traceback" not in child.stderr and "ModuleNotFoundError" not in child.stderr
    lines = [line for line in child.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, child.stderr
    assert "nemo not installed" in lines[0] and "podcastpile[worker]" in lines[0]


def test_loading_a_model_without_nemo_raises_the_models_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "meta_path", [_Refuse("nemo"), *sys.meta_path])
    monkeypatch.delitem(sys.modules, "nemo", raising=False)
    require_worker_extra.cache_clear()  # an earlier test in this process found NeMo installed
    models = SpeechModels(diar_model="x.nemo", asr_model="y.nemo", device="cpu")
    with pytest.raises(ModelLoadError) as raised:
        models.diarizer()
    assert isinstance(raised.value, MissingExtra) and "`worker` extra" in str(raised.value)
    require_worker_extra.cache_clear()  # a failed check is not cached; clear anyway for the next test


class _Refuse:
    def __init__(self, name: str) -> None:
        self.name = name

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name == self.name or name.startswith(self.name + "."):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return None
