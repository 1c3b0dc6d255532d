"""Downloading a Wayback Machine capture against a real HTTP server on 127.0.0.1.

Replay checks (`capture_timestamp`): only the named capture's bytes are accepted, whatever the
archive offers instead while a fresh capture is not replayable yet. Raw digest: `sha1_raw` is of
the body as received (de-chunked, still content-encoded), as the CDX digest is; the file and its
other hashes are of the decoded audio.
"""

from __future__ import annotations

import gzip
import hashlib
import sys
import tracemalloc
import zlib
from collections.abc import Iterator

import pytest

from podcastpile.errors import EpisodeError, PermanentError, TransientError
from podcastpile.net.fetch import DownloadedAudio, download, local_file, wayback_timestamp
from podcastpile.net.guard import AddressGuard, allow_any
from tests.loopback import LoopbackServer, Reply, Request

TS = "20260102030405"
OTHER_TS = "20250811000000"  # an older capture of the same URL: what a replay lag redirects to
MEMENTO = "Fri, 02 Jan 2026 03:04:05 GMT"  # TS as RFC 1123
ORIGINAL = "https://podcasts.example.com/show/ep1.mp3"
AUDIO = b"ID3\x03\x00\x00\x00\x00\x00\x00" + bytes(range(256)) * 400  # ~100 KB, not HTML
MAX_BYTES = 1_000_000
LOOPBACK_ALLOWED = AddressGuard(allow=allow_any)  # the test server is on 127.0.0.1 (see test_netguard.py)


@pytest.fixture(scope="module")
def server() -> Iterator[LoopbackServer]:
    """One loopback "archive" for the module; each test sets its routes."""
    with LoopbackServer() as running:
        yield running


@pytest.fixture(autouse=True)
def clean(server: LoopbackServer) -> None:
    server.routes.clear()
    server.hits.clear()


def playback(ts: str = TS, original: str = ORIGINAL) -> str:
    return f"/web/{ts}id_/{original}"


def get(url: str, **options: object) -> tuple[DownloadedAudio, bytes]:
    """Download like the pipeline does; return the result and the file's bytes."""
    settings = {"max_bytes": MAX_BYTES, "timeout_seconds": 5, "guard": LOOPBACK_ALLOWED} | options
    with download(url, **settings) as downloaded:  # type: ignore[arg-type]
        return downloaded, downloaded.path.read_bytes()


def failure(url: str, **options: object) -> EpisodeError:
    with pytest.raises(EpisodeError) as caught:
        get(url, **options)
    return caught.value


def capture(body: bytes | list[bytes], **headers: str) -> Reply:
    """A replayed capture: audio, with the capture's Memento-Datetime unless overridden."""
    return Reply(200, body, {"Content-Type": "audio/mpeg", "Memento-Datetime": MEMENTO} | headers)


def redirect(location: str) -> Reply:
    return Reply(302, b"", {"Location": location})


# --- which timestamp a URL names -----------------------------------------------------------------


@pytest.mark.parametrize(("url", "expected"), [
    (f"https://web.archive.org/web/{TS}id_/{ORIGINAL}", TS),
    (f"https://web.archive.org/web/{TS}/{ORIGINAL}", TS),
    (f"http://127.0.0.1:8080/wayback/web/{TS}im_/{ORIGINAL}", TS),
    (ORIGINAL, None),
    ("https://web.archive.org/web/2026id_/x", None),  # not 14 digits
])
def test_the_timestamp_of_a_playback_url(url: str, expected: str | None) -> None:
    assert wayback_timestamp(url) == expected


# --- replay checks -------------------------------------------------------------------------------


def test_a_redirect_to_another_capture_is_a_transient_replay_mismatch(server: LoopbackServer) -> None:
    server.routes[playback()] = lambda r: redirect(playback(OTHER_TS))
    server.routes[playback(OTHER_TS)] = lambda r: capture(b"older capture, another ad splice" * 100)
    error = failure(server.url(playback()), capture_timestamp=TS)
    assert isinstance(error, TransientError) and error.code == "archive-replay-mismatch"
    assert TS in error.reason and OTHER_TS in error.reason
    assert server.hits[playback(OTHER_TS)] == 0  # the other capture's bytes are never fetched


def test_a_redirect_without_a_capture_timestamp_is_followed_as_before(server: LoopbackServer) -> None:
    server.routes[playback()] = lambda r: redirect(playback(OTHER_TS))
    server.routes[playback(OTHER_TS)] = lambda r: Reply(200, AUDIO, {"Content-Type": "audio/mpeg"})
    downloaded, body = get(server.url(playback()))
    assert body == AUDIO and downloaded.url.endswith(playback(OTHER_TS))


def test_a_redirect_out_of_the_archive_is_refused(server: LoopbackServer) -> None:
    server.routes[playback()] = lambda r: redirect("/live/ep1.mp3")
    server.routes["/live/ep1.mp3"] = lambda r: Reply(200, AUDIO, {"Content-Type": "audio/mpeg"})
    error = failure(server.url(playback()), capture_timestamp=TS)
    assert isinstance(error, TransientError) and error.code == "archive-replay-mismatch"
    assert server.hits["/live/ep1.mp3"] == 0


def test_a_captured_redirect_keeping_the_timestamp_is_followed(server: LoopbackServer) -> None:
    # A capture of a redirect record (tracking prefix -> CDN): same timestamp, another URL.
    cdn = "https://cdn.example.com/ep1.mp3"
    server.routes[playback()] = lambda r: redirect(server.url(playback(TS, cdn)))
    server.routes[playback(TS, cdn)] = lambda r: capture(AUDIO)
    downloaded, body = get(server.url(playback()), capture_timestamp=TS)
    assert body == AUDIO and downloaded.url == server.url(playback(TS, cdn))


def test_a_replay_of_another_second_is_a_transient_mismatch(server: LoopbackServer) -> None:
    server.routes[playback()] = lambda r: capture(AUDIO, **{"Memento-Datetime": "Mon, 11 Aug 2025 00:00:00 GMT"})
    error = failure(server.url(playback()), capture_timestamp=TS)
    assert isinstance(error, TransientError) and error.code == "archive-replay-mismatch"
    assert OTHER_TS in error.reason


@pytest.mark.parametrize("memento", [MEMENTO, "Fri, 02 Jan 2026 04:04:05 +0100", None, "not a date"])
def test_a_replay_of_the_capture_or_without_a_readable_memento_datetime_is_accepted(
    server: LoopbackServer, memento: str | None
) -> None:
    headers = {"Content-Type": "audio/mpeg"} | ({"Memento-Datetime": memento} if memento else {})
    server.routes[playback()] = lambda r: Reply(200, AUDIO, headers)
    _, body = get(server.url(playback()), capture_timestamp=TS)
    assert body == AUDIO


def test_a_404_is_transient_for_a_capture_and_permanent_for_a_live_url(server: LoopbackServer) -> None:
    server.routes[playback()] = lambda r: Reply(404, b"Wayback Machine has not archived that URL.")
    archived = failure(server.url(playback()), capture_timestamp=TS)
    assert isinstance(archived, TransientError) and archived.code == "archive-not-replayable"
    live = failure(server.url(playback()))
    assert isinstance(live, PermanentError) and live.code == "http-404"


def test_other_statuses_of_a_replay_keep_their_classes(server: LoopbackServer) -> None:
    server.routes[playback()] = lambda r: Reply(503, b"busy")
    error = failure(server.url(playback()), capture_timestamp=TS)
    assert isinstance(error, TransientError) and error.code == "http-503"
    server.routes[playback()] = lambda r: Reply(403, b"blocked")
    error = failure(server.url(playback()), capture_timestamp=TS)
    assert isinstance(error, PermanentError) and error.code == "http-403"


# --- raw digest and Content-Encoding -------------------------------------------------------------


def sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def test_without_an_encoding_the_raw_hash_is_the_file_hash(server: LoopbackServer) -> None:
    server.routes[playback()] = lambda r: capture(AUDIO)
    downloaded, body = get(server.url(playback()), capture_timestamp=TS)
    assert body == AUDIO
    assert downloaded.sha1_raw == downloaded.sha1 == sha1(AUDIO)
    assert downloaded.bytes_raw == downloaded.bytes == len(AUDIO)


def test_a_gzip_capture_is_decoded_to_disk_and_hashed_as_archived(server: LoopbackServer) -> None:
    archived = gzip.compress(AUDIO)
    server.routes[playback()] = lambda r: capture(archived, **{"Content-Encoding": "gzip"})
    downloaded, body = get(server.url(playback()), capture_timestamp=TS)
    assert body == AUDIO  # the file is the audio
    assert downloaded.sha1 == sha1(AUDIO) and downloaded.sha256 == hashlib.sha256(AUDIO).hexdigest()
    assert downloaded.md5 == hashlib.md5(AUDIO).hexdigest() and downloaded.bytes == len(AUDIO)
    assert downloaded.sha1_raw == sha1(archived) and downloaded.bytes_raw == len(archived)  # what CDX digests


def test_a_chunked_gzip_body_is_hashed_without_its_chunk_framing(server: LoopbackServer) -> None:
    archived = gzip.compress(AUDIO)
    pieces = [archived[i:i + 1000] for i in range(0, len(archived), 1000)]  # sent chunked
    server.routes[playback()] = lambda r: capture(pieces, **{"Content-Encoding": "gzip"})
    downloaded, body = get(server.url(playback()), capture_timestamp=TS)
    assert body == AUDIO and downloaded.sha1_raw == sha1(archived)


def raw_deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return packer.compress(data) + packer.flush()


@pytest.mark.parametrize(("encoding", "encode"), [
    ("deflate", zlib.compress),  # as the standard says: zlib-wrapped
    ("deflate", raw_deflate),  # as some servers send it
    ("x-gzip", gzip.compress),
    ("gzip", lambda data: gzip.compress(data[:5000]) + gzip.compress(data[5000:]) + b"\0\0\0"),  # two members, padded
    ("identity", lambda data: data),
])
def test_other_encodings_decode(server: LoopbackServer, encoding: str, encode) -> None:  # type: ignore[no-untyped-def]
    archived = encode(AUDIO)
    server.routes[playback()] = lambda r: capture(archived, **{"Content-Encoding": encoding})
    downloaded, body = get(server.url(playback()))
    assert body == AUDIO and downloaded.sha1 == sha1(AUDIO) and downloaded.sha1_raw == sha1(archived)


def test_a_decompression_bomb_is_capped_without_filling_memory(server: LoopbackServer) -> None:
    bomb = gzip.compress(bytes(200_000_000), compresslevel=9)  # ~200 KB that inflate to 200 MB
    server.routes[playback()] = lambda r: capture(bomb, **{"Content-Encoding": "gzip"})
    tracemalloc.start()
    try:
        error = failure(server.url(playback()), max_bytes=MAX_BYTES, capture_timestamp=TS)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(error, PermanentError) and error.code == "too-large"
    # Inflated in 64 KiB pieces: one 64 KiB read of this body alone would inflate to ~64 MB.
    assert peak < 8_000_000


def test_a_gzip_body_over_the_cap_once_decoded_is_too_large(server: LoopbackServer) -> None:
    archived = gzip.compress(AUDIO)
    server.routes[playback()] = lambda r: capture(archived, **{"Content-Encoding": "gzip"})
    error = failure(server.url(playback()), max_bytes=len(AUDIO) - 1)
    assert isinstance(error, PermanentError) and error.code == "too-large"


@pytest.mark.parametrize(("encoding", "body"), [
    ("gzip", b"\x1f\x8b\x08\x00garbage, not a gzip stream" * 10),
    ("gzip", gzip.compress(AUDIO)[:-200]),  # the archived record was cut: it stays cut
    ("deflate", b"neither zlib nor raw deflate" * 10),
])
def test_a_body_that_does_not_decode_is_permanent(server: LoopbackServer, encoding: str, body: bytes) -> None:
    server.routes[playback()] = lambda r: capture(body, **{"Content-Encoding": encoding})
    error = failure(server.url(playback()), capture_timestamp=TS)
    assert isinstance(error, PermanentError) and error.code == "bad-encoding"


@pytest.mark.parametrize("encoding", ["zstd", "gzip, gzip", "compress"])
def test_encodings_that_cannot_be_decoded_are_permanent(server: LoopbackServer, encoding: str) -> None:
    server.routes[playback()] = lambda r: capture(AUDIO, **{"Content-Encoding": encoding})
    error = failure(server.url(playback()), capture_timestamp=TS)
    assert isinstance(error, PermanentError) and error.code == "unsupported-encoding"
    assert encoding in error.reason


def test_br_without_the_brotli_module_is_a_clear_permanent_error(
    server: LoopbackServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "brotli", None)  # as on a machine without it: import fails
    server.routes[playback()] = lambda r: capture(b"\x0b\x02\x80data", **{"Content-Encoding": "br"})
    error = failure(server.url(playback()), capture_timestamp=TS)
    assert isinstance(error, PermanentError) and error.code == "unsupported-encoding"
    assert "brotli" in error.reason


def test_br_decodes_with_the_brotli_module(server: LoopbackServer) -> None:
    import brotli  # type: ignore[import-not-found]

    archived = brotli.compress(AUDIO)
    server.routes[playback()] = lambda r: capture(archived, **{"Content-Encoding": "br"})
    downloaded, body = get(server.url(playback()), capture_timestamp=TS)
    assert body == AUDIO and downloaded.sha1_raw == sha1(archived)
    server.routes[playback()] = lambda r: capture(archived[:-20], **{"Content-Encoding": "br"})
    assert failure(server.url(playback()), capture_timestamp=TS).code == "bad-encoding"
    bomb = brotli.compress(bytes(300_000_000), quality=5)  # a few hundred bytes
    server.routes[playback()] = lambda r: capture(bomb, **{"Content-Encoding": "br"})
    tracemalloc.start()
    try:
        error = failure(server.url(playback()), capture_timestamp=TS)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert error.code == "too-large" and peak < 8_000_000


def test_gzipped_html_is_still_refused_early(server: LoopbackServer) -> None:
    page = b"<!DOCTYPE html><html><body>Wayback Machine</body></html>" * 2000
    server.routes[playback()] = lambda r: Reply(200, gzip.compress(page),
                                                {"Content-Type": "text/html", "Content-Encoding": "gzip"})
    error = failure(server.url(playback()), capture_timestamp=TS)
    assert isinstance(error, PermanentError) and error.code == "not-audio"


def test_a_local_file_has_its_own_hash_as_raw_hash(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "ep.mp3"
    path.write_bytes(AUDIO)
    with local_file(path) as found:
        assert found.sha1_raw == found.sha1 == sha1(AUDIO) and found.bytes_raw == found.bytes == len(AUDIO)


def test_the_served_request_is_a_plain_get(server: LoopbackServer) -> None:
    seen: list[Request] = []

    def serve(request: Request) -> Reply:
        seen.append(request)
        return capture(AUDIO)

    server.routes[playback()] = serve
    get(server.url(playback()), capture_timestamp=TS)
    (request,) = seen
    assert request.method == "GET" and request.headers["accept-encoding"] == "identity"


def test_a_blocked_site_at_playback_is_archive_blocked(server: LoopbackServer) -> None:
    marker = ("org.archive.util.io.RuntimeIOException: org.archive.wayback.exception."
              "AdministrativeAccessControlException: Blocked Site Error")
    server.routes[playback()] = lambda r: Reply(403, b"<html>blocked</html>", {
        "Content-Type": "text/html", "X-Archive-Wayback-Runtime-Error": marker})
    error = failure(server.url(playback()), capture_timestamp=TS)
    assert isinstance(error, PermanentError) and error.code == "archive-blocked"
