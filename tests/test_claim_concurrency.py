"""Many workers claiming at once: every episode is claimed exactly once, on SQLite and PostgreSQL."""

from __future__ import annotations

import random
from collections import Counter

from podcastpile.store import EpisodeStore, NewEpisode, make_engine, migrate
from tests.processes import run_together

WORKERS = 8
EPISODES = 2000


def claim_until_empty(database_url: str, worker: str, barrier) -> list[int]:  # type: ignore[no-untyped-def]
    """One worker process: claim batches of random size until the queue is empty."""
    engine = make_engine(database_url)
    store = EpisodeStore(engine, archive_required=False)
    rng = random.Random(worker)
    claimed: list[int] = []
    barrier.wait()  # start together, so claims really race
    while batch := store.claim_batch(worker, rng.randint(1, 12)):
        claimed.extend(claim.episode_id for claim in batch)
    engine.dispose()
    return claimed


def test_every_episode_claimed_exactly_once(database_url: str) -> None:
    engine = make_engine(database_url)
    migrate(engine)
    store = EpisodeStore(engine, archive_required=False)
    store.add(NewEpisode(f"https://example.com/{i}.mp3") for i in range(EPISODES))

    workers = [f"worker-{n}" for n in range(WORKERS)]
    results = run_together(claim_until_empty, [(database_url, worker) for worker in workers])
    claimed = dict(zip(workers, results))

    counts = Counter(episode for ids in claimed.values() for episode in ids)
    assert len(counts) == EPISODES
    assert set(counts.values()) == {1}, "an episode was claimed twice"
    assert sum(1 for ids in claimed.values() if ids) > 1, "claims did not run concurrently"
    # The store agrees with what each worker was told.
    holder = {row.id: row.worker_id for row in store.list(limit=None)}
    for worker, ids in claimed.items():
        assert all(holder[episode] == worker for episode in ids)
    assert store.stats().by_status["assigned"] == EPISODES
    engine.dispose()
