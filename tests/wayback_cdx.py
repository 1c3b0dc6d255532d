"""Stored captures and how the loopback Internet Archive (`tests/wayback.py`) lists them: CDX rows
and query semantics, and the availability API's choice.

CDX is modelled on the real `web.archive.org/cdx/search/cdx` (IA's wayback-cdx-server), not on what our
client asks for:

- `url` with `matchType=exact|prefix|host|domain`; a trailing `*` in `url` means prefix and a
  leading `*.` means domain;
- `from`/`to` take 1-14 digit partial timestamps: `from` is padded with 0s, `to` with 9s;
- `filter=[!]field:regex` (repeatable), the regex matching the whole field value;
- `collapse=field` or `collapse=field:N` (repeatable): keep the first row of each run of rows
  whose field (or its first N characters) is equal;
- `limit=N` (first N) or `limit=-N` (last N), applied last;
- `fl=` picks the columns; `output=json` answers a header row then the rows, or `[]` when
  nothing matched; without it, one space-separated line per row.

Rows are sorted by urlkey, then timestamp. The urlkey is SURT-like: host labels reversed and
comma-joined, `:port` when not 80/443, `)`, then path and query, all lowercased
(`http://127.0.0.1:8000/Audio/a.wav` -> `1,0,0,127:8000)/audio/a.wav`). Unlike real SURT it
keeps `www.`, does not sort query parameters and leaves IP addresses reversed like names.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

DEFAULT_FIELDS = ("urlkey", "timestamp", "original", "mimetype", "statuscode", "digest", "length")
Row = dict[str, str]


def sha1_base32(data: bytes) -> str:
    """The digest CDX reports: base32 of the SHA-1 of the bytes."""
    return base64.b32encode(hashlib.sha1(data).digest()).decode()


@dataclass
class Capture:
    """One stored capture (one hop of a redirect chain, or the body)."""

    timestamp: str
    body: bytes  # as stored: still Content-Encoded when `encoding` is set
    original: str
    statuscode: int = 200
    location: str | None = None  # the next URL, for a 3xx capture
    mimetype: str = "audio/wav"
    encoding: str | None = None  # the Content-Encoding the body was archived with
    visible_at: float = 0.0  # monotonic time from which CDX, availability and playback see it

    def visible(self) -> bool:
        """Past the replay lag: listed by lookups and played at its own timestamp."""
        return self.visible_at <= time.monotonic()


def rows(captures: dict[str, list[Capture]], odd_digests: dict[str, str], revisit_urls: Iterable[str]) -> list[Row]:
    """Every visible capture as a CDX row. A URL in `revisit_urls` has its newest capture listed as
    a revisit (statuscode "-", mimetype "warc/revisit"); `odd_digests` replaces a URL's digests."""
    listed = []
    for url, found in captures.items():
        newest = max(found, key=lambda c: c.timestamp, default=None)
        for capture in found:
            if not capture.visible():
                continue
            revisit = capture is newest and url in revisit_urls
            listed.append({
                "urlkey": urlkey(url), "timestamp": capture.timestamp, "original": url,
                "mimetype": "warc/revisit" if revisit else capture.mimetype,
                "statuscode": "-" if revisit else str(capture.statuscode),
                "digest": odd_digests.get(url, sha1_base32(capture.body)),
                "length": str(len(capture.body)),  # the real one is the compressed WARC record's size
            })
    return listed


def closest(found: list[Capture], wanted: str) -> Capture:
    """The availability API's pick: the capture closest to `wanted` (a partial timestamp), else the newest."""
    if wanted:
        target = int(pad_from(wanted))
        return min(found, key=lambda c: abs(int(c.timestamp) - target))
    return max(found, key=lambda c: c.timestamp)


def urlkey(url: str) -> str:
    """The SURT-like key the double sorts and matches on (see the module docstring)."""
    split = urlsplit(url if "://" in url else "http://" + url)
    host = ",".join(reversed((split.hostname or "").split(".")))
    try:
        port = split.port
    except ValueError:
        port = None
    if port and port not in (80, 443):
        host += f":{port}"
    key = f"{host}){split.path or '/'}"
    if split.query:
        key += "?" + split.query
    return key.lower()


def _host_of(key: str) -> tuple[str, str]:
    """(reversed host labels, port) of a urlkey."""
    host = key.partition(")")[0]
    labels, _, port = host.partition(":")
    return labels, port


def pad_from(stamp: str) -> str:
    digits = re.sub(r"\D", "", stamp)[:14]
    return digits.ljust(14, "0")


def pad_to(stamp: str) -> str:
    digits = re.sub(r"\D", "", stamp)[:14]
    return digits.ljust(14, "9")


def _matches(row_key: str, wanted: str, match_type: str) -> bool:
    if match_type == "prefix":
        return row_key.startswith(wanted)
    if match_type in ("host", "domain"):
        labels, port = _host_of(row_key)
        want_labels, want_port = _host_of(wanted)
        if port != want_port:
            return False
        if match_type == "host":
            return labels == want_labels
        return labels == want_labels or labels.startswith(want_labels + ",")
    return row_key == wanted


def _filtered(rows: list[Row], specs: list[str]) -> list[Row]:
    for spec in specs:
        negate = spec.startswith("!")
        name, _, pattern = spec.removeprefix("!").partition(":")
        regex = re.compile(pattern)
        rows = [r for r in rows if bool(regex.fullmatch(r.get(name, ""))) != negate]
    return rows


def _collapsed(rows: list[Row], specs: list[str]) -> list[Row]:
    for spec in specs:
        name, _, width = spec.partition(":")
        size = int(width) if width.isdigit() else None
        kept: list[Row] = []
        previous: str | None = None
        for row in rows:
            value = row.get(name, "")[:size]
            if value != previous:
                kept.append(row)
            previous = value
        rows = kept
    return rows


def select(rows: list[Row], query: dict[str, list[str]]) -> list[Row]:
    """The rows a CDX query answers, in order; `rows` carry every field of DEFAULT_FIELDS."""
    first = {key: values[0] for key, values in query.items() if values}
    url = first.get("url", "")
    match_type = first.get("matchType", "exact")
    if url.endswith("*"):
        url, match_type = url[:-1], "prefix"
    if url.startswith("*."):
        url, match_type = url[2:], "domain"
    wanted = urlkey(url)
    if match_type in ("host", "domain"):
        wanted = wanted.partition(")")[0] + ")"
    low, high = pad_from(first.get("from", "")), pad_to(first.get("to", ""))
    chosen = [r for r in rows if _matches(r["urlkey"], wanted, match_type) and low <= r["timestamp"] <= high]
    chosen.sort(key=lambda r: (r["urlkey"], r["timestamp"]))
    chosen = _filtered(chosen, query.get("filter", []))
    chosen = _collapsed(chosen, query.get("collapse", []))
    limit = int(first.get("limit", "0") or 0)
    if limit < 0:
        chosen = chosen[limit:]
    elif limit > 0:
        chosen = chosen[:limit]
    return chosen


def render(rows: list[Row], query: dict[str, list[str]]) -> tuple[bytes, str]:
    """(body, content type) of the answer: JSON with a header row, or text lines."""
    first = {key: values[0] for key, values in query.items() if values}
    fields = [f for f in first.get("fl", ",".join(DEFAULT_FIELDS)).split(",") if f in DEFAULT_FIELDS]
    table = [[row[name] for name in fields] for row in rows]
    if first.get("output") == "json":
        return json.dumps([fields, *table] if table else []).encode(), "application/json"
    return "".join(" ".join(line) + "\n" for line in table).encode(), "text/plain"
