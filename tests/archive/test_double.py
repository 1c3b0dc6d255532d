"""The loopback Internet Archive itself (`tests/wayback.py`): each realistic switch answers as the
real service does (../shared/reference/spn2-real-service.md), and the defaults stay as kind as before."""

from __future__ import annotations

import gzip
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from tests.archive.conftest import WAV
from tests.wayback import AdHost, WaybackDouble, sha1_base32
from tests.wayback_cdx import urlkey

AUTH = {"Authorization": "LOW AK:SK"}
# One client (a new one per request costs ~50 ms of TLS setup), without keep-alive: the loopback
# server writes headers and body apart, so a kept-alive connection waits ~40 ms per request on
# delayed ACKs.
HTTP = httpx.Client(timeout=10, headers={"Connection": "close"})
SNAPSHOT_24H = ("The same snapshot had been made 1 hour, 12 minutes ago. "
                "You can make new capture of this URL after 24 hours.")


@pytest.fixture(scope="module", autouse=True)
def _close_http() -> Iterator[None]:
    yield
    HTTP.close()


@pytest.fixture
def real() -> Iterator[WaybackDouble]:
    """The realistic double, with no pending polls, a short replay lag and no lookup limit."""
    with WaybackDouble.realistic(pending_polls=0, replay_lag_seconds=0.3, lookups_per_minute=None) as double:
        yield double


def post(double: WaybackDouble, url: str, **form: str) -> httpx.Response:
    return HTTP.post(f"{double.base_url}/save", data={"url": url, "force_get": "1", **form}, headers=AUTH)


def poll(double: WaybackDouble, job_id: str) -> dict:
    return HTTP.get(f"{double.base_url}/save/status/{job_id}", headers=AUTH).json()


def capture(double: WaybackDouble, url: str) -> dict:
    """Submit `url` and poll its job until it ends."""
    job_id = post(double, url).json()["job_id"]
    for _ in range(20):
        answer = poll(double, job_id)
        if answer["status"] != "pending":
            return answer
    raise AssertionError("job still pending")


def cdx(double: WaybackDouble, **params: str) -> httpx.Response:
    return HTTP.get(f"{double.base_url}/cdx/search/cdx", params={"output": "json", **params})


def cdx_rows(double: WaybackDouble, **params: str) -> list[dict[str, str]]:
    table = cdx(double, **params).json()
    return [dict(zip(table[0], row)) for row in table[1:]] if table else []


def play(double: WaybackDouble, stamp: str, url: str, **kwargs: object) -> httpx.Response:
    return HTTP.get(f"{double.base_url}/web/{stamp}id_/{url}", **kwargs)  # type: ignore[arg-type]


# --- defaults ---------------------------------------------------------------------------------


def test_defaults_stay_kind(ia: WaybackDouble, origin: AdHost) -> None:
    url = origin.url("ep1.wav")
    first = post(ia, url).json()
    assert first == {"url": url, "job_id": "spn2-000001"}
    assert post(ia, url).json()["job_id"] == "spn2-000002"  # no same-snapshot answer, a new job
    assert HTTP.get(f"{ia.base_url}/save/status/spn2-nope").status_code == 404
    assert poll(ia, "spn2-000001")["status"] == "pending" and poll(ia, "spn2-000001")["status"] == "success"
    (stored,) = ia.captures[url]
    assert stored.visible_at <= time.monotonic()  # no replay lag
    assert play(ia, stored.timestamp, url).content == stored.body
    ia.busy.append((429, 7))
    busy = post(ia, url)
    assert busy.status_code == 429 and busy.headers["retry-after"] == "7"
    user = HTTP.get(f"{ia.base_url}/save/status/user")  # no Authorization needed
    assert user.json() == {"processing": 1, "available": 5, "daily_captures": 2, "daily_captures_limit": 30000}
    for _ in range(31):
        assert cdx(ia, url=url).status_code == 200  # no lookup limit
    assert len(ia.lookup_times) == 31 and ia.lookups_refused == 0


def test_realistic_sets_the_documented_values() -> None:
    double = WaybackDouble.realistic(lookups_per_minute=24)
    assert (double.unknown_jobs_pending, double.job_ttl_seconds, double.same_snapshot, double.hex_job_ids) == (
        True, 3600.0, True, True)
    assert (double.per_url_daily_cap, double.retry_after_header, double.user_status_needs_auth) == (5, False, True)
    assert (double.replay_lag_seconds, double.lookups_per_minute, double.account_daily_limit) == (2.0, 24, None)
    assert double.saves_per_minute is None and double.spn_max_redirects == 3


def test_tests_wayback_runs_realistic_from_the_command_line(tmp_path: Path) -> None:
    (tmp_path / "a.wav").write_bytes(WAV)
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.wayback", "--audio-dir", str(tmp_path), "--realistic"],
        cwd=Path(__file__).parents[2], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        started = json.loads(process.stdout.readline())
        assert started["realistic"] is True
        assert HTTP.get(f"{started['wayback_url']}/save/status/user").status_code == 401
    finally:
        process.terminate()
        process.wait(timeout=10)


# --- Save Page Now ----------------------------------------------------------------------------


def test_unknown_and_expired_jobs_answer_pending(real: WaybackDouble, origin: AdHost) -> None:
    assert poll(real, "spn2-made-up") == {"status": "pending", "job_id": "spn2-made-up", "resources": []}
    real.job_ttl_seconds = 0.3
    job_id = post(real, origin.url("ep1.wav")).json()["job_id"]
    assert re.fullmatch(r"spn2-[0-9a-f]{40}", job_id)
    time.sleep(0.4)
    assert poll(real, job_id) == {"status": "pending", "job_id": job_id, "resources": []}
    assert job_id not in real.jobs and origin.capture_hits == 0


def test_same_snapshot_without_job_id_when_a_capture_is_newer_than_if_not_archived_within(
        real: WaybackDouble, origin: AdHost) -> None:
    url = origin.url("ep1.wav")
    real.add_capture(url, WAV, when=datetime.now(UTC) - timedelta(minutes=72))
    answer = post(real, url, if_not_archived_within="86400")
    assert answer.status_code == 200 and answer.json() == {"url": url, "message": SNAPSHOT_24H}
    assert real.jobs == {}
    # an older capture than the window: a new job
    assert "job_id" in post(real, url, if_not_archived_within="3600").json()


def test_same_snapshot_counts_a_capture_not_yet_indexed(real: WaybackDouble, origin: AdHost) -> None:
    url = origin.url("ep2.wav")
    assert capture(real, url)["status"] == "success"
    assert cdx(real, url=url).json() == []  # still in the replay lag
    answer = post(real, url, if_not_archived_within="1d").json()
    assert answer == {"url": url, "message": "The same snapshot had been made 0 minutes ago. "
                                             "You can make new capture of this URL after 24 hours."}


def test_same_job_id_within_the_hour(real: WaybackDouble, origin: AdHost) -> None:
    url = origin.url("ep1.wav")
    job_id = post(real, url).json()["job_id"]
    real.jobs[job_id].submitted -= 150  # submitted two and a half minutes ago
    again = post(real, url).json()
    assert again == {"url": url, "job_id": job_id, "message": (
        "The same snapshot had been made 2 minutes ago. You can make new capture of this URL after 1 hour.")}
    assert len(real.jobs) == 1
    real.job_ttl_seconds = None
    real.jobs[job_id].submitted -= 3600
    assert post(real, url).json()["job_id"] != job_id  # after the hour, a new job


def test_per_url_daily_cap(real: WaybackDouble, origin: AdHost) -> None:
    capped, other = origin.url("ep1.wav"), origin.url("ep2.wav")
    real.set_captures_today(capped, 5)
    answer = post(real, capped)
    assert answer.status_code == 200 and answer.json() == {
        "status": "error", "status_ext": "error:too-many-daily-captures",
        "message": "This URL has been already captured 5 times today", "url": capped}
    assert "job_id" in post(real, other).json()
    real.per_url_daily_cap, real.same_snapshot = 1, False
    assert capture(real, origin.url("ep3.wav"))["status"] == "success"
    assert real.captures_today(origin.url("ep3.wav")) == 1
    assert post(real, origin.url("ep3.wav")).json()["status_ext"] == "error:too-many-daily-captures"


def test_account_daily_limit_and_user_status(real: WaybackDouble, origin: AdHost) -> None:
    user = f"{real.base_url}/save/status/user"
    assert HTTP.get(user).status_code == 401  # no Authorization
    assert HTTP.get(user, headers=AUTH).json() == {
        "processing": 0, "available": 5, "daily_captures": 0, "daily_captures_limit": 30000}
    real.account_daily_limit, real.daily_captures = 3, 2
    assert "job_id" in post(real, origin.url("ep1.wav")).json()
    assert HTTP.get(user, headers=AUTH).json()["daily_captures"] == 3
    refused = post(real, origin.url("ep2.wav")).json()
    assert refused == {"status": "error", "status_ext": "error:too-many-daily-captures",
                       "message": "You cannot make more than 3 captures per day"}
    assert HTTP.get(user, headers=AUTH).json()["daily_captures_limit"] == 3


def test_busy_and_save_rate_limit_send_no_retry_after(real: WaybackDouble, origin: AdHost) -> None:
    real.saves_per_minute, real.same_snapshot = 2, False
    real.busy.append((503, 30))
    answers = [post(real, origin.url(f"ep{i}.wav")) for i in range(4)]
    assert [a.status_code for a in answers] == [503, 200, 429, 429]
    assert "retry-after" not in answers[0].headers
    assert answers[2].text == "429 Too Many Requests" and "retry-after" not in answers[2].headers
    assert real.saves_refused == 2 and real.requests_during_save_pause == 1


def test_paused_host_and_service_errors(real: WaybackDouble, origin: AdHost) -> None:
    real.paused_prefixes.add(origin.server.url("/audio/ep1"))
    paused = post(real, origin.url("ep1.wav")).json()
    assert paused == {"status": "error", "status_ext": "error:host-crawling-paused",
                      "message": "Please try again in ~10 min. Crawling this host is paused."}
    assert real.host_paused_answers == 1
    real.service_errors = ["user-session-limit", "no-browsers-available", "job-failed", "made-up-code"]
    answers = [post(real, origin.url("ep2.wav")).json() for _ in range(5)]
    assert [(a.get("status_ext"), a.get("message")) for a in answers[:3]] == [
        ("error:user-session-limit", "You have already reached the limit of active sessions"),
        ("error:no-browsers-available", "SPN2 back-end headless browser cannot run"),
        ("error:job-failed", "Capture failed due to system error")]
    assert answers[3]["status_ext"] == "error:made-up-code" and answers[3]["message"]
    assert "job_id" not in answers[3] and "job_id" in answers[4] and real.service_errors == []


def test_lost_and_slow_jobs_stay_pending(real: WaybackDouble, origin: AdHost) -> None:
    lost, slow = origin.url("ep1.wav"), origin.url("ep2.wav")
    real.lost_urls.add(lost)
    real.slow_capture_urls.add(slow)
    real.replay_lag_seconds = 0.0
    lost_job, slow_job = post(real, lost).json()["job_id"], post(real, slow).json()["job_id"]
    for _ in range(3):
        assert poll(real, lost_job)["status"] == "pending" and poll(real, slow_job)["status"] == "pending"
    assert lost not in real.captures
    (made,) = real.captures[slow]  # archived anyway
    assert cdx_rows(real, url=slow)[0]["timestamp"] == made.timestamp


# --- replay lag, lookups and playback -----------------------------------------------------------


def test_replay_lag_redirects_to_an_older_capture_then_plays_the_new_one(
        real: WaybackDouble, origin: AdHost) -> None:
    url = origin.url("ep1.wav")
    older = real.add_capture(url, b"older bytes", when=datetime.now(UTC) - timedelta(days=1))
    done = capture(real, url)
    assert done["status"] == "success" and done["original_url"] == url
    new = done["timestamp"]
    early = play(real, new, url)
    assert early.status_code == 302 and early.headers["location"] == f"{real.base_url}/web/{older}id_/{url}"
    assert "memento-datetime" not in early.headers
    assert [r["timestamp"] for r in cdx_rows(real, url=url)] == [older]
    available = HTTP.get(f"{real.base_url}/wayback/available", params={"url": url}).json()
    assert available["archived_snapshots"]["closest"]["timestamp"] == older
    time.sleep(0.35)
    late = play(real, new, url)
    assert late.status_code == 200 and late.content == real.captures[url][-1].body
    assert [r["timestamp"] for r in cdx_rows(real, url=url)] == [older, new]


def test_replay_lag_without_an_older_capture_is_a_404(real: WaybackDouble, origin: AdHost) -> None:
    url = origin.url("ep2.wav")
    new = capture(real, url)["timestamp"]
    assert play(real, new, url).status_code == 404
    time.sleep(0.35)
    assert play(real, new, url).status_code == 200


def test_lookup_limit_answers_429_without_retry_after_and_counts_ignored_pauses(origin: AdHost) -> None:
    with WaybackDouble.realistic(lookups_per_minute=3) as double:
        url = origin.url("ep1.wav")
        assert cdx(double, url=url).status_code == 200
        assert HTTP.get(f"{double.base_url}/wayback/available", params={"url": url}).status_code == 200
        assert cdx(double, url=url).status_code == 200
        refused = cdx(double, url=url)
        assert refused.status_code == 429 and refused.text == "429 Too Many Requests"
        assert "retry-after" not in refused.headers
        assert double.requests_during_lookup_pause == 0
        assert HTTP.get(f"{double.base_url}/wayback/available", params={"url": url}).status_code == 429
        assert double.lookups_refused == 2 and double.requests_during_lookup_pause == 1
        assert len(double.lookup_times) == 5 and double.max_lookups_in_window() == 5


def test_playback_headers(ia: WaybackDouble) -> None:
    url = "http://example.com/a.wav"
    stamp = ia.add_capture(url, WAV, when=datetime(2026, 12, 1, 10, 0, 0, tzinfo=UTC))
    answer = play(ia, stamp, url)
    assert answer.headers["memento-datetime"] == "Tue, 01 Dec 2026 10:00:00 GMT"
    assert answer.headers["x-archive-src"].endswith(".warc.gz")
    ranged = play(ia, stamp, url, headers={"Range": "bytes=0-3"})
    assert ranged.status_code == 206 and ranged.content == b"RIFF" and "memento-datetime" in ranged.headers


# --- redirects, encodings, odd rows ----------------------------------------------------------------


def test_redirect_chain_is_captured_per_hop(real: WaybackDouble, origin: AdHost) -> None:
    real.replay_lag_seconds = 0.0
    start = origin.chain_url("ep1.wav", 3)
    done = capture(real, start)
    assert origin.redirect_hits == 3 and origin.capture_hits == 1
    hops = done["resources"]
    assert len(hops) == 4 and hops[0] == start and hops[-1] == origin.url("ep1.wav")
    assert done["status"] == "success" and done["original_url"] == origin.url("ep1.wav")
    stamp = done["timestamp"]
    first = play(real, stamp, start)
    assert first.status_code == 302 and first.headers["location"] == f"{real.base_url}/web/{stamp}id_/{hops[1]}"
    assert [r["statuscode"] for r in cdx_rows(real, url=start)] == ["302"]
    assert cdx_rows(real, url=start, filter="statuscode:200") == []
    followed = HTTP.get(first.url, follow_redirects=True)
    assert followed.status_code == 200 and followed.content == real.captures[hops[-1]][0].body
    assert len(followed.history) == 3


def test_four_redirects_are_too_many(real: WaybackDouble, origin: AdHost) -> None:
    start = origin.chain_url("ep1.wav", 4)
    done = capture(real, start)
    assert done["status"] == "error" and done["status_ext"] == "error:too-many-redirects"
    assert "SPN2 tries to follow 3 redirects automatically" in done["message"]
    assert real.captures == {} and origin.capture_hits == 0


def test_ad_host_can_refuse_head(origin: AdHost) -> None:
    origin.head_not_allowed = True
    assert HTTP.head(origin.url("ep1.wav")).status_code == 405
    assert HTTP.head(origin.chain_url("ep1.wav", 1)).status_code == 405
    assert HTTP.get(origin.chain_url("ep1.wav", 2), follow_redirects=True).status_code == 200
    assert origin.redirect_hits == 2 and origin.direct_hits == 1


def test_gzip_capture_keeps_the_encoding_and_its_digest(real: WaybackDouble, origin: AdHost) -> None:
    url = origin.url("ep1.wav")
    real.gzip_urls.add(url)
    real.replay_lag_seconds = 0.0
    stamp = capture(real, url)["timestamp"]
    with HTTP.stream("GET", f"{real.base_url}/web/{stamp}id_/{url}") as answer:
        stored = b"".join(answer.iter_raw())
        assert answer.headers["content-encoding"] == "gzip"
    body = gzip.decompress(stored)
    assert body[:4] == b"RIFF"
    (row,) = cdx_rows(real, url=url)
    assert row["digest"] == sha1_base32(stored) != sha1_base32(body)
    assert row["length"] == str(len(stored))


def test_odd_digests_and_revisit_rows(ia: WaybackDouble) -> None:
    odd, revisited = "http://example.com/odd.wav", "http://example.com/again.wav"
    ia.add_capture(odd, WAV)
    old = ia.add_capture(revisited, WAV, when=datetime.now(UTC) - timedelta(days=2))
    new = ia.add_capture(revisited, WAV)
    ia.odd_digests[odd] = "sha-256:abc"
    ia.revisit_urls.add(revisited)
    assert [r["digest"] for r in cdx_rows(ia, url=odd)] == ["sha-256:abc"]
    rows = cdx_rows(ia, url=revisited)
    assert [(r["timestamp"], r["statuscode"], r["mimetype"]) for r in rows] == [
        (old, "200", "audio/wav"), (new, "-", "warc/revisit")]
    assert rows[1]["digest"] == sha1_base32(WAV)
    assert cdx_rows(ia, url=revisited, filter="statuscode:200") == rows[:1]
    assert play(ia, new, revisited).content == WAV  # still plays back


# --- CDX query semantics ---------------------------------------------------------------------------


@pytest.fixture
def seeded(ia: WaybackDouble) -> dict[str, str]:
    """Captures on two hosts at known times, one a redirect."""
    def at(*args: int) -> datetime:
        return datetime(*args, tzinfo=UTC)

    return {
        "a1": ia.add_capture("http://example.com/show/a.wav", WAV, at(2024, 1, 2, 3, 4, 5)),
        "a2": ia.add_capture("http://example.com/show/a.wav", WAV + b"x", at(2025, 6, 1, 0, 0, 0)),
        "a3": ia.add_capture("http://example.com/show/a.wav", WAV + b"x", at(2025, 6, 2, 0, 0, 0)),
        "b": ia.add_capture("http://example.com/show/b.wav", b"<html>moved</html>", at(2025, 1, 1, 0, 0, 0),
                            statuscode=301, location="http://cdn.example.com/b.wav", mimetype="text/html"),
        "c": ia.add_capture("http://cdn.example.com/b.wav", WAV, at(2025, 1, 1, 0, 0, 1)),
        "o": ia.add_capture("http://other.org/show/a.wav", WAV, at(2025, 1, 1, 0, 0, 0)),
    }


def test_cdx_urlkey_and_exact_match(ia: WaybackDouble, seeded: dict[str, str]) -> None:
    assert urlkey("http://127.0.0.1:8000/Audio/a.wav") == "1,0,0,127:8000)/audio/a.wav"
    assert urlkey("https://cdn.example.com/b.wav?x=1") == "com,example,cdn)/b.wav?x=1"
    rows = cdx_rows(ia, url="https://EXAMPLE.com/show/a.wav")  # scheme and host case do not matter
    assert [r["timestamp"] for r in rows] == [seeded["a1"], seeded["a2"], seeded["a3"]]
    assert rows[0]["urlkey"] == "com,example)/show/a.wav" and rows[0]["original"] == "http://example.com/show/a.wav"
    assert cdx(ia, url="http://example.com/none.wav").json() == []
    assert cdx(ia, url="http://example.com/none.wav", output="").content == b""


def test_cdx_match_types(ia: WaybackDouble, seeded: dict[str, str]) -> None:
    def originals(**params: str) -> list[str]:
        return sorted({r["original"] for r in cdx_rows(ia, **params)})

    show = ["http://example.com/show/a.wav", "http://example.com/show/b.wav"]
    assert originals(url="http://example.com/show/*") == show
    assert originals(url="http://example.com/show/", matchType="prefix") == show
    assert originals(url="example.com", matchType="host") == show
    assert originals(url="example.com", matchType="domain") == ["http://cdn.example.com/b.wav", *show]
    assert originals(url="*.example.com") == ["http://cdn.example.com/b.wav", *show]


def test_cdx_from_to_filter_collapse_limit_fl(ia: WaybackDouble, seeded: dict[str, str]) -> None:
    a = "http://example.com/show/a.wav"

    def stamps(**params: str) -> list[str]:
        return [r["timestamp"] for r in cdx_rows(ia, **params)]

    assert stamps(url=a, **{"from": "2025"}) == [seeded["a2"], seeded["a3"]]
    assert stamps(url=a, to="2025") == [seeded["a1"], seeded["a2"], seeded["a3"]]
    assert stamps(url=a, to="202406") == [seeded["a1"]]
    assert stamps(url=a, **{"from": "20250601", "to": "20250601"}) == [seeded["a2"]]
    assert stamps(url=a, limit="-1") == [seeded["a3"]] and stamps(url=a, limit="2") == [seeded["a1"], seeded["a2"]]
    assert stamps(url=a, collapse="digest") == [seeded["a1"], seeded["a2"]]
    assert stamps(url=a, collapse="timestamp:4") == [seeded["a1"], seeded["a2"]]
    assert len(cdx_rows(ia, url="example.com/show/*", collapse="urlkey")) == 2
    show = "http://example.com/show/*"
    assert [r["statuscode"] for r in cdx_rows(ia, url=show, filter="!statuscode:200")] == ["301"]
    assert stamps(url=show, filter="statuscode:3..") == [seeded["b"]]
    assert stamps(url=show, filter="mimetype:text/.*") == [seeded["b"]]
    assert stamps(url=a, filter=f"digest:{sha1_base32(WAV)}") == [seeded["a1"]]
    two_filters = HTTP.get(f"{ia.base_url}/cdx/search/cdx", params=[
        ("url", show), ("output", "json"), ("filter", "statuscode:200"), ("filter", "!timestamp:2024.*")])
    assert [row[1] for row in two_filters.json()[1:]] == [seeded["a2"], seeded["a3"]]
    table = cdx(ia, url=a, fl="timestamp,length", limit="1").json()
    assert table == [["timestamp", "length"], [seeded["a1"], str(len(WAV))]]
    text = HTTP.get(f"{ia.base_url}/cdx/search/cdx", params={"url": a, "fl": "timestamp", "limit": "-1"})
    assert text.text == f"{seeded['a3']}\n"
