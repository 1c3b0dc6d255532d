"""Fifty episodes through the realistic double with every hard answer switched on at once:
replay lag, same-snapshot answers, a blocked site, a paused host, a URL at its daily cap, a
stale job, a 4-hop redirect chain, and no keys for the first run. Runs repeat as the
deployment would (short waits expire between them, long ones do not)."""

from __future__ import annotations

import hashlib
import time
from dataclasses import replace

import httpx

from podcastpile.archive.answers import digest_matches
from podcastpile.net.fetch import download
from podcastpile.store import EpisodeStore
from podcastpile.store.archive_limits import next_utc_midnight
from podcastpile.store.clock import utcnow
from tests.archive.conftest import LIMITS, WAV, Realistic
from tests.wayback import AdHost, WaybackDouble

SHORT_WAITS = ("archive-replay-lag", "ia-keys-missing")


def _expire_short_waits(real: Realistic) -> None:
    with real.store.engine.begin() as connection:
        connection.exec_driver_sql(
            "UPDATE episodes SET archive_not_before = NULL WHERE error_code IN "
            + "(" + ", ".join(f"'{code}'" for code in SHORT_WAITS) + ")"
        )


def test_fifty_episodes_end_in_the_right_state_within_every_limit(archive_store: EpisodeStore) -> None:
    podcasts = {f"show{p}/ep{i}.wav": WAV for p in range(4) for i in range(12)}  # 48 episodes, 4 podcasts
    with (
        WaybackDouble.realistic(pending_polls=2, replay_lag_seconds=1.0, keys={"AK:SK"}, lookups_per_minute=30) as ia,
        AdHost(podcasts) as host, AdHost({"x/ep.wav": WAV, "y/ep.wav": WAV}) as blocked_host,
        AdHost({"p/ep1.wav": WAV, "p/ep2.wav": WAV}) as paused_host,
    ):
        real = Realistic(archive_store, ia, host)
        urls = {name: host.url(name) for name in podcasts}
        existing = [urls[f"show{p}/ep{i}.wav"] for p in range(4) for i in range(4)]  # a third already archived
        for url in existing:
            ia.add_capture(url, WAV)
        snapshot_no_job = urls["show0/ep5.wav"]  # captured by someone else, not listed yet
        stamp = ia.add_capture(snapshot_no_job, WAV)
        ia.captures[snapshot_no_job][0].visible_at = time.monotonic() + 3.0
        snapshot_job = urls["show1/ep5.wav"]  # someone else submitted it minutes ago
        httpx.post(f"{ia.base_url}/save", data={"url": snapshot_job, "force_get": "1"},
                   headers={"Authorization": "LOW AK:SK"})
        capped = urls["show2/ep5.wav"]
        ia.set_captures_today(capped, 5)
        lost, slow = urls["show3/ep5.wav"], urls["show3/ep6.wav"]
        ia.lost_urls.add(lost)
        ia.slow_capture_urls.add(slow)
        chained = host.chain_url("show2/ep6.wav", hops=4)
        del urls["show2/ep6.wav"]
        blocked = [blocked_host.url("x/ep.wav"), blocked_host.url("y/ep.wav")]
        ia.blocked |= set(blocked) | {blocked_host.server.url("/audio/x/"), blocked_host.server.url("/audio/y/")}
        paused = [paused_host.url("p/ep1.wav"), paused_host.url("p/ep2.wav")]
        ia.paused_prefixes.add(paused_host.server.base_url)
        all_urls = list(urls.values()) + [chained] + blocked + paused
        assert len(all_urls) == 52
        ids = dict(zip(all_urls, real.add(*all_urls)))

        first_midnight = next_utc_midnight(utcnow())  # the per-URL cap lasts until then
        limits = replace(LIMITS, lookups_per_minute=24, stale_seconds=20.0, recheck_seconds=1.0)
        real.run(limits, keys=False, max_seconds=90)  # no keys: reuse only, the rest waits (90 s: CI at load 8)
        assert {real.row(ids[u]).status for u in existing} == {"pending"}
        assert real.row(ids[capped]).error_code == "ia-keys-missing"
        give_up_at = time.monotonic() + 240
        while time.monotonic() < give_up_at:
            _expire_short_waits(real)
            real.run(limits, max_seconds=60)
            rows = [real.row(i) for i in ids.values()]
            if all(r.status != "archiving" and r.error_code not in SHORT_WAITS + ("cdx-lookup-wait",) for r in rows):
                break
            # lookups wait for their turn in the shared window, as the deployment's next run would
            due = [r.archive_not_before for r in rows if r.error_code == "cdx-lookup-wait" and r.archive_not_before]
            time.sleep(max(0.0, min(((d - utcnow()).total_seconds() for d in due), default=0.0)))

        def state(url: str) -> tuple[str, str | None]:
            row = real.row(ids[url])
            return row.status, row.error_code

        midnight = next_utc_midnight(utcnow())
        for url in blocked:
            assert state(url) == ("failed", "archive-blocked")
        host_pauses = [until for reason, until in real.pauses().items() if reason.startswith("host:")]
        for url in paused:
            row = real.row(ids[url])
            assert row.status == "archive_pending" and row.archive_attempts == 0
            assert [row.archive_not_before] == host_pauses and row.archive_not_before > utcnow()
        if midnight == first_midnight:
            assert real.row(ids[capped]).archive_not_before == midnight and state(capped)[0] == "archive_pending"
            waiting = [capped]
        else:  # the run crossed midnight (CI at 23:58): the cap's day is over; captured, unless it ended waiting
            capped_row = real.row(ids[capped])
            waiting = [capped] if capped_row.archive_not_before == first_midnight else []
        assert state(lost)[1] == "spn-job-stale"
        ready = [u for u in all_urls if u not in blocked + paused + waiting + [lost]]
        assert [u for u in ready if state(u)[0] != "pending"] == []
        assert real.row(ids[snapshot_no_job]).archive_timestamp == stamp
        assert real.row(ids[chained]).archive_redirects

        # limits: lookups never over theirs, nothing sent inside a pause, no 429 met
        assert ia.max_lookups_in_window(60.0) <= 24 and ia.lookups_refused == 0
        assert ia.requests_during_lookup_pause == 0 and ia.requests_during_save_pause == 0
        assert ia.host_paused_answers == 1  # the paused host's second episode was never sent
        # the stored bytes are the named capture's
        for url in ready:
            row = real.row(ids[url])
            body = real.playback(ids[url])
            if row.archive_digest:
                assert digest_matches(hashlib.sha1(body).hexdigest(), row.archive_digest), url
            original = row.archive_url.partition("id_/")[2]
            (capture,) = [c for c in ia.captures[original] if c.timestamp == row.archive_timestamp]
            assert body == capture.body
            # and what a GPU worker's download keeps is those bytes, checked as it checks them
            with download(row.archive_url, max_bytes=10**8, timeout_seconds=10, trusted_hosts={"127.0.0.1"},
                          capture_timestamp=row.archive_timestamp) as stored:
                assert stored.sha256 == hashlib.sha256(capture.body).hexdigest(), url
