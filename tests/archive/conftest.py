"""Fixtures for the archive stage: the loopback Internet Archive, an ad-splicing origin, a store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from podcastpile.archive.stage import ArchiveLimits, ArchiveStage
from podcastpile.archive.wayback import WaybackClient
from podcastpile.store import EpisodeStore, NewEpisode, make_engine, migrate
from podcastpile.store.archive import ArchiveQueue
from tests.wayback import AdHost, WaybackDouble

WAV = (Path(__file__).parent.parent / "fixtures" / "speech" / "conversation.wav").read_bytes()
# Save Page Now needs keys; the double accepts any unless told otherwise (`keys`).
KEYS = {"access_key": "AK", "secret_key": "SK"}
FAST = ArchiveLimits(per_minute=60, poll_seconds=0.05, lookups_per_minute=6000, listed_after_seconds=0.05)


@pytest.fixture
def ia() -> Iterator[WaybackDouble]:
    with WaybackDouble() as double:
        yield double


@pytest.fixture
def origin() -> Iterator[AdHost]:
    with AdHost({f"ep{i}.wav": WAV for i in range(40)}) as host:
        yield host


@pytest.fixture
def archive_store(database_url: str) -> Iterator[EpisodeStore]:
    engine = make_engine(database_url)
    migrate(engine)
    store = EpisodeStore(engine, archive_required=True)
    yield store
    store.close()


class Harness:
    """A store, the double and an origin wired together, with helpers to add and archive episodes."""

    def __init__(self, store: EpisodeStore, ia: WaybackDouble, origin: AdHost) -> None:
        self.store, self.ia, self.origin = store, ia, origin
        self.events: list[tuple[int, str, str]] = []

    def queue(self, **kwargs: object) -> ArchiveQueue:
        return ArchiveQueue(self.store, **kwargs)  # type: ignore[arg-type]

    def add(self, *names: str) -> list[int]:
        self.store.add([NewEpisode(self.origin.url(name)) for name in names])
        return [self.store.find(self.origin.url(name)).id for name in names]  # type: ignore[union-attr]

    def run(self, queue: ArchiveQueue | None = None, limits: ArchiveLimits = FAST,
            max_seconds: float = 20.0, **claim: object):  # type: ignore[no-untyped-def]
        queue = queue or self.queue()
        claims = queue.claim("test-run", 100, **claim)  # type: ignore[arg-type]
        with WaybackClient(self.ia.base_url, self.ia.base_url, timeout_seconds=10, **KEYS) as client:
            stage = ArchiveStage(queue, client, limits, on_event=lambda *e: self.events.append(e))
            return stage.run(claims, max_seconds=max_seconds)

    def row(self, episode_id: int):  # type: ignore[no-untyped-def]
        return self.store.get(episode_id)


@pytest.fixture
def harness(archive_store: EpisodeStore, ia: WaybackDouble, origin: AdHost) -> Harness:
    return Harness(archive_store, ia, origin)
