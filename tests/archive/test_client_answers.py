"""What the archive client makes of Save Page Now's and CDX's answers, one answer at a time,
served over real HTTP on 127.0.0.1 exactly as the sources quote them
(../shared/reference/spn2-real-service.md)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from podcastpile.archive import cdx
from podcastpile.archive.answers import kind_of, usable_digest
from podcastpile.archive.wayback import CaptureError, Throttled, WaybackClient
from tests.loopback import LoopbackServer, Reply, Request


class Scripted:
    """A server answering each path with the next scripted JSON body (and recording requests)."""

    def __init__(self) -> None:
        self.answers: dict[str, list[tuple[int, object]]] = {}
        self.requests: list[str] = []
        self.server = LoopbackServer({"/*": self._answer})

    def _answer(self, request: Request) -> Reply:
        self.requests.append(request.path)
        status, body = self.answers[request.path].pop(0)
        return Reply(status, json.dumps(body).encode(), {"Content-Type": "application/json"})

    def client(self) -> WaybackClient:
        return WaybackClient(self.server.base_url, access_key="AK", secret_key="SK", timeout_seconds=5)


@pytest.fixture
def scripted() -> Iterator[Scripted]:
    served = Scripted()
    with served.server:
        yield served


def test_same_snapshot_without_a_job_is_a_capture_not_an_error(scripted: Scripted) -> None:
    scripted.answers["/save"] = [(200, {"url": "https://a.example/ep.mp3", "message": (
        "The same snapshot had been made 1 hour, 12 minutes ago. You can make new capture of this URL after 24 hours.")})]
    with scripted.client() as client:
        answer = client.submit("https://a.example/ep.mp3", reuse_seconds=86400)
    assert answer.job_id is None and answer.same_snapshot


def test_same_snapshot_with_a_job_is_polled(scripted: Scripted) -> None:
    job = "spn2-" + "a" * 40
    scripted.answers["/save"] = [(200, {"url": "u", "job_id": job, "message": (
        "The same snapshot had been made 2 minutes ago. You can make new capture of this URL after 1 hour.")})]
    with scripted.client() as client:
        answer = client.submit("https://a.example/ep.mp3")
    assert answer.job_id == job and answer.same_snapshot


@pytest.mark.parametrize(("body", "kind"), [
    ({"status": "error", "status_ext": "error:too-many-daily-captures",
      "message": "This URL has been already captured 5 times today"}, "url-cap"),
    ({"status": "error", "status_ext": "error:too-many-daily-captures",
      "message": "You cannot make more than 100000 captures per day"}, "account"),
    ({"status": "error", "message": "You have already reached the limit of active sessions"}, "service"),
    ({"status": "error", "status_ext": "error:host-crawling-paused",
      "message": "Please try again in ~10 min. Crawling this host is paused."}, "host"),
    ({"status": "error", "status_ext": "error:invalid-url-syntax", "message": "bad"}, "permanent"),
    ({"status": "error", "status_ext": "error:blocked-url", "message": "excluded"}, "blocked"),
])
def test_refusals_at_submit_are_classified_by_who_is_to_blame(scripted: Scripted, body: dict, kind: str) -> None:
    scripted.answers["/save"] = [(200, body)]
    with scripted.client() as client, pytest.raises(CaptureError) as raised:
        client.submit("https://a.example/ep.mp3")
    assert raised.value.kind == kind


def test_a_deduplicated_job_takes_the_original_jobs_timestamp(scripted: Scripted) -> None:
    scripted.answers["/save/status/spn2-new"] = [(200, {
        "status": "success", "job_id": "spn2-new", "original_job_id": "spn2-first",
        "timestamp": "20261206120000", "original_url": "https://a.example/ep.mp3"})]
    scripted.answers["/save/status/spn2-first"] = [(200, {
        "status": "success", "job_id": "spn2-first", "timestamp": "20261206110500",
        "original_url": "https://a.example/ep.mp3"})]
    with scripted.client() as client:
        status = client.job_status("spn2-new")
    assert status.timestamp == "20261206110500"


def test_a_bare_path_original_url_means_the_submitted_url(scripted: Scripted) -> None:
    scripted.answers["/save/status/spn2-x"] = [(200, {
        "status": "success", "job_id": "spn2-x", "timestamp": "20261206110500", "original_url": "/ep.mp3"})]
    with scripted.client() as client:
        status = client.job_status("spn2-x")
    assert status.status == "success" and status.original_url is None


def test_an_expired_job_answers_pending_not_404(scripted: Scripted) -> None:
    scripted.answers["/save/status/spn2-old"] = [(200, {"job_id": "spn2-old", "resources": [], "status": "pending"})]
    with scripted.client() as client:
        assert client.job_status("spn2-old").status == "pending"


def test_a_429_from_user_status_is_not_swallowed(scripted: Scripted) -> None:
    scripted.answers["/save/status/user"] = [(429, {"message": "Too Many Requests"})]
    with scripted.client() as client, pytest.raises(Throttled) as raised:
        client.user_status()
    assert raised.value.family == "save" and raised.value.retry_after is None


def test_cdx_rows_keep_redirects_and_revisits_and_drop_digests_that_are_no_sha1() -> None:
    rows = cdx.parse_rows([
        ["original", "timestamp", "statuscode", "digest", "length"],
        ["https://a.example/ep.mp3", "20240101000000", "302", "3I42H3S6NNFQ2MSVX7XZKYAYSCX5QBYJ", "512"],
        ["https://a.example/ep.mp3", "20250101000000", "-", "3I42H3S6NNFQ2MSVX7XZKYAYSCX5QBYJ", "900"],
        ["https://a.example/ep.mp3", "20260101000000", "200", "sha-256:abcd", "-"],
        ["https://a.example/ep.mp3", "2026", "200", "x", "1"],  # not a timestamp: skipped
    ])
    assert [(r.statuscode, r.digest, r.length) for r in rows] == [
        ("302", "3I42H3S6NNFQ2MSVX7XZKYAYSCX5QBYJ", 512), (None, "3I42H3S6NNFQ2MSVX7XZKYAYSCX5QBYJ", 900),
        ("200", None, None)]
    best = cdx.best_capture(rows)
    assert best is not None and best.timestamp == "20250101000000"  # a verifiable body over a newer unverifiable one


def test_digest_and_kind_tables() -> None:
    assert usable_digest("-") is None and usable_digest("error") is None
    assert usable_digest("3I42H3S6NNFQ2MSVX7XZKYAYSCX5QBYJ") == "3I42H3S6NNFQ2MSVX7XZKYAYSCX5QBYJ"
    assert kind_of("too-many-redirects") == "permanent" and kind_of("user-session-limit") == "service"
    assert kind_of("something-new") == "transient" and kind_of("max-daily-bandwidth-host") == "host"


def test_folders_are_where_a_podcasts_episodes_live() -> None:
    assert cdx.folder_of("https://a.example/show/ep1.mp3?x=1") == "https://a.example/show/"
    assert cdx.folder_of("https://a.example/ep1.mp3") == "https://a.example/"
