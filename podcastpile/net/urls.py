"""Episode URLs: one normal form, so the same episode is never queued twice, stable ids, and the
form they are shown in (passwords hidden)."""

from __future__ import annotations

import hashlib
import re
from urllib.parse import urlsplit, urlunsplit

_DEFAULT_PORTS = {"http": 80, "https": 443}
MAX_URL_LENGTH = 4096
_WHITESPACE = re.compile(r"\s")
# Control characters (C0, DEL, C1) are never part of a URL; stored, they could reach a terminal
# (ESC sequences) or a database that refuses them (PostgreSQL and NUL).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
# Already in normal form: lower-case scheme and host, no port, userinfo or fragment, a path.
# Most feed URLs are; matching them with one regex keeps million-URL imports fast.
_NORMAL = re.compile(
    r"https?://[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*/[^\s#]*"
)
# A password in a URL's userinfo, `//user:password@`: from the authority's first ':' to its last
# '@' (urllib, and so the downloads, split userinfo at the last '@'). The authority ends at the
# first '/', '?', '#' or whitespace, so a ':' or '@' in a path or query is left alone.
_URL_PASSWORD = re.compile(r"(?P<lead>//[^/?#\s:@]*):[^/?#\s]*@")
# The same without a scheme (`user:password@host`, as in a mistyped DATABASE_URL), only at the
# start of a word so `a:b@c` inside a path or query is left alone.
_BARE_PASSWORD = re.compile(r"(?P<lead>(?:^|(?<=[\s'\"(<,;]))[^\s/?#@:'\"]+):[^/?#\s'\"]*@(?=[\w\[])")
# libpq (so DATABASE_URL) also takes the password as a query parameter.
_QUERY_PASSWORD = re.compile(r"(?P<lead>[?&]password=)[^&#\s'\"]*", re.IGNORECASE)
MASK = "***"


class InvalidURL(ValueError):
    """The text is not an http(s) URL we can fetch. The message says why."""


def _quoted(text: str) -> str:
    """The start of a rejected URL for an error message: password hidden first, then cut."""
    return repr(mask_secrets(text)[:80])


def normalize_url(raw: str) -> str:
    """Return the canonical form of an episode URL, or raise `InvalidURL`.

    Scheme and host are lower-cased, default ports and the fragment dropped. Path and query
    are kept as they are: podcast hosts put tokens and redirect chains there, so changing
    them could name a different file.
    """
    text = raw.strip()
    if len(text) <= MAX_URL_LENGTH and _NORMAL.fullmatch(text) and not _CONTROL.search(text):
        return text
    if not text:
        raise InvalidURL("empty URL")
    if len(text) > MAX_URL_LENGTH:
        raise InvalidURL(f"URL longer than {MAX_URL_LENGTH} characters")
    if _WHITESPACE.search(text):
        raise InvalidURL(f"URL contains whitespace: {_quoted(text)}")
    if _CONTROL.search(text):
        raise InvalidURL(f"URL contains a control character: {_quoted(text)}")
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as error:
        raise InvalidURL(f"malformed URL {_quoted(text)}: {error}") from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise InvalidURL(f"not an http(s) URL: {_quoted(text)}")
    host = (parts.hostname or "").lower()
    if not host or host.startswith(".") or ".." in host:
        raise InvalidURL(f"URL has no valid host: {_quoted(text)}")
    netloc = host if ":" not in host else f"[{host}]"  # IPv6 literal
    if parts.username or parts.password:
        userinfo = parts.username or ""
        if parts.password:
            userinfo += f":{parts.password}"
        netloc = f"{userinfo}@{netloc}"
    if port is not None and port != _DEFAULT_PORTS[scheme]:
        netloc = f"{netloc}:{port}"
    return urlunsplit((scheme, netloc, parts.path or "/", parts.query, ""))


def mask_secrets(text: str) -> str:
    """`text` with the password of every `user:password@` (and `?password=`) in it shown as `***`.

    For any text that may quote URLs (error reasons, log lines, setting values) before it is
    printed, logged or handed to Prefect. User names and hosts stay readable.
    """
    if "=" in text:
        text = _QUERY_PASSWORD.sub(rf"\g<lead>{MASK}", text)
    if "@" not in text:  # the common case: nothing more to hide, no regex work
        return text
    text = _URL_PASSWORD.sub(rf"\g<lead>:{MASK}@", text)
    return _BARE_PASSWORD.sub(rf"\g<lead>:{MASK}@", text)


def display_url(url: str) -> str:
    """An episode URL as it may be shown: `https://user:pw@host/ep.mp3` → `https://user:***@host/ep.mp3`.

    The store keeps URLs as given (a password may be what opens the file); every display of
    them goes through this.
    """
    return mask_secrets(url)


def url_hash(normalized_url: str) -> str:
    """md5 hex of a normalized URL: the unique key of an episode (indexable whatever the URL length)."""
    return hashlib.md5(normalized_url.encode()).hexdigest()


def episode_uid(normalized_url: str) -> str:
    """Stable public episode id, as in SPoRC: md5(url)[:16]."""
    return url_hash(normalized_url)[:16]


def podcast_uid(feed_url: str) -> str:
    """Stable public podcast id, as in SPoRC: md5(rss_url)[:12]."""
    return hashlib.md5(feed_url.strip().encode()).hexdigest()[:12]
