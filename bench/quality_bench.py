"""CPU cost of the quality scores alone (podcastpile/speech/quality), per audio hour.

Builds ~10 minutes of synthetic speech (espeak-ng sentences in two voices, pauses between
them, a little room noise, turns overlapping now and then) and measures, each in this one
thread (onnxruntime sessions are single-threaded, so thread CPU time is the work):

- each model separately: Silero VAD over the episode, DNSMOS P.835 over every turn with a
  second of speech, BS.1770 K-weighting over the episode and the gating per turn;
- everything together, as the pipeline runs it (`quality.measure`), and with a thread pool;
- "not a model forward pass": the same, minus the time inside onnxruntime's `run` (windows,
  VAD post-processing, K-weighting filters, SNR, overlap, aggregation). Target: ≥ 150x real
  time per core.

Figures are CPU-seconds per audio hour and x real time per core (audio seconds per CPU second).
Needs espeak-ng and the worker extra. `.venv/bin/python bench/quality_bench.py [--minutes 10] [--threads 2]`
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from podcastpile.speech import quality
from podcastpile.speech.quality import dnsmos, loudness, runtime, vad

RATE = 16_000
SENTENCES = [
    "welcome back to the show, today we talk about rivers and the towns built beside them",
    "thanks for having me, it is a subject I have wanted to talk about for years",
    "let us begin with the oldest bridge in the valley and the people who paid for it",
    "the records say the flood of eighteen ninety took half of the market square",
    "and yet they rebuilt it in the same place, which tells you something about trade",
    "exactly, the river was the road, and nobody wanted to be far from the road",
    "so what changed when the railway arrived in the middle of the century",
    "the barges lost their cargo within a decade, and the wharves went quiet",
    "some of those buildings are still standing, you can see the hooks in the walls",
    "that is a good place to stop for a short break, we will be right back",
]
VOICES = ("en-us+m3", "en-us+f4")


def speak(text: str, voice: str, folder: Path) -> np.ndarray:
    """One sentence as 16 kHz float32 (espeak-ng writes 22.05 kHz)."""
    import soundfile
    from scipy.signal import resample_poly

    path = folder / "s.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-s", "165", "-w", str(path), text], check=True)
    samples, rate = soundfile.read(str(path), dtype="float32")
    return resample_poly(samples, RATE, rate).astype(np.float32) if rate != RATE else samples


def build_episode(minutes: float, seed: int = 0) -> tuple[np.ndarray, list[tuple[float, float]], list[tuple[str, float, float]]]:
    """Samples, turn spans and diarizer-like segments of about `minutes` of conversation."""
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as folder:
        clips = {(v, i): speak(text, v, Path(folder)) for v in VOICES for i, text in enumerate(SENTENCES)}
    pieces, turns, segments, clock, index = [], [], [], 0.0, 0
    while clock < minutes * 60:
        voice = VOICES[index % 2]
        # One to three sentences per turn: turns of about 3 to 15 s.
        speech = np.concatenate([clips[(voice, int(rng.integers(len(SENTENCES))))]
                                 for _ in range(int(rng.integers(1, 4)))])
        pause = np.zeros(int(rng.uniform(0.2, 1.2) * RATE), np.float32)
        start = clock + pause.size / RATE
        pieces += [pause, speech]
        clock = start + speech.size / RATE
        turns.append((start, clock))
        # Now and then the other speaker's segment starts early: some overlap to measure.
        lead = rng.uniform(0.3, 1.5) if rng.random() < 0.3 else 0.0
        segments.append((f"speaker_{index % 2}", max(0.0, start - lead), clock))
        index += 1
    audio = np.concatenate(pieces)
    audio += rng.standard_normal(audio.size).astype(np.float32) * 10 ** (-60 / 20)  # room tone
    return audio, turns, segments


class Timed:
    """An onnxruntime session that adds the thread CPU time of each `run` to a counter."""

    def __init__(self, session: Any, counter: dict[str, float], name: str) -> None:
        self.session, self.counter, self.name = session, counter, name

    def run(self, *args: Any, **kwargs: Any) -> Any:
        started = time.thread_time()
        try:
            return self.session.run(*args, **kwargs)
        finally:
            self.counter[self.name] = self.counter.get(self.name, 0.0) + time.thread_time() - started


def instrument() -> dict[str, float]:
    """Wrap the process's quality sessions so forward passes are counted separately."""
    counter: dict[str, float] = {}
    for package, parts, name in (("silero_vad", ("data", vad.MODEL_FILE), "vad"),
                                 ("speechmos", ("dnsmos_models", dnsmos.MODEL_FILE), "dnsmos")):
        path = runtime.package_file(package, *parts)
        runtime._sessions[path] = Timed(runtime.session(path), counter, name)
    return counter


def cpu(work: Any) -> tuple[float, Any]:
    started = time.thread_time()
    value = work()
    return time.thread_time() - started, value


def per_hour(seconds: float, audio_seconds: float) -> dict[str, float]:
    return {"cpu_seconds_per_audio_hour": round(seconds * 3600 / audio_seconds, 1),
            "x_real_time_per_core": round(audio_seconds / seconds, 1) if seconds > 0 else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=2, help="thread pool size for the together-with-pool run")
    args = parser.parse_args(argv)

    audio, turns, segments = build_episode(args.minutes)
    seconds = audio.size / RATE
    forward = instrument()
    quality.measure(audio[:RATE * 12], [(0.0, 12.0)])  # warm-up: sessions and first-call costs
    forward.clear()

    report: dict[str, Any] = {"audio_seconds": round(seconds, 1), "turns": len(turns),
                              "models": quality.model_ids()}
    vad_cpu, found = cpu(lambda: vad.Vad.of(audio))
    vad_forward = forward.pop("vad", 0.0)
    spoken = [(a, b) for a, b in turns if found.speech_seconds(a, b) >= quality.MIN_SPEECH_SECONDS]
    dnsmos_cpu, _ = cpu(lambda: [dnsmos.score(audio[int(a * RATE):int(b * RATE)]) for a, b in spoken])
    dnsmos_forward = forward.pop("dnsmos", 0.0)
    loud_cpu, meter = cpu(lambda: loudness.Loudness.of(audio))
    gating_cpu, _ = cpu(lambda: [meter.integrated(a, b) for a, b in turns])
    # Windows every second: a turn's cost grows with its length until ~1 window per second of
    # audio (short turns are doubled to 9.01 s and get few windows). A two-minute monologue
    # shows the cost of long turns.
    long_span = audio[:min(audio.size, 120 * RATE)]
    long_cpu, _ = cpu(lambda: dnsmos.score(long_span))
    forward.pop("dnsmos", None)
    report["separately"] = {
        "vad": {**per_hour(vad_cpu, seconds), "forward_share": round(vad_forward / vad_cpu, 3)},
        "dnsmos": {**per_hour(dnsmos_cpu, seconds), "forward_share": round(dnsmos_forward / dnsmos_cpu, 3),
                   "turns_scored": len(spoken)},
        "loudness": per_hour(loud_cpu + gating_cpu, seconds),
        "dnsmos_one_long_turn": {**per_hour(long_cpu, long_span.size / RATE),
                                 "turn_seconds": round(long_span.size / RATE, 1)},
    }
    forward.clear()
    together_cpu, (episode, _) = cpu(lambda: quality.measure(audio, turns, segments))
    model_cpu = sum(forward.values())
    report["together"] = per_hour(together_cpu, seconds)
    report["not_model_forward"] = {**per_hour(together_cpu - model_cpu, seconds), "target_x": 150}
    report["episode"] = episode.rounded()
    with ThreadPoolExecutor(args.threads) as pool:
        process_started, wall_started = time.process_time(), time.perf_counter()
        quality.measure(audio, turns, segments, pool)
        wall = time.perf_counter() - wall_started
        report["pool"] = {"threads": args.threads, "wall_seconds": round(wall, 2),
                          "x_real_time_wall": round(seconds / wall, 1),
                          "process_cpu_seconds": round(time.process_time() - process_started, 2)}
    print(json.dumps(report, indent=2))
    print(f"quality: {report['together']['x_real_time_per_core']}x real time per core together, "
          f"{report['not_model_forward']['x_real_time_per_core']}x outside model forward passes "
          f"(target 150x); DNSMOS {report['separately']['dnsmos']['x_real_time_per_core']}x, "
          f"VAD {report['separately']['vad']['x_real_time_per_core']}x, "
          f"loudness {report['separately']['loudness']['x_real_time_per_core']}x", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
