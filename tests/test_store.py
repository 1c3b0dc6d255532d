"""The episode store on SQLite and on real PostgreSQL: adding, claiming, leases, results, stats."""

from __future__ import annotations

import pytest

from podcastpile.errors import PermanentError, TransientError
from podcastpile.store import EpisodeStatus, EpisodeStore, LeaseLost, NewEpisode, UnknownEpisode
from tests.conftest import FakeClock
from tests.storehelpers import mark_archived, release

RESULT = {
    "duration": 1800.0, "sha256": "a" * 64, "md5": "b" * 32, "processing_seconds": 12.5,
    "code_version": "0.1.0+gtest", "turns": [{"speaker": "speaker_0", "text": "hello"}],
}


def add(store: EpisodeStore, n: int, prefix: str = "https://example.com/ep") -> None:
    summary = store.add([NewEpisode(f"{prefix}{i}.mp3") for i in range(n)])
    assert summary.added == n


def test_add_is_idempotent_and_normalizes(store: EpisodeStore) -> None:
    first = store.add([
        NewEpisode("https://Example.com/a.mp3", language="EN"),
        NewEpisode("https://example.com/a.mp3#t=1"),  # same episode, repeated in the input
        NewEpisode("https://example.com/b.mp3", podcast_id="pod1"),
        NewEpisode("not a url", line=4),
        NewEpisode("https://example.com/c.mp3", language="klingon!", line=5),
    ])
    assert (first.added, first.present) == (2, 1)
    assert [(r.line, r.url) for r in first.rejected] == [(4, "not a url"), (5, "https://example.com/c.mp3")]
    again = store.add([NewEpisode("https://example.com/a.mp3"), NewEpisode("https://example.com/b.mp3")])
    assert (again.added, again.present) == (0, 2)
    rows = store.list()
    assert [row.url for row in rows] == ["https://example.com/a.mp3", "https://example.com/b.mp3"]
    assert rows[0].language == "en" and rows[1].podcast_id == "pod1"
    assert store.find("HTTPS://EXAMPLE.COM/a.mp3").id == rows[0].id


def test_add_in_chunks_reports_progress(store: EpisodeStore) -> None:
    seen: list[int] = []
    episodes = (NewEpisode(f"https://example.com/{i % 700}.mp3") for i in range(1000))
    summary = store.add(episodes, chunk_size=300, on_progress=seen.append)
    assert seen == [300, 300, 300, 100]
    assert (summary.added, summary.present) == (700, 300)


def test_archive_required_holds_episodes_until_archived(database_url: str) -> None:
    from podcastpile.store import make_engine, migrate

    engine = make_engine(database_url)
    migrate(engine)
    store = EpisodeStore(engine, archive_required=True)
    store.add([NewEpisode("https://example.com/a.mp3")])
    (episode,) = store.list()
    assert episode.status == EpisodeStatus.archive_pending
    assert store.claim_batch("w", 5) == []
    archived = "https://web.archive.org/web/20260101000000id_/https://example.com/a.mp3"
    mark_archived(store, episode.id, timestamp="20260101000000", archive_url=archived)
    (claim,) = store.claim_batch("w", 5)
    assert claim.download_url == archived
    with pytest.raises(ValueError, match="not waiting"):
        mark_archived(store, episode.id, timestamp="20260101000000", archive_url=archived)
    with pytest.raises(UnknownEpisode):
        mark_archived(store, 999, timestamp="20260101000000", archive_url=archived)
    engine.dispose()


def test_claim_is_fifo_and_exclusive(store: EpisodeStore) -> None:
    add(store, 5)
    first = store.claim_batch("w1", 3, worker_ip="10.0.0.1", gpu="H100")
    second = store.claim_batch("w2", 3)
    assert [c.episode_id for c in first] == [1, 2, 3]
    assert [c.episode_id for c in second] == [4, 5]
    assert store.claim_batch("w3", 3) == []
    row = store.get(1)
    assert (row.status, row.worker_id, row.worker_ip, row.gpu, row.attempts) == ("assigned", "w1", "10.0.0.1", "H100", 1)


def test_full_life_of_an_episode(store: EpisodeStore, clock: FakeClock) -> None:
    add(store, 1)
    (claim,) = store.claim_batch("w1", 1)
    store.start(claim.episode_id, claim.lease_token)
    assert store.get(claim.episode_id).status == "processing"
    clock.advance(500)
    until = store.renew(claim.episode_id, claim.lease_token)
    assert until == clock.now + store.lease
    clock.advance(500)  # past the first deadline, within the renewed one
    store.complete(claim.episode_id, claim.lease_token, RESULT)
    row = store.get(claim.episode_id)
    assert row.status == "completed" and row.lease_token is None and row.completed_at == clock.now
    assert (row.duration_seconds, row.audio_sha256, row.code_version) == (1800.0, "a" * 64, "0.1.0+gtest")
    assert store.result(claim.episode_id) == RESULT
    stats = store.stats()
    assert stats.by_status["completed"] == 1 and stats.audio_hours_done == 0.5


def test_expired_lease_requeues_and_late_worker_is_refused(store: EpisodeStore, clock: FakeClock) -> None:
    add(store, 1)
    (late,) = store.claim_batch("slow-worker", 1)
    clock.advance(601)
    assert store.stats().expired_leases == 1
    assert [e.id for e in store.list(status="expired")] == [late.episode_id]
    with pytest.raises(LeaseLost, match="expired"):
        store.renew(late.episode_id, late.lease_token)
    (fresh,) = store.claim_batch("fast-worker", 1)  # the expired lease came back to the queue
    assert fresh.episode_id == late.episode_id and fresh.attempts == 2
    with pytest.raises(LeaseLost, match="fast-worker"):
        store.complete(late.episode_id, late.lease_token, RESULT)
    with pytest.raises(LeaseLost):
        store.fail(late.episode_id, late.lease_token, PermanentError("x", "late"))
    store.complete(fresh.episode_id, fresh.lease_token, RESULT)
    assert store.get(fresh.episode_id).worker_id == "fast-worker"
    assert store.result(fresh.episode_id) == RESULT


def test_expired_leases_fail_after_max_attempts(store: EpisodeStore, clock: FakeClock) -> None:
    add(store, 1)
    for attempt in range(1, 4):
        (claim,) = store.claim_batch(f"w{attempt}", 1)
        assert claim.attempts == attempt
        clock.advance(601)
    assert store.requeue_expired() == 1
    row = store.get(1)
    assert row.status == "failed" and row.error_code == "lease-expired"
    assert "w3" in row.error and "attempt 3 of 3" in row.error
    assert store.claim_batch("w4", 1) == []
    assert store.stats().failures_by_reason == {"lease-expired": 1}


def test_transient_failures_retry_then_fail(store: EpisodeStore) -> None:
    add(store, 1)
    for _ in range(2):
        (claim,) = store.claim_batch("w", 1)
        status = store.fail(claim.episode_id, claim.lease_token, TransientError("http-503", "HTTP 503"))
        assert status == EpisodeStatus.pending
    (claim,) = store.claim_batch("w", 1)
    assert store.fail(claim.episode_id, claim.lease_token, TransientError("timeout", "read timed out")) == "failed"
    assert store.get(1).error == "read timed out"


def test_permanent_failure_is_final_and_counted_by_reason(store: EpisodeStore) -> None:
    add(store, 3)
    claims = store.claim_batch("w", 3)
    for claim, code in zip(claims, ["http-404", "not-audio", "http-404"]):
        assert store.fail(claim.episode_id, claim.lease_token, PermanentError(code, f"{code} for x")) == "failed"
    stats = store.stats()
    assert stats.by_status["failed"] == 3
    assert stats.failures_by_reason == {"http-404": 2, "not-audio": 1}
    assert store.claim_batch("w", 3) == []


def test_release_returns_without_counting_an_attempt(store: EpisodeStore) -> None:
    add(store, 1)
    (claim,) = store.claim_batch("w", 1)
    release(store, claim.episode_id, claim.lease_token)
    row = store.get(1)
    assert (row.status, row.attempts, row.lease_token) == ("pending", 0, None)


def test_reprocessed_episode_replaces_its_result(store: EpisodeStore) -> None:
    add(store, 1)
    (claim,) = store.claim_batch("w", 1)
    store.complete(claim.episode_id, claim.lease_token, RESULT)
    with pytest.raises(LeaseLost):  # a completed episode cannot be completed again with an old lease
        store.complete(claim.episode_id, claim.lease_token, {**RESULT, "duration": 1.0})
    assert store.result(1)["duration"] == 1800.0


def test_list_filters(store: EpisodeStore) -> None:
    store.add([NewEpisode(f"https://example.com/{i}.mp3", language="de" if i % 2 else "en") for i in range(6)])
    store.claim_batch("w", 2)
    assert [e.id for e in store.list(status="assigned")] == [1, 2]
    assert [e.id for e in store.list(language="DE")] == [2, 4, 6]
    assert [e.id for e in store.list(status="pending", limit=2)] == [3, 4]
    with pytest.raises(ValueError):
        store.list(status="nonsense")


def test_claim_chosen_episodes(store: EpisodeStore) -> None:
    add(store, 5)
    claims = store.claim_batch("w", 10, episode_ids=[4, 2, 99])
    assert [c.episode_id for c in claims] == [2, 4]
    assert store.claim_batch("w", 10, episode_ids=[2]) == []  # already held
