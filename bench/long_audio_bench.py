"""Benchmark: peak memory and wall time of one long episode through the speech core, on CPU
with the tiny test models, and whether the output survives the long-audio path.

    .venv/bin/python bench/long_audio_bench.py                      # 10, 30, 60, 360 min + baseline
    .venv/bin/python bench/long_audio_bench.py --minutes 10 60 --baseline-minutes 0
    .venv/bin/python bench/long_audio_bench.py --full-size-smoke 120   # Parakeet-size encoder, CPU

Each episode is the committed two-speaker conversation (tests/fixtures/speech/conversation.wav,
8.3 s, three turns) repeated to the length, as a 16 kHz WAV, run in its own child process
(`process_downloaded`: decode → diarize → transcribe → merge, like `ppcli transcribe`), so
the child's peak RSS (`getrusage`) is that episode's alone, model load included.

Targets: peak RSS at 60 min <= 2.5 GB, at 360 min <= 8 GB, RSS(60)/RSS(10) <= 6.

Baseline (`--baseline-minutes`, default 10): the same child with the plan forced to what the
code did before (one full-attention pass up to LOCAL_ATTENTION_ABOVE_SECONDS, the diarizer's
features in one call), for the ratio against the new plan at the same length.

Output survival, per episode: every repetition's words against the conversation's known
text (WER per repetition: mean, worst, share exact), and speaker consistency (the share of
repetitions whose two true speakers got the same two distinct labels as most repetitions did).
stdout is one JSON object; progress on stderr.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
FIXTURES = ROOT / "tests" / "fixtures" / "speech"
GB = 1e9


def build_episode(path: Path, minutes: float) -> int:
    """Write the conversation repeated to at least `minutes` as a 16 kHz WAV; returns repetitions."""
    import math

    import soundfile

    samples, rate = soundfile.read(str(FIXTURES / "conversation.wav"), dtype="int16")
    repetitions = math.ceil(minutes * 60 * rate / len(samples))
    with soundfile.SoundFile(str(path), "w", samplerate=rate, channels=1, subtype="PCM_16") as out:
        for _ in range(repetitions):
            out.write(samples)
    return repetitions


def word_errors(hypothesis: list[str], truth: list[str]) -> int:
    """Levenshtein distance over words."""
    row = list(range(len(truth) + 1))
    for i, word in enumerate(hypothesis, 1):
        previous, row[0] = row[0], i
        for j, expected in enumerate(truth, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (word != expected))
    return row[-1]


def survival(result, repetitions: int, period: float, truth_turns: list[dict]) -> dict:
    """WER of each repetition and speaker consistency across repetitions."""
    words_by_rep: list[list[tuple[str, str, float]]] = [[] for _ in range(repetitions)]
    for turn in result.turns:
        for word in turn.words:
            centre = (word.start + word.end) / 2
            index = min(repetitions - 1, max(0, int(centre // period)))
            words_by_rep[index].append((word.word, turn.speaker, centre - index * period))
    truth = [w for turn in truth_turns for w in turn["text"].split()]
    rates, mappings = [], []
    for words in words_by_rep:
        rates.append(word_errors([w for w, _, _ in words], truth) / len(truth))
        votes: dict[str, Counter] = {}
        for _, speaker, at in words:  # each word votes for the true speaker of the turn it falls in
            owner = min(truth_turns, key=lambda t: 0 if t["start"] <= at <= t["end"]
                        else min(abs(at - t["start"]), abs(at - t["end"])))["speaker"]
            votes.setdefault(owner, Counter())[speaker] += 1
        mappings.append(tuple(sorted((owner, count.most_common(1)[0][0]) for owner, count in votes.items())))
    common, _ = Counter(mappings).most_common(1)[0]
    distinct = len({label for _, label in common}) == len(common) == len({t["speaker"] for t in truth_turns})
    consistent = sum(1 for m in mappings if m == common) / repetitions if distinct else 0.0
    odd = [(index, dict(m)) for index, m in enumerate(mappings) if m != common]
    return {
        "wer_mean": round(sum(rates) / len(rates), 4), "wer_worst": round(max(rates), 4),
        "repetitions_exact": round(sum(1 for r in rates if r == 0) / len(rates), 4),
        "speaker_consistency": round(consistent, 4), "speakers": result.num_speakers,
        "speaker_mapping": dict(common),
        "inconsistent_repetitions": len(odd), "inconsistent_first": odd[:12],  # (index, true → label)
    }


def child(path: Path, repetitions: int, old_plan: bool) -> dict:
    """One episode in this process; prints nothing but the JSON (the parent reads it)."""
    from podcastpile.net.fetch import local_file
    from podcastpile.speech.nemo_models import SpeechModels
    from podcastpile.speech.pipeline import build_result, decode

    models = SpeechModels(
        diar_model=str(FIXTURES / "tiny_diar.nemo"), asr_model=str(FIXTURES / "tiny_asr.nemo"),
        asr_model_multilingual=str(FIXTURES / "tiny_asr.nemo"), device="cpu",
    )
    if old_plan:  # what the code did before: full attention up to 1200 s, features in one call
        models.asr_memory_budget_bytes = 1 << 50
        models.diar_feature_chunk_seconds = float("inf")
    models.diarizer()
    models.asr()
    loaded_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    times = {}
    with local_file(path) as downloaded:
        started = time.perf_counter()
        decoded = decode(downloaded)
        times["decode"] = time.perf_counter() - started
        plan = models.asr_plan(decoded.duration)
        started = time.perf_counter()
        diarization = models.diarize(decoded)
        times["diarize"] = time.perf_counter() - started
        started = time.perf_counter()
        transcript = models.transcribe(decoded)
        times["transcribe"] = time.perf_counter() - started
        started = time.perf_counter()
        result = build_result(downloaded, decoded, diarization, transcript, sum(times.values()))
        times["merge"] = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    conversation = json.loads((FIXTURES / "conversation.json").read_text())
    period = decoded.duration / repetitions
    return {
        "audio_minutes": round(decoded.duration / 60, 2), "old_plan": old_plan,
        "peak_rss_gb": round(peak / GB, 3), "rss_after_model_load_gb": round(loaded_rss / GB, 3),
        "wall_seconds": {k: round(v, 1) for k, v in times.items()},
        "audio_seconds_per_wall_second": round(decoded.duration / sum(times.values()), 1),
        "asr_plan": {"local_attention": plan.local, "windows": len(plan.windows),
                     "window_seconds": round(plan.window_seconds, 1), "budget_gb": round(plan.budget_bytes / GB, 3),
                     "estimated_pass_gb": round(plan.estimated_bytes / GB, 3)},
        "words": len(transcript.words), "turns": len(result.turns),
        **survival(result, repetitions, period, conversation["turns"]),
    }


class RssSampler:
    """Peak resident memory above the level at entry, sampled every 10 ms from /proc (Linux).

    `getrusage`'s high-water mark cannot see a step's peak under an earlier, higher one (the
    full-size model's construction), so the smoke samples instead."""

    def __enter__(self) -> "RssSampler":
        import threading

        self.start = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @staticmethod
    def _rss() -> int:
        import os

        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self._rss())

    @property
    def delta_gb(self) -> float:
        return round((self.peak - self.start) / GB, 3)


def full_size_smoke(seconds: float) -> dict:
    """Parakeet-TDT-0.6B's architecture (random weights, bench/gpu_pipeline.py's builder) through
    `SpeechModels.transcribe` on CPU: one full-attention pass over 20 s, then `seconds` in
    local-attention windows (budget forced to the minimum, 60 s windows). Checks the switch
    works on the full-size encoder and compares each pass's measured memory with the plan's."""
    import numpy as np
    from nemo.collections.asr.models import EncDecRNNTBPEModel
    from omegaconf import OmegaConf

    sys.path.insert(0, str(ROOT / "bench"))
    import gpu_pipeline

    from podcastpile.speech.audio import AudioFormat, DecodedAudio
    from podcastpile.speech.nemo_models import LoadedModel, SpeechModels, _quiet_nemo

    _quiet_nemo()
    tiny = gpu_pipeline.load_tiny_builders()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        tokenizer = tiny.train_tokenizer(gpu_pipeline.tokenizer_text(), Path(folder) / "tokenizer",
                                         vocab_size=gpu_pipeline.FULL.vocab_size)
        cfg = gpu_pipeline.tdt_asr_config(tiny, tokenizer, gpu_pipeline.FULL)
        model = EncDecRNNTBPEModel(cfg=OmegaConf.create(cfg)).eval()
    build_seconds = time.perf_counter() - started
    encoder = model.cfg.encoder
    name = "parakeet-tdt-0.6b-architecture (random weights)"
    models = SpeechModels(asr_model=name, device="cpu")
    models._loaded[("asr", name)] = LoadedModel(  # built here, not loaded from a .nemo (2.5 GB)
        name=name, fingerprint="-", model=model,
        full_attention=(encoder.self_attention_model, list(encoder.att_context_size),
                        int(encoder.get("subsampling_conv_chunking_factor", 1))),
    )
    fmt = AudioFormat("wav", "pcm_s16le", 1, 16000)
    report: dict = {"params_m": round(sum(p.numel() for p in model.parameters()) / 1e6),
                    "build_seconds": round(build_seconds, 1)}
    for label, length, budget in (("full_attention_20s", 20.0, None), (f"windows_{seconds:g}s", seconds, 1)):
        models.asr_memory_budget_bytes = budget
        audio = DecodedAudio(gpu_pipeline.speech_like(length).astype(np.float32), 16000, fmt)
        plan = models.asr_plan(length)
        started = time.perf_counter()
        with RssSampler() as rss:
            transcript = models.transcribe(audio)
        starts = [w.start for w in transcript.words]
        report[label] = {
            "local_attention": transcript.local_attention, "windows": transcript.windows,
            "att_context_size": list(model.cfg.encoder.att_context_size),
            "self_attention_model": model.cfg.encoder.self_attention_model,
            "words": len(transcript.words), "times_in_order": starts == sorted(starts),
            "last_word_end": transcript.words[-1].end if transcript.words else None,
            "seconds": round(time.perf_counter() - started, 1),
            "measured_peak_gb": rss.delta_gb, "planned_pass_gb": round(plan.estimated_bytes / GB, 3),
        }
    return report


def run_child(path: Path, repetitions: int, old_plan: bool) -> dict:
    command = [sys.executable, __file__, "--child", str(path), "--repetitions", str(repetitions)]
    if old_plan:
        command.append("--old-plan")
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["?"])[-1], "returncode": done.returncode}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, nargs="+", default=[10, 30, 60, 360])
    parser.add_argument("--baseline-minutes", type=float, default=10, help="0: no baseline run")
    parser.add_argument("--full-size-smoke", type=float, metavar="SECONDS", default=None,
                        help="only the full-size architecture check on SECONDS of audio (about 3 min for 120)")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--repetitions", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--old-plan", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.full_size_smoke:
        print(json.dumps(full_size_smoke(args.full_size_smoke), indent=1))
        return
    if args.child:
        import logging

        logging.disable(logging.WARNING)
        print(json.dumps(child(args.child, args.repetitions, args.old_plan)))
        return

    runs = []
    with tempfile.TemporaryDirectory(prefix="long_audio_bench_") as folder:
        plan = [(m, True) for m in ([args.baseline_minutes] if args.baseline_minutes else [])]
        plan += [(m, False) for m in args.minutes]
        built: dict[float, tuple[Path, int]] = {}  # a length's file serves both of its runs
        for minutes, old in plan:
            if minutes not in built:
                path = Path(folder) / f"episode_{minutes:g}min.wav"
                built[minutes] = (path, build_episode(path, minutes))
            path, repetitions = built[minutes]
            print(f"{minutes:g} min{' (old plan)' if old else ''}: running ...", file=sys.stderr, flush=True)
            started = time.perf_counter()
            report = run_child(path, repetitions, old)
            report["child_wall_seconds"] = round(time.perf_counter() - started, 1)
            print(f"  {json.dumps(report)}", file=sys.stderr, flush=True)
            runs.append(report)
    new = {r["audio_minutes"]: r for r in runs if not r.get("old_plan") and "peak_rss_gb" in r}
    summary = {}
    by_length = sorted(new.values(), key=lambda r: r["audio_minutes"])
    if len(by_length) >= 2:
        first = by_length[0]
        summary["rss_ratio_to_shortest"] = {
            f"{r['audio_minutes']:g}": round(r["peak_rss_gb"] / first["peak_rss_gb"], 2) for r in by_length
        }
        summary["length_ratio_to_shortest"] = {
            f"{r['audio_minutes']:g}": round(r["audio_minutes"] / first["audio_minutes"], 2) for r in by_length
        }
    old = [r for r in runs if r.get("old_plan") and "peak_rss_gb" in r]
    if old:
        same = [r for r in by_length if abs(r["audio_minutes"] - old[0]["audio_minutes"]) < 0.5]
        if same:
            summary["new_over_old_rss_at_same_length"] = round(same[0]["peak_rss_gb"] / old[0]["peak_rss_gb"], 3)
    print(json.dumps({"runs": runs, "summary": summary}, indent=1))


if __name__ == "__main__":
    main()
