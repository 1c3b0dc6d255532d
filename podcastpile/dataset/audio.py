"""Turn audio: an episode's archived capture, checked against its stored hash, cut into turns.

The capture is fetched the way the batch fetches it (`podcastpile.speech.pipeline.fetch`: the
same address guard, the same pinned Wayback capture) and decoded by the batch's own decoder
(`podcastpile.speech.audio.decode`, 16 kHz mono), so a turn's samples are the very samples the
models heard. Only the archived copy is used, never the origin URL: hosts splice dynamic ads,
and the stored hash (`audio_sha256`) must match the bytes, or the audio is not the row's.

Boundaries are sample-exact: a turn is `samples[round(start * 16000):round(end * 16000)]`;
padding widens both ends by `pad` seconds, clamped to the episode.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from podcastpile.dataset.schema import AUDIO_SAMPLE_RATE
from podcastpile.errors import PermanentError, TransientError

# codec name → (container, FFmpeg encoder, file extension). Opus runs at 16 kHz natively;
# readers resample its 48 kHz output clock back (`datasets`' Audio(sampling_rate=16000) does).
CODECS: dict[str, tuple[str, str, str]] = {
    "flac": ("flac", "flac", "flac"),
    "opus": ("ogg", "libopus", "opus"),
}


class AudioUnavailable(RuntimeError):
    """An episode's audio cannot be had as the row describes it; `code` and `reason` say why."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class ArchiveAccess:
    """How captures are downloaded: the fields of `podcastpile.config.Settings` that fetching reads.

    The defaults are the settings' defaults, so a dataset user needs no configuration.
    """

    wayback_url: str = "https://web.archive.org"  # its host is trusted, as in the batch
    download_max_bytes: int = 2_000_000_000
    download_timeout_seconds: float = 60.0
    allow_private_addresses: bool = False

    @classmethod
    def from_settings(cls, settings: Any) -> ArchiveAccess:
        """The access a deployment's settings describe."""
        return cls(
            wayback_url=settings.wayback_url, download_max_bytes=settings.download_max_bytes,
            download_timeout_seconds=settings.download_timeout_seconds,
            allow_private_addresses=settings.allow_private_addresses,
        )


@dataclass(frozen=True)
class AudioOptions:
    """What `ppcli export --audio` writes: the codec, the padding, and where captures come from."""

    codec: str = "flac"
    pad: float = 0.0
    access: ArchiveAccess = ArchiveAccess()

    def __post_init__(self) -> None:
        if self.codec not in CODECS:
            raise ValueError(f"unknown audio codec {self.codec!r}; use one of {', '.join(CODECS)}")
        if self.pad < 0:
            raise ValueError(f"audio padding must not be negative, got {self.pad}")


def turn_span(start: float, end: float, total: int, pad: float = 0.0) -> tuple[int, int]:
    """The sample range `[first, last)` of a turn in an episode of `total` samples at 16 kHz."""
    first = min(max(round((start - pad) * AUDIO_SAMPLE_RATE), 0), total)
    last = min(max(round((end + pad) * AUDIO_SAMPLE_RATE), first), total)
    return first, last


def to_pcm16(samples: np.ndarray) -> np.ndarray:
    """Float samples in [-1, 1] as 16-bit PCM. Exact for audio decoded from 16-bit PCM, whose
    float samples are integers / 32768."""
    return np.clip(np.round(samples.astype(np.float64) * 32768.0), -32768, 32767).astype(np.int16)


def encode(samples: np.ndarray, codec: str) -> bytes:
    """16 kHz mono float samples as a FLAC or Ogg Opus file (16-bit PCM in)."""
    import av

    container_format, encoder, _ = CODECS[codec]
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=container_format) as container:
        stream = container.add_stream(encoder, rate=AUDIO_SAMPLE_RATE, layout="mono")
        pcm = to_pcm16(samples)
        if len(pcm):
            frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate = AUDIO_SAMPLE_RATE
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buffer.getvalue()


def _capture_timestamp(archive_url: str) -> str | None:
    from podcastpile.net.fetch import wayback_timestamp

    return wayback_timestamp(archive_url)


@contextmanager
def fetch_capture(archive_url: str | None, sha256: str | None, access: ArchiveAccess) -> Iterator[Path]:
    """The capture's original bytes in a temporary file, checked against `sha256`.

    Raises `AudioUnavailable`: `not-archived` (no archived copy: the live URL is never used),
    `no-hash`, `hash-mismatch`, or the download's own error code.
    """
    from podcastpile.speech.pipeline import fetch

    if not archive_url:
        raise AudioUnavailable("not-archived", "no Internet Archive copy; the live URL is never used")
    if not sha256:
        raise AudioUnavailable("no-hash", "the row has no audio_sha256 to check the capture against")
    try:
        with fetch(archive_url, access, _capture_timestamp(archive_url)) as downloaded:
            if downloaded.sha256 != sha256:
                raise AudioUnavailable(
                    "hash-mismatch",
                    f"the archived copy's sha256 is {downloaded.sha256}, the row's audio_sha256 is {sha256}",
                )
            yield downloaded.path
    except (PermanentError, TransientError) as error:
        raise AudioUnavailable(error.code, error.reason) from error


def decode_file(path: Path) -> np.ndarray:
    """A capture decoded to 16 kHz mono float32 by the batch's decoder."""
    from podcastpile.speech.audio import decode

    try:
        return decode(path, AUDIO_SAMPLE_RATE).samples
    except PermanentError as error:
        raise AudioUnavailable(error.code, error.reason) from error


def episode_samples(archive_url: str | None, sha256: str | None, access: ArchiveAccess) -> np.ndarray:
    """An episode's decoded audio, from its archived capture (hash-checked)."""
    with fetch_capture(archive_url, sha256, access) as path:
        return decode_file(path)


def encode_turns(
    samples: np.ndarray, turns: Sequence[Mapping[str, Any]], episode_id: str, options: AudioOptions
) -> list[dict[str, Any]]:
    """Each turn's audio as `datasets`' Audio storage (`{"bytes", "path"}`), in turn order."""
    extension = CODECS[options.codec][2]
    encoded = []
    for index, turn in enumerate(turns):
        first, last = turn_span(turn["start"], turn["end"], len(samples), options.pad)
        encoded.append({
            "bytes": encode(samples[first:last], options.codec),
            "path": f"{episode_id}-{index:05d}.{extension}",
        })
    return encoded
