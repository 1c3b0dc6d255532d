"""Probe and decode audio files with PyAV (FFmpeg) to 16 kHz mono float32.

The container is probed from the bytes, never trusted from a file name or Content-Type:
an HTML error page served as `audio/mpeg` must fail here as `not-audio`. Failures are
permanent (the same bytes will fail the same way on retry):
  not-audio    no container FFmpeg recognises, or no audio stream in it
  undecodable  an audio container whose stream yields no samples or mostly errors
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from podcastpile.errors import PermanentError

SAMPLE_RATE = 16_000
# Podcast files often carry a few damaged frames (ad splices, junk after ID3 tags); FFmpeg skips
# them. Only give up when damage is more than this share of packets (and more than a handful).
MAX_BAD_PACKET_SHARE = 0.05
MAX_BAD_PACKETS_TOLERATED = 10


@dataclass(frozen=True)
class AudioFormat:
    """What the probe found: container (FFmpeg's first alias) and codec of the first audio stream."""

    container: str
    codec: str
    channels: int
    sample_rate: int

    @property
    def name(self) -> str:
        """`container/codec`, e.g. `mp3/mp3`, `mov/aac`, `ogg/opus`, `wav/pcm_s16le`."""
        return f"{self.container}/{self.codec}"


@dataclass(frozen=True)
class DecodedAudio:
    """A whole file as 16 kHz mono float32 in [-1, 1]."""

    samples: np.ndarray
    sample_rate: int
    format: AudioFormat

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return len(self.samples) / self.sample_rate


def _open(path: Path):
    import av

    try:
        return av.open(str(path), mode="r")
    except (EOFError, av.error.EOFError) as error:
        # FFmpeg recognised a container but the file ends before its first frame: truncated.
        raise PermanentError(
            "undecodable", f"file ends before any audio could be read, truncated? ({_first_bytes(path)})"
        ) from error
    except av.error.InvalidDataError as error:
        raise PermanentError(
            "not-audio", f"bytes are not a known audio container ({_first_bytes(path)})"
        ) from error
    except av.error.FFmpegError as error:
        raise PermanentError("not-audio", f"cannot open as audio: {error.strerror or error}") from error


def _first_bytes(path: Path) -> str:
    """A short, printable hint of what the file starts with, for the failure reason."""
    head = path.read_bytes()[:16] if path.stat().st_size else b""
    if not head:
        return "empty file"
    if head.lstrip().lower().startswith((b"<!doctype", b"<html", b"<?xml", b"<")):
        return "looks like HTML/XML"
    return "starts with " + head[:8].hex(" ")


def _describe(container, stream) -> AudioFormat:
    context = stream.codec_context
    return AudioFormat(
        container=container.format.name.split(",")[0],
        codec=context.codec.canonical_name,  # "mp3", not the decoder name "mp3float"
        channels=context.channels or 0,
        sample_rate=context.sample_rate or 0,
    )


def probe(path: Path) -> AudioFormat:
    """The format of the file's first audio stream; `PermanentError('not-audio')` if there is none."""
    with _open(path) as container:
        if not container.streams.audio:
            kinds = ", ".join(sorted({s.type for s in container.streams})) or "no streams"
            raise PermanentError(
                "not-audio", f"no audio stream in {container.format.name} container ({kinds})"
            )
        return _describe(container, container.streams.audio[0])


def decode(path: Path, sample_rate: int = SAMPLE_RATE) -> DecodedAudio:
    """Decode the first audio stream to mono float32 at `sample_rate` (FFmpeg's resampler).

    Raises `PermanentError` with code `not-audio` or `undecodable`.
    """
    import av

    with _open(path) as container:
        if not container.streams.audio:
            raise PermanentError("not-audio", f"no audio stream in {container.format.name} container")
        stream = container.streams.audio[0]
        found = _describe(container, stream)
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        chunks: list[np.ndarray] = []
        packets = bad = 0
        last_error = ""
        try:
            for packet in container.demux(stream):
                if packet.size == 0:  # the flush packet at the end
                    continue
                packets += 1
                try:
                    frames = packet.decode()
                except av.error.FFmpegError as error:
                    bad += 1
                    last_error = str(error)
                    continue
                for frame in frames:
                    for out in resampler.resample(frame):
                        chunks.append(out.to_ndarray().reshape(-1))
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
        except av.error.FFmpegError as error:
            # Demuxing itself broke (damaged container structure), not one bad frame.
            raise PermanentError("undecodable", f"{found.name}: {error}") from error
    samples = np.concatenate(chunks).astype(np.float32, copy=False) if chunks else np.zeros(0, np.float32)
    if bad > max(MAX_BAD_PACKETS_TOLERATED, MAX_BAD_PACKET_SHARE * packets):
        raise PermanentError(
            "undecodable", f"{found.name}: {bad} of {packets} packets failed to decode ({last_error})"
        )
    if samples.size == 0:
        raise PermanentError("undecodable", f"{found.name}: no audio samples decoded ({packets} packets)")
    return DecodedAudio(samples=samples, sample_rate=sample_rate, format=found)
