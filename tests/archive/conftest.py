"""Fixtures for the archive stage: the loopback Internet Archive, an ad-splicing origin, a store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from podcastpile.archive.outcomes import ArchiveSummary
from podcastpile.archive.stage import ArchiveLimits, ArchiveStage
from podcastpile.archive.wayback import WaybackClient
from podcastpile.net.guard import AddressGuard, allow_any
from podcastpile.net.redirects import RedirectChain, resolve_redirects
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


# --- the realistic double (what the real Internet Archive answers) ---------------------------

LIMITS = ArchiveLimits(per_minute=600, poll_seconds=0.05, lookups_per_minute=6000, stale_seconds=60,
                       listed_after_seconds=0.05)
GUARD = AddressGuard(allow=allow_any)


def resolve(url: str) -> RedirectChain:
    return resolve_redirects(url, guard=GUARD, timeout_seconds=10)


class Realistic:
    """A store, the realistic double and an origin, with a run that resolves redirect chains."""

    def __init__(self, store: EpisodeStore, ia: WaybackDouble, origin: AdHost) -> None:
        self.store, self.ia, self.origin = store, ia, origin
        self.events: list[tuple[int, str, str]] = []

    def add(self, *urls: str) -> list[int]:
        self.store.add([NewEpisode(url) for url in urls])
        return [self.store.find(url).id for url in urls]  # type: ignore[union-attr]

    def run(self, limits: ArchiveLimits = LIMITS, max_seconds: float = 20.0, keys: bool = True,
            queue: ArchiveQueue | None = None) -> ArchiveSummary:
        queue = queue or ArchiveQueue(self.store)
        claims = queue.claim("test-run", 100)
        with WaybackClient(self.ia.base_url, timeout_seconds=10, **(KEYS if keys else {})) as client:
            stage = ArchiveStage(queue, client, limits, on_event=lambda *e: self.events.append(e), resolve=resolve)
            return stage.run(claims, max_seconds=max_seconds)

    def row(self, episode_id: int):  # type: ignore[no-untyped-def]
        return self.store.get(episode_id)

    def playback(self, episode_id: int) -> bytes:
        response = httpx.get(self.row(episode_id).archive_url, timeout=10)
        assert response.status_code == 200, response.status_code
        return response.content

    def pauses(self) -> dict:
        return ArchiveQueue(self.store).stats(daily_bytes=10**12).pauses

    def expire_episodes_only(self) -> None:
        """Let every episode's deferral pass, but not the pauses."""
        with self.store.engine.begin() as connection:
            connection.exec_driver_sql("UPDATE episodes SET archive_not_before = NULL")

    def expire(self) -> None:
        """Let every deferral pass (as if the time had come)."""
        with self.store.engine.begin() as connection:
            connection.exec_driver_sql("UPDATE episodes SET archive_not_before = NULL")
            connection.exec_driver_sql("DELETE FROM archive_pauses")


FILES = {name: WAV for i in range(10) for name in (f"ep{i}.wav", f"a/ep{i}.wav", f"f{i}/ep.wav")}


@pytest.fixture
def real(archive_store: EpisodeStore) -> Iterator[Realistic]:
    with WaybackDouble.realistic(pending_polls=1, replay_lag_seconds=0.3, lookups_per_minute=None,
                                 keys={"AK:SK"}) as ia, AdHost(FILES) as origin:
        yield Realistic(archive_store, ia, origin)
