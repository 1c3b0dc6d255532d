"""Stream an episode's audio over HTTP into a temporary file, hashing the original bytes.

`download(url, ...)` is a context manager: the temporary file (unique per process and call,
so several workers on one machine never collide) is removed when the block ends, whatever
happens. Every failure is raised as `PermanentError` or `TransientError` with a short code
and a one-line reason:

  permanent  http-404, http-410 (and other 4xx), too-large, too-many-redirects, bad-url,
             empty-body, not-audio (an HTML page)
  transient  timeout, http-408/425/429, http-5xx, connection (refused, reset), short-read,
             local-io (could not write the temporary file)

The bytes are only checked to be audio by `podcastpile.audio` (container probe); here an
HTML answer is refused early so an error page is not downloaded in full.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from podcastpile import __version__
from podcastpile.errors import PermanentError, TransientError

USER_AGENT = f"podcastpile/{__version__} (speech dataset builder; python-httpx)"
CHUNK_BYTES = 1 << 16
TRANSIENT_4XX = {408, 425, 429}  # request timeout, too early, too many requests
# The Wayback Machine redirects an id_ URL to its nearest capture (one hop, sometimes two);
# more than a few hops means a loop.
MAX_REDIRECTS = 5


@dataclass(frozen=True)
class DownloadedAudio:
    """The original bytes on local disk, with their hashes. `path` lives only inside `download()`."""

    path: Path
    sha256: str
    md5: str
    bytes: int
    sha1: str  # hex; the Wayback Machine's CDX digest is this SHA-1 in base32
    content_type: str | None
    url: str  # after redirects


def _status_error(response: httpx.Response) -> PermanentError | TransientError:
    code = response.status_code
    reason = f"HTTP {code} {response.reason_phrase} from {response.url.host}"
    retry_after = response.headers.get("retry-after")
    if retry_after:
        reason += f" (Retry-After: {retry_after})"
    if code >= 500 or code in TRANSIENT_4XX:
        return TransientError(f"http-{code}", reason)
    return PermanentError(f"http-{code}", reason)


def _is_html(content_type: str | None, first_chunk: bytes) -> bool:
    """An HTML page: announced as text/html *and* its bytes start like markup.

    Both must hold: some servers label audio text/html, and the container probe decides later.
    """
    if not content_type or not content_type.split(";")[0].strip().lower().startswith("text/"):
        return False
    return first_chunk.lstrip()[:1] == b"<"


def _temporary_path(directory: str | None) -> Path:
    """A fresh file named after this process, so parallel workers never share one."""
    handle, name = tempfile.mkstemp(prefix=f"podcastpile-{os.getpid()}-", suffix=".audio", dir=directory)
    os.close(handle)
    return Path(name)


def _stream_to(client: httpx.Client, url: str, path: Path, max_bytes: int) -> DownloadedAudio:
    sha256, md5, sha1, received = hashlib.sha256(), hashlib.md5(), hashlib.sha1(), 0
    with client.stream("GET", url) as response:
        if response.status_code != 200:
            raise _status_error(response)
        content_type = response.headers.get("content-type")
        declared = response.headers.get("content-length")
        expected = int(declared) if declared and declared.isdigit() else None
        if expected is not None and expected > max_bytes:
            raise PermanentError("too-large", f"Content-Length {expected} bytes is over the cap of {max_bytes}")
        with path.open("wb") as out:
            for chunk in response.iter_bytes(CHUNK_BYTES):
                if received == 0 and _is_html(content_type, chunk):
                    raise PermanentError("not-audio", f"got an HTML page ({content_type}), not audio")
                received += len(chunk)
                if received > max_bytes:
                    raise PermanentError("too-large", f"body passed the cap of {max_bytes} bytes")
                sha256.update(chunk)
                md5.update(chunk)
                sha1.update(chunk)
                out.write(chunk)
        # httpx already raises on a body cut short of Content-Length; this catches an encoded body.
        if expected is not None and "content-encoding" not in response.headers and received != expected:
            raise TransientError("short-read", f"got {received} of {expected} bytes")
        if received == 0:
            raise PermanentError("empty-body", f"HTTP 200 with an empty body from {response.url.host}")
        return DownloadedAudio(
            path=path, sha256=sha256.hexdigest(), md5=md5.hexdigest(), sha1=sha1.hexdigest(), bytes=received,
            content_type=content_type, url=str(response.url),
        )


@contextmanager
def download(
    url: str,
    *,
    max_bytes: int,
    timeout_seconds: float,
    max_redirects: int = MAX_REDIRECTS,
    temp_dir: str | None = None,
    client: httpx.Client | None = None,
) -> Iterator[DownloadedAudio]:
    """Download `url` into a temporary file and yield it; the file is removed on exit.

    `timeout_seconds` bounds connecting and each read (a stalled server fails, a slow but
    steady one does not). Pass `client` to reuse connections across episodes.
    """
    path = _temporary_path(temp_dir)
    own_client = client is None
    if client is None:
        client = httpx.Client(
            timeout=httpx.Timeout(timeout_seconds),
            follow_redirects=True,
            max_redirects=max_redirects,
            # identity: the bytes we hash must be the file itself, not a gzip of it
            headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
        )
    try:
        try:
            downloaded = _stream_to(client, url, path, max_bytes)
        except httpx.TimeoutException as error:
            raise TransientError("timeout", f"{type(error).__name__} after {timeout_seconds:g}s: {url}") from error
        except httpx.TooManyRedirects as error:
            raise PermanentError("too-many-redirects", f"more than {max_redirects} redirects: {url}") from error
        except (httpx.InvalidURL, httpx.UnsupportedProtocol) as error:
            raise PermanentError("bad-url", f"{error}: {url}") from error
        except httpx.RemoteProtocolError as error:
            # h11 raises this for a body that ends before Content-Length (and for garbled replies).
            raise TransientError("short-read", f"{error}: {url}") from error
        except httpx.TransportError as error:
            raise TransientError("connection", f"{type(error).__name__}: {error or 'connection failed'}: {url}") from error
        except OSError as error:
            raise TransientError("local-io", f"cannot write temporary file: {error}") from error
        yield downloaded
    finally:
        if own_client:
            client.close()
        path.unlink(missing_ok=True)


@contextmanager
def local_file(path: str | Path) -> Iterator[DownloadedAudio]:
    """A local file as a `DownloadedAudio` (hashed the same way; never deleted)."""
    source = Path(path)
    if not source.is_file():
        raise PermanentError("not-found", f"no such file: {source}")
    sha256, md5, sha1, size = hashlib.sha256(), hashlib.md5(), hashlib.sha1(), 0
    with source.open("rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            sha256.update(chunk)
            md5.update(chunk)
            sha1.update(chunk)
            size += len(chunk)
    if size == 0:
        raise PermanentError("empty-body", f"empty file: {source}")
    yield DownloadedAudio(path=source, sha256=sha256.hexdigest(), md5=md5.hexdigest(), sha1=sha1.hexdigest(), bytes=size,
                          content_type=None, url=source.resolve().as_uri())
