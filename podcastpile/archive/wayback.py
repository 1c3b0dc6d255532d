"""An HTTP client for the Internet Archive's capture APIs.

Every endpoint derives from two base URLs (the `WAYBACK_URL` and `ARCHIVE_API_URL` settings),
so the whole stage can be pointed at another host (a mirror, or the tests' loopback double):

  {wayback}/save                    Save Page Now 2: submit a capture (POST, form-encoded)
  {wayback}/save/status/<job_id>    the job's state: pending, success or error
  {wayback}/save/status/user        captures this account may still start now
  {wayback}/cdx/search/cdx          captures of a URL with timestamps, digests and lengths
  {wayback}/web/<ts>id_/<url>       the original bytes of a capture (no banner, no rewriting)
  {archive_api}/wayback/available   the capture closest to a time

Failures come in two kinds. `ServiceBusy` is about the service, not the episode (429, 5xx,
a dropped connection): callers wait (`retry_after`) and try again, charging no episode.
`CaptureError` is about one capture; its `kind` (transient, quota, permanent) says what to do.
A site excluded from the Wayback Machine answers HTTP 403 "Blocked Site Error" on CDX, the
availability API and playback: that is a `CaptureError` with code `archive-blocked` for that
URL, not a refusal of this client. `ServiceRefused` is a 401 on `/save*` (keys wrong or
missing; `KeysMissing` when this client has none).
"""

from __future__ import annotations

import base64
import random
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote

import httpx

from podcastpile import __version__
from podcastpile.store.archive import Capture

USER_AGENT = f"podcastpile/{__version__} (speech dataset builder; python-httpx)"

# `status_ext` codes, from the SPN2 documentation. The service sends them as `error:<code>`.
TRANSIENT_CODES = frozenset({
    "user-session-limit", "too-many-requests", "cannot-fetch", "no-browsers-available", "celery",
    "job-failed", "proxy-error", "read-timeout", "soft-time-limit-exceeded", "gateway-timeout",
    "bad-gateway", "service-unavailable", "internal-server-error", "browsing-timeout",
})
QUOTA_CODES = frozenset({
    "too-many-daily-captures", "max-daily-bandwidth", "max-daily-bandwidth-from-ip",
    "max-daily-bandwidth-host",
})
PERMANENT_CODES = frozenset({
    "not-found", "no-access", "blocked-url", "blocked", "invalid-host-resolution", "filesize-limit",
    "invalid-url", "bad-request", "method-not-allowed", "http-version-not-supported",
    "network-authentication-required", "unauthorized", "forbidden", "ftp-access-denied",
    "invalid-server-response", "not-implemented", "redirect-loop", "archive-blocked",
})
# The Wayback Machine's marker for an excluded site, in the `X-Archive-Wayback-Runtime-Error`
# header (and in CDX's plain-text body) of its HTTP 403.
BLOCKED_SITE_MARKER = "blocked site error"
# A quota of the account (all captures stop) rather than of one target host.
ACCOUNT_QUOTAS = frozenset({"too-many-daily-captures", "max-daily-bandwidth", "max-daily-bandwidth-from-ip"})


def digest_matches(sha1_hex: str, digest: str) -> bool:
    """True if a CDX `digest` (base32 SHA-1; hex in some old records) names bytes with this SHA-1."""
    digest = digest.strip()
    if len(digest) == 40:
        return digest.lower() == sha1_hex.lower()
    return digest.upper() == base64.b32encode(bytes.fromhex(sha1_hex)).decode()


def is_blocked_site(response: httpx.Response) -> bool:
    """True if `response` is the Wayback Machine's 403 for a site excluded from it
    (CDX, availability or playback): a fact about that URL, not about this client's keys."""
    if response.status_code != 403:
        return False
    header = response.headers.get("x-archive-wayback-runtime-error", "")
    if BLOCKED_SITE_MARKER in header.lower():
        return True
    # CDX repeats it in a short plain-text body; playback's HTML page is not worth scanning whole.
    return BLOCKED_SITE_MARKER in response.content[:2000].decode("utf-8", "replace").lower()


def error_kind(code: str) -> str:
    """`transient`, `quota` or `permanent` for a `status_ext` code. Unknown codes are transient
    (the attempt limit stops them looping)."""
    if code in PERMANENT_CODES:
        return "permanent"
    if code in QUOTA_CODES or code.startswith("max-daily-bandwidth"):
        return "quota"
    return "transient"


def _code(status_ext: str | None) -> str:
    text = (status_ext or "").strip().lower()
    return text.removeprefix("error:").strip() or "unknown"


class CaptureError(Exception):
    """The service could not capture this URL. `code` is the `status_ext` code without `error:`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message or code
        self.kind = error_kind(code)


class ServiceBusy(Exception):
    """The service cannot take requests now (429, 5xx, connection trouble): wait, then retry."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ServiceRefused(Exception):
    """The service refuses this client (401/403 that is not a blocked site): wrong keys.
    No episode is to blame."""


class KeysMissing(ServiceRefused):
    """Save Page Now wants archive.org keys and this client has none (IA_ACCESS_KEY/IA_SECRET_KEY)."""


class JobForgotten(Exception):
    """The service no longer knows a job id (it keeps results only a while)."""


@dataclass(frozen=True)
class JobStatus:
    """A Save Page Now job's state. On success `timestamp` and `original_url` are set."""

    status: str  # pending | success | error
    timestamp: str | None = None
    original_url: str | None = None
    error: CaptureError | None = None


@dataclass(frozen=True)
class UserStatus:
    """How many captures this account may start now, and how many it has running."""

    available: int
    processing: int


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds())
    except (TypeError, ValueError):
        return None


class WaybackClient:
    """Lookups, submissions and status polls against the Internet Archive (or a stand-in)."""

    def __init__(
        self,
        wayback_url: str,
        archive_api_url: str,
        *,
        access_key: str | None = None,
        secret_key: str | None = None,
        timeout_seconds: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.wayback_url = wayback_url.rstrip("/")
        self.archive_api_url = archive_api_url.rstrip("/")
        headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        self.has_keys = bool(access_key and secret_key)
        if self.has_keys:
            headers["Authorization"] = f"LOW {access_key}:{secret_key}"
        self._http = httpx.Client(
            headers=headers, timeout=httpx.Timeout(timeout_seconds), transport=transport,
            follow_redirects=True, max_redirects=3,
        )

    @classmethod
    def from_settings(cls, settings: Any) -> "WaybackClient":
        """A client for the settings' endpoints and (optional) archive.org keys."""
        secret = lambda value: value.get_secret_value() if value else None  # noqa: E731
        return cls(
            settings.wayback_url, settings.archive_api_url,
            access_key=secret(settings.ia_access_key), secret_key=secret(settings.ia_secret_key),
            timeout_seconds=settings.download_timeout_seconds,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "WaybackClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def playback_url(self, timestamp: str, url: str) -> str:
        """Where the original bytes of the capture at `timestamp` are served."""
        return f"{self.wayback_url}/web/{timestamp}id_/{url}"

    # --- lookups ----------------------------------------------------------------------------------

    def find_capture(self, url: str, *, not_before: datetime | None = None) -> Capture | None:
        """The newest successful capture of `url` taken at or after `not_before`, or None.

        Asks the availability API first (cheap, cached by IA); then CDX, which also gives the
        digest and length (and finds captures the availability API misses).
        """
        oldest = not_before.strftime("%Y%m%d%H%M%S") if not_before else None
        timestamp = self._available(url)
        if timestamp and (oldest is None or timestamp >= oldest):
            found = self._cdx(url, from_ts=timestamp, to_ts=timestamp)
            if found:
                return found
            return Capture(timestamp=timestamp, url=self.playback_url(timestamp, url))
        return self._cdx(url, from_ts=oldest)

    def capture_details(self, url: str, timestamp: str) -> Capture:
        """The capture of `url` at `timestamp`, with digest and length when CDX knows them yet."""
        try:
            found = self._cdx(url, from_ts=timestamp, to_ts=timestamp)
        except ServiceBusy:
            found = None  # the capture exists; only its digest is unknown
        return found or Capture(timestamp=timestamp, url=self.playback_url(timestamp, url))

    def _available(self, url: str) -> str | None:
        try:
            response = self._get(f"{self.archive_api_url}/wayback/available", params={"url": url})
        except ServiceBusy:
            return None  # CDX answers the same question
        if response.status_code != 200:
            return None
        try:
            closest = (response.json().get("archived_snapshots") or {}).get("closest") or {}
        except ValueError:
            return None
        if closest.get("available") and str(closest.get("status", "200")) == "200":
            timestamp = str(closest.get("timestamp") or "")
            return timestamp if len(timestamp) == 14 and timestamp.isdigit() else None
        return None

    def _cdx(self, url: str, *, from_ts: str | None = None, to_ts: str | None = None) -> Capture | None:
        params = {
            "url": url, "output": "json", "fl": "timestamp,original,statuscode,digest,length",
            "filter": "statuscode:200", "limit": "-1",
        }
        if from_ts:
            params["from"] = from_ts
        if to_ts:
            params["to"] = to_ts
        response = self._get(f"{self.wayback_url}/cdx/search/cdx", params=params)
        if response.status_code != 200:
            raise ServiceBusy(f"CDX answered HTTP {response.status_code}", _retry_after(response))
        try:
            rows = response.json() if response.content.strip() else []
        except ValueError:
            raise ServiceBusy("CDX answered something that is not JSON") from None
        if len(rows) < 2:
            return None
        header, *records = rows
        newest = dict(zip(header, max(records, key=lambda row: row[0])))
        length = str(newest.get("length") or "")
        return Capture(
            timestamp=newest["timestamp"],
            url=self.playback_url(newest["timestamp"], url),
            digest=(newest.get("digest") or None),
            length=int(length) if length.isdigit() else None,
        )

    # --- Save Page Now 2 ----------------------------------------------------------------------

    def submit(self, url: str, *, reuse_seconds: int | None = None) -> str:
        """Ask Save Page Now to capture `url` with a plain GET; returns the job id."""
        form = {"url": url, "force_get": "1", "skip_first_archive": "1", "js_behavior_timeout": "0"}
        if reuse_seconds:
            form["if_not_archived_within"] = str(int(reuse_seconds))
        response = self._request("POST", f"{self.wayback_url}/save", data=form)
        body = self._json(response)
        if body.get("job_id"):
            return str(body["job_id"])
        if body.get("status") == "error" or body.get("status_ext"):
            raise CaptureError(_code(body.get("status_ext")), str(body.get("message") or ""))
        raise ServiceBusy(f"Save Page Now gave no job id: {str(body)[:200]}")

    def job_status(self, job_id: str) -> JobStatus:
        """The state of a submitted job."""
        response = self._request("GET", f"{self.wayback_url}/save/status/{quote(job_id, safe='')}")
        if response.status_code == 404:
            raise JobForgotten(f"Save Page Now does not know job {job_id}")
        body = self._json(response)
        status = str(body.get("status") or "pending")
        if status == "success":
            return JobStatus("success", timestamp=str(body.get("timestamp") or ""),
                             original_url=body.get("original_url"))
        if status == "error":
            return JobStatus("error", error=CaptureError(_code(body.get("status_ext")), str(body.get("message") or "")))
        return JobStatus("pending")

    def user_status(self) -> UserStatus | None:
        """Captures this account may start now; None when the service does not say."""
        try:
            response = self._request(
                "GET", f"{self.wayback_url}/save/status/user", params={"_t": str(random.random())}
            )
            body = self._json(response)
            return UserStatus(int(body.get("available", 1)), int(body.get("processing", 0)))
        except (ServiceBusy, ValueError, TypeError):
            return None

    # --- plumbing -------------------------------------------------------------------------------

    def _get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self._request("GET", url, **kwargs)

    def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, url, **kwargs)
        except httpx.TransportError as error:
            raise ServiceBusy(f"{type(error).__name__}: {error or 'connection failed'}") from None
        if is_blocked_site(response):
            raise CaptureError(
                "archive-blocked",
                f"the Wayback Machine excludes this site (HTTP 403 Blocked Site Error from {response.url.path})",
            )
        if response.status_code in (401, 403):
            if not self.has_keys:
                raise KeysMissing(
                    f"Save Page Now needs archive.org keys (HTTP {response.status_code}): "
                    "set IA_ACCESS_KEY and IA_SECRET_KEY to make new captures"
                )
            raise ServiceRefused(
                f"the Internet Archive refused the keys (HTTP {response.status_code}); "
                "check IA_ACCESS_KEY and IA_SECRET_KEY"
            )
        if response.status_code == 429 or response.status_code >= 500:
            raise ServiceBusy(f"HTTP {response.status_code} from {response.url.host}", _retry_after(response))
        return response

    @staticmethod
    def _json(response: httpx.Response) -> dict[str, Any]:
        try:
            body = response.json()
        except ValueError:
            raise ServiceBusy(f"HTTP {response.status_code} with a body that is not JSON") from None
        if not isinstance(body, dict):
            raise ServiceBusy("expected a JSON object")
        return body
