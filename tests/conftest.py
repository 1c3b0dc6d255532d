"""Shared fixtures: a database URL for each store backend (SQLite file, real PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from podcastpile.store import EpisodeStore, make_engine, migrate
from tests import postgres

BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database on each backend: a SQLite file, and a fresh database on real PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'episodes.db'}"
    else:
        with postgres.fresh_database() as url:
            yield url


class FakeClock:
    """A clock tests move by hand, so lease expiry needs no sleeping."""

    def __init__(self) -> None:
        from podcastpile.store.clock import utcnow

        self.now = utcnow()

    def __call__(self):  # type: ignore[no-untyped-def]
        return self.now

    def advance(self, seconds: float) -> None:
        from datetime import timedelta

        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(database_url: str, clock: FakeClock) -> Iterator[EpisodeStore]:
    """A migrated store with archive not required (episodes are claimable at once)."""
    engine = make_engine(database_url)
    migrate(engine)
    store = EpisodeStore(engine, lease_seconds=600, max_attempts=3, archive_required=False, clock=clock)
    yield store
    store.close()
