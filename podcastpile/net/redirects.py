"""Where an episode URL really leads: its redirect chain, resolved without downloading the audio.

Enclosure URLs often pass through tracking prefixes (podtrac, chartable, podsights… each a
redirect) before the host's own redirect to a signed CDN URL. The Internet Archive's Save Page
Now follows only 3 redirects, so the archive stage resolves the chain here first and submits (or
looks up) a URL it can reach. No URL patterns are interpreted: only HTTP answers count.

Each hop is asked with HEAD; a server that refuses HEAD (405, 501, and some CDNs 400 or 403) is
asked again with a GET whose body is never read. Like `download`, redirects are followed here,
not by httpx: every hop's host goes through the address guard (a public host may redirect to
169.254.169.254) and the connections are pinned to the addresses it checked.

Failures are `PermanentError` (bad-url, too-many-redirects, redirect-loop, blocked-address) or
`TransientError` (timeout, connection); reasons quote URLs with their passwords hidden.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from podcastpile.errors import PermanentError
from podcastpile.net.fetch import download_client, http_failures
from podcastpile.net.guard import AddressGuard, guard_for
from podcastpile.net.urls import display_url, mask_secrets

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# Answers to HEAD that say "not HEAD" rather than "no such file": the hop is asked again with GET.
HEAD_REFUSED = frozenset({400, 403, 405, 501})
# Four tracking prefixes, the host's own redirect and a CDN's: real chains stay well under this.
MAX_HOPS = 10
_SHOWN_CHARS = 200  # URLs may be 4 KiB long; a reason is one line


@dataclass(frozen=True)
class RedirectChain:
    """The URLs a request went through: the submitted URL first, then each redirect's target.

    `status` is the HTTP status of the last answer (the first that was not a redirect), whatever
    it was: the caller decides what a 404 or a 403 at the end means. URLs are kept as they are
    (a password may be what opens the file); show them with `display_url`.
    """

    urls: tuple[str, ...]
    status: int

    @property
    def final(self) -> str:
        """The URL that answered without redirecting."""
        return self.urls[-1]

    @property
    def hops(self) -> int:
        """How many redirects were followed (0: the URL answered itself)."""
        return len(self.urls) - 1

    def to_json(self) -> str:
        """The URLs as a compact JSON list, for a text column (the status is not part of it)."""
        return json.dumps(list(self.urls), separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str, status: int = 0) -> RedirectChain:
        """The chain `to_json` wrote; `status` is not stored there (0: unknown). Raises ValueError."""
        urls = json.loads(text)
        if not isinstance(urls, list) or not urls or not all(isinstance(url, str) for url in urls):
            raise ValueError("a redirect chain is a non-empty JSON list of URLs")
        return cls(tuple(urls), status)


def _shown(url: str | httpx.URL) -> str:
    return display_url(str(url))[:_SHOWN_CHARS]


def _checked_url(url: str | httpx.URL) -> httpx.URL:
    """`url` as httpx parses it, refused unless it is http(s)."""
    parsed = httpx.URL(url)
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise PermanentError("bad-url", f"not an http(s) URL: {_shown(url)}")
    return parsed


def _location(response: httpx.Response) -> httpx.URL | None:
    """Where a redirect answer points (relative locations resolved), or None for any other answer.

    A redirect status without a Location cannot be followed: it is the last answer.
    """
    if response.status_code not in REDIRECT_STATUSES or "location" not in response.headers:
        return None
    try:
        return _checked_url(response.url.join(response.headers["location"]))
    except httpx.InvalidURL as error:
        raise PermanentError("bad-url", f"redirect to an unusable location: {mask_secrets(str(error))}") from None


def _ask(client: httpx.Client, target: httpx.URL) -> httpx.Response:
    """One hop's answer, headers only: HEAD, or a GET closed before its body when HEAD is refused."""
    try:
        response = client.head(target)
        if response.status_code in HEAD_REFUSED:
            # Closing a streamed response whose body was not read drops the connection: at most
            # what the socket buffers already hold arrives, never the whole file.
            with client.stream("GET", target) as response:
                pass
    except httpx.RemoteProtocolError as error:
        # httpx parses every Location (even when not following it) and calls one it cannot parse
        # (http://0177.0.0.1/) a protocol error; that answer will not change, so it is permanent.
        if not str(error).startswith("Invalid URL in location header"):
            raise
        raise PermanentError("bad-url", f"{_shown(target)} redirects to an unusable location: "
                             f"{mask_secrets(str(error))[:_SHOWN_CHARS]}") from None
    return response


def _follow(client: httpx.Client, url: str, guard: AddressGuard, max_hops: int) -> RedirectChain:
    # Literals are checked up front too, so forms httpx itself rejects (0177.0.0.1) are reported
    # as what they are; names are checked by the pinned connection after resolution.
    try:
        guard.check_literal(urlsplit(url).hostname or "")
    except ValueError:
        pass  # a malformed URL: parsing it just below says what is wrong
    target = _checked_url(url)
    urls, seen = [url], {str(target)}
    while True:
        guard.check_literal(target.host)
        response = _ask(client, target)
        hop = _location(response)
        if hop is None:
            return RedirectChain(tuple(urls), response.status_code)
        if str(hop) in seen:
            raise PermanentError("redirect-loop", f"{_shown(hop)} reached twice from {_shown(url)}")
        if len(urls) > max_hops:
            raise PermanentError("too-many-redirects", f"more than {max_hops} redirects from {_shown(url)}")
        seen.add(str(hop))
        urls.append(str(hop))
        target = hop


def resolve_redirects(
    url: str,
    *,
    guard: AddressGuard,
    timeout_seconds: float,
    max_hops: int = MAX_HOPS,
    client: httpx.Client | None = None,
) -> RedirectChain:
    """Follow `url`'s redirects (301, 302, 303, 307, 308) without downloading any body.

    Stops at the first answer that is not a redirect, whatever its status, and returns the chain.
    Every hop is checked by `guard` before connecting. `timeout_seconds` bounds connecting and
    each read. Pass `client` (made by `download_client`, so connections are pinned) to reuse
    connections; its guard then decides for resolved names, `guard` still for IP literals.

    Raises `PermanentError` (bad-url, too-many-redirects past `max_hops`, redirect-loop,
    blocked-address) or `TransientError` (timeout, connection).
    """
    shown = _shown(url)
    own_client = client is None
    if client is None:
        client = download_client(timeout_seconds, guard)
    try:
        with http_failures(shown, timeout_seconds):
            return _follow(client, url, guard, max_hops)
    finally:
        if own_client:
            client.close()


def resolver_for(settings: Any) -> Callable[[str], RedirectChain]:
    """`resolve_redirects` with the settings' address guard (ALLOW_PRIVATE_ADDRESSES) and timeout."""
    guard = guard_for(settings)
    timeout = float(settings.download_timeout_seconds)
    return lambda url: resolve_redirects(url, guard=guard, timeout_seconds=timeout)
