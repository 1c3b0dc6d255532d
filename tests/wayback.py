"""A loopback stand-in for the Internet Archive, speaking the protocol the archive stage uses.

`WaybackDouble` serves, on 127.0.0.1: Save Page Now 2 (`POST /save`, `/save/status/<job>`,
`/save/status/user`, `/save/status/system`), the availability API (`/wayback/available`),
CDX (`/cdx/search/cdx`, with SHA-1 digests) and `id_` playback (`/web/<ts>id_/<url>`, with
Range). A capture really fetches the origin URL over HTTP when its job succeeds, so what is
archived is what the origin served at that moment.

`AdHost` is an origin that changes the bytes of every response, like a host that splices
dynamic ads: each answer is the same audio with a different RIFF `JUNK` chunk.

Switches for every failure the stage must handle: `pending_polls`, `job_errors` (URL ->
status_ext), `submit_errors` (answered at submit), `busy` (HTTP 429/503 with Retry-After
for the next submissions), `daily_captures_left` (then `error:too-many-daily-captures`),
`available` (the account's free captures), `delay` (slow answers), `forget_jobs()` (the
service loses its job table, as after a restart). `submissions` records when each capture
request arrived, to check rate limits from the service's side.

Switches that answer as the real web.archive.org does (../shared/reference/spn2-real-service.md),
all off by default: `blocked` (URLs of a site excluded from the Wayback Machine: CDX,
availability and playback answer HTTP 403 "Blocked Site Error", SPN2 `error:blocked-url`;
`blocked_endpoints` narrows which of them do) and `keys` (the `LOW key:secret` values the
service accepts: without a matching Authorization header every `/save*` answers HTTP 401).
The 403 body and header are quoted from a recorded CDX answer (EDGI `wayback` cassette
`test_search_raises_for_blocked_urls`); the availability API's answer for a blocked site,
the `error:blocked-url` message and the 401 body are not documented anywhere we found, so
those are guesses.

Run it alone for the demo: `python -m tests.wayback --port 8765 --audio-dir DIR`.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import itertools
import json
import struct
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import unquote

import httpx

from tests.loopback import LoopbackServer, Reply, Request

DOUBLE_USER_AGENT = "wayback-double-capture"
# What CDX answers for an excluded site, in its body and its `X-Archive-Wayback-Runtime-Error`
# header (recorded from web.archive.org, 2023-09-25).
BLOCKED_SITE_ERROR = (
    "org.archive.util.io.RuntimeIOException: "
    "org.archive.wayback.exception.AdministrativeAccessControlException: Blocked Site Error"
)
ALL_ENDPOINTS = frozenset({"cdx", "available", "playback", "save"})


def sha1_base32(data: bytes) -> str:
    """The digest CDX reports: base32 of the SHA-1 of the bytes."""
    return base64.b32encode(hashlib.sha1(data).digest()).decode()


def with_ad(wav: bytes, ad: bytes) -> bytes:
    """The same WAV with a `JUNK` chunk holding `ad` after `fmt `: decodes to the same samples."""
    assert wav[:4] == b"RIFF" and wav[8:12] == b"WAVE", "not a RIFF/WAVE file"
    chunks, offset = [], 12
    while offset + 8 <= len(wav):
        size = struct.unpack("<I", wav[offset + 4:offset + 8])[0]
        chunks.append(wav[offset:offset + 8 + size + (size & 1)])
        offset += 8 + size + (size & 1)
    padded = ad + b"\0" * (len(ad) & 1)
    junk = b"JUNK" + struct.pack("<I", len(ad)) + padded
    body = chunks[0] + junk + b"".join(chunks[1:])
    return b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WAVE" + body


class AdHost:
    """An origin podcast host whose every response differs (a dynamic-ad splice)."""

    def __init__(self, files: dict[str, bytes], port: int = 0) -> None:
        self.files = files
        self.direct_hits = 0  # fetches by anyone but the archive's capturer
        self.capture_hits = 0
        self._counter = itertools.count()
        self.server = LoopbackServer({"/audio/*": self._serve}, port=port)

    def _serve(self, request: Request) -> Reply:
        name = request.path.removeprefix("/audio/")
        if name not in self.files:
            return Reply(404, b"no such episode")
        if request.headers.get("user-agent") == DOUBLE_USER_AGENT:
            self.capture_hits += 1
        else:
            self.direct_hits += 1
        ad = f"ad-{next(self._counter)}-{time.time_ns()}".encode()
        return Reply(200, with_ad(self.files[name], ad), {"Content-Type": "audio/wav"})

    def url(self, name: str) -> str:
        return self.server.url(f"/audio/{name}")

    def __enter__(self) -> "AdHost":
        self.server.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.__exit__(*exc)


@dataclass
class _Capture:
    timestamp: str
    body: bytes
    original: str


@dataclass
class _Job:
    url: str
    polls_left: int
    outcome: str | None = None  # status_ext for an error; None for success
    timestamp: str | None = None
    done: bool = False


@dataclass
class WaybackDouble:
    """The Internet Archive on loopback; see the module docstring for the switches."""

    pending_polls: int = 1
    job_errors: dict[str, str] = field(default_factory=dict)
    submit_errors: dict[str, str] = field(default_factory=dict)
    busy: list[tuple[int, float]] = field(default_factory=list)
    daily_captures_left: int | None = None
    available: int = 5
    delay: float = 0.0
    submissions: list[float] = field(default_factory=list)  # monotonic arrival times
    auth_headers: list[str | None] = field(default_factory=list)
    captures: dict[str, list[_Capture]] = field(default_factory=dict)
    jobs: dict[str, _Job] = field(default_factory=dict)
    status_polls: int = 0
    blocked: set[str] = field(default_factory=set)
    blocked_endpoints: frozenset[str] = ALL_ENDPOINTS
    keys: set[str] | None = None  # "key:secret" pairs accepted on /save*; None: anyone may save
    refused: int = 0  # /save* requests answered 401
    port: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self.server = LoopbackServer({
            "/save": self._save,
            "/save/status/user": self._user,
            "/save/status/system": lambda r: self._json({"status": "ok"}),
            "/save/status/*": self._status,
            "/wayback/available": self._available,
            "/cdx/search/cdx": self._cdx,
            "/web/*": self._playback,
        }, port=self.port)

    # --- control ------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return self.server.base_url

    def __enter__(self) -> "WaybackDouble":
        self.server.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.__exit__(*exc)

    def add_capture(self, url: str, body: bytes, when: datetime | None = None) -> str:
        """Seed an existing capture; returns its timestamp."""
        timestamp = self._timestamp(url, when or datetime.now(UTC))
        self.captures.setdefault(url, []).append(_Capture(timestamp, body, url))
        return timestamp

    def forget_jobs(self) -> None:
        """Lose every job id, as a restarted service would."""
        with self._lock:
            self.jobs.clear()

    def max_in_window(self, window: float = 60.0) -> int:
        """The most submissions that arrived within any `window` seconds."""
        times = sorted(self.submissions)
        best, start = 0, 0
        for end, moment in enumerate(times):
            while moment - times[start] >= window:
                start += 1
            best = max(best, end - start + 1)
        return best

    # --- endpoints ----------------------------------------------------------------------------

    def _json(self, body: object, status: int = 200, headers: dict[str, str] | None = None) -> Reply:
        return Reply(status, json.dumps(body).encode(), {"Content-Type": "application/json", **(headers or {})})

    def _slow(self) -> None:
        if self.delay:
            time.sleep(self.delay)

    def _is_blocked(self, url: str, endpoint: str) -> bool:
        return endpoint in self.blocked_endpoints and url in self.blocked

    def _blocked_reply(self) -> Reply:
        """HTTP 403 as CDX sends it for an excluded site (playback sends an HTML page instead,
        with the same header; the header is what clients can rely on)."""
        return Reply(403, (BLOCKED_SITE_ERROR + "\n").encode(), {
            "Content-Type": "text/plain;charset=UTF-8",
            "X-Archive-Wayback-Runtime-Error": BLOCKED_SITE_ERROR,
        })

    def _unauthorized(self, request: Request) -> Reply | None:
        """HTTP 401 for /save* without accepted keys, when `keys` is set (the body is a guess)."""
        if self.keys is None:
            return None
        header = request.headers.get("authorization") or ""
        if header.startswith("LOW ") and header.removeprefix("LOW ") in self.keys:
            return None
        self.refused += 1
        return self._json({"status": "error", "message": "You need to be logged in to use Save Page Now."},
                          status=401)

    def _save(self, request: Request) -> Reply:
        self._slow()
        if request.method != "POST":
            return Reply(405, b"POST only")
        with self._lock:
            self.submissions.append(time.monotonic())
            self.auth_headers.append(request.headers.get("authorization"))
            refused = self._unauthorized(request)
            if refused is not None:
                return refused
            if self.busy:
                status, retry_after = self.busy.pop(0)
                return Reply(status, b"slow down", {"Retry-After": f"{retry_after:g}"})
            form = request.form()
            url = (form.get("url") or [""])[0]
            if form.get("force_get") != ["1"]:
                return self._json({"status": "error", "status_ext": "error:bad-request", "message": "force_get expected"})
            if self._is_blocked(url, "save"):
                return self._json({"status": "error", "status_ext": "error:blocked-url",
                                   "message": "This URL is in the Wayback Machine's exclusion list."})
            if url in self.submit_errors:
                return self._json({"status": "error", "status_ext": self.submit_errors[url], "message": "refused at submit"})
            job_id = f"spn2-{next(self._ids):06d}"
            outcome = self.job_errors.get(url)
            if outcome is None and self.daily_captures_left is not None:
                if self.daily_captures_left <= 0:
                    outcome = "error:too-many-daily-captures"
                else:
                    self.daily_captures_left -= 1
            self.jobs[job_id] = _Job(url=url, polls_left=self.pending_polls, outcome=outcome)
        return self._json({"url": url, "job_id": job_id})

    def _status(self, request: Request) -> Reply:
        self._slow()
        job_id = unquote(request.path.removeprefix("/save/status/"))
        with self._lock:
            self.status_polls += 1
            refused = self._unauthorized(request)
            if refused is not None:
                return refused
            job = self.jobs.get(job_id)
            if job is None:
                return self._json({"status": "error", "message": "job not found"}, status=404)
            if job.polls_left > 0:
                job.polls_left -= 1
                return self._json({"status": "pending", "job_id": job_id, "resources": []})
        if job.outcome is not None:
            return self._json({"status": "error", "job_id": job_id, "status_ext": job.outcome,
                               "exception": "CaptureError", "message": f"capture failed: {job.outcome}"})
        if not job.done:
            # The capture itself: fetch the origin now, as the archive's crawler would.
            response = httpx.get(job.url, headers={"User-Agent": DOUBLE_USER_AGENT}, timeout=30)
            if response.status_code != 200:
                return self._json({"status": "error", "job_id": job_id, "status_ext": "error:not-found",
                                   "message": f"origin answered {response.status_code}"})
            with self._lock:
                job.timestamp = self._timestamp(job.url, datetime.now(UTC))
                self.captures.setdefault(job.url, []).append(_Capture(job.timestamp, response.content, job.url))
                job.done = True
        return self._json({"status": "success", "job_id": job_id, "original_url": job.url,
                           "timestamp": job.timestamp, "duration_sec": 0.1, "resources": [job.url]})

    def _user(self, request: Request) -> Reply:
        with self._lock:
            refused = self._unauthorized(request)
            if refused is not None:
                return refused
            processing = sum(1 for job in self.jobs.values() if job.polls_left > 0)
        return self._json({"available": self.available, "processing": processing})

    def _available(self, request: Request) -> Reply:
        self._slow()
        url = (request.query.get("url") or [""])[0]
        if self._is_blocked(url, "available"):
            return self._blocked_reply()
        found = self.captures.get(url)
        if not found:
            return self._json({"url": url, "archived_snapshots": {}})
        newest = max(found, key=lambda c: c.timestamp)
        return self._json({"url": url, "archived_snapshots": {"closest": {
            "status": "200", "available": True, "timestamp": newest.timestamp,
            "url": f"{self.base_url}/web/{newest.timestamp}/{url}"}}})

    def _cdx(self, request: Request) -> Reply:
        self._slow()
        query = {key: values[0] for key, values in request.query.items()}
        if self._is_blocked(query.get("url", ""), "cdx"):
            return self._blocked_reply()
        rows = [c for c in self.captures.get(query.get("url", ""), [])
                if query.get("from", "0") <= c.timestamp <= query.get("to", "99999999999999")]
        rows.sort(key=lambda c: c.timestamp)
        limit = int(query.get("limit", "0") or 0)
        rows = rows[limit:] if limit < 0 else rows[:limit] if limit > 0 else rows
        if not rows:
            return Reply(200, b"[]", {"Content-Type": "application/json"})
        fields = query.get("fl", "urlkey,timestamp,original,mimetype,statuscode,digest,length").split(",")
        table = [fields] + [[{
            "urlkey": c.original, "timestamp": c.timestamp, "original": c.original,
            "mimetype": "audio/wav", "statuscode": "200", "digest": sha1_base32(c.body),
            "length": str(len(c.body)),
        }[name] for name in fields] for c in rows]
        return self._json(table)

    def _playback(self, request: Request) -> Reply:
        raw = request.handler.path  # keeps the original URL's own query string
        stamp, _, original = raw.removeprefix("/web/").partition("/")
        if not stamp.endswith("id_"):
            return Reply(400, b"only id_ playback is served here")
        stamp = stamp.removesuffix("id_")
        if self._is_blocked(original, "playback"):
            return self._blocked_reply()
        match = next((c for c in self.captures.get(original, []) if c.timestamp == stamp), None)
        if match is None:
            return Reply(404, b"no such capture")
        body, headers = match.body, {"Content-Type": "audio/wav", "Accept-Ranges": "bytes"}
        ranged = request.headers.get("range", "")
        if ranged.startswith("bytes="):
            first, _, last = ranged.removeprefix("bytes=").partition("-")
            start, end = int(first or 0), int(last) if last else len(body) - 1
            headers["Content-Range"] = f"bytes {start}-{end}/{len(body)}"
            return Reply(206, body[start:end + 1], headers)
        return Reply(200, body, headers)

    def _timestamp(self, url: str, when: datetime) -> str:
        """A 14-digit timestamp, unique per URL (a second later if that second is taken)."""
        taken = {c.timestamp for c in self.captures.get(url, [])}
        stamp = when.strftime("%Y%m%d%H%M%S")
        while stamp in taken:
            when += timedelta(seconds=1)
            stamp = when.strftime("%Y%m%d%H%M%S")
        return stamp


def main() -> None:
    """Serve the double and an ad-splicing origin for the files in a folder, until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--audio-dir", type=Path, required=True, help="WAV files the origin serves")
    parser.add_argument("--port", type=int, default=0, help="the stand-in archive's port (default: free)")
    parser.add_argument("--origin-port", type=int, default=0, help="the origin host's port (default: free)")
    args = parser.parse_args()
    files = {p.name: p.read_bytes() for p in args.audio_dir.glob("*.wav")}
    with WaybackDouble(pending_polls=2, port=args.port) as double, AdHost(files, port=args.origin_port) as origin:
        print(json.dumps({"wayback_url": double.base_url, "origin_url": origin.server.base_url}), flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
