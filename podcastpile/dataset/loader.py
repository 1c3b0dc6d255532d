"""A turn's audio from its row alone, for whoever has the transcripts without `--audio`.

`turn_audio(row)` takes a row of either configuration's turn (a `turns` row, or an `episodes`
row plus `turn_index`) and returns the turn's waveform: the archived capture the row names is
downloaded once per episode into a disk cache (keyed and checked by `audio_sha256`), decoded
to 16 kHz mono by the same code as the batch, and cut at the turn's boundaries exactly as
`ppcli export --audio` cuts it. The last decoded episode is kept in memory, so the rows of one
episode (which the `turns` configuration stores together) decode it once.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from podcastpile.dataset.audio import ArchiveAccess, AudioUnavailable, decode_file, fetch_capture, turn_span
from podcastpile.dataset.schema import AUDIO_SAMPLE_RATE

CHUNK_BYTES = 1 << 20
_last: dict[str, Any] = {}  # the last decoded episode: {"sha256", "samples"}
_lock = threading.Lock()


def default_cache_dir() -> Path:
    """`$PODCASTPILE_CACHE/audio`, else `$XDG_CACHE_HOME/podcastpile/audio` (~/.cache/...)."""
    if os.environ.get("PODCASTPILE_CACHE"):
        return Path(os.environ["PODCASTPILE_CACHE"]) / "audio"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "podcastpile" / "audio"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def cached_capture(
    archive_url: str | None, sha256: str | None, cache_dir: Path | None = None,
    access: ArchiveAccess = ArchiveAccess(),
) -> Path:
    """The capture's bytes in the cache, downloaded (and hash-checked) on first use.

    A cached file is checked again before it is used: a damaged cache is fetched anew.
    Raises `AudioUnavailable` as `podcastpile.dataset.audio.fetch_capture` does.
    """
    if not sha256:
        raise AudioUnavailable("no-hash", "the row has no audio_sha256 to check the capture against")
    folder = cache_dir or default_cache_dir()
    cached = folder / f"{sha256}.audio"
    if cached.is_file() and _sha256(cached) == sha256:
        return cached
    folder.mkdir(parents=True, exist_ok=True)
    with fetch_capture(archive_url, sha256, access) as downloaded:
        # Copied under a private name, then renamed: a reader never sees half a file.
        partial = folder / f".{sha256}.{os.getpid()}.{threading.get_ident()}.partial"
        shutil.copyfile(downloaded, partial)
        os.replace(partial, cached)
    return cached


def _episode_samples(row: Mapping[str, Any], cache_dir: Path | None, access: ArchiveAccess) -> np.ndarray:
    sha256 = row.get("audio_sha256")
    with _lock:
        if _last.get("sha256") == sha256 and sha256:
            return _last["samples"]
    samples = decode_file(cached_capture(row.get("archive_url"), sha256, cache_dir, access))
    with _lock:
        _last.clear()
        _last.update(sha256=sha256, samples=samples)
    return samples


def turn_audio(
    row: Mapping[str, Any], *, pad: float = 0.0, turn_index: int | None = None,
    cache_dir: str | Path | None = None, access: ArchiveAccess = ArchiveAccess(),
) -> dict[str, Any]:
    """A turn's audio: `{"array": float32 samples at 16 kHz, "sampling_rate": 16000}`.

    `row`: a `turns` row (`archive_url`, `audio_sha256`, `start`, `end`), or an `episodes` row
    with `turn_index` naming the turn. `pad`: seconds added at both ends, clamped to the
    episode. Raises `AudioUnavailable` (with a `code`: `not-archived`, `hash-mismatch`, a
    download error) when the row's audio cannot be had.
    """
    if turn_index is not None:
        turn = row["turns"][turn_index]
    elif "turns" in row and "start" not in row:
        raise ValueError("an episodes row needs turn_index to name the turn")
    else:
        turn = row
    samples = _episode_samples(row, Path(cache_dir) if cache_dir else None, access)
    first, last = turn_span(turn["start"], turn["end"], len(samples), pad)
    return {"array": samples[first:last].copy(), "sampling_rate": AUDIO_SAMPLE_RATE}


def add_turn_audio(
    row: Mapping[str, Any], *, pad: float = 0.0, cache_dir: str | Path | None = None,
    access: ArchiveAccess = ArchiveAccess(),
) -> dict[str, Any]:
    """A `datasets` `map` function over `turns` rows: adds `audio` ({"array", "sampling_rate"}).

    `turns.map(add_turn_audio, fn_kwargs={"pad": 0.1})`; see `turn_audio`.
    """
    return {"audio": turn_audio(row, pad=pad, cache_dir=cache_dir, access=access)}
