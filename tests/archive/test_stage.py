"""The archive stage against the loopback Internet Archive, on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime, timedelta

import pytest

from podcastpile.archive.stage import ArchiveLimits
from podcastpile.store.archive_limits import next_utc_midnight
from podcastpile.store.clock import utcnow
from tests.archive.conftest import FAST, WAV, Harness
from tests.wayback import sha1_base32


def test_existing_capture_is_reused_without_submitting(harness: Harness) -> None:
    (episode,) = harness.add("ep1.wav")
    stamp = harness.ia.add_capture(harness.origin.url("ep1.wav"), WAV, datetime.now(UTC) - timedelta(days=30))
    summary = harness.run()
    assert summary.counts == {"reused": 1} and harness.ia.submissions == []
    row = harness.row(episode)
    assert row.status == "pending" and row.archive_reused is True
    assert row.archive_timestamp == stamp
    assert row.archive_url == f"{harness.ia.base_url}/web/{stamp}id_/{harness.origin.url('ep1.wav')}"
    assert row.archive_digest == sha1_base32(WAV) and row.archive_bytes == len(WAV)
    assert harness.origin.direct_hits == 0


def test_capture_older_than_the_reuse_window_is_not_reused(harness: Harness) -> None:
    (episode,) = harness.add("ep1.wav")
    harness.ia.add_capture(harness.origin.url("ep1.wav"), WAV, datetime.now(UTC) - timedelta(days=30))
    summary = harness.run(limits=ArchiveLimits(per_minute=60, poll_seconds=0.05, reuse_days=7, lookups_per_minute=6000,
                                                    listed_after_seconds=0.05))
    assert summary.counts == {"captured": 1} and len(harness.ia.submissions) == 1
    assert harness.row(episode).archive_reused is False


def test_new_capture_is_submitted_polled_and_stored(harness: Harness) -> None:
    harness.ia.pending_polls = 3
    (episode,) = harness.add("ep1.wav")
    summary = harness.run()

    assert summary.counts == {"captured": 1} and summary.submitted == 1
    row = harness.row(episode)
    assert row.status == "pending" and row.archive_reused is False and row.archive_job_id is None
    (capture,) = harness.ia.captures[harness.origin.url("ep1.wav")]
    assert row.archive_timestamp == capture.timestamp and row.archive_digest == sha1_base32(capture.body)
    assert harness.ia.status_polls == 4  # three pending answers, then success
    assert [e[1] for e in harness.events if e[0] == episode] == [
        "looking-up", "submitted", "pending", "pending", "pending", "captured", "archived"]
    # the submission carried the keys (Save Page Now 2 needs them)
    assert harness.ia.auth_headers == ["LOW AK:SK"]
    stats = harness.queue().stats(daily_bytes=10**9)
    assert stats.archived_new == 1 and stats.captures_today == 1 and stats.bytes_today == len(capture.body)


def test_job_id_is_stored_before_polling_and_a_restarted_run_resumes_it(harness: Harness) -> None:
    harness.ia.pending_polls = 10**6  # never finishes during the first run
    (episode,) = harness.add("ep1.wav")
    harness.run(max_seconds=2)
    row = harness.row(episode)
    assert row.status == "archiving" and row.archive_job_id == "spn2-000001"
    assert row.lease_token is None  # released at the end of the run, job kept

    harness.ia.jobs["spn2-000001"].polls_left = 1
    summary = harness.run()
    assert summary.counts == {"captured": 1} and summary.submitted == 0
    assert len(harness.ia.submissions) == 1  # resumed, never submitted twice
    assert harness.row(episode).status == "pending"


def test_forgotten_job_is_resubmitted_not_lost(harness: Harness) -> None:
    harness.ia.pending_polls = 10**6
    (episode,) = harness.add("ep1.wav")
    harness.run(max_seconds=2)
    harness.ia.forget_jobs()
    harness.ia.pending_polls = 1
    harness.run()  # polls a job the service no longer knows: back to the queue
    row = harness.row(episode)
    assert row.status == "archive_pending" and row.error_code == "job-forgotten" and row.archive_attempts == 1
    summary = harness.run()
    assert summary.counts == {"captured": 1}
    assert len(harness.ia.submissions) == 2 and harness.row(episode).status == "pending"


@pytest.mark.parametrize("code", ["error:not-found", "error:filesize-limit", "error:no-access",
                                  "error:invalid-url-syntax", "error:too-many-redirects"])
def test_permanent_errors_fail_the_episode_with_the_code(harness: Harness, code: str) -> None:
    (episode,) = harness.add("ep1.wav")
    harness.ia.job_errors[harness.origin.url("ep1.wav")] = code
    summary = harness.run()
    assert summary.counts == {"failed": 1}
    row = harness.row(episode)
    assert row.status == "failed" and row.error_code == code.removeprefix("error:")
    assert row.archive_url is None and row.archive_attempts == 0


def test_permanent_error_at_submit_is_recorded_too(harness: Harness) -> None:
    (episode,) = harness.add("ep1.wav")
    harness.ia.submit_errors[harness.origin.url("ep1.wav")] = "error:invalid-host-resolution"
    harness.run()
    row = harness.row(episode)
    assert row.status == "failed" and row.error_code == "invalid-host-resolution"


@pytest.mark.parametrize("code", ["error:read-timeout", "error:bad-gateway", "error:something-new"])
def test_transient_and_unknown_errors_back_off_then_fail_after_the_attempt_limit(harness: Harness, code: str) -> None:
    (episode,) = harness.add("ep1.wav")
    harness.ia.job_errors[harness.origin.url("ep1.wav")] = code
    queue = harness.queue(max_attempts=3)
    before = utcnow()
    assert harness.run(queue).counts == {"retry": 1}
    row = harness.row(episode)
    assert row.status == "archive_pending" and row.archive_attempts == 1
    assert row.error_code == code.removeprefix("error:")
    assert row.archive_not_before > before + timedelta(seconds=30)  # backoff, not an instant retry
    assert harness.run(queue).counts == {}  # backing off: not claimable yet
    for expected in (2, 3):
        harness.store.engine.dispose()
        with harness.store.engine.begin() as connection:  # let the backoff pass
            connection.exec_driver_sql("UPDATE episodes SET archive_not_before = NULL")
        harness.run(queue)
        assert harness.row(episode).archive_attempts == expected
    row = harness.row(episode)
    assert row.status == "failed" and "attempt 3 of 3" in row.error
    assert len(harness.ia.submissions) == 3


def test_account_daily_cap_defers_until_the_reset_and_pauses_everyone(harness: Harness) -> None:
    first, second = harness.add("ep1.wav", "ep2.wav")
    harness.ia.account_daily_limit, harness.ia.daily_captures = 100, 100  # /save/status/user says so
    summary = harness.run()
    assert summary.counts == {"deferred": 2} and harness.ia.submissions == []
    midnight = next_utc_midnight(utcnow())
    for episode in (first, second):
        row = harness.row(episode)
        assert row.status == "archive_pending" and row.archive_attempts == 0
        assert row.archive_not_before == midnight
    stats = harness.queue().stats(daily_bytes=10**9)
    assert stats.deferred == {"account-daily-captures": 2} and stats.deferred_until == midnight
    assert stats.pauses == {"account-daily-captures": midnight}


def test_account_cap_message_at_submit_pauses_everyone(harness: Harness) -> None:
    harness.add("ep1.wav", "ep2.wav")
    harness.ia.account_daily_limit, harness.ia.daily_captures = 100, 99
    harness.ia.user_status_needs_auth = True  # answered: the client has keys
    # One capture left: the first takes it, the second hears "You cannot make more than 100 captures per day".
    summary = harness.run()
    assert summary.counts == {"captured": 1, "deferred": 1}
    assert list(harness.queue().stats(daily_bytes=10**9).pauses) == ["account-daily-captures"]


def test_daily_byte_budget_stops_submissions(harness: Harness) -> None:
    first, second = harness.add("ep1.wav", "ep2.wav")
    # Room for one file; one submission a minute, so the first capture is counted before the second.
    limits = ArchiveLimits(per_minute=1, poll_seconds=0.05, daily_bytes=len(WAV), lookups_per_minute=6000,
                           listed_after_seconds=0.05)
    summary = harness.run(limits=limits)
    assert summary.counts == {"captured": 1, "deferred": 1}
    assert len(harness.ia.submissions) == 1
    deferred = harness.row(second)
    assert deferred.status == "archive_pending" and deferred.error_code == "daily-bytes"
    assert deferred.archive_not_before == next_utc_midnight(utcnow())


def test_busy_service_with_retry_after_is_waited_for_without_charging_the_episode(harness: Harness) -> None:
    (episode,) = harness.add("ep1.wav")
    harness.ia.busy = [(503, 1.0), (503, 1.0)]
    started = datetime.now()
    summary = harness.run()
    assert summary.counts == {"captured": 1}
    assert len(harness.ia.submissions) == 3
    gaps = [b - a for a, b in zip(harness.ia.submissions, harness.ia.submissions[1:])]
    assert all(gap >= 0.9 for gap in gaps), gaps  # Retry-After honoured each time
    assert harness.row(episode).archive_attempts == 0
    assert (datetime.now() - started).total_seconds() < 15


def test_429_on_save_pauses_submissions_five_minutes_for_everyone(harness: Harness) -> None:
    first, second = harness.add("ep1.wav", "ep2.wav")
    harness.ia.busy = [(429, 1.0)]  # IA sends no Retry-After; one is ignored here too
    summary = harness.run()
    assert summary.counts == {"deferred": 2} and len(harness.ia.submissions) == 1
    pauses = harness.queue().stats(daily_bytes=10**9).pauses
    assert list(pauses) == ["save-429"] and pauses["save-429"] >= utcnow() + timedelta(minutes=4.9)
    for episode in (first, second):
        row = harness.row(episode)
        assert row.archive_attempts == 0 and row.archive_not_before == pauses["save-429"]


def test_no_submission_while_the_account_has_no_capture_available(harness: Harness) -> None:
    (episode,) = harness.add("ep1.wav")
    harness.ia.available = 0
    harness.run(max_seconds=0.5)
    assert harness.ia.submissions == [] and harness.row(episode).status == "archive_pending"
    harness.ia.available = 1
    assert harness.run().counts == {"captured": 1}


def test_prefer_mode_falls_back_to_the_original_after_a_permanent_failure(harness: Harness) -> None:
    (episode,) = harness.add("ep1.wav")
    harness.ia.job_errors[harness.origin.url("ep1.wav")] = "error:no-access"
    summary = harness.run(harness.queue(fallback_to_live=True))
    assert summary.counts == {"live": 1}
    row = harness.row(episode)
    assert row.status == "pending" and row.archive_url is None and row.archive_timestamp is None
    assert row.archive_error.startswith("no-access")


def test_keys_are_sent_as_low_authorization(harness: Harness) -> None:
    from podcastpile.archive.stage import ArchiveStage
    from podcastpile.archive.wayback import WaybackClient

    harness.add("ep1.wav")
    queue = harness.queue()
    with WaybackClient(harness.ia.base_url, harness.ia.base_url, access_key="AK", secret_key="SK") as client:
        ArchiveStage(queue, client, FAST).run(queue.claim("t", 5))
    assert harness.ia.auth_headers == ["LOW AK:SK"]


def test_digest_helper_matches_cdx_forms() -> None:
    from podcastpile.archive.wayback import digest_matches

    sha1 = hashlib.sha1(WAV).hexdigest()
    assert digest_matches(sha1, base64.b32encode(hashlib.sha1(WAV).digest()).decode())
    assert digest_matches(sha1, sha1.upper())
    assert not digest_matches(sha1, sha1_base32(b"other bytes"))
