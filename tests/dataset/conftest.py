"""Helpers for dataset tests: synthetic results put in the store through its real API."""

from __future__ import annotations

import random
from typing import Any

import pyarrow.parquet as pq

from podcastpile.speech.result import EpisodeResult, Segment, Turn, Word
from podcastpile.store import EpisodeStore, NewEpisode


def quality_scores(rng: random.Random) -> dict[str, Any]:
    """Plausible quality fields (`podcastpile.speech.quality`), DNSMOS sometimes absent."""
    scored = rng.random() < 0.8
    return {
        "dnsmos_sig": rng.uniform(1, 5) if scored else None, "dnsmos_bak": rng.uniform(1, 5) if scored else None,
        "dnsmos_ovrl": rng.uniform(1, 5) if scored else None, "vad_segments": rng.randint(0, 9),
        "loudness_lufs": rng.uniform(-40, -10), "snr_db": rng.uniform(0, 60), "overlap_ratio": rng.uniform(0, 0.3),
    }


def synthetic_result(seed: int, *, turns: int = 3, words_per_turn: int = 4, tag: str = "") -> EpisodeResult:
    """A plausible result: alternating speakers, timed words, a few raw segments, quality scores."""
    rng = random.Random(seed)
    built: list[Turn] = []
    clock = 0.0
    for index in range(turns):
        words = []
        for _ in range(words_per_turn):
            start = clock + rng.uniform(0.01, 0.2)
            clock = start + rng.uniform(0.1, 0.6)
            words.append(Word(word=rng.choice(["so", "the", "podcast", "über", "yes", "data"]) + tag, start=start, end=clock))
        built.append(Turn(
            speaker=f"speaker_{index % 2}", start=words[0].start, end=words[-1].end,
            text=" ".join(word.word for word in words), words=words,
            rms_dbfs=rng.uniform(-40, -10), peak_dbfs=rng.uniform(-10, 0),
            clipped_ratio=rng.uniform(0, 0.01), speech_ratio=rng.uniform(0.5, 1), **quality_scores(rng),
        ))
    duration = clock + 1.0
    return EpisodeResult(
        duration=duration, sha256=f"{seed:064x}", md5=f"{seed:032x}", audio_format="mp3",
        audio_bytes=rng.randint(10_000, 100_000_000), language="en",
        num_speakers=min(turns, 2), text=" ".join(turn.text for turn in built), turns=built,
        segments=[Segment(speaker=turn.speaker, start=turn.start, end=turn.end) for turn in built],
        rms_dbfs=-20.0, peak_dbfs=-0.5, clipped_ratio=0.0, speech_ratio=rng.uniform(0.5, 1), **quality_scores(rng),
        dnsmos_model="dnsmos-test", vad_model="vad-test", loudness_model="loudness-test",
        asr_model="nvidia/parakeet-tdt-0.6b-v2", asr_fingerprint="asr-fp",
        diar_model="nvidia/diar_streaming_sortformer_4spk-v2", diar_fingerprint="diar-fp",
        code_version=f"0.1.0+test{tag}", processing_seconds=rng.uniform(1, 10), rtf=0.01,
    )


def add_completed(store: EpisodeStore, urls: list[str], *, seed: int = 0, **result_options: Any) -> list[int]:
    """Add episodes, claim and complete them with synthetic results; return their ids."""
    store.add([NewEpisode(url, language="en", podcast_id="show-1") for url in urls])
    ids = []
    while claims := store.claim_batch("test-worker", 50):
        for claim in claims:
            store.complete(
                claim.episode_id, claim.lease_token,
                synthetic_result(seed + claim.episode_id, **result_options).to_dict(),
            )
            ids.append(claim.episode_id)
    return sorted(ids)


def read_parquet_rows(paths: list[str]) -> list[dict[str, Any]]:
    """Rows of Parquet files, read with pyarrow, in file order."""
    rows: list[dict[str, Any]] = []
    for path in paths:
        rows.extend(pq.read_table(path).to_pylist())
    return rows
