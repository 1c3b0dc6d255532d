"""A 429 from the Wayback Machine on a download pauses lookups and every download from the
archive, across the fleet (IA firewalls an address that keeps asking through 429s, and that
cuts off everything behind it)."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest

from podcastpile.archive.playback import PlaybackThrottle
from podcastpile.config import Settings
from podcastpile.errors import Stopped, TransientError
from podcastpile.store import EpisodeStore
from podcastpile.store.archive import PLAYBACK_THROTTLED
from podcastpile.store.archive_limits import SharedLimits
from podcastpile.store.clock import utcnow
from tasks.speech import download_audio
from tests.loopback import LoopbackServer, Reply

STAMP = "20261201120000"


def test_a_pause_holds_every_download_until_it_ends(archive_store: EpisodeStore) -> None:
    limits = SharedLimits(archive_store)
    PlaybackThrottle(limits, pause=timedelta(seconds=1.5)).throttled("HTTP 429 from web.archive.org")
    assert limits.reserve_lookup(per_minute=6000).granted is False  # lookups wait too
    other_worker = PlaybackThrottle(SharedLimits(archive_store))
    started = time.monotonic()
    waited = other_worker.wait()
    assert 1.0 <= time.monotonic() - started < 5 and waited >= 1.0
    assert other_worker.wait() == 0.0 and limits.reserve_lookup(per_minute=6000).granted
    # a stopping batch does not sit out the pause
    PlaybackThrottle(limits, pause=timedelta(minutes=1)).throttled("429 again")
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    started = time.monotonic()
    other_worker.wait(stop)
    assert time.monotonic() - started < 5


def test_a_download_that_meets_a_429_pauses_the_fleet_and_the_next_one_waits(
    archive_store: EpisodeStore, database_url: str,
) -> None:
    with LoopbackServer({"/web/*": lambda request: Reply(429, b"Too Many Requests")}) as archive:
        settings = Settings(_env_file=None, database_url=database_url, wayback_url=archive.base_url)
        url = f"{archive.base_url}/web/{STAMP}id_/https://podcasts.example/ep1.mp3"
        with pytest.raises(TransientError) as raised:
            download_audio.fn(url, settings, STAMP)
        assert raised.value.code == "http-429"
        until = SharedLimits(archive_store).lookups_paused_until()
        assert until is not None and until >= utcnow() + timedelta(seconds=55)
        hits = sum(archive.hits.values())
        # another worker's download of another capture: it waits, and sends nothing meanwhile
        stop = threading.Event()
        threading.Timer(1.0, stop.set).start()
        with pytest.raises(Stopped):
            download_audio.fn(url.replace("ep1", "ep2"), settings, STAMP, stop)
        assert sum(archive.hits.values()) == hits
        # a live download (no capture) is not the archive's business
        with pytest.raises(TransientError):
            download_audio.fn(url, settings, None)


def test_the_pause_is_shown_with_its_reason(archive_store: EpisodeStore) -> None:
    PlaybackThrottle(SharedLimits(archive_store)).throttled("HTTP 429 Too Many Requests from web.archive.org")
    from podcastpile.store.archive import ArchiveQueue

    pauses = ArchiveQueue(archive_store).stats(daily_bytes=10**9).pauses
    assert PLAYBACK_THROTTLED in pauses
