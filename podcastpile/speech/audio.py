"""Probe and decode audio files with PyAV (FFmpeg) to 16 kHz mono float32.

The container is probed from the bytes, never trusted from a file name or Content-Type:
an HTML error page served as `audio/mpeg` must fail here as `not-audio`. Failures are
permanent (the same bytes will fail the same way on retry):
  not-audio    no container FFmpeg recognises, or no audio stream in it
  undecodable  an audio container whose stream yields no samples or mostly errors
  truncated    the file states a length (see `podcastpile.speech.declared`) and the audio ends well
               short of it: FFmpeg decodes the first part of a cut file without an error
A few bad packets are skipped, counted (`DecodedAudio.decode_errors`) and logged, not hidden.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from podcastpile.speech.declared import Declared, declared_length
from podcastpile.errors import PermanentError

log = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
# Podcast files often carry a few damaged frames (ad splices, junk after ID3 tags); FFmpeg skips
# them. Only give up when damage is more than this share of packets (and more than a handful).
MAX_BAD_PACKET_SHARE = 0.05
MAX_BAD_PACKETS_TOLERATED = 10
# A valid file decodes to within this of its stated length: AAC priming/padding is 20-130 ms,
# LAME's delay/padding ~50 ms, a skipped frame 26 ms. The share covers headers rounded to
# coarse timescales on long files. A cut download is short by much more.
TRUNCATION_TOLERANCE_SECONDS = 0.5
TRUNCATION_TOLERANCE_SHARE = 0.005
# Samples are gathered into one array grown in place (see `_Samples`), this much at a time.
GROW_SAMPLES = 16_000 * 60
MAX_PREALLOCATED_SECONDS = 6 * 3600


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
    decode_errors: int = 0  # packets FFmpeg could not decode and skipped (a gap each)

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


class _Samples:
    """A float32 buffer grown in place with `ndarray.resize`, which reallocates (mremap for big
    buffers on Linux) instead of copying into a new array: peak memory stays ~1x the audio,
    where collecting chunks and concatenating them needs 2x (2.8 GB for 6 h at 16 kHz)."""

    def __init__(self, expected: int) -> None:
        self.data = np.zeros(max(expected, GROW_SAMPLES), dtype=np.float32)
        self.size = 0

    def append(self, chunk: np.ndarray) -> None:
        end = self.size + len(chunk)
        if end > len(self.data):
            self.data.resize(max(end, len(self.data) + max(GROW_SAMPLES, len(self.data) // 4)), refcheck=False)
        self.data[self.size:end] = chunk
        self.size = end

    def finish(self) -> np.ndarray:
        self.data.resize(self.size, refcheck=False)
        return self.data


def decode(path: Path, sample_rate: int = SAMPLE_RATE) -> DecodedAudio:
    """Decode the first audio stream to mono float32 at `sample_rate` (FFmpeg's resampler).

    Raises `PermanentError` with code `not-audio`, `undecodable` or `truncated` (the audio
    ends well short of the length the file's headers state).
    """
    import av

    declared = declared_length(path)
    try:
        container = _open(path)
    except PermanentError as error:
        _check_structure(declared, error)  # a cut MP4 whose `moov` never arrived cannot be opened
        raise
    with container:
        if not container.streams.audio:
            raise PermanentError("not-audio", f"no audio stream in {container.format.name} container")
        stream = container.streams.audio[0]
        found = _describe(container, stream)
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        # A size hint only (the buffer grows anyway), capped: a hostile header may declare years.
        expected = int(min(declared.seconds or 0, MAX_PREALLOCATED_SECONDS) * sample_rate * 1.01) if declared else 0
        samples = _Samples(expected)
        packets = bad = 0
        stream_end = 0.0  # where the demuxed packets reach, seconds: counts the audio of bad packets too
        last_error = demux_error = ""
        try:
            for packet in container.demux(stream):
                if packet.size == 0:  # the flush packet at the end
                    continue
                packets += 1
                if packet.pts is not None and packet.time_base is not None:
                    end = packet.pts + (packet.duration or 0) - (stream.start_time or 0)
                    stream_end = max(stream_end, float(end * packet.time_base))
                try:
                    frames = packet.decode()
                except av.error.FFmpegError as error:
                    bad += 1
                    last_error = str(error)
                    continue
                for frame in frames:
                    for out in resampler.resample(frame):
                        samples.append(out.to_ndarray().reshape(-1))
            for out in resampler.resample(None):
                samples.append(out.to_ndarray().reshape(-1))
        except av.error.FFmpegError as error:
            # Demuxing itself broke (damaged container structure), not one bad frame. A cut
            # file can end this way too: decide after the truncation check.
            demux_error = f"{found.name}: {error}"
    audio = samples.finish()
    # Order matters: nothing decodable, or mostly damage, is `undecodable` whatever the length
    # says; a file that decodes cleanly but ends early is `truncated`, even if the demuxer
    # complained at the cut.
    if audio.size == 0:
        raise PermanentError("undecodable", f"{found.name}: no audio samples decoded ({packets} packets)")
    if bad > max(MAX_BAD_PACKETS_TOLERATED, MAX_BAD_PACKET_SHARE * packets):
        raise PermanentError(
            "undecodable", f"{found.name}: {bad} of {packets} packets failed to decode ({last_error})"
        )
    _check_truncation(declared, max(len(audio) / sample_rate, stream_end), found)
    if demux_error:
        raise PermanentError("undecodable", demux_error)
    if bad:
        log.warning("%s: %d of %d packets failed to decode and were skipped (%s)", path.name, bad, packets, last_error)
    return DecodedAudio(samples=audio, sample_rate=sample_rate, format=found, decode_errors=bad)


def _check_structure(declared: Declared | None, cause: BaseException | None = None) -> None:
    """Raise `truncated` when the file's structure promises bytes that are not there."""
    if declared is not None and declared.missing:
        raise PermanentError("truncated", f"{declared.missing}: file is truncated") from cause


def _check_truncation(declared: Declared | None, decoded_seconds: float, found: AudioFormat) -> None:
    """Raise `truncated` when the audio ends short of the length the file states (beyond tolerance),
    or the file's structure promises bytes that are missing. The duration comes first: its
    reason (declared vs decoded seconds) says more than a byte count."""
    if declared is not None and declared.seconds is not None:
        tolerance = max(TRUNCATION_TOLERANCE_SECONDS, TRUNCATION_TOLERANCE_SHARE * declared.seconds)
        if declared.seconds - decoded_seconds > tolerance:
            raise PermanentError(
                "truncated",
                f"{found.name}: {declared.source} declares {declared.seconds:.1f} s, "
                f"decoded {decoded_seconds:.1f} s: file is truncated",
            )
    _check_structure(declared)
