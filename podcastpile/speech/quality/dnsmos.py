"""DNSMOS P.835 (SIG, BAK, OVRL) with the ONNX model inside the `speechmos` wheel.

As Microsoft's reference (DNS-Challenge `dnsmos_local.py`, speechmos's `dnsmos.py`) does it:
audio shorter than `WINDOW_SECONDS` is doubled until it is that long, 9.01 s windows are
taken every second, the model's raw SIG/BAK/OVRL of each window go through the published
P.835 polynomial fits, and the windows are averaged. The P.808 model (`model_v8.onnx`) is not
run: its score is not one of ours, and its mel features would be most of the CPU time.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from podcastpile.speech.quality import runtime

SAMPLE_RATE = 16_000
WINDOW_SECONDS = 9.01
WINDOW = int(WINDOW_SECONDS * SAMPLE_RATE)
HOP = SAMPLE_RATE
BATCH = 8  # windows per model call: fewer calls, bounded memory (8 × 144160 floats)
MODEL_FILE = "sig_bak_ovr.onnx"
# The non-personalized P.835 fits of the reference, highest power first (numpy.polyval order).
_FIT_SIG = (-0.08397278, 1.22083953, 0.0052439)
_FIT_BAK = (-0.13166888, 1.60915514, -0.39604546)
_FIT_OVRL = (-0.06766283, 1.11546468, 0.04602535)


@dataclass(frozen=True)
class Dnsmos:
    """Mean opinion scores on the 1–5 scale."""

    sig: float
    bak: float
    ovrl: float


def _path() -> Path:
    return runtime.package_file("speechmos", "dnsmos_models", MODEL_FILE)


@cache
def model_id() -> str:
    """Provenance: model, package version and the weights' digest."""
    return (f"dnsmos-p835 {MODEL_FILE} (speechmos {runtime.package_version('speechmos')}) "
            f"sha256:{runtime.file_digest(_path())}")


def windows(samples: np.ndarray) -> np.ndarray:
    """The reference's 9.01 s windows of `samples`, one per row (doubled first if short), as a
    strided view: a long turn's windows overlap 9-fold, and copies are made a batch at a time."""
    audio = np.asarray(samples, np.float32)
    if audio.size == 0:
        raise ValueError("no audio to score")
    while audio.size < WINDOW:  # doubling, not tiling to length: the reference's window count
        audio = np.concatenate([audio, audio])
    # The reference's own slicing sometimes drops a window to float rounding
    # (int((i + 9.01) * 16000) == 144159 + 16000 i); here every window is whole and kept.
    count = max(1, int(np.floor(audio.size / SAMPLE_RATE) - WINDOW_SECONDS) + 1)
    return np.lib.stride_tricks.sliding_window_view(audio, WINDOW)[:(count - 1) * HOP + 1:HOP]


def score(samples: np.ndarray) -> Dnsmos:
    """DNSMOS P.835 of `samples` (16 kHz mono float32 in [-1, 1])."""
    model = runtime.session(_path())
    rows = windows(np.clip(samples, -1.0, 1.0))
    raw = np.concatenate([
        model.run(None, {"input_1": np.ascontiguousarray(rows[i:i + BATCH])})[0]
        for i in range(0, len(rows), BATCH)
    ])
    sig = np.polyval(_FIT_SIG, raw[:, 0].astype(np.float64))
    bak = np.polyval(_FIT_BAK, raw[:, 1].astype(np.float64))
    ovrl = np.polyval(_FIT_OVRL, raw[:, 2].astype(np.float64))
    return Dnsmos(sig=float(sig.mean()), bak=float(bak.mean()), ovrl=float(ovrl.mean()))
