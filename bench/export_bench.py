"""Benchmark of the Parquet dataset export. Figures are ratios measured in the same run.

    .venv/bin/python bench/export_bench.py                # 100k episodes (a few minutes)
    .venv/bin/python bench/export_bench.py --episodes 20000

1. Writer throughput: `ShardWriter` (sizing, staging, atomic publish) against raw pyarrow
   (`pq.ParquetWriter`, one file, same zstd level) writing the same `episodes` tables, each
   in a fresh process, one after the other. Target: writer ≥ 0.5× raw. The writer is also
   timed writing both configurations (`episodes` + derived `turns`), at --small episodes
   (at --episodes with --full, which adds about three minutes).
2. Flat memory: peak RSS of a process streaming --small (10k) and --episodes (100k) episodes
   through the writer (`resource.getrusage` in a child per size). Target: ≤ 500 MB, flat.
3. End to end: `export_dataset` from a SQLite store (JSON results parsed, converted, written),
   rows/s and peak RSS, for a smaller number of episodes (filling a store takes long).

Synthetic episodes: a share are ~1 h long with ~10k words; the rest 3-20 min. A pool of
distinct episodes is built once per process and cycled with fresh episode ids (a pool is larger
than a row group, so no row group repeats itself and compression is not flattered).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from podcastpile.dataset.destination import open_destination  # noqa: E402
from podcastpile.dataset.schema import CONFIGS, episode_record, episodes_table  # noqa: E402
from podcastpile.dataset.writer import ShardWriter, StagedShard, WriterLimits, shard_names  # noqa: E402

POOL = 600  # distinct synthetic episodes per process (several row groups' worth)
CHUNK = 100  # episodes handed to the writer at a time
VOCABULARY = [
    "the", "and", "podcast", "episode", "really", "think", "people", "actually", "data", "music",
    "question", "yeah", "right", "interesting", "because", "something", "world", "today", "know",
    "guest", "history", "science", "story", "listen", "bit", "thanks", "welcome", "back", "show",
] + [f"word{n}" for n in range(3000)]


def synthetic_result(rng: random.Random, long_share: float) -> dict[str, Any]:
    """A result dict shaped like `EpisodeResult.to_dict()`."""
    long_episode = rng.random() < long_share
    duration = rng.uniform(3300, 3900) if long_episode else rng.uniform(180, 1200)
    words_total = int(duration * rng.uniform(2.5, 2.9))  # ~160 words a minute
    speakers = rng.randint(1, 4)
    turns, segments = [], []
    clock, written = 0.0, 0
    step = duration / max(words_total, 1)
    while written < words_total:
        count = min(rng.randint(5, 80), words_total - written)
        words = []
        for _ in range(count):
            start = clock + step * 0.1
            clock += step
            words.append({"word": rng.choice(VOCABULARY), "start": start, "end": clock})
        speaker = f"speaker_{rng.randrange(speakers)}"
        turns.append({
            "speaker": speaker, "start": words[0]["start"], "end": words[-1]["end"],
            "text": " ".join(word["word"] for word in words), "words": words,
            "rms_dbfs": rng.uniform(-40, -10), "peak_dbfs": rng.uniform(-6, 0),
            "clipped_ratio": 0.0, "speech_ratio": rng.uniform(0.6, 1.0),
        })
        segments.append({"speaker": speaker, "start": words[0]["start"], "end": words[-1]["end"]})
        written += count
    return {
        "duration": duration, "sha256": "%064x" % rng.getrandbits(256), "md5": "%032x" % rng.getrandbits(128),
        "audio_format": "mp3", "audio_bytes": int(duration * 16_000), "language": "en",
        "num_speakers": speakers, "text": " ".join(turn["text"] for turn in turns), "turns": turns,
        "segments": segments, "rms_dbfs": -20.0, "peak_dbfs": -0.5, "clipped_ratio": 0.0,
        "speech_ratio": 0.85, "asr_model": "nvidia/parakeet-tdt-0.6b-v2", "asr_fingerprint": "a" * 16,
        "diar_model": "nvidia/diar_streaming_sortformer_4spk-v2", "diar_fingerprint": "d" * 16,
        "code_version": "0.1.0+gbench", "processing_seconds": duration / 200, "rtf": 0.005,
    }


def pool_tables(long_share: float, seed: int = 7) -> list[pa.Table]:
    """`POOL` distinct episodes as `episodes` tables of `CHUNK` rows."""
    rng = random.Random(seed)
    tables = []
    for start in range(0, POOL, CHUNK):
        # Ten result dicts at a time: Python objects are ~10x their Arrow size, and the peak
        # they leave behind would otherwise hide the writer's own memory in the RSS figure.
        pieces = []
        for first in range(start, start + CHUNK, 10):
            pieces.append(episodes_table(
                episode_record(
                    url_hash="", url=f"https://example.com/{n}.mp3", podcast_id=f"show-{n % 97}",
                    language="en", archive_url=None, archive_timestamp=None,
                    result=synthetic_result(rng, long_share), result_created_at=datetime(2026, 11, 25),
                )
                for n in range(first, first + 10)
            ))
        tables.append(pa.concat_tables(pieces).combine_chunks())
    return tables


def stream(tables: list[pa.Table], episodes: int) -> Iterator[pa.Table]:
    """`episodes` rows cycled from the pool, each chunk with fresh, unique episode ids."""
    written = 0
    while written < episodes:
        for table in tables:
            if written >= episodes:
                return
            take = min(table.num_rows, episodes - written)
            ids = pa.array([f"{n:032x}" for n in range(written, written + take)], pa.string())
            yield table.slice(0, take).set_column(0, table.schema.field(0), ids)
            written += take


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def child(mode: str, episodes: int, long_share: float, out: str) -> dict[str, Any]:
    """One measurement, in this (fresh) process."""
    tables = pool_tables(long_share)
    rss_pool = peak_rss_mb()
    input_bytes = 0
    elapsed = 0.0
    limits = WriterLimits()
    if mode == "raw":
        schema = CONFIGS["episodes"][0]
        path = os.path.join(out, "raw.parquet")
        pending: list[pa.Table] = []
        with pq.ParquetWriter(path, schema, compression="zstd", compression_level=limits.compression_level) as writer:
            for chunk in stream(tables, episodes):
                input_bytes += chunk.nbytes
                pending.append(chunk)
                if sum(table.num_rows for table in pending) >= limits.row_group_rows:
                    started = time.perf_counter()
                    writer.write_table(pa.concat_tables(pending), row_group_size=limits.row_group_rows)
                    elapsed += time.perf_counter() - started
                    pending = []
            started = time.perf_counter()
            if pending:
                writer.write_table(pa.concat_tables(pending), row_group_size=limits.row_group_rows)
        elapsed += time.perf_counter() - started
        output_bytes = os.path.getsize(path)
    else:
        configs = CONFIGS if mode == "writer-all" else {"episodes": CONFIGS["episodes"]}
        destination = open_destination(out)
        sizes: list[int] = []

        def publish(shard: StagedShard) -> None:  # what export.py does, minus the ledger
            for file in shard.files.values():
                destination.publish(file["staged"], file["path"])
                sizes.append(file["bytes"])

        writer = ShardWriter(destination, 1, shard_names(1), publish, limits, configs)
        for chunk in stream(tables, episodes):
            input_bytes += chunk.nbytes
            started = time.perf_counter()
            writer.write(chunk)
            elapsed += time.perf_counter() - started
        started = time.perf_counter()
        writer.close()
        elapsed += time.perf_counter() - started
        output_bytes = sum(sizes)
    return {
        "mode": mode, "episodes": episodes, "seconds": elapsed, "input_bytes": input_bytes,
        "output_bytes": output_bytes, "peak_rss_mb": peak_rss_mb(), "rss_before_writing_mb": rss_pool,
    }


def export_child(episodes: int, long_share: float, chunk_size: int, out: str) -> dict[str, Any]:
    """End to end: fill a SQLite store through its API, then time `export_dataset` alone."""
    from podcastpile.dataset.export import export_dataset
    from podcastpile.store import EpisodeStore, NewEpisode, make_engine, migrate

    engine = make_engine(f"sqlite:///{out}/episodes.db")
    migrate(engine)
    store = EpisodeStore(engine, archive_required=False)
    store.add(NewEpisode(f"https://example.com/e2e-{n}.mp3", language="en") for n in range(episodes))
    rng = random.Random(11)
    while claims := store.claim_batch("bench", 100):
        for claim in claims:
            store.complete(claim.episode_id, claim.lease_token, synthetic_result(rng, long_share))
    rss_before = peak_rss_mb()
    started = time.perf_counter()
    summary = export_dataset(engine, f"{out}/dataset", chunk_size=chunk_size)
    seconds = time.perf_counter() - started
    return {
        "mode": "export", "episodes": summary.episodes_written, "seconds": seconds,
        "output_bytes": sum(p.stat().st_size for p in Path(out, "dataset", "data").rglob("*.parquet")),
        "peak_rss_mb": peak_rss_mb(), "rss_before_export_mb": rss_before,
    }


def run_child(*args: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="export-bench-") as out:
        output = subprocess.run(
            [sys.executable, __file__, "--child", *args, out], check=True, capture_output=True, text=True,
        ).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--episodes", type=int, default=100_000)
    parser.add_argument("--small", type=int, default=10_000, help="the smaller size for the RSS comparison")
    parser.add_argument("--long-share", type=float, default=0.1, help="share of ~1 h / ~10k-word episodes")
    parser.add_argument("--export-episodes", type=int, default=1_000, help="end-to-end run from a store (0: skip)")
    parser.add_argument("--export-chunk-size", type=int, default=16, help="episodes read from the store at a time")
    parser.add_argument("--full", action="store_true", help="also write both configurations at --episodes")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, *rest = args.child
        if mode == "export":
            print(json.dumps(export_child(int(rest[0]), float(rest[1]), int(rest[2]), rest[3])))
        else:
            print(json.dumps(child(mode, int(rest[0]), float(rest[1]), rest[2])))
        return

    share = str(args.long_share)
    print(f"{args.episodes:,} synthetic episodes, {args.long_share:.0%} of them ~1 h / ~10k words")
    started = time.monotonic()
    # Each measurement in a fresh process, one after the other: the figures are ratios of
    # numbers taken minutes apart on the same (shared, noisy) machine.
    raw = run_child("raw", str(args.episodes), share)
    writer = run_child("writer", str(args.episodes), share)
    small = run_child("writer", str(args.small), share)
    both_size = args.episodes if args.full else args.small
    both = run_child("writer-all", str(both_size), share)
    print(f"input: {raw['input_bytes'] / 1e9:.2f} GB of Arrow data; "
          f"Parquet out: {writer['output_bytes'] / 1e9:.2f} GB (episodes)")

    def rate(figures: dict[str, Any]) -> str:
        return f"{figures['seconds']:7.1f} s  {figures['input_bytes'] / figures['seconds'] / 1e6:7.1f} MB/s in"

    print(f"raw pyarrow, episodes ({args.episodes:,}):       {rate(raw)}")
    print(f"ShardWriter, episodes ({args.episodes:,}):       {rate(writer)}")
    print(f"writer throughput / raw pyarrow: {raw['seconds'] / writer['seconds']:.2f}x (target >= 0.5x)")
    print(f"peak RSS, writer: {small['peak_rss_mb']:.0f} MB at {args.small:,}, "
          f"{writer['peak_rss_mb']:.0f} MB at {args.episodes:,} "
          f"(ratio {writer['peak_rss_mb'] / small['peak_rss_mb']:.2f}; target <= 500 MB, flat); "
          f"{writer['rss_before_writing_mb']:.0f} MB of it before writing (imports, synthetic pool)")
    both_rate = both["input_bytes"] / both["seconds"]
    print(f"ShardWriter, episodes + turns configs ({both_size:,}): {rate(both)}; "
          f"{both_rate / (raw['input_bytes'] / raw['seconds']):.2f}x raw writing episodes alone; "
          f"peak RSS {both['peak_rss_mb']:.0f} MB")
    if args.export_episodes:
        e2e = run_child("export", str(args.export_episodes), share, str(args.export_chunk_size))
        print(f"end to end from SQLite: {e2e['episodes']:,} episodes in {e2e['seconds']:.1f} s "
              f"({e2e['episodes'] / e2e['seconds']:.0f} episodes/s), peak RSS {e2e['peak_rss_mb']:.0f} MB "
              f"({e2e['rss_before_export_mb']:.0f} MB before the export started)")
    print(f"benchmark wall time: {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
