"""What Save Page Now 2's answers mean, and whom they are about.

The service reports failures as `status_ext` codes (`error:<code>`) with a message, at submit
time (HTTP 200, no job id) or in a job's status. Who is to blame decides what to do, from
the SPN2 documentation and IA's own production client (see docs/archive.md and
../shared/reference/spn2-real-service.md):

  permanent  the URL as submitted can never be captured: the episode ends (`invalid-url-syntax`,
             `too-many-redirects`, a 404 at the origin, ...)
  blocked    the Wayback Machine excludes the site: the episode fails `archive-blocked`
  url-cap    this URL was captured as often as IA allows today (a per-URL cap, ~5, shared by
             every user): reuse today's capture, else wait for midnight; nothing else waits
  account    the account's daily cap or bandwidth: all submissions wait for midnight
  host       the target host is paused or throttling SPN: that host waits >= 10 min
  service    trouble on IA's side (sessions, browsers, workers): submissions pause, nobody charged
  transient  anything else: this episode backs off, an attempt counted
"""

from __future__ import annotations

import base64
import re

PERMANENT_CODES = frozenset({
    "not-found", "no-access", "invalid-host-resolution", "filesize-limit", "invalid-url-syntax",
    "invalid-url", "bad-request", "method-not-allowed", "http-version-not-supported",
    "network-authentication-required", "unauthorized", "forbidden", "ftp-access-denied",
    "invalid-server-response", "not-implemented", "too-many-redirects", "redirect-loop",
    "blocked-address", "bad-url",  # from resolving the redirect chain here: never submitted
})
BLOCKED_CODES = frozenset({"blocked-url", "blocked", "archive-blocked"})
SERVICE_CODES = frozenset({
    "user-session-limit", "no-browsers-available", "job-failed", "internal-server-error", "celery",
    "capture-location-error", "proxy-error", "browsing-timeout", "blocked-client-ip",
    "soft-time-limit-exceeded",
})
HOST_CODES = frozenset({"host-crawling-paused", "too-many-requests"})
ACCOUNT_CODES = frozenset({"max-daily-bandwidth", "max-daily-bandwidth-from-ip"})
URL_CAP_CODE = "too-many-daily-captures"

# Messages that say more than their code (or come without one), lower-cased.
SAME_SNAPSHOT = "the same snapshot had been made"
_SERVICE_MESSAGES = ("reached the limit of active sessions", "cannot start capture",
                     "the server encountered an internal error")
_HOST_MESSAGES = ("crawling this host is paused",)
_ACCOUNT_MESSAGES = (re.compile(r"cannot make more than [\d,]+ captures per day"),
                     re.compile(r"daily not-logged-in captures limit"))
_BASE32_SHA1 = re.compile(r"[A-Z2-7]{32}")


def code_of(status_ext: object) -> str:
    """The code of a `status_ext` (`error:too-many-redirects` -> `too-many-redirects`)."""
    text = str(status_ext or "").strip().lower()
    return text.removeprefix("error:").strip() or "unknown"


def kind_of(code: str, message: str = "") -> str:
    """The kind of a failure (see the module docstring) from its code and message."""
    text = message.lower()
    if any(pattern.search(text) for pattern in _ACCOUNT_MESSAGES):
        return "account"  # the account's cap comes with the per-URL cap's code
    if any(marker in text for marker in _SERVICE_MESSAGES):
        return "service"
    if any(marker in text for marker in _HOST_MESSAGES):
        return "host"
    if code in BLOCKED_CODES:
        return "blocked"
    if code in PERMANENT_CODES:
        return "permanent"
    if code == URL_CAP_CODE:
        return "url-cap"
    if code in ACCOUNT_CODES or code.startswith("max-daily-bandwidth"):
        return "host" if code.endswith("-host") else "account"
    if code in SERVICE_CODES:
        return "service"
    if code in HOST_CODES:
        return "host"
    return "transient"


def is_same_snapshot(message: object) -> bool:
    """The answer "The same snapshot had been made N minutes ago": a capture exists already."""
    return SAME_SNAPSHOT in str(message or "").lower()


_AGE_PART = re.compile(r"(\d+)\s*(year|month|week|day|hour|minute|second)s?\b")
_UNIT_SECONDS = {"year": 365 * 86400, "month": 30 * 86400, "week": 7 * 86400, "day": 86400,
                 "hour": 3600, "minute": 60, "second": 1}


def snapshot_age(message: object) -> float | None:
    """Seconds since the capture a "same snapshot" answer speaks of ("... had been made 1 hour,
    12 minutes ago"); None when the message says no age."""
    text = str(message or "").lower()
    made, _, _ = text.partition(" ago")
    parts = _AGE_PART.findall(made.partition("had been made")[2])
    if not parts:
        return None
    return float(sum(int(count) * _UNIT_SECONDS[unit] for count, unit in parts))


def usable_digest(digest: object) -> str | None:
    """A CDX digest that names a SHA-1 (base32, or hex in some old records); None for "-",
    "sha-256:...", "error" and the like, which no download can be checked against."""
    text = str(digest or "").strip()
    if _BASE32_SHA1.fullmatch(text):
        return text
    if len(text) == 40 and all(c in "0123456789abcdefABCDEF" for c in text):
        return text.lower()
    return None


def digest_matches(sha1_hex: str, digest: str) -> bool:
    """True if a CDX `digest` (base32 SHA-1; hex in some old records) names bytes with this SHA-1."""
    digest = digest.strip()
    if len(digest) == 40:
        return digest.lower() == sha1_hex.lower()
    return digest.upper() == base64.b32encode(bytes.fromhex(sha1_hex)).decode()
