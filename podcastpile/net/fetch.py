"""Stream an episode's audio over HTTP into a temporary file, hashing the original bytes.

`download(url, ...)` is a context manager: the temporary file (unique per process and call,
so several workers on one machine never collide) is removed when the block ends, whatever
happens. Every failure is raised as `PermanentError` or `TransientError` with a short code
and a one-line reason:

  permanent  http-404, http-410 (and other 4xx), too-large, too-many-redirects, bad-url,
             empty-body, not-audio (an HTML page), blocked-address (a private, loopback,
             link-local… address: see `podcastpile.net.guard`), unsupported-encoding,
             bad-encoding (a Content-Encoding that does not decode)
  transient  timeout, http-408/425/429, http-5xx, connection (refused, reset), short-read,
             local-io (could not write the temporary file), and for a Wayback Machine capture
             (`capture_timestamp`): archive-replay-mismatch (another capture was offered) and
             archive-not-replayable (a 404: the capture is not indexed yet)

The bytes are only checked to be audio by `podcastpile.speech.audio` (container probe); here an
HTML answer is refused early so an error page is not downloaded in full.

Redirects are followed here, hop by hop, not by httpx: each hop's host goes through the address
guard again (a public host may redirect to 169.254.169.254), and the hop count is ours.

Two hashes of one body: the audio hashes (sha256, md5, sha1) are of the file as written, with
any Content-Encoding decoded; `sha1_raw` is of the body as it came over the wire, de-chunked but
still encoded, which is what the Wayback Machine's CDX digest covers. The decoding is done here
(`podcastpile.net.encoding`, in bounded pieces) rather than by httpx, so both can be hashed in one pass.

Replaying a capture (`capture_timestamp`): right after a capture, the Wayback Machine does not
replay it yet; it redirects to the nearest other capture of the URL (possibly months away) or
answers 404. Only the named capture's bytes are accepted; anything else is transient.

Reasons quote URLs with their passwords hidden (`display_url`): they are stored on the episode,
printed, and logged into Prefect's database.

A process killed with SIGKILL (or by the OOM killer) cannot remove its temporary files;
`remove_orphaned_downloads` deletes those of dead processes and runs whenever a worker starts.
"""

from __future__ import annotations

import hashlib
import threading
import logging
import os
import re
import tempfile
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlsplit

import httpx

from podcastpile import __version__
from podcastpile.errors import PermanentError, Stopped, TransientError
from podcastpile.net.encoding import decoder_for
from podcastpile.net.guard import AddressGuard, BlockedAddress, PinnedTransport
from podcastpile.net.urls import display_url, mask_secrets

log = logging.getLogger(__name__)

USER_AGENT = f"podcastpile/{__version__} (speech dataset builder; python-httpx)"
CHUNK_BYTES = 1 << 16
TRANSIENT_4XX = {408, 425, 429}
# How the Wayback Machine marks its 403 for a site excluded from it (header
# `X-Archive-Wayback-Runtime-Error: ...AdministrativeAccessControlException: Blocked Site Error`).
BLOCKED_SITE_MARKER = "blocked site error"  # request timeout, too early, too many requests
# The Wayback Machine redirects an id_ URL to its nearest capture (one hop, sometimes two);
# more than a few hops means a loop.
MAX_REDIRECTS = 5
TEMP_PREFIX = "podcastpile-"
TEMP_SUFFIX = ".audio"
_TEMP_NAME = re.compile(rf"{re.escape(TEMP_PREFIX)}(?P<pid>[0-9]+)-.*{re.escape(TEMP_SUFFIX)}\Z", re.S)
# A file last written more than this before the process now holding its pid started is not that
# process's: the clocks compared (file times, boot time + start ticks) are only good to a second
# or so and may be stepped by NTP, so a wide margin; erring keeps a file, never removes a live one.
PID_REUSE_MARGIN_SECONDS = 60.0
# A Wayback Machine playback path: /web/<14-digit timestamp><optional mode such as id_>/<url>.
_WAYBACK_PATH = re.compile(r"/web/(?P<timestamp>[0-9]{14})(?:[a-z]{2}_)?/")


@dataclass(frozen=True)
class DownloadedAudio:
    """The original bytes on local disk, with their hashes. `path` lives only inside `download()`."""

    path: Path
    sha256: str
    md5: str
    bytes: int
    sha1: str  # hex, of the file (decoded audio)
    content_type: str | None
    url: str  # after redirects
    # The body as received, de-chunked but still content-encoded: what the Wayback Machine's
    # CDX digest covers (its SHA-1, in base32). Equal to sha1/bytes when there is no encoding.
    sha1_raw: str
    bytes_raw: int


def wayback_timestamp(url: str) -> str | None:
    """The 14-digit capture timestamp a Wayback Machine playback URL names (`/web/<ts>id_/…`), or None."""
    match = _WAYBACK_PATH.search(urlsplit(url).path)
    return match["timestamp"] if match else None


def _status_error(response: httpx.Response) -> PermanentError | TransientError:
    code = response.status_code
    reason = f"HTTP {code} {response.reason_phrase} from {response.url.host}"
    retry_after = response.headers.get("retry-after")
    if retry_after:
        reason += f" (Retry-After: {retry_after})"
    if code >= 500 or code in TRANSIENT_4XX:
        return TransientError(f"http-{code}", reason)
    if code == 403 and BLOCKED_SITE_MARKER in response.headers.get("x-archive-wayback-runtime-error", "").lower():
        # the Wayback Machine excludes this site: the same outcome as when CDX says so
        return PermanentError("archive-blocked", f"{reason}: the Wayback Machine excludes this site (Blocked Site Error)")
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
    handle, name = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-", suffix=TEMP_SUFFIX, dir=directory)
    os.close(handle)
    return Path(name)


def remove_orphaned_downloads(directory: str | Path | None = None) -> int:
    """Delete the temporary audio files of processes that are gone; return how many were deleted.

    `directory` is where downloads are written (default: the system temp folder). Run it when a
    worker starts: a process killed with SIGKILL leaves its files behind, and nothing else would
    ever remove them. Files of live processes (this one included) are kept. Never raises:
    cleaning up must not stop a worker from working.
    """
    folder = Path(directory) if directory is not None else Path(tempfile.gettempdir())
    removed = 0
    try:
        candidates = list(folder.glob(f"{TEMP_PREFIX}*{TEMP_SUFFIX}"))
    except OSError as error:
        log.warning("cannot look for orphaned downloads in %s: %s", folder, error)
        return 0
    for path in candidates:
        match = _TEMP_NAME.match(path.name)
        if match is None:
            continue
        try:
            if _owner_alive(int(match["pid"]), path.stat().st_mtime):
                continue
            path.unlink()
        except FileNotFoundError:
            continue  # its owner finished meanwhile, or another worker cleaned it up
        except OSError as error:  # e.g. another user's file in a sticky /tmp
            log.warning("cannot remove orphaned download %s: %s", path, error)
            continue
        removed += 1
    if removed:
        log.info("removed %d temporary audio file(s) left by dead processes in %s", removed, folder)
    return removed


def _owner_alive(pid: int, modified: float) -> bool:
    """Whether the process that wrote a file named after `pid`, last modified at `modified`, may live.

    No process with that pid: its owner is dead. A process with that pid that started after the
    file was last written cannot be its owner (the owner wrote it while alive): the pid was reused,
    the owner is dead. The owner's own writes all come after its start, so a live owner's file is
    never taken for an orphan. Where start times cannot be read (no /proc), a live pid keeps the
    file: pid reuse then only delays the cleanup until that process exits.

    Assumes the temp folder is not shared across pid namespaces (containers): there, another
    container's pids are invisible and its files would look orphaned. Give each its own.
    """
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, owned by another user
    except OverflowError:
        return False  # not a pid this system can have
    started = _process_start_time(pid)
    return started is None or modified >= started - PID_REUSE_MARGIN_SECONDS


def _process_start_time(pid: int) -> float | None:
    """When process `pid` started (seconds since the epoch), from Linux's /proc; None elsewhere."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        # Field 22 is the start time in clock ticks after boot. The command name (field 2) may
        # hold spaces and parentheses, so count fields from the last ')'.
        ticks = int(stat[stat.rindex(")") + 2 :].split()[19])
        return _boot_time() + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _boot_time() -> float:
    """When this machine booted (seconds since the epoch), from /proc/stat's btime line."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    raise ValueError("no btime in /proc/stat")


def _next_hop(response: httpx.Response) -> httpx.URL | None:
    """Where a redirect points (relative locations resolved), or None when it is not one."""
    if not response.has_redirect_location:
        return None
    try:
        target = response.url.join(response.headers["location"])
    except httpx.InvalidURL as error:
        raise PermanentError("bad-url", f"redirect to an unusable location: {mask_secrets(str(error))}") from None
    if target.scheme not in ("http", "https"):
        raise PermanentError("bad-url", f"redirect to a non-http(s) URL: {display_url(str(target))[:200]}")
    return target


def _stream_to(
    client: httpx.Client, url: str, path: Path, max_bytes: int, guard: AddressGuard, max_redirects: int,
    capture_timestamp: str | None, stop: threading.Event | None = None,
) -> DownloadedAudio:
    # The connection checks the addresses a name resolves to. Literals are checked up front as
    # well, so forms httpx itself rejects (0177.0.0.1) are reported as what they are.
    try:
        guard.check_literal(urlsplit(url).hostname or "")
    except ValueError:
        pass  # a malformed URL: httpx says what is wrong with it just below
    target = httpx.URL(url)
    for _ in range(max_redirects + 1):
        guard.check_literal(target.host)
        with client.stream("GET", target) as response:
            hop = _next_hop(response)
            if hop is None:
                if capture_timestamp is not None:
                    _check_replayed(response, capture_timestamp)
                return _save_body(response, path, max_bytes, stop)
        if capture_timestamp is not None:
            _check_redirect(hop, capture_timestamp)
        target = hop
    raise PermanentError("too-many-redirects", f"more than {max_redirects} redirects: {display_url(url)}")


def _check_redirect(hop: httpx.URL, timestamp: str) -> None:
    """A replay may only redirect within its capture (a captured redirect keeps the timestamp).

    Any other target is the Wayback Machine offering its nearest capture instead, because the
    one asked for is not replayable yet (or a hop out of the archive): not these bytes.
    """
    offered = wayback_timestamp(str(hop))
    if offered == timestamp:
        return
    where = f"capture {offered}" if offered else display_url(str(hop))[:200]
    raise TransientError(
        "archive-replay-mismatch", f"the archive redirects capture {timestamp} to {where}; not replayable yet?"
    )


def _check_replayed(response: httpx.Response, timestamp: str) -> None:
    """The final answer of a replay: a 404 is a capture not indexed yet, and a 200 must be that
    capture (`Memento-Datetime` to the second; a reply without one is taken at its word)."""
    if response.status_code == 404:
        raise TransientError(
            "archive-not-replayable", f"HTTP 404 for capture {timestamp} from {response.url.host}; not indexed yet?"
        )
    if response.status_code != 200:
        return  # _save_body classifies it
    replayed = _memento_timestamp(response.headers.get("memento-datetime"))
    if replayed is not None and replayed != timestamp:
        raise TransientError(
            "archive-replay-mismatch", f"asked for capture {timestamp}, the archive replayed {replayed}"
        )


def _memento_timestamp(value: str | None) -> str | None:
    """An RFC 1123 `Memento-Datetime` as a 14-digit UTC timestamp; None when absent or unreadable
    (unreadable is treated as absent: the header is a check, not a requirement)."""
    if not value:
        return None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # "-0000" zones parse as naive; HTTP dates are UTC
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).strftime("%Y%m%d%H%M%S")


class _AudioFile:
    """The decoded audio going to disk: hashed, capped, and refused early when it is an HTML page."""

    def __init__(self, out: BinaryIO, max_bytes: int, content_type: str | None) -> None:
        self.out, self.max_bytes, self.content_type = out, max_bytes, content_type
        self.sha256, self.md5, self.sha1, self.size = hashlib.sha256(), hashlib.md5(), hashlib.sha1(), 0

    def write(self, chunk: bytes) -> None:
        if self.size == 0 and _is_html(self.content_type, chunk):
            raise PermanentError("not-audio", f"got an HTML page ({self.content_type}), not audio")
        self.size += len(chunk)
        if self.size > self.max_bytes:
            raise PermanentError("too-large", f"body passed the cap of {self.max_bytes} bytes")
        self.sha256.update(chunk)
        self.md5.update(chunk)
        self.sha1.update(chunk)
        self.out.write(chunk)


class DownloadStopped(Stopped):
    """The caller stopped the download (its batch is stopping): not a failure of the episode."""


def _save_body(
    response: httpx.Response, path: Path, max_bytes: int, stop: threading.Event | None = None
) -> DownloadedAudio:
    if response.status_code != 200:
        raise _status_error(response)
    content_type = response.headers.get("content-type")
    declared = response.headers.get("content-length")
    expected = int(declared) if declared and declared.isdigit() else None  # of the body as sent (encoded)
    if expected is not None and expected > max_bytes:
        raise PermanentError("too-large", f"Content-Length {expected} bytes is over the cap of {max_bytes}")
    decoder = decoder_for(response.headers.get("content-encoding"))
    raw_sha1, raw_size = hashlib.sha1(), 0
    with path.open("wb") as out:
        audio = _AudioFile(out, max_bytes, content_type)
        # iter_raw: de-chunked, not decoded; the cap applies to both sides of the decoding.
        for raw in response.iter_raw(CHUNK_BYTES):
            if stop is not None and stop.is_set():
                raise DownloadStopped(f"stopped after {raw_size} bytes")
            raw_sha1.update(raw)
            raw_size += len(raw)
            if raw_size > max_bytes:
                raise PermanentError("too-large", f"body passed the cap of {max_bytes} bytes")
            for chunk in decoder.feed(raw):
                audio.write(chunk)
        for chunk in decoder.finish():
            audio.write(chunk)
    # httpx already raises on a body cut short of Content-Length; this is a second guard.
    if expected is not None and raw_size != expected:
        raise TransientError("short-read", f"got {raw_size} of {expected} bytes")
    if audio.size == 0:
        raise PermanentError("empty-body", f"HTTP 200 with an empty body from {response.url.host}")
    return DownloadedAudio(
        path=path, sha256=audio.sha256.hexdigest(), md5=audio.md5.hexdigest(), sha1=audio.sha1.hexdigest(),
        bytes=audio.size, content_type=content_type, url=str(response.url),
        sha1_raw=raw_sha1.hexdigest(), bytes_raw=raw_size,
    )


def download_client(timeout_seconds: float, guard: AddressGuard) -> httpx.Client:
    """An HTTP client for `download`: connections pinned to addresses `guard` checked, no proxies."""
    return httpx.Client(
        transport=PinnedTransport(guard),
        timeout=httpx.Timeout(timeout_seconds),
        follow_redirects=False,  # `download` follows them, checking each hop
        trust_env=False,  # an environment proxy would resolve names out of the guard's reach
        # identity: ask for the file itself. An archived response is replayed with the encoding
        # it was captured with whatever we ask; `_save_body` decodes that one.
        headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
    )


@contextmanager
def http_failures(shown: str, timeout_seconds: float) -> Iterator[None]:
    """httpx's and the address guard's errors as episode errors, each a one-line reason quoting
    `shown` (the URL with its password hidden): a blocked address or an unusable URL is
    permanent, a timeout or a connection failure transient."""
    try:
        yield
    except BlockedAddress as error:
        raise PermanentError("blocked-address", mask_secrets(str(error))) from error
    except httpx.TimeoutException as error:
        raise TransientError("timeout", f"{type(error).__name__} after {timeout_seconds:g}s: {shown}") from error
    except (httpx.InvalidURL, httpx.UnsupportedProtocol) as error:
        raise PermanentError("bad-url", f"{mask_secrets(str(error))}: {shown}") from error
    except httpx.TransportError as error:  # refused, reset, a garbled answer
        detail = mask_secrets(str(error)) or "connection failed"
        raise TransientError("connection", f"{type(error).__name__}: {detail}: {shown}") from error


@contextmanager
def download(
    url: str,
    *,
    max_bytes: int,
    timeout_seconds: float,
    max_redirects: int = MAX_REDIRECTS,
    temp_dir: str | None = None,
    trusted_hosts: Collection[str] = (),
    guard: AddressGuard = AddressGuard(),
    client: httpx.Client | None = None,
    capture_timestamp: str | None = None,
    stop: threading.Event | None = None,
) -> Iterator[DownloadedAudio]:
    """Download `url` into a temporary file and yield it; the file is removed on exit.

    `timeout_seconds` bounds connecting and each read (a stalled server fails, a slow but
    steady one does not). Only public addresses are connected to, at every redirect hop,
    unless `guard` says otherwise; hosts in `trusted_hosts` (the archive's) skip that check.
    Pass `client` (made by `download_client`, so the guard applies) to reuse connections
    across episodes; its guard is then the one that counts for resolved names.

    `capture_timestamp`: `url` is a Wayback Machine playback URL of the capture made at this
    14-digit timestamp, and only that capture's bytes are accepted. A redirect to another
    timestamp (or out of the archive) and a 200 whose `Memento-Datetime` names another second
    raise TransientError `archive-replay-mismatch`; a 404 raises TransientError
    `archive-not-replayable` (a fresh capture is not replayable for a while).

    `stop`: once set, the download ends at its next chunk with DownloadStopped (a stopping
    batch must not wait for the rest of a long file).
    """
    path = _temporary_path(temp_dir)
    shown = display_url(url)  # reasons quote the URL without its password
    guard = guard.trusting(trusted_hosts)
    own_client = client is None
    if client is None:
        client = download_client(timeout_seconds, guard)
    try:
        with http_failures(shown, timeout_seconds):
            try:
                downloaded = _stream_to(client, url, path, max_bytes, guard, max_redirects, capture_timestamp, stop)
            except httpx.RemoteProtocolError as error:
                # h11 raises this for a body that ends before Content-Length (and for garbled replies).
                raise TransientError("short-read", f"{mask_secrets(str(error))}: {shown}") from error
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
    try:
        found = source.is_file()
    except OSError as error:  # e.g. a name too long for the filesystem
        raise PermanentError("not-found", f"cannot open {source}: {error.strerror}") from None
    if not found:
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
                          content_type=None, url=source.resolve().as_uri(),
                          sha1_raw=sha1.hexdigest(), bytes_raw=size)  # a file on disk has no transfer encoding
