"""Fetch and decode against a real HTTP server on 127.0.0.1: formats, hashes, failure classes."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from contextlib import contextmanager

import numpy as np
import pytest

from podcastpile.speech.audio import decode, probe
from podcastpile.errors import PermanentError, TransientError
from podcastpile.net.fetch import USER_AGENT, DownloadStopped, download, local_file
from podcastpile.net.guard import AddressGuard, allow_any
from tests.loopback import LoopbackServer, Reply, Request
from tests.speech.conftest import FORMATS, TONE_SECONDS

MAX_BYTES = 200_000
TIMEOUT = 0.5
LOOPBACK_ALLOWED = AddressGuard(allow=allow_any)  # the test server is on 127.0.0.1 (see test_netguard.py)


@pytest.fixture(scope="module")
def server():
    """One loopback server for the module (each server's shutdown costs ~0.5 s); tests add routes."""
    with LoopbackServer() as running:
        yield running


@contextmanager
def serving(server: LoopbackServer, routes: dict):
    """Serve exactly `routes` on the shared server for one test."""
    server.routes.clear()
    server.routes.update(routes)
    yield server


def fetch(url: str, **overrides):
    """Download and decode like the pipeline does; return (downloaded, decoded, temp path)."""
    options = {"max_bytes": MAX_BYTES, "timeout_seconds": TIMEOUT, "max_redirects": 3,
               "guard": LOOPBACK_ALLOWED} | overrides
    with download(url, **options) as downloaded:
        assert downloaded.path.exists()
        decoded = decode(downloaded.path)
        return downloaded, decoded


def failure(url: str, **overrides) -> PermanentError | TransientError:
    with pytest.raises((PermanentError, TransientError)) as caught:
        fetch(url, **overrides)
    return caught.value


@pytest.mark.parametrize("name", list(FORMATS))
def test_each_format_downloads_hashes_and_decodes(server, name, encoded_audio):
    body = encoded_audio[name]
    seen: dict[str, str] = {}

    def serve(request: Request) -> Reply:
        seen.update(request.headers)
        return Reply(200, body, {"Content-Type": "application/octet-stream"})

    with serving(server, {f"/ep.{name}": serve}):
        downloaded, decoded = fetch(server.url(f"/ep.{name}"))
    assert downloaded.sha256 == hashlib.sha256(body).hexdigest()
    assert downloaded.md5 == hashlib.md5(body).hexdigest()
    assert downloaded.bytes == len(body)
    assert not downloaded.path.exists(), "temporary file must be removed"
    assert f"-{os.getpid()}-" in downloaded.path.name
    assert seen["user-agent"] == USER_AGENT and "podcastpile" in USER_AGENT
    assert decoded.format.name == FORMATS[name][3]
    assert decoded.sample_rate == 16000 and decoded.samples.dtype == np.float32 and decoded.samples.ndim == 1
    # AAC keeps its encoder priming and last-frame padding (~0.11 s here); others are exact-ish.
    assert decoded.duration == pytest.approx(TONE_SECONDS, abs=0.15)
    # The tone survives the codec and the resampler: half scale, 440 Hz.
    middle = decoded.samples[4000:28000]
    assert np.abs(middle).max() == pytest.approx(0.5, abs=0.06)
    spectrum = np.abs(np.fft.rfft(middle))
    assert np.argmax(spectrum) * 16000 / len(middle) == pytest.approx(440, abs=5)


def test_probe_reads_the_bytes_not_the_name(tmp_path, encoded_audio):
    misnamed = tmp_path / "episode.mp3"
    misnamed.write_bytes(encoded_audio["flac"])
    assert probe(misnamed).name == "flac/flac"


@pytest.mark.parametrize("status, permanent", [(404, True), (410, True), (403, True), (500, False),
                                               (502, False), (503, False), (429, False), (408, False)])
def test_http_status_classes(server, status, permanent):
    with serving(server, {"/ep.mp3": lambda r: Reply(status, b"nope", {"Retry-After": "7"})}):
        error = failure(server.url("/ep.mp3"))
    assert error.permanent is permanent
    assert isinstance(error, PermanentError if permanent else TransientError)
    assert error.code == f"http-{status}"
    assert f"HTTP {status}" in error.reason and "\n" not in error.reason
    if status == 429:
        assert "Retry-After: 7" in error.reason


def test_500_then_200_succeeds_on_retry(server, encoded_audio):
    body = encoded_audio["mp3"]
    calls = []

    def flaky(request: Request) -> Reply:
        calls.append(1)
        return Reply(500, b"oops") if len(calls) == 1 else Reply(200, body, {"Content-Type": "audio/mpeg"})

    with serving(server, {"/ep.mp3": flaky}):
        error = failure(server.url("/ep.mp3"))
        assert isinstance(error, TransientError) and error.code == "http-500"
        downloaded, decoded = fetch(server.url("/ep.mp3"))  # what the caller's retry does
    assert downloaded.sha256 == hashlib.sha256(body).hexdigest()
    assert decoded.duration == pytest.approx(TONE_SECONDS, abs=0.1)
    assert len(calls) == 2


def _stall(request: Request) -> None:
    """Headers, a little body, then silence longer than the read timeout."""
    h = request.handler
    h.send_response(200)
    h.send_header("Content-Type", "audio/mpeg")
    h.send_header("Content-Length", "100000")
    h.end_headers()
    h.wfile.write(b"\xff\xfb" + b"\0" * 1000)
    h.wfile.flush()
    time.sleep(TIMEOUT * 4)


def test_stalled_server_times_out_transiently(server):
    with serving(server, {"/ep.mp3": _stall}):
        started = time.monotonic()
        error = failure(server.url("/ep.mp3"))
        elapsed = time.monotonic() - started
    assert isinstance(error, TransientError) and error.code == "timeout"
    assert elapsed < TIMEOUT * 3


def test_html_page_is_not_audio(server):
    page = b"<!DOCTYPE html><html><body>Wayback Machine: not archived</body></html>"
    with serving(server, {"/ep.mp3": lambda r: Reply(200, page, {"Content-Type": "text/html; charset=utf-8"})}):
        error = failure(server.url("/ep.mp3"))
    assert isinstance(error, PermanentError) and error.code == "not-audio"
    assert "HTML" in error.reason


def test_html_served_as_audio_is_caught_by_the_probe(server):
    page = b"<html><body>Access denied</body></html>" * 20
    with serving(server, {"/ep.mp3": lambda r: Reply(200, page, {"Content-Type": "audio/mpeg"})}):
        error = failure(server.url("/ep.mp3"))
    assert isinstance(error, PermanentError) and error.code == "not-audio"
    assert "HTML" in error.reason


def test_random_bytes_are_not_audio(server):
    junk = np.random.default_rng(0).bytes(20_000)
    with serving(server, {"/ep.mp3": lambda r: Reply(200, junk, {"Content-Type": "audio/mpeg"})}):
        error = failure(server.url("/ep.mp3"))
    assert isinstance(error, PermanentError) and error.code == "not-audio"


def test_mp3_cut_mid_body_is_a_transient_short_read(server, encoded_audio):
    body = encoded_audio["mp3"]

    def cut(request: Request) -> None:
        h = request.handler
        h.send_response(200)
        h.send_header("Content-Type", "audio/mpeg")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body[: len(body) // 2])
        h.wfile.flush()
        h.connection.shutdown(socket.SHUT_RDWR)

    with serving(server, {"/ep.mp3": cut}):
        error = failure(server.url("/ep.mp3"))
    assert isinstance(error, TransientError) and error.code == "short-read"


def test_mp3_truncated_before_its_first_frame_is_undecodable(server, encoded_audio):
    stub = encoded_audio["mp3"][:300]  # complete HTTP answer of a broken file: retrying cannot help
    with serving(server, {"/ep.mp3": lambda r: Reply(200, stub, {"Content-Type": "audio/mpeg"})}):
        error = failure(server.url("/ep.mp3"))
    assert isinstance(error, PermanentError) and error.code == "undecodable"


def test_empty_body_is_permanent(server):
    with serving(server, {"/ep.mp3": lambda r: Reply(200, b"", {"Content-Type": "audio/mpeg"})}):
        error = failure(server.url("/ep.mp3"))
    assert isinstance(error, PermanentError) and error.code == "empty-body"


def test_declared_size_over_the_cap_is_refused_before_download(server):
    big = b"\0" * (MAX_BYTES + 1)
    with serving(server, {"/ep.mp3": lambda r: Reply(200, big, {"Content-Type": "audio/mpeg"})}):
        error = failure(server.url("/ep.mp3"))
    assert isinstance(error, PermanentError) and error.code == "too-large"
    assert "Content-Length" in error.reason


def zeros(chunks: int, size: int, every: float = 0.0, content_type: str = "audio/mpeg"):
    """A route answering `chunks` chunks of `size` zero bytes, one every `every` s (chunked)."""
    def reply(request: Request) -> Reply:
        def body():
            for _ in range(chunks):
                time.sleep(every)
                yield b"\0" * size
        return Reply(200, body(), {"Content-Type": content_type})
    return reply


def test_chunked_body_over_the_cap_is_cut_off(server, encoded_audio):
    endless = zeros(1000, 65536)  # 64 MB if nobody stops reading
    with serving(server, {"/ep.mp3": endless}):
        error = failure(server.url("/ep.mp3"))
    assert isinstance(error, PermanentError) and error.code == "too-large"
    assert "cap" in error.reason


def test_a_stop_ends_a_long_download_at_its_next_chunk_and_removes_the_file(server, tmp_path):
    """A stopping batch must not wait for the rest of a long file (a prefetch still running)."""
    slow = zeros(400, 1024, every=0.05, content_type="audio/wav")  # 20 s if nobody stops reading
    stop = threading.Event()
    threading.Timer(0.5, stop.set).start()
    started = time.monotonic()
    with serving(server, {"/long.wav": slow}):
        with pytest.raises(DownloadStopped):
            fetch(server.url("/long.wav"), stop=stop, temp_dir=str(tmp_path))
    assert time.monotonic() - started < 5  # one chunk after the stop, not the 20 s of the file
    assert list(tmp_path.iterdir()) == []


def test_redirects_are_followed_up_to_the_limit(server, encoded_audio):
    body = encoded_audio["mp3"]
    routes = {
        "/web/2024id_/ep.mp3": lambda r: Reply(302, b"", {"Location": "/web/20240101000000id_/ep.mp3"}),
        "/web/20240101000000id_/ep.mp3": lambda r: Reply(200, body, {"Content-Type": "audio/mpeg"}),
        "/loop": lambda r: Reply(302, b"", {"Location": "/loop"}),
    }
    with serving(server, routes):
        downloaded, _ = fetch(server.url("/web/2024id_/ep.mp3"))
        assert downloaded.url.endswith("/web/20240101000000id_/ep.mp3")
        error = failure(server.url("/loop"))
    assert isinstance(error, PermanentError) and error.code == "too-many-redirects"


def test_connection_refused_is_transient():
    with socket.socket() as probe_socket:  # a port nobody listens on once closed
        probe_socket.bind(("127.0.0.1", 0))
        port = probe_socket.getsockname()[1]
    error = failure(f"http://127.0.0.1:{port}/ep.mp3")
    assert isinstance(error, TransientError) and error.code == "connection"


def test_temp_file_is_removed_when_the_caller_fails(server, encoded_audio):
    with serving(server, {"/ep.mp3": lambda r: Reply(200, encoded_audio["mp3"])}):
        with pytest.raises(RuntimeError):
            with download(server.url("/ep.mp3"), max_bytes=MAX_BYTES, timeout_seconds=TIMEOUT,
                          guard=LOOPBACK_ALLOWED) as downloaded:
                kept = downloaded.path
                raise RuntimeError("decode blew up")
    assert not kept.exists()


def test_local_file_is_hashed_and_kept(tmp_path, encoded_audio):
    path = tmp_path / "ep.m4a"
    path.write_bytes(encoded_audio["m4a"])
    with local_file(path) as found:
        assert found.sha256 == hashlib.sha256(encoded_audio["m4a"]).hexdigest()
        assert found.md5 == hashlib.md5(encoded_audio["m4a"]).hexdigest()
    assert path.exists()
    with pytest.raises(PermanentError) as caught:
        with local_file(tmp_path / "missing.mp3"):
            pass
    assert caught.value.code == "not-found"


def test_flac_with_a_garbled_body_is_undecodable(tmp_path, encoded_audio):
    body = bytearray(encoded_audio["flac"])
    cut = len(body) // 10  # keep the stream header, garble every frame after it
    body[cut:] = np.random.default_rng(1).bytes(len(body) - cut)
    path = tmp_path / "garbled.flac"
    path.write_bytes(bytes(body))
    with pytest.raises(PermanentError) as caught:
        decode(path)
    assert caught.value.code == "undecodable" and "flac" in caught.value.reason
