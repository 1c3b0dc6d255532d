"""The lease keeper keeps a slow batch's episodes leased, and notices a lease taken away."""

from __future__ import annotations

import time

import pytest

from podcastpile.leases import LeaseKeeper
from podcastpile.store import EpisodeStore, LeaseLost, NewEpisode, make_engine, migrate


@pytest.fixture
def short_lease_store(database_url: str):  # type: ignore[no-untyped-def]
    engine = make_engine(database_url)
    migrate(engine)
    yield EpisodeStore(engine, lease_seconds=2.0, archive_required=False, reap_every_seconds=0)
    engine.dispose()


def test_keeper_renews_leases_past_their_first_deadline(short_lease_store: EpisodeStore) -> None:
    store = short_lease_store
    store.add([NewEpisode("https://example.com/kept.mp3"), NewEpisode("https://example.com/unkept.mp3")])
    kept, unkept = store.claim_batch("w", 2)
    with LeaseKeeper(store, [kept], interval=0.2) as keeper:
        time.sleep(3.0)  # longer than the lease
        keeper.drop(kept.episode_id)  # before completing: a renewal after it would find no lease
        store.complete(kept.episode_id, kept.lease_token, {"duration": 1.0})  # the lease was renewed
    assert keeper.lost == set()
    with pytest.raises(LeaseLost):  # the same wait without a keeper loses the lease
        store.complete(unkept.episode_id, unkept.lease_token, {"duration": 1.0})


def test_keeper_reports_a_lease_taken_by_another_worker(short_lease_store: EpisodeStore) -> None:
    store = short_lease_store
    store.add([NewEpisode("https://example.com/a.mp3")])
    (claim,) = store.claim_batch("slow", 1)
    time.sleep(2.1)  # expired before the keeper ever ran
    (other,) = store.claim_batch("fast", 1)
    assert other.episode_id == claim.episode_id
    keeper = LeaseKeeper(store, [claim], interval=60)
    keeper.renew_all()
    assert keeper.lost == {claim.episode_id}
