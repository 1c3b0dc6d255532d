"""Truncated files fail as `truncated`; valid ones (every codec, every way of stating length) pass.

Each truncated file is the first 30 % of a valid one, the way a download cut short looks:
FFmpeg decodes what is there without an error, so only the length the file states tells.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from podcastpile.speech import pipeline as speech
from podcastpile.speech.audio import decode
from podcastpile.speech.declared import declared_length
from podcastpile.errors import PermanentError, TransientError
from podcastpile.net.fetch import local_file
from podcastpile.speech.nemo_models import Diarization, Transcript
from tests.speech.conftest import encode, tone

SECONDS = 20.0
KEEP = 0.3

# name → (PyAV format, encoder, sample rate, muxer options, how the file states its length)
CASES = {
    "mp3-xing": ("mp3", "libmp3lame", 16000, {}, "mp3 Xing/Info header"),
    "flac": ("flac", "flac", 22050, {}, "flac STREAMINFO total samples"),
    "wav": ("wav", "pcm_s16le", 44100, {}, "wav data chunk size"),
    "m4a-faststart": ("ipod", "aac", 16000, {"movflags": "+faststart"}, "mp4 mdhd/mvhd duration"),
    "m4a": ("ipod", "aac", 16000, {}, "mp4 'mdat' box"),  # moov at the end: a cut file has none
    "opus": ("ogg", "libopus", 48000, {}, "ogg"),
}


def write(path: Path, container: str, codec: str, rate: int, samples: np.ndarray, options: dict) -> bytes:
    """Encode with muxer `options`, in whole MP3 frames (1152 samples) where that is the codec's size."""
    return encode(path, container, codec, rate, samples, options, None if codec == "libopus" else 1152)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("truncation")
    made = {}
    for name, (container, codec, rate, options, _) in CASES.items():
        body = write(folder / f"{name}.bin", container, codec, rate, tone(SECONDS, rate), options)
        made[name] = folder / f"{name}.bin"
        (folder / f"{name}-cut.bin").write_bytes(body[: int(len(body) * KEEP)])
        made[f"{name}-cut"] = folder / f"{name}-cut.bin"
    return made


@pytest.mark.parametrize("name", list(CASES))
def test_whole_files_decode_to_their_stated_length(files, name):
    declared = declared_length(files[name])
    assert declared is not None and declared.missing is None
    assert declared.source.startswith(CASES[name][4].split(" '")[0])
    decoded = decode(files[name])
    assert decoded.duration == pytest.approx(SECONDS, abs=0.15)
    assert decoded.decode_errors == 0
    if declared.seconds is not None:
        assert declared.seconds == pytest.approx(decoded.duration, abs=0.15)


@pytest.mark.parametrize("name", list(CASES))
def test_the_first_30_percent_is_truncated(files, name):
    with pytest.raises(PermanentError) as caught:
        decode(files[f"{name}-cut"])
    error = caught.value
    assert error.code == "truncated", error
    assert "\n" not in error.reason and error.reason.endswith("file is truncated")
    if declared_length(files[f"{name}-cut"]).seconds is not None:  # the reason gives both lengths
        assert f"declares {SECONDS:.1f} s" in error.reason or "declares 20.1 s" in error.reason
        decoded = float(error.reason.split("decoded ")[1].split(" s")[0])
        assert decoded == pytest.approx(SECONDS * KEEP, abs=1.5)


def test_a_cut_120_s_mp3_with_a_xing_header_is_truncated(tmp_path):
    """The issue's case: 30 % of a 120 s MP3 was accepted as a 35.9 s episode."""
    body = encode(tmp_path / "ep.mp3", "mp3", "libmp3lame", 16000, tone(120.0))
    assert declared_length(tmp_path / "ep.mp3").seconds == pytest.approx(120.0, abs=0.2)
    cut = tmp_path / "cut.mp3"
    cut.write_bytes(body[: int(len(body) * KEEP)])
    with pytest.raises(PermanentError, match=r"declares 120\.\d s, decoded 3\d\.\d s") as caught:
        decode(cut)
    assert caught.value.code == "truncated"


def test_ogg_cut_at_a_page_boundary_has_no_end_of_stream_page(files):
    body = files["opus"].read_bytes()
    cut_at = body.rfind(b"OggS", 0, len(body) // 2)  # keep whole pages only
    path = files["opus"].with_name("page-cut.opus")
    path.write_bytes(body[:cut_at])
    with pytest.raises(PermanentError, match="no end-of-stream flag") as caught:
        decode(path)
    assert caught.value.code == "truncated"


def test_cbr_mp3_without_xing_cut_short_is_not_flagged(tmp_path):
    """No frame count in the file: FFmpeg's duration is a bitrate estimate, never grounds to reject."""
    body = write(tmp_path / "cbr.mp3", "mp3", "libmp3lame", 16000, tone(SECONDS), {"write_xing": "0"})
    assert b"Xing" not in body[:512] and b"Info" not in body[:512]
    cut = tmp_path / "cbr-cut.mp3"
    cut.write_bytes(body[: int(len(body) * KEEP)])
    assert declared_length(cut) is None
    decoded = decode(cut)
    assert decoded.duration == pytest.approx(SECONDS * KEEP, abs=0.5)


def test_live_download_truncation_is_transient(files):
    with local_file(files["mp3-xing-cut"]) as downloaded:
        with pytest.raises(PermanentError) as permanent:
            speech.decode(downloaded)
        with pytest.raises(TransientError) as transient:
            speech.decode(downloaded, live=True)
    assert permanent.value.code == transient.value.code == "truncated"
    assert permanent.value.reason in transient.value.reason


def test_live_flag_leaves_other_failures_permanent(tmp_path):
    path = tmp_path / "page.mp3"
    path.write_bytes(b"<html><body>not found</body></html>")
    with local_file(path) as downloaded:
        with pytest.raises(PermanentError) as caught:
            speech.decode(downloaded, live=True)
    assert caught.value.code == "not-audio"


def test_skipped_bad_packets_are_counted_logged_and_carried_into_the_result(tmp_path, caplog):
    body = bytearray(encode(tmp_path / "ep.mp3", "mp3", "libmp3lame", 16000, tone(SECONDS)))
    rng = np.random.default_rng(0)
    for share in (0.3, 0.5, 0.7):  # three damaged spots mid-file, the file's length intact
        at = int(len(body) * share)
        body[at:at + 40] = rng.bytes(40)
    path = tmp_path / "damaged.mp3"
    path.write_bytes(bytes(body))
    with caplog.at_level(logging.WARNING, logger="podcastpile.speech.audio"):
        with local_file(path) as downloaded:
            decoded = speech.decode(downloaded)
            result = speech.build_result(
                downloaded, decoded, Diarization(segments=[], model="d", fingerprint="sha256:d"),
                Transcript(words=[], text="", language="en", model="a", fingerprint="sha256:a"), 1.0,
            )
    assert decoded.decode_errors > 0
    assert result.decode_errors == decoded.decode_errors
    assert any("failed to decode and were skipped" in record.getMessage() for record in caplog.records)
