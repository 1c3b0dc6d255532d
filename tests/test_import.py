"""Reading episode sources: JSONL, CSV, text, RSS and Atom (file and over HTTP), with bad lines."""

from __future__ import annotations

from pathlib import Path

import pytest

from podcastpile.net.guard import AddressGuard, allow_any
from podcastpile.sources import SourceError, read_source
from podcastpile.store import NewEpisode, Rejected
from podcastpile.net.urls import podcast_uid
from tests.loopback import LoopbackServer, Reply

RSS = b"""<?xml version="1.0" encoding="UTF-8"?>
<rss version="2.0" xmlns:atom="http://www.w3.org/2005/Atom" xmlns:itunes="http://www.itunes.com/dtds/podcast-1.0.dtd">
<channel>
  <title>Test Cast</title>
  <language>en-US</language>
  <atom:link rel="self" href="https://feeds.example.com/testcast.xml" type="application/rss+xml"/>
  <item><title>One</title><enclosure url="https://cdn.example.com/1.mp3" length="100" type="audio/mpeg"/></item>
  <item><title>Two</title><enclosure url="https://cdn.example.com/2.m4a" type="audio/x-m4a"/></item>
  <item><title>Video</title><enclosure url="https://cdn.example.com/3.mp4" type="video/mp4"/></item>
  <item><title>No audio</title></item>
</channel>
</rss>"""

ATOM = b"""<?xml version="1.0" encoding="utf-8"?>
<feed xmlns="http://www.w3.org/2005/Atom" xml:lang="de">
  <title>Atom Cast</title>
  <entry><title>A</title><link rel="enclosure" href="https://cdn.example.com/a.ogg" type="audio/ogg"/></entry>
  <entry><title>B</title><link rel="alternate" href="https://example.com/b.html"/></entry>
</feed>"""


def collect(source: str) -> tuple[int | None, list[NewEpisode], list[Rejected]]:
    total, entries = read_source(source, guard=AddressGuard(allow=allow_any))  # loopback feeds here
    items = list(entries)
    return total, [i for i in items if isinstance(i, NewEpisode)], [i for i in items if isinstance(i, Rejected)]


def test_jsonl_with_bad_lines(tmp_path: Path) -> None:
    path = tmp_path / "episodes.jsonl"
    path.write_text(
        '{"episode_url": "https://a.com/1.mp3", "language": "en", "podcast_id": "p1"}\n'
        "{broken json\n"
        "\n"
        '["not", "an", "object"]\n'
        '{"language": "en"}\n'
        '{"url": "https://a.com/2.mp3"}\n'
    )
    total, good, bad = collect(str(path))
    assert total == 6
    assert [(e.url, e.language, e.podcast_id, e.line) for e in good] == [
        ("https://a.com/1.mp3", "en", "p1", 1), ("https://a.com/2.mp3", None, None, 6)]
    assert [(r.line, r.reason.split(":")[0]) for r in bad] == [
        (2, "not valid JSON"), (4, "not a JSON object"), (5, "no episode_url")]


def test_csv(tmp_path: Path) -> None:
    path = tmp_path / "episodes.csv"
    path.write_text("episode_url,language,podcast_id\nhttps://a.com/1.mp3,de,\n,en,p\nhttps://a.com/2.mp3,,p2\n")
    total, good, bad = collect(str(path))
    assert total == 3
    assert [(e.url, e.language, e.podcast_id) for e in good] == [
        ("https://a.com/1.mp3", "de", None), ("https://a.com/2.mp3", None, "p2")]
    assert [(r.line, r.reason) for r in bad] == [(3, "no episode_url")]


def test_csv_without_url_column(tmp_path: Path) -> None:
    path = tmp_path / "episodes.csv"
    path.write_text("link,lang\nhttps://a.com/1.mp3,en\n")
    _, good, bad = collect(str(path))
    assert good == [] and "no episode_url column" in bad[0].reason


def test_plain_text(tmp_path: Path) -> None:
    path = tmp_path / "urls.txt"
    path.write_text("# a comment\nhttps://a.com/1.mp3\n\nhttps://a.com/2.mp3\n")
    _, good, bad = collect(str(path))
    assert [e.url for e in good] == ["https://a.com/1.mp3", "https://a.com/2.mp3"] and bad == []


def test_rss_file(tmp_path: Path) -> None:
    path = tmp_path / "feed.rss"
    path.write_bytes(RSS)
    total, good, bad = collect(str(path))
    assert total == 4
    assert [e.url for e in good] == ["https://cdn.example.com/1.mp3", "https://cdn.example.com/2.m4a"]
    assert {e.language for e in good} == {"en-US"}
    assert {e.podcast_id for e in good} == {podcast_uid("https://feeds.example.com/testcast.xml")}
    assert [(r.line, r.reason) for r in bad] == [
        (3, "enclosure is video/mp4, not audio"), (4, "feed item has no enclosure")]


def test_atom_feed_over_http() -> None:
    with LoopbackServer({"/feed": lambda r: Reply(200, ATOM, {"Content-Type": "application/atom+xml"})}) as server:
        _, good, bad = collect(server.url("/feed"))
    assert [(e.url, e.language) for e in good] == [("https://cdn.example.com/a.ogg", "de")]
    assert good[0].podcast_id == podcast_uid(server.url("/feed"))  # no self link: the URL we read
    assert [r.reason for r in bad] == ["feed item has no enclosure"]


@pytest.mark.parametrize(
    ("routes", "message"),
    [
        ({"/feed": lambda r: Reply(404, b"gone")}, "HTTP 404"),
        ({"/feed": lambda r: Reply(200, b"<html><body>hi</body></html>")}, "not an RSS or Atom feed"),
        ({"/feed": lambda r: Reply(200, b"<rss><channel><item>")}, "not an RSS/Atom feed"),
    ],
)
def test_bad_feeds(routes: dict, message: str) -> None:
    with LoopbackServer(routes) as server, pytest.raises(SourceError, match=message):
        read_source(server.url("/feed"), guard=AddressGuard(allow=allow_any))  # loopback allowed here


def test_missing_file() -> None:
    with pytest.raises(SourceError, match="no such file"):
        read_source("/nonexistent/episodes.jsonl")


def test_feed_urls_go_through_the_address_guard() -> None:
    with LoopbackServer({"/feed": lambda r: Reply(200, b"<rss/>")}) as server:
        with pytest.raises(SourceError, match="blocked-address"):
            read_source(server.url("/feed"))  # 127.0.0.1 is not public
        assert server.hits["/feed"] == 0  # refused before connecting
