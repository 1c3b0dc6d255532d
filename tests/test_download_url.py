"""Which URL a worker downloads is decided in one place, `Claim.download_url`, per ARCHIVE_MODE."""

from __future__ import annotations

import pytest

from podcastpile.config import Settings
from podcastpile.store import EpisodeStore, NewEpisode, make_engine, migrate
from tests.storehelpers import mark_archived


@pytest.mark.parametrize(
    ("mode", "expected"), [("required", None), ("prefer", "original"), ("off", "original")],
)
def test_an_episode_without_a_capture_downloads_the_original_only_where_the_mode_allows(
    database_url: str, mode: str, expected: str | None,
) -> None:
    settings = Settings(database_url=database_url, archive_mode=mode)
    store = EpisodeStore.open(settings)
    url = "https://example.com/episode.mp3"
    store.add([NewEpisode(url)])
    episode = store.find(url)
    assert episode is not None
    store.skip_archive([episode.id])  # ready without a capture, as `ppcli process --live` makes it
    (claim,) = store.claim_batch("w", 1)
    assert claim.download_url == (url if expected == "original" else None)


def test_the_archived_copy_is_downloaded_when_only_archived_copies_may_be(database_url: str) -> None:
    engine = make_engine(database_url)
    migrate(engine)
    store = EpisodeStore(engine, archive_required=True, archive_only=True)
    url = "https://example.com/episode.mp3"
    store.add([NewEpisode(url)])
    episode = store.find(url)
    assert episode is not None
    archived = "https://web.archive.org/web/20260101000000id_/https://example.com/episode.mp3"
    mark_archived(store, episode.id, timestamp="20260101000000", archive_url=archived)
    (claim,) = store.claim_batch("w", 1)
    assert claim.download_url == archived


def test_a_url_is_normalized_once_and_found_again_by_its_key(database_url: str) -> None:
    engine = make_engine(database_url)
    migrate(engine)
    store = EpisodeStore(engine, archive_required=False)
    new = NewEpisode.checked("HTTPS://Example.COM/a.mp3#frag", language="EN")
    assert new.key is not None and new.check() is new
    assert store.add([new]).added == 1
    found = store.find(new)
    assert found is not None and found.url == new.url and found.language == new.language
    assert store.find("https://example.com/a.mp3") is not None  # a raw URL still finds it
