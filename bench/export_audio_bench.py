"""Benchmark of `ppcli export --audio flac` and of reading its turns back with `datasets`.

    .venv/bin/python bench/export_audio_bench.py                      # 1k, 3k and 10k turns (~4 min)
    .venv/bin/python bench/export_audio_bench.py --sizes 500 2000 --load-seconds 30

1. Export: for each size (turns), a fresh child process fills a SQLite store with archived
   episodes and runs `export_dataset(..., audio=AudioOptions("flac"))`: every capture is
   downloaded from the Wayback double (loopback, served by this parent process so its CPU is
   not counted), hash-checked, decoded and resampled to 16 kHz, cut into turns, each turn
   FLAC-encoded, written into zstd Parquet shards. Figures: audio hours exported per second of
   the export's CPU time (user + system: "per core"), per wall second, the `turns` shard sizes,
   and the child's peak RSS (target: <= 600 MB and flat from 1k to 10k turns).
2. Load: a child pinned to one core (`sched_setaffinity`, one torch thread) streams the largest
   export's `turns` shards with `datasets` (`load_dataset("parquet", ..., streaming=True)`) and
   reads each row's `audio["array"]` (decoded by torchcodec), for up to --load-seconds. Figures:
   x real time (turn audio seconds per wall second) and turns/s (target: >= 300x).

The audio: espeak-ng speech (a pool of sentences spoken by a few voices, with pauses and a
faint noise floor, so FLAC sees speech-like audio rather than tones), as 44.1 kHz mono MP3 at
64 kbit/s like a typical podcast capture. A few distinct captures are served under many episode
URLs; each episode is still downloaded, checked and decoded on its own, as in a real export.
Turns are 2-12 s (7 s on average) with short gaps, ~2.5 words a second.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

RATE = 16_000
CAPTURE_RATE = 44_100
SENTENCES = [
    "Welcome back to the show, today we talk about data and the people who collect it.",
    "I think that is really interesting, because most of the models never hear real conversations.",
    "So tell me, how did you get started with podcasts in the first place?",
    "Honestly it was an accident, a friend needed someone to hold the microphone.",
    "The numbers are surprising: thousands of hours, and most of it is never transcribed.",
    "Right, and the audio quality varies a lot between shows and even between episodes.",
    "Let us take a short break, and after that we answer a few questions from listeners.",
    "Yeah, that makes sense. What would you do differently if you started again today?",
]
VOICES = ["en", "en-us", "en+f3", "en-us+m4"]
WORDS = ["the", "and", "podcast", "episode", "really", "think", "people", "data", "question", "yeah"]


def speech_pool() -> list[np.ndarray]:
    """Spoken sentences as 16 kHz int16 clips (espeak-ng speaks at 22.05 kHz)."""
    import av

    clips = []
    for voice in VOICES:
        for sentence in SENTENCES:
            wav = subprocess.run(["espeak-ng", "-v", voice, "-s", "170", "--stdout", sentence],
                                 check=True, capture_output=True).stdout
            with av.open(io.BytesIO(wav)) as container:
                resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE)
                frames = [out.to_ndarray().reshape(-1) for frame in container.decode(audio=0)
                          for out in resampler.resample(frame)]
                frames += [out.to_ndarray().reshape(-1) for out in resampler.resample(None)]
            clips.append(np.concatenate(frames))
    return clips


def episode_pcm(clips: list[np.ndarray], seconds: float, seed: int) -> np.ndarray:
    """Sentences in random order with pauses, over a faint noise floor (about -60 dBFS)."""
    rng = np.random.default_rng(seed)
    total = int(seconds * RATE)
    pieces, length = [], 0
    while length < total:
        clip = clips[rng.integers(len(clips))]
        pause = np.zeros(int(rng.uniform(0.1, 0.8) * RATE), np.int16)
        pieces += [clip, pause]
        length += len(clip) + len(pause)
    signal = np.concatenate(pieces)[:total].astype(np.float64) * 0.8
    signal += rng.normal(0, 30, total)
    return np.clip(np.round(signal), -32768, 32767).astype(np.int16)


def mp3_bytes(pcm: np.ndarray) -> bytes:
    """A 44.1 kHz mono 64 kbit/s MP3 of 16 kHz samples."""
    import av

    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp3") as container:
        stream = container.add_stream("libmp3lame", rate=CAPTURE_RATE, layout="mono")
        stream.bit_rate = 64_000
        resampler = av.AudioResampler(format="s16p", layout="mono", rate=CAPTURE_RATE)
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = RATE
        for resampled in [*resampler.resample(frame), *resampler.resample(None)]:
            for packet in stream.encode(resampled):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buffer.getvalue()


def synthetic_result(rng: random.Random, duration: float, sha256: str, size: int) -> dict[str, Any]:
    """A result whose turns tile the episode: 2-12 s each, short gaps, ~2.5 words a second."""
    turns, clock = [], rng.uniform(0.0, 1.0)
    speakers = rng.randint(1, 3)
    while clock + 2.0 < duration:
        start, end = clock, min(clock + rng.uniform(2.0, 12.0), duration)
        words, at = [], start
        while at + 0.4 <= end:
            words.append({"word": rng.choice(WORDS), "start": at, "end": at + 0.35})
            at += 0.4
        turns.append({
            "speaker": f"speaker_{len(turns) % speakers}", "start": start, "end": end,
            "text": " ".join(word["word"] for word in words), "words": words,
            "rms_dbfs": rng.uniform(-40, -10), "peak_dbfs": rng.uniform(-6, 0), "clipped_ratio": 0.0,
            "speech_ratio": rng.uniform(0.6, 1.0), "dnsmos_sig": rng.uniform(2, 4), "dnsmos_bak": rng.uniform(2, 4),
            "dnsmos_ovrl": rng.uniform(2, 4), "vad_segments": rng.randint(1, 5),
            "loudness_lufs": rng.uniform(-30, -15), "snr_db": rng.uniform(10, 40), "overlap_ratio": rng.uniform(0, 0.1),
        })
        clock = end + rng.uniform(0.05, 0.5)
    return {
        "duration": duration, "sha256": sha256, "md5": "0" * 32, "audio_format": "mp3", "audio_bytes": size,
        "language": "en", "num_speakers": speakers, "text": " ".join(turn["text"] for turn in turns),
        "turns": turns, "segments": [{"speaker": t["speaker"], "start": t["start"], "end": t["end"]} for t in turns],
        "rms_dbfs": -20.0, "peak_dbfs": -0.5, "clipped_ratio": 0.0, "speech_ratio": 0.85,
        "asr_model": "nvidia/parakeet-tdt-0.6b-v2", "asr_fingerprint": "a" * 16,
        "diar_model": "nvidia/diar_streaming_sortformer_4spk-v2", "diar_fingerprint": "d" * 16,
        "code_version": "0.1.0+gbench", "processing_seconds": duration / 200, "rtf": 0.005,
    }


def peak_rss_mb() -> float:
    """This process's peak RSS since it started or since `reset_peak_rss`.

    Not `getrusage`'s `ru_maxrss`: Linux carries the forking parent's high-water mark over
    `exec` into it, and this parent holds the captures (about 1 GB at its peak).
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0  # kB
    raise RuntimeError("no VmHWM in /proc/self/status")


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmRSS in /proc/self/status")


def reset_peak_rss() -> None:
    """Start the peak RSS over from the current RSS (Linux >= 4.0), so filling the store
    before the export does not count."""
    Path("/proc/self/clear_refs").write_text("5")


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def export_child(turns_wanted: int, captures_file: str, out: str) -> dict[str, Any]:
    """Fill a store with archived episodes whose captures the parent serves; time the export."""
    from podcastpile.dataset.audio import ArchiveAccess, AudioOptions
    from podcastpile.dataset.export import export_dataset
    from podcastpile.store import EpisodeStore, NewEpisode, make_engine, migrate
    from tests.storehelpers import mark_archived

    captures = json.loads(Path(captures_file).read_text())  # [{url, archive_url, timestamp, sha256, ...}]
    engine = make_engine(f"sqlite:///{out}/episodes.db")
    migrate(engine)
    store = EpisodeStore(engine, archive_required=True)
    rng = random.Random(3)
    results: dict[str, dict[str, Any]] = {}
    total_turns = 0
    for capture in captures:
        if total_turns >= turns_wanted:
            break
        result = synthetic_result(rng, capture["duration"], capture["sha256"], capture["bytes"])
        results[capture["url"]] = result
        total_turns += len(result["turns"])
    store.add(NewEpisode(url, language="en") for url in results)
    by_url = {capture["url"]: capture for capture in captures}
    for episode in store.list(status="archive_pending", limit=100_000):
        capture = by_url[episode.url]
        mark_archived(store, episode.id, timestamp=capture["timestamp"], archive_url=capture["archive_url"])
    while claims := store.claim_batch("bench", 100):
        for claim in claims:
            store.complete(claim.episode_id, claim.lease_token, results[claim.url])
    del results
    access = ArchiveAccess(wayback_url=captures[0]["wayback_url"], download_timeout_seconds=60)
    setup_peak = peak_rss_mb()
    reset_peak_rss()
    rss_before, cpu_before = rss_mb(), cpu_seconds()
    started = time.perf_counter()
    summary = export_dataset(engine, f"{out}/dataset", audio=AudioOptions(codec="flac", access=access))
    seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu_before
    manifest = json.loads(Path(out, "dataset", "manifest.json").read_text())
    turn_files = [Path(out, "dataset", path) for path in manifest["configs"]["turns"]["files"]]
    return {
        "turns": manifest["configs"]["turns"]["rows"], "episodes": summary.episodes_written,
        "skipped": len(summary.skipped), "audio_hours": summary.audio_seconds_written / 3600,
        "turn_hours": manifest["statistics"]["turn_seconds"] / 3600,
        "seconds": seconds, "cpu_seconds": cpu, "peak_rss_mb": peak_rss_mb(), "rss_before_export_mb": rss_before,
        "setup_peak_rss_mb": setup_peak, "turn_shard_mb": [round(path.stat().st_size / 1e6, 1) for path in turn_files],
        "episode_shard_mb": [round(Path(out, "dataset", p).stat().st_size / 1e6, 1)
                             for p in manifest["configs"]["episodes"]["files"]],
        "turn_files": [str(path) for path in turn_files],
    }


def load_child(files: list[str], budget: float) -> dict[str, Any]:
    """Stream the turns with `datasets`, decoding each turn's audio, on one core."""
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    import datasets
    import torch

    torch.set_num_threads(1)
    stream = datasets.load_dataset("parquet", data_files={"train": files}, split="train", streaming=True)
    turns = 0
    audio_seconds = 0.0
    started = time.perf_counter()
    cpu_before = cpu_seconds()
    for row in stream:
        audio = row["audio"]
        samples = audio["array"]  # decoding happens here (torchcodec)
        audio_seconds += len(samples) / audio["sampling_rate"]
        turns += 1
        if time.perf_counter() - started >= budget:
            break
    seconds = time.perf_counter() - started
    return {"turns": turns, "audio_seconds": audio_seconds, "seconds": seconds,
            "cpu_seconds": cpu_seconds() - cpu_before, "peak_rss_mb": peak_rss_mb()}


def child_json(*args: str) -> dict[str, Any]:
    output = subprocess.run([sys.executable, __file__, "--child", *args], check=True, capture_output=True,
                            text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 3_000, 10_000], help="turns per export")
    parser.add_argument("--episode-minutes", type=float, default=10.0, help="length of each capture")
    parser.add_argument("--distinct", type=int, default=6, help="distinct captures (served under many URLs)")
    parser.add_argument("--load-seconds", type=float, default=60.0, help="how long the loading run streams")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, *rest = args.child
        if mode == "export":
            print(json.dumps(export_child(int(rest[0]), rest[1], rest[2])))
        else:
            print(json.dumps(load_child(json.loads(rest[0]), float(rest[1]))))
        return

    from tests.wayback import WaybackDouble

    started = time.monotonic()
    print("load average at start (1/5/15 min): %.1f %.1f %.1f on %d cores" % (*os.getloadavg(), os.cpu_count()))
    clips = speech_pool()
    seconds = args.episode_minutes * 60
    bodies = [mp3_bytes(episode_pcm(clips, seconds, seed)) for seed in range(args.distinct)]
    print(f"{args.distinct} distinct captures of {args.episode_minutes:g} min: espeak-ng speech, 44.1 kHz mono "
          f"MP3 at 64 kbit/s ({sum(map(len, bodies)) / len(bodies) / 1e6:.1f} MB each); built in "
          f"{time.monotonic() - started:.0f} s")
    episodes_needed = int(max(args.sizes) / (seconds / 7.3)) + 10
    with WaybackDouble() as ia, tempfile.TemporaryDirectory(prefix="export-audio-bench-") as work:
        captures = []
        for index in range(episodes_needed):
            body = bodies[index % len(bodies)]
            url = f"https://podcasts.example.com/bench/{index}.mp3"
            timestamp = ia.add_capture(url, body, mimetype="audio/mpeg")
            captures.append({
                "url": url, "timestamp": timestamp, "archive_url": f"{ia.base_url}/web/{timestamp}id_/{url}",
                "sha256": hashlib.sha256(body).hexdigest(), "bytes": len(body), "duration": seconds,
                "wayback_url": ia.base_url,
            })
        captures_file = Path(work, "captures.json")
        captures_file.write_text(json.dumps(captures))
        exports = []
        for size in args.sizes:
            out = Path(work, f"export-{size}")
            out.mkdir()
            figures = child_json("export", str(size), str(captures_file), str(out))
            exports.append(figures)
            print(f"export --audio flac, {figures['turns']:,} turns / {figures['episodes']} episodes "
                  f"({figures['audio_hours']:.2f} h of episodes, {figures['turn_hours']:.2f} h of turns): "
                  f"{figures['seconds']:.1f} s wall, {figures['cpu_seconds']:.1f} s CPU -> "
                  f"{figures['audio_hours'] / figures['cpu_seconds'] * 3600:.0f}x real time per core "
                  f"({figures['audio_hours'] / figures['cpu_seconds']:.4f} audio h per CPU-second), "
                  f"{figures['audio_hours'] / figures['seconds'] * 3600:.0f}x per wall second; "
                  f"peak RSS during the export {figures['peak_rss_mb']:.0f} MB ({figures['rss_before_export_mb']:.0f} MB "
                  f"when it started; filling the store peaked at {figures['setup_peak_rss_mb']:.0f} MB); turns shards {figures['turn_shard_mb']} MB, episodes shards "
                  f"{figures['episode_shard_mb']} MB; skipped {figures['skipped']}")
            for path in Path(out).glob("dataset/data/episodes/*.parquet"):
                path.unlink()  # only the turns are read back
            if size != max(args.sizes):
                for path in Path(out).glob("dataset/data/turns/*.parquet"):
                    path.unlink()
        if len(exports) > 1:
            print(f"peak RSS ratio {exports[-1]['peak_rss_mb'] / exports[0]['peak_rss_mb']:.2f} from "
                  f"{exports[0]['turns']:,} to {exports[-1]['turns']:,} turns (target <= 600 MB, flat)")
        files = exports[-1]["turn_files"]
        load = child_json("load", json.dumps(files), str(args.load_seconds))
        print(f"datasets streaming + torchcodec decoding on one core: {load['turns']:,} turns, "
              f"{load['audio_seconds'] / 3600:.2f} h in {load['seconds']:.1f} s -> "
              f"{load['audio_seconds'] / load['seconds']:.0f}x real time, {load['turns'] / load['seconds']:.0f} turns/s "
              f"(target >= 300x); per CPU-second of that core: {load['audio_seconds'] / load['cpu_seconds']:.0f}x, "
              f"{load['turns'] / load['cpu_seconds']:.0f} turns/s; peak RSS {load['peak_rss_mb']:.0f} MB")
    print(f"benchmark wall time: {time.monotonic() - started:.0f} s; load average at the end: "
          "%.1f %.1f %.1f" % os.getloadavg())


if __name__ == "__main__":
    main()
