"""Fixtures for the speech core tests: encoded audio in each podcast format, tiny NeMo models.

The tiny models and the synthetic conversation are committed under tests/fixtures/speech/
(built by scripts/make_tiny_models.py; test_make_tiny_models.py checks the script still works).
Model fixtures are session-scoped: NeMo is imported and each model loaded once per run.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "speech"
TONE_SECONDS = 2.0

# name → (PyAV container format, encoder, encoder sample rate, expected probe result)
FORMATS = {
    "mp3": ("mp3", "libmp3lame", 16000, "mp3/mp3"),
    "m4a": ("ipod", "aac", 16000, "mov/aac"),
    "opus": ("ogg", "libopus", 48000, "ogg/opus"),
    "wav": ("wav", "pcm_s16le", 44100, "wav/pcm_s16le"),
    "flac": ("flac", "flac", 22050, "flac/flac"),
}


def tone(seconds: float = TONE_SECONDS, rate: int = 16000) -> np.ndarray:
    """A 440 Hz tone at half scale: easy to check after a lossy round trip."""
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def encode(
    path: Path, container: str, codec: str, rate: int, samples: np.ndarray,
    options: dict[str, str] | None = None, frame_size: int | None = None,
) -> bytes:
    """Encode mono `samples` (at `rate`) with PyAV, with muxer `options`; returns the file's bytes."""
    import av

    with av.open(str(path), "w", format=container, options=options or {}) as out:
        stream = out.add_stream(codec, rate=rate)
        stream.layout = "mono"
        frame_size = frame_size or (960 if codec == "libopus" else 1024)
        for start in range(0, len(samples), frame_size):
            frame = av.AudioFrame.from_ndarray(samples[None, start:start + frame_size], format="flt", layout="mono")
            frame.sample_rate = rate
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path.read_bytes()


@pytest.fixture(scope="session")
def encoded_audio(tmp_path_factory) -> dict[str, bytes]:
    """Bytes of a 2 s tone in each common podcast format."""
    folder = tmp_path_factory.mktemp("encoded")
    return {
        name: encode(folder / f"tone.{name}", container, codec, rate, tone(rate=rate))
        for name, (container, codec, rate, _) in FORMATS.items()
    }


@pytest.fixture(scope="session")
def conversation() -> dict:
    """The synthetic conversation's ground truth (turns with speaker, start, end, text)."""
    info = json.loads((FIXTURES / "conversation.json").read_text())
    info["wav"] = FIXTURES / "conversation.wav"
    return info


@pytest.fixture(scope="session")
def tiny_models():
    """`SpeechModels` over the committed tiny overfit models, on CPU, loaded once per session."""
    from podcastpile.speech.nemo_models import SpeechModels

    models = SpeechModels(
        diar_model=str(FIXTURES / "tiny_diar.nemo"),
        asr_model=str(FIXTURES / "tiny_asr.nemo"),
        asr_model_multilingual=str(FIXTURES / "tiny_asr.nemo"),
        device="cpu",
    )
    models.diarizer()
    models.asr()
    return models
