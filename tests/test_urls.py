"""URL normal form: the same episode written differently is one episode; junk is refused."""

from __future__ import annotations

import pytest

from podcastpile.net.urls import InvalidURL, episode_uid, normalize_url, podcast_uid


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("https://Example.COM/Ep1.mp3", "https://example.com/Ep1.mp3"),
        ("  https://example.com/a.mp3\n", "https://example.com/a.mp3"),
        ("https://example.com:443/a.mp3", "https://example.com/a.mp3"),
        ("http://example.com:80/a.mp3", "http://example.com/a.mp3"),
        ("http://example.com:8080/a.mp3", "http://example.com:8080/a.mp3"),
        ("https://example.com/a.mp3#t=30", "https://example.com/a.mp3"),
        ("https://example.com/a.mp3?token=AbC", "https://example.com/a.mp3?token=AbC"),
        ("https://example.com", "https://example.com/"),
        ("HTTPS://dts.podtrac.com/redirect.mp3/x.com/E.MP3", "https://dts.podtrac.com/redirect.mp3/x.com/E.MP3"),
        ("http://[::1]:9000/a.mp3", "http://[::1]:9000/a.mp3"),
    ],
)
def test_normal_form(raw: str, normal: str) -> None:
    assert normalize_url(raw) == normal
    assert normalize_url(normal) == normal  # idempotent (normal forms take the fast path)


@pytest.mark.parametrize(
    "raw",
    ["", "   ", "example.com/a.mp3", "ftp://example.com/a.mp3", "https://", "https://exa mple.com/a",
     "https://example.com:99999/a", "javascript:alert(1)", "https://a..b/x.mp3", "https://a.com/x y.mp3", "https://" + "a" * 5000 + ".com/"],
)
def test_invalid(raw: str) -> None:
    with pytest.raises(InvalidURL):
        normalize_url(raw)


def test_stable_ids() -> None:
    assert episode_uid("https://example.com/a.mp3") == "6c4feed592bf2203"  # md5(url)[:16]; must never change
    assert len(podcast_uid("https://example.com/feed.xml")) == 12
    assert episode_uid(normalize_url("https://EXAMPLE.com/a.mp3#x")) == episode_uid("https://example.com/a.mp3")
