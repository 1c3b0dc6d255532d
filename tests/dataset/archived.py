"""Completed episodes whose audio is a real capture served by the loopback Wayback double."""

from __future__ import annotations

import hashlib
import io
import wave
from dataclasses import dataclass
from typing import Any

import numpy as np

from podcastpile.dataset.audio import ArchiveAccess
from podcastpile.store import EpisodeStore, NewEpisode
from tests.dataset.conftest import synthetic_result
from tests.storehelpers import mark_archived
from tests.wayback import WaybackDouble

RATE = 16_000


def wav_bytes(samples: np.ndarray) -> bytes:
    """16-bit mono 16 kHz WAV: decoded to float, its samples are exactly int16 / 32768."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(RATE)
        out.writeframes(samples.astype("<i2").tobytes())
    return buffer.getvalue()


def episode_pcm(seed: int, seconds: float) -> np.ndarray:
    """A few tones and some noise, different per episode, never silent."""
    rng = np.random.default_rng(seed)
    clock = np.arange(int(seconds * RATE)) / RATE
    tones = sum(np.sin(2 * np.pi * rng.uniform(100, 2000) * clock) for _ in range(3)) / 3
    signal = 0.5 * tones + 0.05 * rng.standard_normal(len(clock))
    return np.clip(np.round(signal * 20_000), -32768, 32767).astype(np.int16)


@dataclass
class Archived:
    """One archived episode: its original PCM, and what the store holds."""

    episode_id: int
    url: str
    url_hash: str
    pcm: np.ndarray
    result: dict[str, Any]


def access(ia: WaybackDouble) -> ArchiveAccess:
    """Fetching as a deployment whose WAYBACK_URL is the double (its host is trusted)."""
    return ArchiveAccess(wayback_url=ia.base_url, download_timeout_seconds=10)


def add_archived(
    store: EpisodeStore, ia: WaybackDouble, names: list[str], *, seed: int = 0,
    turns: int = 3, served: dict[str, bytes] | None = None,
) -> dict[str, Archived]:
    """Add, archive (a capture in the double), claim and complete episodes; keyed by name.

    The result's `sha256` is that of the episode's WAV; `served` replaces the bytes the double
    serves for some names (to make the stored hash wrong).
    """
    archiving = EpisodeStore(store.engine, archive_required=True, clock=store.clock)
    urls = {name: f"https://podcasts.example.com/{name}.wav" for name in names}
    archiving.add([NewEpisode(url, language="en", podcast_id="show-a") for url in urls.values()])
    made: dict[str, Archived] = {}
    by_url = {}
    for index, name in enumerate(names):
        result = synthetic_result(seed + index, turns=turns).to_dict()
        pcm = episode_pcm(seed + index, result["duration"] + 0.25)
        body = wav_bytes(pcm)
        result.update(sha256=hashlib.sha256(body).hexdigest(), audio_bytes=len(body), audio_format="wav")
        timestamp = ia.add_capture(urls[name], (served or {}).get(name, body))
        by_url[urls[name]] = (name, pcm, result, timestamp)
    for episode in archiving.list(status="archive_pending"):
        name, pcm, result, timestamp = by_url[episode.url]
        mark_archived(archiving, episode.id, timestamp=timestamp,
                      archive_url=f"{ia.base_url}/web/{timestamp}id_/{episode.url}")
        made[name] = Archived(episode.id, episode.url, episode.url_hash, pcm, result)
    ids = {item.episode_id: item for item in made.values()}
    while claims := archiving.claim_batch("test-worker", 50):
        for claim in claims:
            archiving.complete(claim.episode_id, claim.lease_token, ids[claim.episode_id].result)
    return made


def turn_pcm(item: Archived, turn: dict[str, Any], pad: float = 0.0) -> np.ndarray:
    """The turn's original 16-bit samples, cut by the documented rule (not by the code under test)."""
    first = max(round((turn["start"] - pad) * RATE), 0)
    last = min(round((turn["end"] + pad) * RATE), len(item.pcm))
    return item.pcm[first:last]


def decode_int16(data: bytes) -> tuple[np.ndarray, int]:
    """An encoded file's samples as int16 and its rate, read by FFmpeg (PyAV), not by our code."""
    import av

    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        rate = stream.codec_context.sample_rate
        frames = [frame.to_ndarray().reshape(-1) for frame in container.decode(stream)]
    return np.concatenate(frames) if frames else np.zeros(0, np.int16), rate
