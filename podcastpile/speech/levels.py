"""Cheap signal measures for filtering the dataset: levels, clipping, speech ratio.

All take 16 kHz mono float32 samples in [-1, 1] as decoded by `podcastpile.speech.audio`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

FLOOR_DBFS = -120.0  # digital silence would be -inf, which JSON cannot carry
LEVEL_BLOCK = 1 << 20  # samples per block in `levels`
CLIP_LEVEL = 0.999  # int16 full scale decodes to 32767/32768 ≈ 0.99997; lossy codecs land just below


def dbfs(value: float) -> float:
    """An amplitude (1.0 = full scale) in dBFS, floored at `FLOOR_DBFS`."""
    if value <= 0.0:
        return FLOOR_DBFS
    return max(FLOOR_DBFS, float(20.0 * np.log10(value)))


def levels(samples: np.ndarray) -> tuple[float, float, float]:
    """(rms_dbfs, peak_dbfs, clipped_ratio) of `samples`; an empty slice reads as silence."""
    if samples.size == 0:
        return FLOOR_DBFS, FLOOR_DBFS, 0.0
    # In blocks: a float64 copy of a whole 6 h episode would be 2.8 GB (and its square as much).
    squares, peak, clipped = 0.0, 0.0, 0
    for start in range(0, samples.size, LEVEL_BLOCK):
        magnitude = np.abs(samples[start:start + LEVEL_BLOCK].astype(np.float64, copy=False))
        squares += float(np.dot(magnitude, magnitude))
        peak = max(peak, float(magnitude.max()))
        clipped += int(np.count_nonzero(magnitude >= CLIP_LEVEL))
    rms = float(np.sqrt(squares / samples.size))
    return dbfs(rms), dbfs(peak), clipped / samples.size


def span(samples: np.ndarray, sample_rate: int, start: float, end: float) -> np.ndarray:
    """The samples between `start` and `end` seconds (clamped to the audio)."""
    first = max(0, int(round(start * sample_rate)))
    last = min(len(samples), max(first, int(round(end * sample_rate))))
    return samples[first:last]


def covered_seconds(intervals: Sequence[tuple[float, float]]) -> float:
    """Length of the union of (start, end) intervals, so overlapping turns are not counted twice."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end <= reach:
            continue
        total += end - max(start, reach)
        reach = end
    return total


def speech_ratio(intervals: Sequence[tuple[float, float]], start: float, end: float) -> float:
    """Share of [start, end] covered by `intervals` (0 for an empty span)."""
    length = end - start
    if length <= 0:
        return 0.0
    clipped = [(max(a, start), min(b, end)) for a, b in intervals if min(b, end) > max(a, start)]
    return min(1.0, covered_seconds(clipped) / length)
