"""A loopback stand-in for the Internet Archive, speaking the protocol the archive stage uses.

`WaybackDouble` serves, on 127.0.0.1: Save Page Now 2 (`POST /save`, `/save/status/<job>`,
`/save/status/user`, `/save/status/system`), the availability API (`/wayback/available`),
CDX (`/cdx/search/cdx`, with SHA-1 digests; query semantics in `tests/wayback_cdx.py`) and
`id_` playback (`/web/<ts>id_/<url>`, with Range, `Memento-Datetime` and `X-Archive-Src`). A
capture really fetches the origin URL over HTTP when its job succeeds, following up to
`spn_max_redirects` (3) redirects and storing one capture per hop (the 3xx hops with their
status and Location, then the 200), so what is archived is what the origin served then.

`AdHost` is an origin that changes the bytes of every response, like a host that splices
dynamic ads: each answer is the same audio with a different RIFF `JUNK` chunk. `chain_url`
gives a URL that redirects through tracking prefixes first; `head_not_allowed` answers HEAD 405.

Switches for every failure the stage must handle: `pending_polls`, `job_errors` (URL ->
status_ext), `submit_errors` (answered at submit), `busy` (HTTP 429/503 for the next
submissions, with Retry-After while `retry_after_header`), `daily_captures_left` (an
account-wide countdown, then `error:too-many-daily-captures` from the job; the real cap of
that name is per URL: see `per_url_daily_cap`), `available` (the account's free captures),
`delay` (slow answers), `forget_jobs()` (the service loses its job table, as after a restart).
`submissions` records when each capture request arrived, to check rate limits from the
service's side; `lookup_times` does the same for CDX and availability requests.

Switches that answer as the real web.archive.org does (../shared/reference/spn2-real-service.md,
whose source tags [S1]..[S14] are used below). All are off by default, so the plain double is as
kind as before; `WaybackDouble.realistic(**overrides)` turns on the ones marked (R):

- `blocked`, `blocked_endpoints`: URLs of an excluded site: CDX, availability and playback answer
  HTTP 403 "Blocked Site Error" (body and header quoted from a recorded CDX answer [S4]), SPN2
  answers `error:blocked-url` (message GUESSED; the availability API's 403 is GUESSED too).
- `keys`: the `LOW key:secret` values accepted: without a match every `/save*` answers 401
  (body GUESSED).
- (R) `unknown_jobs_pending`: an unknown or expired job id answers HTTP 200
  `{"status":"pending","job_id":id,"resources":[]}`, not 404 [S5].
- (R, 3600) `job_ttl_seconds`: a job is forgotten this long after its submission [S5][S9].
- (R) `same_snapshot`: (a) with `if_not_archived_within` (seconds, or "3d 5h 20m") and a capture
  of the URL newer than that (indexed yet or not), POST answers `{"url", "message": "The same
  snapshot had been made 1 hour, 12 minutes ago. You can make new capture of this URL after 24
  hours."}` with no job_id [S7][S10][S1]; (b) else, when the URL had a job submitted within
  `same_job_window_seconds` (3600), it answers that job's id with "The same snapshot had been
  made 2 minutes ago. You can make new capture of this URL after 1 hour." and starts nothing [S8].
  The sentence shapes are quoted; the ages are computed ("N minutes" under an hour, else
  "H hour(s), M minutes"); singular "1 minute" and windows of days ("3650 days") are GUESSES.
- (R) `hex_job_ids`: job ids are `spn2-` + 40 hex digits [S8] (else `spn2-000001`, ...).
- (R, 5) `per_url_daily_cap`: captures of one URL per UTC day; then POST answers
  `error:too-many-daily-captures` "This URL has been already captured 5 times today" with no
  job_id [S8][S7]. `set_captures_today(url, n)` preloads the count (`captures_today(url)` reads
  it); every hop a job captures counts, seeded captures do not.
- `account_daily_limit` (+ `daily_captures`, the account's jobs today): `/save/status/user`
  always answers `processing`, `available`, `daily_captures` and `daily_captures_limit` (30000
  when None) [S8][S10]; at the limit POST answers "You cannot make more than L captures per
  day" [S3] with `status_ext` `error:too-many-daily-captures` (a GUESS: no source gives the code).
- (R: False) `retry_after_header`: whether busy and rate-limit answers carry Retry-After. The
  real Wayback sends none [S4]; True (the default) keeps the old kind answers.
- (R) `user_status_needs_auth`: `/save/status/user` answers 401 without an
  `Authorization: LOW key:secret` header [S8][B6].
- (R, 2.0) `replay_lag_seconds`: a capture made by a job is seen by CDX and the availability
  API, and plays at its own timestamp, only this long after the job succeeded. Before that the
  job already says success; playback of the new timestamp answers 302 to the nearest older
  capture of the URL (`Location: <base>/web/<older ts>id_/<url>`, absolute), or 404 without one
  [S8][S6 #210][S2]. Seeded captures (`add_capture`) are seen at once.
- (R, 30) `lookups_per_minute`: CDX plus availability requests per sliding 60 s; over it HTTP
  429 (body "429 Too Many Requests": a GUESS) [S4 #137/#206]. `lookups_refused` counts them;
  `requests_during_lookup_pause` counts lookups arriving within 60 s after a lookup 429 (the
  real service firewalls a client that ignores 429s for over a minute [S4 #137]).
- `saves_per_minute`: /save POSTs per sliding 60 s; over it 429 (`saves_refused` counts them);
  `requests_during_save_pause` counts POSTs within 300 s after one ("Try waiting for 5 minutes"
  [S13]). Without `retry_after_header` no 429 or 503 carries Retry-After; with it, 60 s (lookups)
  and 300 s (saves) are GUESSES.
- `paused_prefixes`: URLs starting with one of these answer `error:host-crawling-paused`
  "Please try again in ~10 min. Crawling this host is paused." at POST [S10][L3];
  `host_paused_answers` counts them.
- `service_errors`: codes such as "user-session-limit", "no-browsers-available",
  "internal-server-error", "job-failed"; the next POSTs (one per entry) answer
  `error:<code>`. The message for "user-session-limit" is the live text IA's own client
  matches [S2]; the others are the SPN2 docs' error-table descriptions [S1] (whether the live
  message is the same text is unverified); a code missing from that table gets a GUESSED message.
- `spn_max_redirects` (3): a longer redirect chain ends the job with `error:too-many-redirects`
  "Too many redirects. SPN2 tries to follow 3 redirects automatically." [S1]. A chain within it
  is stored per hop (each 3xx with its status, mimetype and Location; all hops share one
  timestamp), and the job's `original_url` is the final URL ("the original URL that was captured
  (after redirects)" [S1]; IA's client reads it as the terminal URL [S2]) with every hop in
  `resources`. Playback of a 3xx capture answers its status with
  `Location: <base>/web/<same ts>id_/<next url>`. `add_capture(..., statuscode=, location=)` seeds one.
- `odd_digests` (URL -> digest text CDX reports instead, e.g. "-" or "sha-256:...") [S2];
  `revisit_urls`: the URL's newest capture is listed as a revisit (statuscode "-", mimetype
  "warc/revisit") and still plays back [S2][S4].
- `gzip_urls`: the origin's answer is stored gzip-encoded: playback sends the gzipped bytes with
  `Content-Encoding: gzip` and CDX's digest is the SHA-1 of the gzipped bytes [S11][S12][S2].
  (A real `Content-Encoding` from the origin is kept the same way.)
- `lost_urls`: the job stays pending forever and nothing is captured; `slow_capture_urls`: the
  job stays pending forever but the capture is made at once [S6 #297].

Known differences that stay: CDX `length` is the stored body size (the real one is the
compressed WARC record's size [S4][S9]); the availability API matches the URL exactly and reports
the newest (or `timestamp`-closest) capture with its HTTP status; Range is served freely (the
real Wayback's Range support is limited [S6 #78]); the `X-Archive-Src` name is made up.

Run it alone for the demo: `python -m tests.wayback --port 8765 --audio-dir DIR [--realistic]`.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import itertools
import json
import re
import struct
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any, Self
from urllib.parse import unquote, urljoin

import httpx

from tests import wayback_cdx
from tests.loopback import LoopbackServer, Reply, Request
from tests.wayback_cdx import Capture, sha1_base32  # noqa: F401  (sha1_base32: imported from here by tests)

DOUBLE_USER_AGENT = "wayback-double-capture"
# What CDX answers for an excluded site, in its body and its `X-Archive-Wayback-Runtime-Error`
# header (recorded from web.archive.org, 2023-09-25).
BLOCKED_SITE_ERROR = (
    "org.archive.util.io.RuntimeIOException: "
    "org.archive.wayback.exception.AdministrativeAccessControlException: Blocked Site Error"
)
ALL_ENDPOINTS = frozenset({"cdx", "available", "playback", "save"})
DEFAULT_DAILY_CAPTURES_LIMIT = 30000  # /save/status/user for an authenticated account [S8]
HOST_PAUSED_MESSAGE = "Please try again in ~10 min. Crawling this host is paused."
# `message` per `status_ext` for `service_errors`: the live text IA's own client matches
# (user-session-limit [S2]), else the SPN2 docs' error-table description [S1].
SERVICE_ERROR_MESSAGES = {
    "user-session-limit": "You have already reached the limit of active sessions",
    "job-failed": "Capture failed due to system error",
    "no-browsers-available": "SPN2 back-end headless browser cannot run",
    "internal-server-error": "SPN internal server error",
    "celery": "Cannot start capture task",
    "proxy-error": "SPN2 back-end proxy error",
    "capture-location-error": "SPN2 back-end cannot find the created capture location. (system error)",
    "browsing-timeout": "SPN2 back-end headless browser timeout",
    "soft-time-limit-exceeded": "Capture duration exceeded 45s time limit and was terminated",
    "cannot-fetch": "Cannot fetch the target URL due to system overload",
    "host-crawling-paused": HOST_PAUSED_MESSAGE,
}
LOOKUP_PAUSE_SECONDS = 60.0  # ignoring 429s longer than this gets an IP firewalled [S4 #137]
SAVE_PAUSE_SECONDS = 300.0  # "Try waiting for 5 minutes" [S13]


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


def max_in_window(times: list[float], window: float) -> int:
    """The most of `times` that fall within any `window` seconds."""
    ordered = sorted(times)
    best, start = 0, 0
    for end, moment in enumerate(ordered):
        while moment - ordered[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


def parse_within(values: list[str] | None) -> float | None:
    """`if_not_archived_within` in seconds: "86400", "3d 5h 20m" or "1h,2h" (main, outlinks)."""
    if not values or not values[0].strip():
        return None
    text = values[0].split(",")[0].strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    units = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    parts = re.findall(r"(\d+)\s*([dhms])", text)
    return float(sum(int(n) * units[u] for n, u in parts)) if parts else None


def _plural(count: int, unit: str) -> str:
    return f"{count} {unit}" + ("" if count == 1 else "s")


def age_text(seconds: float) -> str:
    """How SPN2 words an age: "2 minutes", "1 hour, 12 minutes" [S8][S7]."""
    minutes = max(0, int(seconds // 60))
    if minutes < 60:
        return _plural(minutes, "minute")
    hours, minutes = divmod(minutes, 60)
    return f"{_plural(hours, 'hour')}, {_plural(minutes, 'minute')}"


def span_text(seconds: float) -> str:
    """How SPN2 words a window: "1 hour", "24 hours" [S8][S7]; minutes and days are GUESSES."""
    minutes = int(seconds // 60)
    if minutes < 60:
        return _plural(minutes, "minute")
    hours = minutes // 60
    return _plural(hours // 24, "day") if hours > 48 else _plural(hours, "hour")


def memento_datetime(stamp: str) -> str:
    """A 14-digit timestamp as RFC 1123 ("Tue, 01 Dec 2026 10:00:00 GMT")."""
    return format_datetime(datetime.strptime(stamp, "%Y%m%d%H%M%S").replace(tzinfo=UTC), usegmt=True)


class AdHost:
    """An origin podcast host whose every response differs (a dynamic-ad splice)."""

    def __init__(self, files: dict[str, bytes], port: int = 0) -> None:
        self.files = files
        self.direct_hits = 0  # fetches (GET) of /audio/ by anyone but the archive's capturer
        self.head_hits = 0  # HEAD requests of /audio/ (the archive stage resolving redirects)
        self.capture_hits = 0
        self.redirect_hits = 0  # answers from the /track/ redirect chain, by anyone
        self.head_not_allowed = False  # HEAD answered 405 (clients may probe with HEAD)
        self._counter = itertools.count()
        self.server = LoopbackServer({"/audio/*": self._serve, "/track/*": self._redirect}, port=port)

    def _head_refused(self, request: Request) -> Reply | None:
        if self.head_not_allowed and request.method == "HEAD":
            return Reply(405, b"method not allowed", {"Allow": "GET"})
        return None

    def _serve(self, request: Request) -> Reply:
        refused = self._head_refused(request)
        if refused is not None:
            return refused
        name = request.path.removeprefix("/audio/")
        if name not in self.files:
            return Reply(404, b"no such episode")
        if request.method == "HEAD":
            self.head_hits += 1  # a redirect probe: no audio leaves the host
        elif request.headers.get("user-agent") == DOUBLE_USER_AGENT:
            self.capture_hits += 1
        else:
            self.direct_hits += 1
        ad = f"ad-{next(self._counter)}-{time.time_ns()}".encode()
        return Reply(200, with_ad(self.files[name], ad), {"Content-Type": "audio/wav"})

    def _redirect(self, request: Request) -> Reply:
        """`/track/<k>/<rest>` answers 302 to `/<rest>`: one tracking prefix peeled per hop."""
        refused = self._head_refused(request)
        if refused is not None:
            return refused
        self.redirect_hits += 1
        rest = request.path.removeprefix("/track/").partition("/")[2]
        return Reply(302, b"", {"Location": self.server.url("/" + rest)})

    def url(self, name: str) -> str:
        return self.server.url(f"/audio/{name}")

    def chain_url(self, name: str, hops: int) -> str:
        """A URL that answers 302 `hops` times (`/track/3/track/2/track/1/audio/<name>`, each hop
        peeling one prefix, like podcast tracking prefixes [S14]) before the audio itself."""
        prefix = "".join(f"/track/{k}" for k in range(hops, 0, -1))
        return self.server.url(f"{prefix}/audio/{name}")

    def __enter__(self) -> Self:
        self.server.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.__exit__(*exc)


@dataclass
class _Job:
    url: str
    polls_left: int
    outcome: str | None = None  # status_ext for an error; None for success
    timestamp: str | None = None
    done: bool = False
    submitted: float = field(default_factory=time.monotonic)
    final_url: str | None = None  # after redirects
    resources: list[str] = field(default_factory=list)
    message: str | None = None  # for an error found while capturing
    stuck: bool = False  # pending forever (`lost_urls`, `slow_capture_urls`)
    capturing: bool = False


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
    captures: dict[str, list[Capture]] = field(default_factory=dict)
    jobs: dict[str, _Job] = field(default_factory=dict)
    status_polls: int = 0
    blocked: set[str] = field(default_factory=set)
    blocked_endpoints: frozenset[str] = ALL_ENDPOINTS
    keys: set[str] | None = None  # "key:secret" pairs accepted on /save*; None: anyone may save
    refused: int = 0  # /save* requests answered 401
    port: int = 0
    # --- the real service's answers (module docstring); off by default ---
    unknown_jobs_pending: bool = False
    job_ttl_seconds: float | None = None
    same_snapshot: bool = False
    same_job_window_seconds: float = 3600.0
    hex_job_ids: bool = False
    per_url_daily_cap: int | None = None
    account_daily_limit: int | None = None
    daily_captures: int = 0  # the account's jobs today
    retry_after_header: bool = True
    user_status_needs_auth: bool = False
    replay_lag_seconds: float = 0.0
    lookups_per_minute: int | None = None
    lookup_times: list[float] = field(default_factory=list)  # monotonic arrivals, refused or not
    lookups_refused: int = 0
    requests_during_lookup_pause: int = 0
    saves_per_minute: int | None = None
    saves_refused: int = 0
    requests_during_save_pause: int = 0
    paused_prefixes: set[str] = field(default_factory=set)
    host_paused_answers: int = 0
    service_errors: list[str] = field(default_factory=list)
    status_busy: int = 0  # the next status polls answered 429 (counted with /save's pause)
    spn_max_redirects: int = 3
    odd_digests: dict[str, str] = field(default_factory=dict)
    revisit_urls: set[str] = field(default_factory=set)
    gzip_urls: set[str] = field(default_factory=set)
    lost_urls: set[str] = field(default_factory=set)
    slow_capture_urls: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._day = datetime.now(UTC).date()
        self._url_captures_today: dict[str, int] = {}
        self._lookups_served: list[float] = []
        self._saves_served: list[float] = []
        self._last_lookup_429: float | None = None
        self._last_save_429: float | None = None
        self.server = LoopbackServer({
            "/save": self._save,
            "/save/status/user": self._user,
            "/save/status/system": lambda r: self._json({"status": "ok"}),
            "/save/status/*": self._status,
            "/wayback/available": self._available,
            "/cdx/search/cdx": self._cdx,
            "/web/*": self._playback,
        }, port=self.port)

    @classmethod
    def realistic(cls, **overrides: Any) -> WaybackDouble:
        """A double that answers like the real service (the switches marked (R) in the module docstring)."""
        settings: dict[str, Any] = {
            "unknown_jobs_pending": True, "job_ttl_seconds": 3600.0, "same_snapshot": True,
            "hex_job_ids": True, "per_url_daily_cap": 5, "retry_after_header": False,
            "user_status_needs_auth": True, "replay_lag_seconds": 2.0, "lookups_per_minute": 30,
        }
        return cls(**{**settings, **overrides})

    # --- control ------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return self.server.base_url

    def __enter__(self) -> Self:
        self.server.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.__exit__(*exc)

    def add_capture(self, url: str, body: bytes, when: datetime | None = None, *,
                    statuscode: int = 200, location: str | None = None, mimetype: str = "audio/wav") -> str:
        """Seed an existing capture, seen at once; returns its timestamp."""
        with self._lock:
            timestamp = self._timestamp([url], when or datetime.now(UTC))
            self.captures.setdefault(url, []).append(
                Capture(timestamp, body, url, statuscode=statuscode, location=location, mimetype=mimetype))
        return timestamp

    def forget_jobs(self) -> None:
        """Lose every job id, as a restarted service would."""
        with self._lock:
            self.jobs.clear()

    def set_captures_today(self, url: str, count: int) -> None:
        """Preload how many times `url` was captured today (for `per_url_daily_cap`)."""
        with self._lock:
            self._roll_day()
            self._url_captures_today[url] = count

    def captures_today(self, url: str) -> int:
        with self._lock:
            self._roll_day()
            return self._url_captures_today.get(url, 0)

    def max_in_window(self, window: float = 60.0) -> int:
        """The most submissions that arrived within any `window` seconds."""
        return max_in_window(self.submissions, window)

    def max_lookups_in_window(self, window: float = 60.0) -> int:
        """The most CDX and availability requests that arrived within any `window` seconds."""
        return max_in_window(self.lookup_times, window)

    # --- shared answers -----------------------------------------------------------------------

    def _json(self, body: object, status: int = 200, headers: dict[str, str] | None = None) -> Reply:
        return Reply(status, json.dumps(body).encode(), {"Content-Type": "application/json", **(headers or {})})

    def _spn_error(self, code: str, message: str, **extra: str) -> Reply:
        """An SPN2 refusal at submit: HTTP 200, no job_id."""
        return self._json({"status": "error", "status_ext": code, "message": message, **extra})

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

    def _unauthorized(self, request: Request, needs_auth: bool = False) -> Reply | None:
        """HTTP 401 for /save* without accepted keys, when `keys` is set (the body is a guess);
        with `needs_auth`, also without any `LOW key:secret` header."""
        header = request.headers.get("authorization") or ""
        given = header.removeprefix("LOW ") if header.startswith("LOW ") and ":" in header else None
        if (self.keys is None or given in self.keys) and (given is not None or not needs_auth):
            return None
        self.refused += 1
        return self._json({"status": "error", "message": "You need to be logged in to use Save Page Now."},
                          status=401)

    def _too_many(self, retry_after: float) -> Reply:
        headers = {"Content-Type": "text/plain"}
        if self.retry_after_header:
            headers["Retry-After"] = f"{retry_after:g}"
        return Reply(429, b"429 Too Many Requests", headers)

    def _roll_day(self) -> None:
        """Daily counts start again at UTC midnight."""
        today = datetime.now(UTC).date()
        if today != self._day:
            self._day, self.daily_captures = today, 0
            self._url_captures_today.clear()

    # --- Save Page Now --------------------------------------------------------------------------

    def _save(self, request: Request) -> Reply:
        self._slow()
        if request.method != "POST":
            return Reply(405, b"POST only")
        now = time.monotonic()
        with self._lock:
            self._roll_day()
            self._prune_jobs(now)
            self.submissions.append(now)
            self.auth_headers.append(request.headers.get("authorization"))
            refused = self._unauthorized(request) or self._save_rate(now)
            if refused is not None:
                return refused
            if self.busy:
                status, retry_after = self.busy.pop(0)
                headers = {"Retry-After": f"{retry_after:g}"} if self.retry_after_header else {}
                return Reply(status, b"slow down", headers)
            form = request.form()
            url = (form.get("url") or [""])[0]
            answer = self._refusal(url, form, now)
            if answer is not None:
                return answer
            job_id = self._new_job_id(url)
            outcome = self.job_errors.get(url)
            if outcome is None and self.daily_captures_left is not None:
                if self.daily_captures_left <= 0:
                    outcome = "error:too-many-daily-captures"
                else:
                    self.daily_captures_left -= 1
            self.daily_captures += 1
            stuck = url in self.lost_urls or url in self.slow_capture_urls
            self.jobs[job_id] = _Job(url=url, polls_left=self.pending_polls, outcome=outcome,
                                     submitted=now, stuck=stuck)
        if url in self.slow_capture_urls:
            self._capture(url)  # archived at once, though the job never says so [S6 #297]
        return self._json({"url": url, "job_id": job_id})

    def _save_rate(self, now: float) -> Reply | None:
        """429 beyond `saves_per_minute`; counts POSTs that ignore an earlier 429."""
        if self._last_save_429 is not None and now - self._last_save_429 < SAVE_PAUSE_SECONDS:
            self.requests_during_save_pause += 1
        if self.saves_per_minute is not None:
            recent = [t for t in self._saves_served if now - t < 60.0]
            if len(recent) >= self.saves_per_minute:
                self.saves_refused += 1
                self._last_save_429 = now
                return self._too_many(SAVE_PAUSE_SECONDS)
        self._saves_served.append(now)
        return None

    def _refusal(self, url: str, form: dict[str, list[str]], now: float) -> Reply | None:
        """Every answer to a POST that starts no new job, in the order the service checks them."""
        if form.get("force_get") != ["1"]:
            return self._spn_error("error:bad-request", "force_get expected")
        if self.service_errors:
            code = self.service_errors.pop(0).removeprefix("error:")
            return self._spn_error(f"error:{code}", SERVICE_ERROR_MESSAGES.get(
                code, f"Save Page Now could not start the capture ({code})"))  # a GUESS
        if self._is_blocked(url, "save"):
            return self._spn_error("error:blocked-url", "This URL is in the Wayback Machine's exclusion list.")
        if url in self.submit_errors:
            return self._spn_error(self.submit_errors[url], "refused at submit")
        if any(url.startswith(prefix) for prefix in self.paused_prefixes):
            self.host_paused_answers += 1
            return self._spn_error("error:host-crawling-paused", HOST_PAUSED_MESSAGE)
        if self.same_snapshot:
            answer = self._same_snapshot(url, parse_within(form.get("if_not_archived_within")), now)
            if answer is not None:
                return answer
        cap = self.per_url_daily_cap
        if cap is not None and self._url_captures_today.get(url, 0) >= cap:
            return self._spn_error("error:too-many-daily-captures",
                                   f"This URL has been already captured {cap} times today", url=url)
        limit = self.account_daily_limit
        if limit is not None and self.daily_captures >= limit:
            return self._spn_error("error:too-many-daily-captures",  # the code is a GUESS
                                   f"You cannot make more than {limit} captures per day")
        return None

    def _same_snapshot(self, url: str, within: float | None, now: float) -> Reply | None:
        """The "same snapshot" answers: a recent capture (no job_id), or a recent job (its id)."""
        if within is not None:
            stamps = [c.timestamp for c in self.captures.get(url, [])]
            if stamps:
                made = datetime.strptime(max(stamps), "%Y%m%d%H%M%S").replace(tzinfo=UTC)
                age = (datetime.now(UTC) - made).total_seconds()
                if age < within:
                    return self._json({"url": url, "message": (
                        f"The same snapshot had been made {age_text(age)} ago. "
                        f"You can make new capture of this URL after {span_text(within)}.")})
        recent = [(job.submitted, job_id) for job_id, job in self.jobs.items() if job.url == url]
        if recent:
            submitted, job_id = max(recent)
            if now - submitted < self.same_job_window_seconds:
                return self._json({"url": url, "job_id": job_id, "message": (
                    f"The same snapshot had been made {age_text(now - submitted)} ago. "
                    f"You can make new capture of this URL after {span_text(self.same_job_window_seconds)}.")})
        return None

    def _new_job_id(self, url: str) -> str:
        number = next(self._ids)
        if self.hex_job_ids:
            return "spn2-" + hashlib.sha1(f"{url}\n{number}".encode()).hexdigest()
        return f"spn2-{number:06d}"

    def _prune_jobs(self, now: float) -> None:
        """Forget jobs older than `job_ttl_seconds`."""
        if self.job_ttl_seconds is None:
            return
        for job_id in [j for j, job in self.jobs.items() if now - job.submitted > self.job_ttl_seconds]:
            del self.jobs[job_id]

    def _status(self, request: Request) -> Reply:
        self._slow()
        job_id = unquote(request.path.removeprefix("/save/status/"))
        pending = self._json({"status": "pending", "job_id": job_id, "resources": []})
        with self._lock:
            self.status_polls += 1
            refused = self._unauthorized(request)
            if refused is not None:
                return refused
            now = time.monotonic()
            if self._last_save_429 is not None and now - self._last_save_429 < SAVE_PAUSE_SECONDS:
                self.requests_during_save_pause += 1  # the /save family shares the pause
            if self.status_busy > 0:
                self.status_busy -= 1
                self._last_save_429 = now
                return self._too_many(SAVE_PAUSE_SECONDS)
            self._prune_jobs(now)
            job = self.jobs.get(job_id)
            if job is None:
                if self.unknown_jobs_pending:
                    return pending  # what the real service answers for unknown and expired ids [S5]
                return self._json({"status": "error", "message": "job not found"}, status=404)
            if job.polls_left > 0 or job.stuck or job.capturing:
                job.polls_left = max(0, job.polls_left - 1)
                return pending
            capture_now = job.outcome is None and not job.done
            job.capturing = capture_now
        if capture_now:
            try:
                self._capture_job(job)
            finally:
                job.capturing = False
        if job.outcome is not None:
            return self._json({"status": "error", "job_id": job_id, "status_ext": job.outcome,
                               "exception": "CaptureError",
                               "message": job.message or f"capture failed: {job.outcome}"})
        return self._json({"status": "success", "job_id": job_id, "original_url": job.final_url or job.url,
                           "timestamp": job.timestamp, "duration_sec": 0.1, "resources": job.resources})

    def _capture_job(self, job: _Job) -> None:
        final, outcome, message, resources = self._capture(job.url)
        with self._lock:
            job.outcome, job.message, job.resources = outcome, message, resources
            if final is not None:
                job.timestamp, job.final_url, job.done = final.timestamp, final.original, True

    def _capture(self, url: str) -> tuple[Capture | None, str | None, str | None, list[str]]:
        """Fetch `url` as SPN2 does, following redirects, and store one capture per hop.
        Returns (the final capture, status_ext, message, the URLs fetched)."""
        hops: list[tuple[str, httpx.Response, bytes]] = []
        current = url
        with httpx.Client(headers={"User-Agent": DOUBLE_USER_AGENT}, timeout=30) as client:
            for _ in range(self.spn_max_redirects + 1):
                with client.stream("GET", current) as response:
                    raw = b"".join(response.iter_raw())  # de-chunked, still Content-Encoded [S11]
                hops.append((current, response, raw))
                if not response.is_redirect:
                    break
                current = urljoin(current, response.headers["location"])
        fetched = [hop[0] for hop in hops]
        last = hops[-1][1]
        if last.is_redirect:
            return None, "error:too-many-redirects", (
                f"Too many redirects. SPN2 tries to follow {self.spn_max_redirects} redirects automatically."), fetched
        if last.status_code != 200:
            return None, "error:not-found", f"origin answered {last.status_code}", fetched
        with self._lock:
            self._roll_day()
            stamp = self._timestamp(fetched, datetime.now(UTC))
            visible_at = time.monotonic() + self.replay_lag_seconds
            stored = []
            for index, (hop_url, response, raw) in enumerate(hops):
                encoding = response.headers.get("content-encoding")
                if hop_url in self.gzip_urls and not encoding:
                    raw, encoding = gzip.compress(raw, mtime=0), "gzip"
                mimetype = (response.headers.get("content-type") or "unk").split(";")[0].strip()
                capture = Capture(stamp, raw, hop_url, statuscode=response.status_code,
                                   location=fetched[index + 1] if index + 1 < len(fetched) else None,
                                   mimetype=mimetype, encoding=encoding, visible_at=visible_at)
                self.captures.setdefault(hop_url, []).append(capture)
                self._url_captures_today[hop_url] = self._url_captures_today.get(hop_url, 0) + 1
                stored.append(capture)
        return stored[-1], None, None, fetched

    def _timestamp(self, urls: list[str], when: datetime) -> str:
        """A 14-digit timestamp free for every one of `urls` (a second later if that second is taken)."""
        taken = {c.timestamp for url in urls for c in self.captures.get(url, [])}
        stamp = when.strftime("%Y%m%d%H%M%S")
        while stamp in taken:
            when += timedelta(seconds=1)
            stamp = when.strftime("%Y%m%d%H%M%S")
        return stamp

    def _user(self, request: Request) -> Reply:
        with self._lock:
            self._roll_day()
            refused = self._unauthorized(request, needs_auth=self.user_status_needs_auth)
            if refused is not None:
                return refused
            processing = sum(1 for job in self.jobs.values() if job.polls_left > 0 or job.stuck)
            limit = self.account_daily_limit
            return self._json({
                "processing": processing, "available": self.available, "daily_captures": self.daily_captures,
                "daily_captures_limit": DEFAULT_DAILY_CAPTURES_LIMIT if limit is None else limit})

    # --- lookups and playback -----------------------------------------------------------------

    def _lookup_rate(self) -> Reply | None:
        """Record a CDX or availability request; 429 beyond `lookups_per_minute`."""
        now = time.monotonic()
        with self._lock:
            self.lookup_times.append(now)
            if self._last_lookup_429 is not None and now - self._last_lookup_429 < LOOKUP_PAUSE_SECONDS:
                self.requests_during_lookup_pause += 1
            if self.lookups_per_minute is not None:
                recent = [t for t in self._lookups_served if now - t < 60.0]
                if len(recent) >= self.lookups_per_minute:
                    self.lookups_refused += 1
                    self._last_lookup_429 = now
                    return self._too_many(LOOKUP_PAUSE_SECONDS)
            self._lookups_served.append(now)
        return None

    def _available(self, request: Request) -> Reply:
        self._slow()
        limited = self._lookup_rate()
        if limited is not None:
            return limited
        url = (request.query.get("url") or [""])[0]
        if self._is_blocked(url, "available"):
            return self._blocked_reply()
        with self._lock:
            found = [c for c in self.captures.get(url, []) if c.visible()]
        if not found:
            return self._json({"url": url, "archived_snapshots": {}})
        best = wayback_cdx.closest(found, (request.query.get("timestamp") or [""])[0])
        return self._json({"url": url, "archived_snapshots": {"closest": {
            "status": str(best.statuscode), "available": True, "timestamp": best.timestamp,
            "url": f"{self.base_url}/web/{best.timestamp}/{url}"}}})

    def _cdx(self, request: Request) -> Reply:
        self._slow()
        limited = self._lookup_rate()
        if limited is not None:
            return limited
        if self._is_blocked((request.query.get("url") or [""])[0].rstrip("*"), "cdx"):
            return self._blocked_reply()
        with self._lock:
            rows = wayback_cdx.rows(self.captures, self.odd_digests, self.revisit_urls)
        body, content_type = wayback_cdx.render(wayback_cdx.select(rows, request.query), request.query)
        return Reply(200, body, {"Content-Type": content_type})

    def _playback(self, request: Request) -> Reply:
        raw = request.handler.path  # keeps the original URL's own query string
        stamp, _, original = raw.removeprefix("/web/").partition("/")
        if not stamp.endswith("id_"):
            return Reply(400, b"only id_ playback is served here")
        stamp = stamp.removesuffix("id_")
        if self._is_blocked(original, "playback"):
            return self._blocked_reply()
        with self._lock:
            found = list(self.captures.get(original, []))
        match = next((c for c in found if c.timestamp == stamp), None)
        if match is None:
            return Reply(404, b"no such capture")
        if not match.visible():  # still in the replay lag: the nearest older capture, if any
            older = [c for c in found if c.visible() and c.timestamp < stamp]
            if not older:
                return Reply(404, b"no such capture")
            nearest = max(older, key=lambda c: c.timestamp)
            return Reply(302, b"", {"Location": f"{self.base_url}/web/{nearest.timestamp}id_/{original}"})
        return self._serve_capture(match, request.headers.get("range", ""))

    def _serve_capture(self, capture: Capture, ranged: str) -> Reply:
        body = capture.body
        headers = {"Content-Type": capture.mimetype, "Accept-Ranges": "bytes",
                   "Memento-Datetime": memento_datetime(capture.timestamp),
                   "X-Archive-Src": f"spn2-{capture.timestamp}-wayback-double.warc.gz"}
        if capture.encoding:
            headers["Content-Encoding"] = capture.encoding
        if capture.location is not None:
            headers["Location"] = f"{self.base_url}/web/{capture.timestamp}id_/{capture.location}"
        if capture.statuscode == 200 and ranged.startswith("bytes="):
            first, _, last = ranged.removeprefix("bytes=").partition("-")
            start, end = int(first or 0), int(last) if last else len(body) - 1
            headers["Content-Range"] = f"bytes {start}-{end}/{len(body)}"
            return Reply(206, body[start:end + 1], headers)
        return Reply(capture.statuscode, body, headers)


def main() -> None:
    """Serve the double and an ad-splicing origin for the files in a folder, until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--audio-dir", type=Path, required=True, help="WAV files the origin serves")
    parser.add_argument("--port", type=int, default=0, help="the stand-in archive's port (default: free)")
    parser.add_argument("--origin-port", type=int, default=0, help="the origin host's port (default: free)")
    parser.add_argument("--realistic", action="store_true",
                        help="answer like the real service (WaybackDouble.realistic)")
    args = parser.parse_args()
    files = {p.name: p.read_bytes() for p in args.audio_dir.glob("*.wav")}
    make = WaybackDouble.realistic if args.realistic else WaybackDouble
    with make(pending_polls=2, port=args.port) as double, AdHost(files, port=args.origin_port) as origin:
        print(json.dumps({"wayback_url": double.base_url, "origin_url": origin.server.base_url,
                          "realistic": args.realistic}), flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
