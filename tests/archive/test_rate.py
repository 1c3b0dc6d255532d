"""Concurrent archive runs share one submission limit: counted on the service's side."""

from __future__ import annotations

import time
from datetime import timedelta

from podcastpile.archive.stage import ArchiveLimits, ArchiveStage, ArchiveSummary
from podcastpile.archive.wayback import WaybackClient
from podcastpile.store import EpisodeStore, NewEpisode, make_engine
from podcastpile.store.archive import ArchiveQueue
from podcastpile.store.known_captures import KnownCaptures
from tests.archive.conftest import WAV, Harness
from tests.processes import run_together
from tests.wayback import AdHost, WaybackDouble

PER_MINUTE = 10


def _archive_run(database_url: str, wayback_url: str, name: str, limits: ArchiveLimits, barrier) -> ArchiveSummary:  # type: ignore[no-untyped-def]
    """One archive run of 10 claims in a process of its own, started with the others at once."""
    store = EpisodeStore(make_engine(database_url), archive_required=True)
    queue = ArchiveQueue(store)
    barrier.wait()
    claims = queue.claim(name, 10)
    with WaybackClient(wayback_url, access_key="AK", secret_key="SK") as client:
        summary = ArchiveStage(queue, client, limits).run(claims, max_seconds=8)
    store.close()
    return summary


def test_three_concurrent_runs_never_exceed_the_rate(harness: Harness, database_url: str) -> None:
    ids = harness.add(*[f"ep{i}.wav" for i in range(30)])
    limits = ArchiveLimits(per_minute=PER_MINUTE, poll_seconds=0.1, listed_after_seconds=0.2)
    runs = run_together(_archive_run, [(database_url, harness.ia.base_url, f"run-{i}", limits) for i in range(3)],
                        timeout=120)
    submitted = [summary.submitted for summary in runs]
    assert all(count > 0 for count in submitted) or sum(submitted) == PER_MINUTE
    # Within the first 8 s only one window's worth may go out, whoever submits it.
    assert len(harness.ia.submissions) == sum(submitted) == PER_MINUTE
    assert harness.ia.max_in_window(60.0) <= PER_MINUTE
    rows = [harness.row(i) for i in ids]
    # Each submission recorded once: captured (pending), or still being seen through with its job
    # id kept for the next run (a loaded machine can end the 8 s before a capture is listed).
    recorded = [r for r in rows if r.status == "pending" or (r.status == "archiving" and r.archive_job_id)]
    assert len(recorded) == PER_MINUTE, [(r.status, r.archive_job_id) for r in rows]
    assert [r.status for r in rows].count("archive_pending") == 30 - PER_MINUTE  # the rest released for a later run


LOOKUPS_PER_MINUTE = 5


def test_three_concurrent_runs_share_one_lookup_window(archive_store: EpisodeStore, database_url: str) -> None:
    folders = {f"show{i}/ep.wav": WAV for i in range(30)}  # a folder each: a lookup each
    with WaybackDouble.realistic(lookups_per_minute=30, replay_lag_seconds=0.2) as ia, AdHost(folders) as host:
        archive_store.add([NewEpisode(host.url(name)) for name in folders])
        limits = ArchiveLimits(per_minute=600, poll_seconds=0.1, listed_after_seconds=0.2,
                               lookups_per_minute=LOOKUPS_PER_MINUTE)
        runs = run_together(_archive_run, [(database_url, ia.base_url, f"run-{i}", limits) for i in range(3)], timeout=120)
        looked_up = [summary.lookups for summary in runs]
        # one window for the three runs (the double would answer 429 only past its own 30)
        assert sum(looked_up) == len(ia.lookup_times) == LOOKUPS_PER_MINUTE
        assert ia.max_lookups_in_window(60.0) <= LOOKUPS_PER_MINUTE and ia.lookups_refused == 0
        waiting = [e for e in archive_store.list(limit=100) if e.error_code == "cdx-lookup-wait"]
        assert len(waiting) >= 30 - LOOKUPS_PER_MINUTE and all(e.archive_attempts == 0 for e in waiting)


def _reserve_listing(database_url: str, name: str, barrier) -> float:  # type: ignore[no-untyped-def]
    store = EpisodeStore(make_engine(database_url), archive_required=True)
    barrier.wait()
    wait = KnownCaptures(store).reserve_listing_check("https://host.example/", since="20261201000000",
                                                      interval=timedelta(seconds=30))
    store.close()
    return wait


def test_one_run_at_a_time_asks_cdx_about_a_hosts_fresh_captures(archive_store: EpisodeStore, database_url: str) -> None:
    """Runs whose captures fall due together send one listing query, not one each."""
    waits = run_together(_reserve_listing, [(database_url, f"run-{i}") for i in range(3)], timeout=60)
    assert sorted(waits)[0] == 0.0 and all(25 < wait <= 30 for wait in sorted(waits)[1:]), waits
    known = KnownCaptures(archive_store)
    interval = timedelta(seconds=0.5)
    assert known.reserve_listing_check("https://other.example/", since="20261201000000", interval=interval) == 0.0
    assert known.reserve_listing_check("https://other.example/", since="20261201000000", interval=interval) > 0
    time.sleep(0.6)
    assert known.reserve_listing_check("https://other.example/", since="20261201000000", interval=interval) == 0.0
