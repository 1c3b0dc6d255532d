"""Silero VAD (the ONNX model inside the `silero-vad` wheel), run with onnxruntime, no torch.

The model reads 512-sample frames (32 ms at 16 kHz), each preceded by the last 64 samples of
the one before, and carries a recurrent state. An episode is cut into `STREAM_SECONDS` pieces
run side by side as one batch: one `run` call per 32 ms of *all* streams instead of per frame
of the episode, so the Python overhead per call is shared (the state resets at each piece's
start, which costs the model well under a second of warm-up in a minute-long piece).
Probabilities become speech frames the way silero's `get_speech_timestamps` does it:
hysteresis between `THRESHOLD` and `THRESHOLD - 0.15`, then short silences closed and short
speech dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np

from podcastpile.speech.quality import runtime

SAMPLE_RATE = 16_000
FRAME = 512
CONTEXT = 64
FRAME_SECONDS = FRAME / SAMPLE_RATE
THRESHOLD = 0.5
NEG_THRESHOLD = THRESHOLD - 0.15
MIN_SPEECH_FRAMES = 8  # 256 ms: silero's min_speech_duration_ms=250
MIN_SILENCE_FRAMES = 4  # 128 ms: silero's min_silence_duration_ms=100, rounded up to frames
STREAM_SECONDS = 60.0
MODEL_FILE = "silero_vad.onnx"


@cache
def model_id() -> str:
    """Provenance: package, version, model file and its digest."""
    path = runtime.package_file("silero_vad", "data", MODEL_FILE)
    return f"silero-vad {runtime.package_version('silero-vad')} {MODEL_FILE} sha256:{runtime.file_digest(path)}"


def probabilities(samples: np.ndarray) -> np.ndarray:
    """Speech probability of each 32 ms frame of `samples` (16 kHz mono float32); the last
    partial frame is zero-padded."""
    frames = -(-samples.size // FRAME)
    if frames == 0:
        return np.zeros(0, np.float32)
    per_stream = max(1, int(STREAM_SECONDS / FRAME_SECONDS))
    length = per_stream * FRAME
    streams = -(-frames // per_stream)
    # Full streams are a view of the samples; only the last one is copied, to pad it (a padded
    # copy of a whole 6 h episode would be 1.4 GB).
    full = samples[:(streams - 1) * length].reshape(streams - 1, length)
    last = np.zeros(length, np.float32)
    last[:samples.size - (streams - 1) * length] = samples[(streams - 1) * length:]
    model = runtime.session(runtime.package_file("silero_vad", "data", MODEL_FILE))
    state = np.zeros((2, streams, 128), np.float32)
    chunk = np.zeros((streams, CONTEXT + FRAME), np.float32)
    rate = np.array(SAMPLE_RATE, np.int64)
    found = np.empty((streams, per_stream), np.float32)
    for index in range(per_stream):
        chunk[:, :CONTEXT] = chunk[:, -CONTEXT:]  # the previous frame's tail (zeros at first)
        chunk[:-1, CONTEXT:] = full[:, index * FRAME:(index + 1) * FRAME]
        chunk[-1, CONTEXT:] = last[index * FRAME:(index + 1) * FRAME]
        output, state = model.run(None, {"input": chunk, "state": state, "sr": rate})
        found[:, index] = output[:, 0]
    return found.reshape(-1)[:frames]


def speech_frames(probs: np.ndarray) -> np.ndarray:
    """A boolean speech mask per frame from `probabilities` (silero's hysteresis and minimums)."""
    mask = np.zeros(probs.size, bool)
    speaking = False
    for index, value in enumerate(probs.tolist()):
        if not speaking and value >= THRESHOLD:
            speaking = True
        elif speaking and value < NEG_THRESHOLD:
            speaking = False
        mask[index] = speaking
    _fill_runs(mask, False, MIN_SILENCE_FRAMES)  # a breath inside a sentence is not a gap
    _fill_runs(mask, True, MIN_SPEECH_FRAMES)  # a click is not speech
    return mask


def _fill_runs(mask: np.ndarray, value: bool, shorter_than: int) -> None:
    """Flip interior runs of `value` shorter than `shorter_than` frames (speech runs anywhere)."""
    for start, end in runs(mask if value else ~mask):
        interior = start > 0 and end < mask.size
        if end - start < shorter_than and (value or interior):
            mask[start:end] = not value


def runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(start, end) frame indices of each run of True in `mask`."""
    if mask.size == 0:
        return []
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    return list(zip(edges[0::2].tolist(), edges[1::2].tolist()))


@dataclass(frozen=True)
class Vad:
    """The VAD's view of one stretch of audio: a speech mask per `FRAME_SECONDS` frame."""

    mask: np.ndarray

    @classmethod
    def of(cls, samples: np.ndarray) -> Vad:
        """Run the model over `samples` (16 kHz mono float32)."""
        return cls(speech_frames(probabilities(samples)))

    def frames(self, start: float, end: float) -> slice:
        """The frames of [start, end] seconds (clamped)."""
        first = min(self.mask.size, max(0, round(start / FRAME_SECONDS)))
        return slice(first, min(self.mask.size, max(first, round(end / FRAME_SECONDS))))

    def speech_seconds(self, start: float, end: float) -> float:
        """Seconds of speech in [start, end]."""
        return float(np.count_nonzero(self.mask[self.frames(start, end)])) * FRAME_SECONDS

    def speech_ratio(self, start: float, end: float) -> float:
        """Share of [start, end] that is speech (0 for an empty span)."""
        window = self.mask[self.frames(start, end)]
        return float(np.count_nonzero(window)) / window.size if window.size else 0.0

    def segments(self, start: float, end: float) -> int:
        """Speech segments (runs) that fall, at least partly, inside [start, end]."""
        return len(runs(self.mask[self.frames(start, end)]))
