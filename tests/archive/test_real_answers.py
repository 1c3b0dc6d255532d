"""The archive stage against the answers the real Internet Archive gives (issue 18, part):
blocked sites, refused or missing keys, and errors that must never escape a run."""

from __future__ import annotations

from typing import Any

import pytest

from podcastpile.archive.stage import ArchiveStage
from podcastpile.archive.wayback import WaybackClient
from podcastpile.cli.views import archive_state, archive_stats_dict, archive_table
from tests.archive.conftest import FAST, KEYS, WAV, Harness
from podcastpile.store import NewEpisode
from tests.wayback import BLOCKED_SITE_ERROR, AdHost


def _run(harness: Harness, client: WaybackClient, max_seconds: float = 20.0):  # type: ignore[no-untyped-def]
    queue = harness.queue()
    stage = ArchiveStage(queue, client, FAST, on_event=lambda *e: harness.events.append(e))
    return stage.run(queue.claim("test-run", 100), max_seconds=max_seconds)


def _released(harness: Harness, *episodes: int) -> bool:
    return all(harness.row(e).lease_token is None for e in episodes)


def test_blocked_site_fails_only_that_episode_as_archive_blocked(harness: Harness) -> None:
    with AdHost({"ep2.wav": WAV}) as excluded:  # a site the Wayback Machine excludes, whole
        first, last = harness.add("ep1.wav", "ep3.wav")
        harness.store.add([NewEpisode(excluded.url("ep2.wav"))])
        blocked = harness.store.find(excluded.url("ep2.wav")).id  # type: ignore[union-attr]
        harness.ia.blocked |= {excluded.url("ep2.wav"), excluded.server.url("/audio/")}
        harness.ia.blocked_endpoints = frozenset({"cdx"})
        summary = harness.run()  # no exception escapes
    assert summary.counts == {"captured": 2, "failed": 1}
    row = harness.row(blocked)
    assert row.status == "failed" and row.error_code == "archive-blocked" and row.archive_attempts == 0
    assert "Blocked Site" in row.error
    assert harness.row(first).status == "pending" and harness.row(last).status == "pending"
    assert harness.queue().stats(daily_bytes=10**9).pauses == {}  # nothing global
    assert _released(harness, first, blocked, last)


def test_blocked_site_at_playback_is_recognised_by_the_client(harness: Harness) -> None:
    url = harness.origin.url("ep1.wav")
    stamp = harness.ia.add_capture(url, WAV)
    harness.ia.blocked.add(url)
    with WaybackClient(harness.ia.base_url, harness.ia.base_url) as client:
        import httpx

        response = httpx.get(client.playback_url(stamp, url))
        assert response.status_code == 403
        assert response.headers["x-archive-wayback-runtime-error"] == BLOCKED_SITE_ERROR
        from podcastpile.archive.wayback import is_blocked_site

        assert is_blocked_site(response)


def test_blocked_url_at_submit_fails_only_that_episode(harness: Harness) -> None:
    first, blocked = harness.add("ep1.wav", "ep2.wav")
    harness.ia.blocked.add(harness.origin.url("ep2.wav"))
    harness.ia.blocked_endpoints = frozenset({"save"})
    summary = harness.run()
    assert summary.counts == {"captured": 1, "failed": 1}
    row = harness.row(blocked)
    assert row.status == "failed" and row.archive_attempts == 0
    assert harness.row(first).status == "pending" and _released(harness, first, blocked)


class _Exploding(WaybackClient):
    """A client that raises something no one planned for: in the folder lookup (every episode of
    the folder), or for one URL at submit or when its fresh capture is looked for in CDX."""

    def __init__(self, bad_url: str, where: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.bad_url, self.where = bad_url, where

    def captures(self, url: str, **kwargs: Any):  # type: ignore[no-untyped-def]
        if self.where == "lookup" and kwargs.get("prefix"):
            raise RuntimeError("boom in lookup")
        return super().captures(url, **kwargs)

    def submit(self, url: str, **kwargs: Any):  # type: ignore[no-untyped-def]
        if self.where == "submit" and url == self.bad_url:
            raise KeyError("boom in submit")
        answer = super().submit(url, **kwargs)
        if url == self.bad_url:
            self.bad_job = answer.job_id
        return answer

    def job_status(self, job_id: str):  # type: ignore[no-untyped-def]
        if self.where == "poll" and job_id == getattr(self, "bad_job", None):
            raise ValueError("boom in poll")
        return super().job_status(job_id)


@pytest.mark.parametrize("where", ["lookup", "submit", "poll"])
def test_no_client_exception_escapes_and_claims_are_given_back(harness: Harness, where: str) -> None:
    first, bad, last = harness.add("ep1.wav", "ep2.wav", "ep3.wav")
    client = _Exploding(harness.origin.url("ep2.wav"), where, harness.ia.base_url, harness.ia.base_url, **KEYS)
    with client:
        summary = _run(harness, client)
    # backed off as a transient failure: an attempt counted, so a lasting fault ends in time
    hit = [first, bad, last] if where == "lookup" else [bad]
    assert summary.counts.get("retry") == len(hit) and summary.counts.get("captured", 0) == 3 - len(hit)
    for episode in (first, bad, last):
        row = harness.row(episode)
        if episode in hit:
            assert row.status == "archive_pending" and row.archive_attempts == 1
            assert row.error_code == "archive-client-error" and row.archive_not_before is not None
        else:
            assert row.status == "pending"
    assert _released(harness, first, bad, last)


def test_wrong_keys_pause_submissions_and_charge_no_episode(harness: Harness) -> None:
    first, second = harness.add("ep1.wav", "ep2.wav")
    harness.ia.keys = {"AK:SK"}
    with WaybackClient(harness.ia.base_url, harness.ia.base_url, access_key="AK", secret_key="WRONG") as client:
        summary = _run(harness, client)
    assert summary.counts == {"deferred": 2}
    assert harness.ia.jobs == {}
    for episode in (first, second):
        row = harness.row(episode)
        assert row.status == "archive_pending" and row.archive_attempts == 0
        assert "IA_ACCESS_KEY" in row.error and "\n" not in row.error
    stats = harness.queue().stats(daily_bytes=10**9)
    assert list(stats.pauses) == ["ia-keys-refused"]
    table = archive_table(archive_stats_dict(stats))
    (line,) = [str(cell) for cell in table.columns[0]._cells if "paused" in str(cell)]  # one row says it
    assert "refused the keys" in line and "IA_ACCESS_KEY" in line
    # with the right keys, after the pause, the same episodes are captured
    with harness.store.engine.begin() as connection:
        connection.exec_driver_sql("DELETE FROM archive_pauses")
        connection.exec_driver_sql("UPDATE episodes SET archive_not_before = NULL")
    with WaybackClient(harness.ia.base_url, harness.ia.base_url, access_key="AK", secret_key="SK") as client:
        assert _run(harness, client).counts == {"captured": 2}


def test_without_keys_lookups_and_reuse_run_and_new_captures_wait(harness: Harness) -> None:
    reusable, new = harness.add("ep1.wav", "ep2.wav")
    harness.ia.add_capture(harness.origin.url("ep1.wav"), WAV)
    harness.ia.keys = {"AK:SK"}  # the service wants keys; this client has none
    with WaybackClient(harness.ia.base_url) as client:
        summary = _run(harness, client)
    assert summary.counts == {"reused": 1, "deferred": 1}
    assert harness.row(reusable).status == "pending"
    row = harness.row(new)
    assert row.status == "archive_pending" and row.archive_attempts == 0 and row.error_code == "ia-keys-missing"
    assert "IA_ACCESS_KEY" in row.error and "\n" not in row.error
    assert "ia-keys-missing" in archive_state(row) and "IA_ACCESS_KEY" in archive_state(row)
    stats = harness.queue().stats(daily_bytes=10**9)
    assert stats.deferred == {"ia-keys-missing": 1} and stats.pauses == {}  # a keyed run elsewhere goes on
    assert _released(harness, reusable, new)
    assert harness.ia.submissions == [] and harness.ia.refused == 0  # no request it knew would be refused


def test_a_store_outage_during_a_lookup_ends_the_run_and_charges_no_episode(harness: Harness) -> None:
    from sqlalchemy.exc import OperationalError

    (episode,) = harness.add("ep1.wav")

    def store_away() -> None:  # the lookup window lives in the store
        raise OperationalError("SELECT 1", {}, Exception("server closed the connection"))

    with WaybackClient(harness.ia.base_url, lookup_gate=store_away, **KEYS) as client, pytest.raises(OperationalError):
        _run(harness, client)
    row = harness.row(episode)
    assert row.archive_attempts == 0 and row.status == "archive_pending" and row.error_code is None
