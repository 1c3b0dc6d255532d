"""What a file's own headers say about its length, for catching truncated downloads.

FFmpeg decodes the first part of a cut file without complaint, so the decoded length alone
cannot tell a 36 s episode from the first 30 % of a 120 s one. Only lengths the file *states*
are read here, never estimates: an MP3 without a Xing/Info/VBRI header has no stated length
(FFmpeg guesses one from the first frame's bitrate and the file size, and a VBR file can be
guessed longer than it is), so it yields nothing and is never flagged.

  MP3   Xing/Info or VBRI frame count × samples per frame / sample rate
  FLAC  STREAMINFO total samples / sample rate (0 = unknown)
  WAV   data chunk size / byte rate (0 and 0xFFFFFFFF = written by a streaming writer: unknown)
  MP4   the audio track's mdhd duration (else mvhd); a top-level box running past the end of
        the file (e.g. `mdat` when `moov` sits at the end and never arrived)
  Ogg   the last page must carry the end-of-stream flag and be complete; a cut file ends on
        a page without it, whatever its granule position says

Pure Python over the first and last few kilobytes (plus MP4's `moov`): cheap next to decoding.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

HEAD_BYTES = 256 * 1024  # ID3v2 tags with cover art push the first MP3 frame this far and more
TAIL_BYTES = 128 * 1024  # an Ogg page is at most ~64 KiB
MAX_MOOV_BYTES = 64 * 1024 * 1024  # sample tables of a many-hour file; bigger is not an audio file


@dataclass(frozen=True)
class Declared:
    """A length the file states: `seconds` of audio, and/or that bytes the structure promises are missing."""

    source: str  # where it was read, e.g. "mp3 Xing header", "flac STREAMINFO"
    seconds: float | None = None
    missing: str | None = None  # why the file is shorter than its own structure says, if it is


def declared_length(path: Path) -> Declared | None:
    """The length `path`'s headers state, or None when the format states none (or is not recognised)."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(HEAD_BYTES)
        for reader in (_wav, _flac, _ogg, _mp4, _mp3):
            found = reader(handle, head, size)
            if found is not None:
                return found
    return None


def _id3_end(head: bytes) -> int:
    """Offset after an ID3v2 tag at the start (0 if none): MP3 and FLAC files may begin with one."""
    if len(head) >= 10 and head[:3] == b"ID3":
        length = (head[6] << 21) | (head[7] << 14) | (head[8] << 7) | head[9]  # syncsafe
        return 10 + length + (10 if head[5] & 0x10 else 0)
    return 0


# --- WAV ---------------------------------------------------------------------------------------


def _wav(handle, head: bytes, size: int) -> Declared | None:
    if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    offset, byte_rate = 12, 0
    while offset + 8 <= len(head):
        chunk, length = head[offset:offset + 4], struct.unpack_from("<I", head, offset + 4)[0]
        if chunk == b"fmt " and offset + 16 <= len(head):
            byte_rate = struct.unpack_from("<I", head, offset + 16)[0]
        elif chunk == b"data":
            if byte_rate <= 0 or length in (0, 0xFFFFFFFF):
                return Declared("wav data chunk")  # a streaming writer's placeholder: no claim
            return Declared("wav data chunk size", seconds=length / byte_rate)
        offset += 8 + length + (length & 1)  # chunks are padded to even sizes
    return None


# --- FLAC --------------------------------------------------------------------------------------


def _flac(handle, head: bytes, size: int) -> Declared | None:
    start = _id3_end(head)
    block = head[start:start + 42]
    if block[:4] != b"fLaC" or len(block) < 42 or block[4] & 0x7F != 0:  # STREAMINFO comes first
        return None
    packed = int.from_bytes(block[18:26], "big")  # rate 20 bits, channels 3, bits 5, total samples 36
    rate, total = packed >> 44, packed & ((1 << 36) - 1)
    if rate == 0 or total == 0:
        return Declared("flac STREAMINFO")  # 0 total samples = unknown (allowed by the format)
    return Declared("flac STREAMINFO total samples", seconds=total / rate)


# --- Ogg ---------------------------------------------------------------------------------------


def _ogg(handle, head: bytes, size: int) -> Declared | None:
    if head[:4] != b"OggS":
        return None
    handle.seek(max(0, size - TAIL_BYTES))
    tail = handle.read()
    at = tail.rfind(b"OggS")
    while at >= 0 and (len(tail) - at < 27 or tail[at + 4] != 0):  # version byte 0: a real page header
        at = tail.rfind(b"OggS", 0, at)
    if at < 0:
        return Declared("ogg pages", missing="no complete Ogg page header near the end of the file")
    flags, segments = tail[at + 5], tail[at + 26]
    table = tail[at + 27:at + 27 + segments]
    body = sum(table)
    if len(table) < segments or at + 27 + segments + body > len(tail):
        return Declared("ogg last page", missing="the last Ogg page is cut short")
    if not flags & 0x04:
        return Declared("ogg last page", missing="the last Ogg page has no end-of-stream flag")
    return Declared("ogg end-of-stream page")


# --- MP4 ---------------------------------------------------------------------------------------


def _boxes(data: bytes, start: int = 0, end: int | None = None):
    """(type, payload start, payload end) of each box in `data[start:end]`; stops at a malformed one."""
    end = len(data) if end is None else end
    offset = start
    while offset + 8 <= end:
        length, kind = struct.unpack_from(">I4s", data, offset)
        header = 8
        if length == 1 and offset + 16 <= end:
            length, header = struct.unpack_from(">Q", data, offset + 8)[0], 16
        elif length == 0:
            length = end - offset
        if length < header:
            return
        yield kind, offset + header, offset + length
        offset += length


def _mp4(handle, head: bytes, size: int) -> Declared | None:
    if head[4:8] != b"ftyp":
        return None
    offset, moov = 0, None
    while offset + 8 <= size:  # walk the top-level boxes with seeks: mdat may be gigabytes
        handle.seek(offset)
        header = handle.read(16)
        length, kind = struct.unpack_from(">I4s", header)
        if length == 1 and len(header) >= 16:
            length = struct.unpack_from(">Q", header, 8)[0]
        elif length == 0:
            length = size - offset
        if length < 8:
            return Declared("mp4 boxes")  # malformed: leave it to the decoder
        if offset + length > size:
            name = kind.decode("latin-1")
            missing = f"mp4 '{name}' box declares {offset + length:,} bytes of file, only {size:,} present"
            seconds = _mp4_audio_seconds(moov) if moov is not None else None  # moov first: "faststart"
            source = "mp4 mdhd/mvhd duration" if seconds else f"mp4 '{name}' box"
            return Declared(source, seconds=seconds, missing=missing)
        if kind == b"moov" and length <= MAX_MOOV_BYTES:
            handle.seek(offset)
            moov = handle.read(length)
        offset += length
    if moov is None:
        return Declared("mp4 boxes")
    seconds = _mp4_audio_seconds(moov)
    return Declared("mp4 mdhd/mvhd duration", seconds=seconds) if seconds else Declared("mp4 moov")


def _duration_box(data: bytes, start: int) -> float | None:
    """Seconds from an `mvhd`/`mdhd` payload (version 0 or 1)."""
    if data[start] == 1:
        timescale, duration = struct.unpack_from(">IQ", data, start + 20)
    else:
        timescale, duration = struct.unpack_from(">II", data, start + 12)
    if timescale == 0 or duration in (0, 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF):
        return None
    return duration / timescale


def _mp4_audio_seconds(moov: bytes) -> float | None:
    """The first sound track's mdhd duration, else the movie's mvhd duration."""
    movie = None
    for kind, start, end in _boxes(moov, 8):
        if kind == b"mvhd":
            movie = _duration_box(moov, start)
        elif kind == b"trak":
            for mdia_kind, mdia_start, mdia_end in _boxes(moov, start, end):
                if mdia_kind != b"mdia":
                    continue
                track, sound = None, False
                for inner, inner_start, _ in _boxes(moov, mdia_start, mdia_end):
                    if inner == b"mdhd":
                        track = _duration_box(moov, inner_start)
                    elif inner == b"hdlr":
                        sound = moov[inner_start + 8:inner_start + 12] == b"soun"
                if sound and track:
                    return track
    return movie


# --- MP3 ---------------------------------------------------------------------------------------

_MP3_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}


def _mp3(handle, head: bytes, size: int) -> Declared | None:
    start = _id3_end(head)
    if start + 4 > len(head):  # a tag bigger than what was read: read past it
        handle.seek(start)
        head, start = handle.read(HEAD_BYTES), 0
    at = start
    # The first frame header: sync, a known MPEG version, Layer III, a valid rate.
    while True:
        at = head.find(b"\xff", at)
        if at < 0 or at + 4 > len(head) or at - start > 64 * 1024:
            return None
        b1, b2, b3 = head[at + 1], head[at + 2], head[at + 3]
        version, layer, rate_index = (b1 >> 3) & 3, (b1 >> 1) & 3, (b2 >> 2) & 3
        if (b1 & 0xE0) == 0xE0 and version != 1 and layer == 1 and rate_index != 3 and (b2 >> 4) != 15:
            break
        at += 1
    rate = _MP3_RATES[version][rate_index]
    samples_per_frame = 1152 if version == 3 else 576
    mono = (b3 >> 6) == 3
    side_info = (17 if mono else 32) if version == 3 else (9 if mono else 17)
    xing = at + 4 + side_info
    if head[xing:xing + 4] in (b"Xing", b"Info"):
        flags = struct.unpack_from(">I", head, xing + 4)[0]
        if flags & 1:
            frames = struct.unpack_from(">I", head, xing + 8)[0]
            if frames:
                return Declared("mp3 Xing/Info header", seconds=frames * samples_per_frame / rate)
        return None
    vbri = at + 4 + 32
    if head[vbri:vbri + 4] == b"VBRI":
        frames = struct.unpack_from(">I", head, vbri + 14)[0]
        if frames:
            return Declared("mp3 VBRI header", seconds=frames * samples_per_frame / rate)
    return None  # no header with a frame count: FFmpeg's duration would be a bitrate estimate
