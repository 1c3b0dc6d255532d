"""CDX queries and their rows: which captures of a URL (or of a whole folder) exist.

No status filter: a redirecting enclosure's capture is a 3xx row and a capture of bytes seen
before is a revisit row (statuscode "-"); both are captures Save Page Now counts as made. Rows
whose digest is not a SHA-1 ("-", "sha-256:...") keep no digest.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from podcastpile.archive.answers import usable_digest
from podcastpile.store.known_captures import KnownCapture

FIELDS = "original,timestamp,statuscode,digest,length"
# A folder query's rows; more means a busy host folder, whose answer is then incomplete (and
# URLs missing from it are looked up one by one).
PREFIX_LIMIT = 10_000


def folder_of(url: str) -> str:
    """The folder a prefix query covers: the URL up to its path's last `/`, without the query."""
    parts = urlsplit(url)
    path = parts.path.rpartition("/")[0] + "/"
    return f"{parts.scheme}://{parts.netloc}{path}"


def host_of(url: str) -> str:
    """The root of the URL's host: a prefix query from a recent time over it lists every fresh
    capture of that host, for any number of podcasts, in one lookup."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}/"


def query_params(url: str, *, prefix: bool = False, since: str | None = None, until: str | None = None,
                 limit: int | None = None) -> dict[str, str]:
    """The CDX parameters for captures of `url` (or of every URL under it with `prefix`)."""
    params = {"url": url, "output": "json", "fl": FIELDS}
    if prefix:
        params["matchType"] = "prefix"
        params["limit"] = str(limit or PREFIX_LIMIT)
    elif limit:
        params["limit"] = str(limit)
    if since:
        params["from"] = since
    if until:
        params["to"] = until
    return params


def parse_rows(rows: Any) -> list[KnownCapture]:
    """CDX's JSON answer (a header row, then one row per capture) as `KnownCapture`s."""
    if not isinstance(rows, list) or len(rows) < 2 or not isinstance(rows[0], list):
        return []
    header = [str(name) for name in rows[0]]
    found = []
    for row in rows[1:]:
        if not isinstance(row, list) or len(row) != len(header):
            continue
        values = dict(zip(header, (str(value) for value in row)))
        timestamp, original = values.get("timestamp", ""), values.get("original", "")
        if len(timestamp) != 14 or not timestamp.isdigit() or not original:
            continue
        status = values.get("statuscode", "")
        length = values.get("length", "")
        found.append(KnownCapture(
            url=original, timestamp=timestamp, statuscode=status if status.isdigit() else None,
            digest=usable_digest(values.get("digest")), length=int(length) if length.isdigit() else None,
        ))
    return found


def best_capture(captures: Iterable[KnownCapture], *, since: str = "") -> KnownCapture | None:
    """The capture to download: the newest with the body (a 200, or a revisit of one), at or
    after `since`; None when there are only redirects or errors."""
    bodies = [c for c in captures if c.timestamp >= since and c.statuscode in ("200", None)]
    return max(bodies, key=lambda c: (c.digest is not None, c.timestamp), default=None)

