"""An HTTP client for the Internet Archive's capture APIs.

Every endpoint derives from the `WAYBACK_URL` setting, so the whole stage can be pointed at
another host (a mirror, or the tests' loopback double):

  {wayback}/save                    Save Page Now 2: submit a capture (POST, form-encoded)
  {wayback}/save/status/<job_id>    the job's state: pending, success or error
  {wayback}/save/status/user        captures this account may start now, and today's count
  {wayback}/cdx/search/cdx          captures of a URL (or a folder) with timestamps and digests
  {wayback}/web/<ts>id_/<url>       the original bytes of a capture (no banner, no rewriting)

The availability API is not used: CDX answers the same question with digests, for a whole
folder at once, and both draw on the same per-minute lookup limit.

Failures:
- `ServiceBusy`: the service, not the episode (5xx, a dropped connection); retry soon.
- `Throttled`: an HTTP 429. IA sends no Retry-After and firewalls a client that ignores 429s
  for a minute, so the caller pauses that endpoint family (`family`: lookup or save).
- `CaptureError`: about one capture; its `kind` (see `podcastpile.archive.answers`) says who is
  to blame. A site excluded from the Wayback Machine (HTTP 403 "Blocked Site Error" on CDX or
  playback) is a `CaptureError` of kind `blocked`, not a refusal of this client.
- `ServiceRefused`: a 401 on `/save*` (wrong keys; `KeysMissing` when this client has none).
Every lookup first passes `lookup_gate` (the store's shared lookup window, in the stage).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote

import httpx

from podcastpile import __version__
from podcastpile.archive import cdx
from podcastpile.archive.answers import code_of, digest_matches, is_same_snapshot, kind_of
from podcastpile.net.fetch import BLOCKED_SITE_MARKER
from podcastpile.store.known_captures import KnownCapture

__all__ = [
    "CaptureError", "JobStatus", "KeysMissing", "ServiceBusy", "ServiceRefused", "Submitted", "Throttled",
    "UserStatus", "WaybackClient", "digest_matches", "is_blocked_site",
]

# A replayed redirect's Location: /web/<14 digits>[id_ or another flag]/<the original target URL>
_REPLAYED_LOCATION = re.compile(r"/web/(\d{14})[a-z_]*/(https?://.+)$")
USER_AGENT = f"podcastpile/{__version__} (speech dataset builder; python-httpx)"


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


class CaptureError(Exception):
    """The service could not capture this URL. `code` is the `status_ext` code without `error:`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message or code
        self.kind = kind_of(code, message)


class ServiceBusy(Exception):
    """The service cannot take requests now (5xx, connection trouble): wait, then retry."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Throttled(ServiceBusy):
    """HTTP 429 from a `family` of endpoints (`lookup`: CDX/availability, `save`: /save*)."""

    def __init__(self, message: str, family: str, retry_after: float | None = None) -> None:
        super().__init__(message, retry_after)
        self.family = family


class ServiceRefused(Exception):
    """The service refuses this client (401 on /save*): wrong keys. No episode is to blame."""


class KeysMissing(ServiceRefused):
    """Save Page Now wants archive.org keys and this client has none (IA_ACCESS_KEY/IA_SECRET_KEY)."""


class JobForgotten(Exception):
    """The service says it does not know a job id (a 404; the real one answers `pending`)."""


@dataclass(frozen=True)
class Submitted:
    """Save Page Now's answer to a submission: a job to poll, and/or "a capture exists"
    (`same_snapshot`: the answer "The same snapshot had been made ...", with or without a job)."""

    job_id: str | None
    same_snapshot: bool = False
    message: str = ""


@dataclass(frozen=True)
class JobStatus:
    """A Save Page Now job's state. On success `timestamp` is set; `original_url` is the URL
    captured when the service names it in full; `resources` are the URLs the capture fetched
    (every redirect hop included)."""

    status: str  # pending | success | error
    timestamp: str | None = None
    original_url: str | None = None
    error: CaptureError | None = None
    resources: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class UserStatus:
    """What this account may do: captures it may start now, and today's count against its cap."""

    available: int
    processing: int
    daily_captures: int | None = None
    daily_captures_limit: int | None = None

    @property
    def daily_cap_reached(self) -> bool:
        return bool(self.daily_captures_limit) and (self.daily_captures or 0) >= (self.daily_captures_limit or 0)


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


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


class WaybackClient:
    """Lookups, submissions and status polls against the Internet Archive (or a stand-in)."""

    def __init__(
        self,
        wayback_url: str,
        archive_api_url: str | None = None,  # the availability API's; no longer used (CDX answers)
        *,
        access_key: str | None = None,
        secret_key: str | None = None,
        timeout_seconds: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        lookup_gate: Callable[[], None] | None = None,
    ) -> None:
        self.wayback_url = wayback_url.rstrip("/")
        self.lookup_gate = lookup_gate
        self.lookups = 0  # requests sent to CDX by this client
        headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        self.has_keys = bool(access_key and secret_key)
        if self.has_keys:
            headers["Authorization"] = f"LOW {access_key}:{secret_key}"
        # No redirects followed: a lookup or a submission that redirects is an answer to read.
        self._http = httpx.Client(headers=headers, timeout=httpx.Timeout(timeout_seconds), transport=transport)

    @classmethod
    def from_settings(cls, settings: Any, *, lookup_gate: Callable[[], None] | None = None) -> "WaybackClient":
        """A client for the settings' endpoints and (optional) archive.org keys."""
        secret = lambda value: value.get_secret_value() if value else None  # noqa: E731
        return cls(
            settings.wayback_url, settings.archive_api_url,
            access_key=secret(settings.ia_access_key), secret_key=secret(settings.ia_secret_key),
            timeout_seconds=settings.download_timeout_seconds, lookup_gate=lookup_gate,
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

    def captures(self, url: str, *, prefix: bool = False, since: str | None = None,
                 until: str | None = None) -> tuple[list[KnownCapture], bool]:
        """CDX rows for `url` (or every URL under it, `prefix`) between `since` and `until`, and
        whether the answer is complete (a prefix query stops at `cdx.PREFIX_LIMIT` rows)."""
        if self.lookup_gate is not None:
            self.lookup_gate()
        self.lookups += 1
        params = cdx.query_params(url, prefix=prefix, since=since, until=until)
        response = self._request("GET", f"{self.wayback_url}/cdx/search/cdx", family="lookup", params=params)
        if response.status_code != 200:
            raise ServiceBusy(f"CDX answered HTTP {response.status_code}", _retry_after(response))
        try:
            body = response.json() if response.content.strip() else []
        except ValueError:
            raise ServiceBusy("CDX answered something that is not JSON") from None
        rows = cdx.parse_rows(body)
        complete = not prefix or (len(body) - 1 if isinstance(body, list) else 0) < cdx.PREFIX_LIMIT
        return rows, complete

    def redirect_target(self, timestamp: str, url: str) -> tuple[str, str] | None:
        """Where the redirect captured at `timestamp` for `url` led: (timestamp, url) of the
        next hop's capture, read from the replayed Location (the Wayback Machine keeps it inside
        the archive, `/web/<ts>id_/<target>`); None when the capture is no redirect. One
        lookup: it passes the gate and counts as one."""
        if self.lookup_gate is not None:
            self.lookup_gate()
        self.lookups += 1
        response = self._request("GET", self.playback_url(timestamp, url), family="lookup", stream=True,
                                 headers={"Accept": "*/*"})
        response.close()  # the headers say it all: a capture of audio is not downloaded here
        if not response.is_redirect:
            return None
        match = _REPLAYED_LOCATION.search(response.headers.get("location", ""))
        return (match.group(1), match.group(2)) if match else None

    # --- Save Page Now 2 ----------------------------------------------------------------------

    def submit(self, url: str, *, reuse_seconds: int | None = None) -> Submitted:
        """Ask Save Page Now to capture `url` with a plain GET.

        `reuse_seconds`: let the service answer with a capture younger than that instead of
        making one ("The same snapshot had been made ...", often with no job id).
        """
        form = {"url": url, "force_get": "1", "skip_first_archive": "1", "js_behavior_timeout": "0"}
        if reuse_seconds:
            form["if_not_archived_within"] = str(int(reuse_seconds))
        response = self._request("POST", f"{self.wayback_url}/save", family="save", data=form)
        body = self._json(response)
        message = str(body.get("message") or "")
        # The message comes first: with a job id it is still "a capture exists" (IA's own client
        # checks it before the job id), and without one it is no error.
        if is_same_snapshot(message):
            return Submitted(str(body["job_id"]) if body.get("job_id") else None, True, message)
        if body.get("job_id"):
            return Submitted(str(body["job_id"]), False, message)
        if body.get("status") == "error" or body.get("status_ext") or message:
            raise CaptureError(code_of(body.get("status_ext")), message)
        raise ServiceBusy(f"Save Page Now gave no job id: {str(body)[:200]}")

    def job_status(self, job_id: str) -> JobStatus:
        """The state of a submitted job (following `original_job_id` to the capture it names)."""
        body = self._status_body(job_id)
        status = str(body.get("status") or "pending")
        if status == "error":
            return JobStatus("error", error=CaptureError(code_of(body.get("status_ext")), str(body.get("message") or "")))
        if status != "success":
            return JobStatus("pending")
        original_job = body.get("original_job_id")
        if original_job and original_job != job_id:
            # A deduplicated job: its own timestamp is not the capture's; the original job's is.
            first = self._status_body(str(original_job))
            if first.get("status") == "success" and first.get("timestamp"):
                body = {**body, "timestamp": first["timestamp"], "original_url": first.get("original_url")}
        original = str(body.get("original_url") or "") or None
        if original is not None and not original.lower().startswith(("http://", "https://")):
            original = None  # a bare path ("/episode.mp3"): the submitted URL is meant
        resources = tuple(str(r) for r in body.get("resources") or () if isinstance(r, str))
        return JobStatus("success", timestamp=str(body.get("timestamp") or "") or None,
                         original_url=original, resources=resources)

    def user_status(self) -> UserStatus | None:
        """This account's captures available now and today's count; None when unknown."""
        try:
            response = self._request(
                "GET", f"{self.wayback_url}/save/status/user", family="save", params={"_t": str(random.random())}
            )
            body = self._json(response)
            return UserStatus(
                int(body.get("available", 1)), int(body.get("processing", 0)),
                _int(body.get("daily_captures")), _int(body.get("daily_captures_limit")),
            )
        except Throttled:
            raise  # a 429 pauses the /save family; swallowing it would send the submission anyway
        except (ServiceBusy, ValueError, TypeError):
            return None

    def _status_body(self, job_id: str) -> dict[str, Any]:
        response = self._request("GET", f"{self.wayback_url}/save/status/{quote(job_id, safe='')}", family="save")
        if response.status_code == 404:
            raise JobForgotten(f"Save Page Now does not know job {job_id}")
        return self._json(response)

    # --- plumbing -------------------------------------------------------------------------------

    def _request(self, method: str, url: str, *, family: str, stream: bool = False, **kwargs: Any) -> httpx.Response:
        """One request, its refusals raised; with `stream` the body of an answer below 400 is
        left unread (the caller closes the response)."""
        try:
            response = self._http.send(self._http.build_request(method, url, **kwargs), stream=stream)
            if stream and response.status_code >= 400:
                response.read()  # an error page: small, and read to tell a blocked site
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
        if response.status_code == 429:
            raise Throttled(f"HTTP 429 from {response.url.host} ({family})", family, _retry_after(response))
        if response.status_code >= 500:
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
