"""What the quality columns say on the test corpus, and what each case cost: a Markdown table.

The corpus is the one the quality tests use (tests/speech/test_quality.py): the espeak-ng
two-speaker conversation of the tiny models (8.3 s), the same with white noise at 0 dB SNR, 5 s
of digital silence between two copies of it, 12 s of music-like chords, and the conversation
mixed with a copy of itself 2 s later (a second pair of speakers talking over the first, the
diarizer's segments saying so). Each case is one turn over the audio, scored by
`quality.measure` as the pipeline does, in this thread (CPU time = the work: onnxruntime
sessions are single-threaded).

Usage: .venv/bin/python bench/quality_table.py
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from podcastpile.speech import quality  # noqa: E402
from tests.speech.test_quality import FIXTURES, RATE, music, with_noise  # noqa: E402

COLUMNS = ("dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl", "speech_ratio", "vad_segments",
           "loudness_lufs", "snr_db", "overlap_ratio")
Segments = list[tuple[str, float, float]]
Case = tuple[np.ndarray, tuple[float, float], Segments]


def conversation() -> tuple[np.ndarray, Segments]:
    """The test conversation and its true speaker segments (what a perfect diarizer says)."""
    import soundfile

    samples, rate = soundfile.read(FIXTURES / "conversation.wav", dtype="float32")
    assert rate == RATE
    turns = json.loads((FIXTURES / "conversation.json").read_text())["turns"]
    return samples, [(t["speaker"], t["start"], t["end"]) for t in turns]


def cases() -> dict[str, Callable[[], Case]]:
    """Each case: (audio, the turn's span, the diarizer's segments)."""
    samples, segments = conversation()
    whole = (0.0, samples.size / RATE)

    def silence() -> Case:
        start = samples.size / RATE
        audio = np.concatenate([samples, np.zeros(RATE * 6, np.float32), samples])
        return audio, (start + 0.5, start + 5.5), []

    def overlapped(delay: float = 2.0) -> Case:
        shift = int(delay * RATE)
        audio = np.zeros(samples.size + shift, np.float32)
        audio[:samples.size] += samples
        audio[shift:] += samples
        audio /= max(1.0, float(np.abs(audio).max()))
        others = [(f"{speaker}-2", start + delay, end + delay) for speaker, start, end in segments]
        return audio, (0.0, audio.size / RATE), segments + others

    return {
        "clean speech": lambda: (samples, whole, segments),
        "same + white noise at 0 dB SNR": lambda: (with_noise(samples, 0.0), whole, segments),
        "silence (5 s)": silence,
        "music-like chords (12 s)": lambda: (music(), (0.0, 12.0), []),
        "overlapped speech (2 s offset)": overlapped,
    }


def measure(case: Case, repeats: int = 3) -> tuple[dict[str, float | int | None], float]:
    """The turn's rounded columns, and the least CPU seconds `quality.measure` took on this
    thread over `repeats` runs (the scores are the same each time; the first runs of a session
    on a new input size cost several times more, which a worker pays once)."""
    audio, span, segments = case
    spent = []
    for _ in range(repeats):
        started = time.thread_time()
        _, (turn,) = quality.measure(audio, [span], segments)
        spent.append(time.thread_time() - started)
    return turn.rounded(), min(spent)


def table() -> str:
    """The Markdown table: one row per case, the columns, and the cost."""
    quality.load()  # model loading off the clock, as in a worker (once per process)
    head = ["case", "seconds", *COLUMNS, "CPU s", "x real time"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for name, build in cases().items():
        case = build()
        columns, cpu = measure(case)
        seconds = case[1][1] - case[1][0]
        cells = [name, f"{seconds:.1f}", *("–" if columns[c] is None else str(columns[c]) for c in COLUMNS),
                 f"{cpu:.2f}", f"{seconds / cpu:.0f}x"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table())
