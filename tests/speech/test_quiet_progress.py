"""SpeechModels.diarize draws no Sortformer "Streaming Steps" progress bar (ppcli output stays clean)."""

from __future__ import annotations

from podcastpile.speech.audio import decode
from tests.speech.conftest import FIXTURES


def test_diarize_prints_no_progress_bar(tiny_models, capfd):
    from nemo.collections.asr.models import sortformer_diar_models

    original = sortformer_diar_models.tqdm
    audio = decode(FIXTURES / "conversation.wav")
    capfd.readouterr()
    assert tiny_models.diarize(audio).segments
    captured = capfd.readouterr()
    assert "Streaming Steps" not in captured.err + captured.out
    assert sortformer_diar_models.tqdm is original  # the swap is scoped to the call
