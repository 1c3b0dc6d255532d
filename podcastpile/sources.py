"""Where episode URLs come from: JSONL, CSV and plain-text files, and RSS/Atom feeds (file or URL).

Readers yield `NewEpisode` for each usable entry and `Rejected` (with the line or item number and
why) for each unusable one, so one bad line never stops an import.
"""

from __future__ import annotations

import csv
import json
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from podcastpile import __version__
from podcastpile.store import NewEpisode, Rejected
from podcastpile.net.fetch import download_client
from podcastpile.net.guard import AddressGuard, BlockedAddress
from podcastpile.net.urls import display_url, mask_secrets, podcast_uid

Entry = NewEpisode | Rejected
USER_AGENT = f"podcastpile/{__version__} (+https://github.com/podcastpile)"
_ATOM = "{http://www.w3.org/2005/Atom}"
_XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
_FEED_SUFFIXES = {".rss", ".xml", ".atom"}


class SourceError(ValueError):
    """The source as a whole cannot be read (missing file, not a feed, HTTP error)."""


def read_source(source: str, *, guard: AddressGuard | None = None) -> tuple[int | None, Iterator[Entry]]:
    """Open `source` (a file path, or an http(s) feed URL) and return (entry count if known, entries).

    The format is chosen by file suffix (.jsonl/.ndjson, .csv, .txt, .rss/.xml/.atom) and, failing
    that, by the first non-blank character (`{` JSONL, `<` feed). A feed URL is fetched through
    `guard` (default: public addresses only), like episode downloads.
    """
    if source.startswith(("http://", "https://")):
        return _feed_entries(fetch_feed(source, guard=guard), source)
    path = Path(source)
    if not path.is_file():
        raise SourceError(f"no such file: {source}")
    try:
        head = path.open("rb").read(4096).lstrip()
    except OSError as error:
        raise SourceError(f"cannot read {source}: {error.strerror}") from None
    suffix = path.suffix.lower()
    known = {".jsonl", ".ndjson", ".csv", ".txt"}
    if suffix in _FEED_SUFFIXES or (suffix not in known and head.startswith(b"<")):
        return _feed_entries(path.read_bytes(), str(path))
    total = _count_lines(path)
    if suffix in {".jsonl", ".ndjson", ".json"} or head.startswith(b"{"):
        return total, _jsonl_entries(path)
    if suffix == ".csv":
        return max(total - 1, 0), _csv_entries(path)
    return total, _text_entries(path)


def fetch_feed(
    url: str, *, timeout: float = 30.0, max_bytes: int = 50_000_000, guard: AddressGuard | None = None
) -> bytes:
    """Download a feed (bounded in time and size), connecting only where `guard` allows.

    The client is the episode downloads' pinned one: every connection, redirect hops included,
    goes to an address the guard checked.
    """
    guard = guard or AddressGuard()
    try:
        try:
            guard.check_literal(urlsplit(url).hostname or "")
        except ValueError:
            pass  # malformed: httpx says what is wrong below
        with download_client(timeout, guard) as client:
            client.follow_redirects, client.max_redirects = True, 5
            with client.stream("GET", url) as response:
                return _read_feed(response, url, max_bytes)
    except BlockedAddress as error:
        raise SourceError(f"blocked-address: {mask_secrets(str(error))}") from None
    except httpx.HTTPError as error:
        raise SourceError(f"cannot fetch feed {display_url(url)}: {mask_secrets(str(error))}") from None


def _read_feed(response: httpx.Response, url: str, max_bytes: int) -> bytes:
    if response.status_code != 200:
        raise SourceError(f"feed {display_url(url)} answered HTTP {response.status_code}")
    body = bytearray()
    for chunk in response.iter_bytes():
        body += chunk
        if len(body) > max_bytes:
            raise SourceError(f"feed {display_url(url)} is larger than {max_bytes} bytes")
    return bytes(body)


def _count_lines(path: Path) -> int:
    with path.open("rb") as handle:
        return sum(block.count(b"\n") for block in iter(lambda: handle.read(1 << 20), b""))


def entry_from_record(record: dict, line: int | None) -> Entry:
    """One JSON/CSV record (`episode_url` or `url`, optional `language`, `podcast_id`) as an
    episode to add, or Rejected when it names no URL; `line` says where it came from."""
    url = record.get("episode_url") or record.get("url")
    if not isinstance(url, str) or not url.strip():
        return Rejected(line, "", "no episode_url")
    language = record.get("language")
    podcast_id = record.get("podcast_id")
    return NewEpisode(
        url=url,
        language=str(language) if language not in (None, "") else None,
        podcast_id=str(podcast_id) if podcast_id not in (None, "") else None,
        line=line,
    )


def _jsonl_entries(path: Path) -> Iterator[Entry]:
    with path.open(encoding="utf-8", errors="replace") as handle:
        for line, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as error:
                yield Rejected(line, text.strip()[:80], f"not valid JSON: {error.msg}")
                continue
            if not isinstance(record, dict):
                yield Rejected(line, text.strip()[:80], "not a JSON object")
                continue
            yield entry_from_record(record, line)


def _csv_entries(path: Path) -> Iterator[Entry]:
    with path.open(encoding="utf-8", errors="replace", newline="") as handle:
        reader = csv.DictReader(handle)
        fields = set(reader.fieldnames or [])
        if not fields & {"episode_url", "url"}:
            yield Rejected(1, "", f"CSV header has no episode_url column (found: {sorted(fields)})")
            return
        for record in reader:
            yield entry_from_record(record, reader.line_num)


def _text_entries(path: Path) -> Iterator[Entry]:
    with path.open(encoding="utf-8", errors="replace") as handle:
        for line, text in enumerate(handle, start=1):
            text = text.strip()
            if text and not text.startswith("#"):
                yield NewEpisode(url=text, line=line)


def _link(element: ET.Element | None, attribute: str) -> tuple[str, str]:
    """(url, mime type) of an RSS <enclosure> or Atom <link rel="enclosure">; empty if absent."""
    if element is None:
        return "", ""
    return element.get(attribute, "").strip(), element.get("type", "").strip()


def _feed_entries(data: bytes, source: str) -> tuple[int, Iterator[Entry]]:
    """Enclosures of an RSS 2.0 or Atom feed; the podcast id is derived from the feed's URL."""
    try:
        root = ET.fromstring(data)
    except ET.ParseError as error:
        raise SourceError(f"{source} is not an RSS/Atom feed: {error}") from None
    if root.tag == "rss":
        channel = root.find("channel")
        if channel is None:
            raise SourceError(f"{source}: RSS without a <channel>")
        language = channel.findtext("language")
        self_link = channel.find(f"{_ATOM}link[@rel='self']")
        feed_url = self_link.get("href") if self_link is not None else source
        items = [_link(item.find("enclosure"), "url") for item in channel.findall("item")]
    elif root.tag == f"{_ATOM}feed":
        language = root.get(_XML_LANG)
        self_link = root.find(f"{_ATOM}link[@rel='self']")
        feed_url = self_link.get("href") if self_link is not None else source
        items = [
            _link(entry.find(f"{_ATOM}link[@rel='enclosure']"), "href")
            for entry in root.findall(f"{_ATOM}entry")
        ]
    else:
        raise SourceError(f"{source} is XML but not an RSS or Atom feed (root <{root.tag}>)")
    podcast_id = podcast_uid(feed_url or source)

    def entries() -> Iterator[Entry]:
        for number, (url, mime) in enumerate(items, start=1):
            if not url:
                yield Rejected(number, "", "feed item has no enclosure")
            elif mime and not mime.lower().startswith("audio/"):
                yield Rejected(number, url, f"enclosure is {mime}, not audio")
            else:
                yield NewEpisode(url=url, language=language, podcast_id=podcast_id, line=number)

    return len(items), entries()
