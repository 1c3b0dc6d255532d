"""Seeing a submission through against the realistic double: refused status polls, the same
failed job handed back, captured redirects followed to the audio, and replay lag bounded
(issue 18: what the real service answers, ../shared/reference/spn2-real-service.md)."""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import timedelta

import pytest

from podcastpile.archive.stage import ArchiveStage
from podcastpile.archive.wayback import WaybackClient
from podcastpile.net.redirects import RedirectChain
from podcastpile.store.archive import ArchiveQueue
from podcastpile.store.clock import utcnow
from tests.archive.conftest import LIMITS, Realistic, resolve


def _run_with_keys(real: Realistic, access: str, secret: str) -> None:
    queue = ArchiveQueue(real.store)
    with WaybackClient(real.ia.base_url, timeout_seconds=10, access_key=access, secret_key=secret) as client:
        ArchiveStage(queue, client, LIMITS, resolve=resolve).run(queue.claim("test-run", 100), max_seconds=5)


def test_a_401_on_a_status_poll_keeps_the_job_and_charges_nothing(real: Realistic) -> None:
    episode, other = real.add(real.origin.url("ep1.wav"), real.origin.url("ep2.wav"))
    real.ia.pending_polls = 10**6
    # submitted with keys; the jobs are still pending when a run ends. A run of 2 s may end before
    # both are submitted on a loaded machine (CI, PostgreSQL): the next run submits the rest.
    deadline = time.monotonic() + 60
    while not (real.row(episode).archive_job_id and real.row(other).archive_job_id) and time.monotonic() < deadline:
        real.run(max_seconds=2)
    job = real.row(episode).archive_job_id
    assert job and real.row(other).archive_job_id
    # a run without keys: the status endpoint answers 401, which says nothing of the jobs; the
    # first refusal gives back both, and the other job is not polled after it
    polls = real.ia.status_polls
    real.run(keys=False, max_seconds=5)
    assert real.ia.status_polls == polls + 1
    assert real.row(other).error_code == "ia-keys-missing" and real.row(other).archive_attempts == 0
    row = real.row(episode)
    assert row.archive_job_id == job and row.archive_attempts == 0 and row.error_code == "ia-keys-missing"
    assert row.status == "archiving" and row.lease_token is None
    # a run with wrong keys: the same, and status polls and submissions pause for everyone
    real.expire()
    _run_with_keys(real, "AK", "wrong")
    row = real.row(episode)
    assert row.archive_job_id == job and row.archive_attempts == 0 and row.error_code == "ia-keys-refused"
    assert "ia-keys-refused" in real.pauses()
    # right keys again: the job is polled to its capture, no second submission
    real.expire()
    real.ia.pending_polls = 0
    for pending in real.ia.jobs.values():
        pending.polls_left = 0
    assert real.run().counts == {"captured": 2}
    assert len(real.ia.submissions) == 2 and real.row(episode).archive_attempts == 0


@pytest.mark.parametrize(("code", "charged"), [("error:job-failed", 0), ("error:gateway-timeout", 1)])
def test_the_same_failed_job_handed_back_defers_that_episode_alone(real: Realistic, code: str, charged: int) -> None:
    failing = real.origin.url("ep1.wav")
    real.ia.job_errors[failing] = code  # IA's trouble ("system error"), or a failure that may pass
    (episode,) = real.add(failing)
    real.run()  # a fresh failure: IA's pauses submissions, the other backs off with an attempt counted
    assert real.row(episode).archive_attempts == charged
    real.expire()
    (other,) = real.add(real.origin.url("ep2.wav"))
    # Within the hour SPN answers the URL with its failed job ("The same snapshot had been
    # made ..."): pausing everyone again would only hear it again, run after run.
    summary = real.run()
    assert summary.counts.get("captured") == 1 and real.row(other).status == "pending"
    assert real.pauses() == {}
    row = real.row(episode)
    assert row.status == "archive_pending" and row.error_code == "spn-same-job-failed"
    assert row.archive_attempts == charged and row.archive_job_id is None  # the re-read counted nothing
    assert row.archive_not_before >= utcnow() + timedelta(minutes=55)
    submitted = [job_id for job_id, job in real.ia.jobs.items() if job.url == failing]
    assert len(submitted) == 1  # the one job, polled again: no new capture was made


def test_a_captured_redirect_chain_is_followed_to_the_audio_and_reused(real: Realistic) -> None:
    url = real.origin.chain_url("ep1.wav", hops=2)  # Save Page Now follows it by itself
    audio, _, _, fetched = real.ia._capture(url)  # someone captured it over an hour ago: no job
    assert audio is not None and len(fetched) == 3
    for capture in (c for hop in fetched for c in real.ia.captures[hop]):
        capture.visible_at = 0.0  # long listed by CDX
    (episode,) = real.add(url)
    summary = real.run()
    assert summary.counts == {"reused": 1} and real.ia.submissions == []
    row = real.row(episode)
    assert row.archive_timestamp == audio.timestamp and row.archive_reused is True
    assert row.archive_url.endswith("id_/" + real.origin.url("ep1.wav"))
    assert real.playback(episode) == audio.body
    assert RedirectChain.from_json(row.archive_redirects).hops == 2


def test_a_redirect_whose_target_was_never_captured_is_submitted(real: Realistic) -> None:
    url = real.origin.url("ep1.wav")
    real.ia.add_capture(url, b"", utcnow() - timedelta(days=3), statuscode=302, location=real.origin.url("ep2.wav"))
    real.ia.same_snapshot = False
    (episode,) = real.add(url)
    assert real.run().counts == {"captured": 1} and len(real.ia.submissions) == 1
    assert real.playback(episode)[:4] == b"RIFF"


def test_a_same_snapshot_capture_cdx_never_lists_is_submitted_again_once_stale(real: Realistic) -> None:
    url = real.origin.url("ep1.wav")
    stamp = real.ia.add_capture(url, b"RIFF-never-listed", utcnow() - timedelta(hours=2))
    (hidden,) = real.ia.captures[url]
    hidden.visible_at = time.monotonic() + 3600  # made two hours ago, still not in CDX
    (episode,) = real.add(url)
    summary = real.run(replace(LIMITS, stale_seconds=600))
    # not rechecked every few minutes for ever: SPN is asked without the window and captures
    assert summary.counts == {"captured": 1} and len(real.ia.submissions) == 2
    row = real.row(episode)
    assert row.status == "pending" and row.archive_timestamp != stamp
    assert real.playback(episode)[:4] == b"RIFF" and real.playback(episode) != b"RIFF-never-listed"


def test_a_recent_same_snapshot_capture_not_listed_yet_waits_for_cdx(real: Realistic) -> None:
    url = real.origin.url("ep1.wav")
    real.ia.add_capture(url, b"RIFF-recent", utcnow() - timedelta(minutes=2))
    (recent,) = real.ia.captures[url]
    recent.visible_at = time.monotonic() + 3600
    (episode,) = real.add(url)
    summary = real.run(replace(LIMITS, stale_seconds=600))
    assert summary.counts == {"waiting": 1} and len(real.ia.submissions) == 1
    row = real.row(episode)
    assert row.error_code == "archive-replay-lag" and row.archive_attempts == 0


def test_a_capture_past_the_stale_limit_is_resubmitted_at_its_first_unlisted_check(real: Realistic) -> None:
    real.ia.replay_lag_seconds = 3600.0
    (episode,) = real.add(real.origin.url("ep1.wav"))
    real.run(max_seconds=20)  # captured, not listed: given back after the run's checks
    assert real.row(episode).status == "archiving" and real.row(episode).archive_timestamp
    with real.store.engine.begin() as connection:  # the capture was submitted 61 s ago
        connection.exec_driver_sql("UPDATE episodes SET archive_not_before = NULL, "
                                   "archive_submitted_at = archive_submitted_at - INTERVAL '61 seconds'"
                                   if real.store.engine.dialect.name == "postgresql" else
                                   "UPDATE episodes SET archive_not_before = NULL, "
                                   "archive_submitted_at = datetime(archive_submitted_at, '-61 seconds')")
    lookups = len(real.ia.lookup_times)
    summary = real.run(max_seconds=20)
    assert summary.counts == {"resubmit": 1}
    # at most one CDX check, not four (none when the first run's last check is recent enough)
    assert len(real.ia.lookup_times) <= lookups + 1
    row = real.row(episode)
    assert row.error_code == "archive-replay-lag" and row.archive_attempts == 1


def test_too_many_requests_at_submit_pauses_that_host_and_charges_nobody(real: Realistic) -> None:
    first, second = real.origin.url("ep1.wav"), real.origin.url("ep2.wav")
    real.ia.submit_errors[first] = "error:too-many-requests"  # the host throttles Save Page Now
    ids = real.add(first, second)
    summary = real.run()
    assert summary.counts == {"deferred": 2} and len(real.ia.submissions) == 1  # its host waits, whole
    (until,) = [until for reason, until in real.pauses().items() if reason.startswith("host:")]
    assert until >= utcnow() + timedelta(minutes=9.9)
    assert all(real.row(e).archive_attempts == 0 and real.row(e).archive_not_before == until for e in ids)


def test_a_service_error_in_a_jobs_status_pauses_submissions_and_charges_nobody(real: Realistic) -> None:
    url = real.origin.url("ep1.wav")
    real.ia.job_errors[url] = "error:no-browsers-available"  # accepted, then failed on IA's side
    (episode,) = real.add(url)
    summary = real.run()
    assert summary.counts == {"deferred": 1} and list(real.pauses()) == ["ia-service-trouble"]
    row = real.row(episode)
    assert row.archive_attempts == 0 and row.status == "archive_pending" and row.archive_job_id is None
