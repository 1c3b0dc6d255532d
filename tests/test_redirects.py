"""Redirect chains resolved over real HTTP on 127.0.0.1, without downloading the audio.

The test server is on loopback, which the default guard refuses: most tests allow any address
(as tests/speech/test_fetch.py does); the guard tests keep the default policy and only trust
the test server's own host.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from podcastpile.errors import EpisodeError, PermanentError, TransientError
from podcastpile.net.fetch import download_client
from podcastpile.net.guard import AddressGuard, allow_any, system_resolver
from podcastpile.net.redirects import RedirectChain, resolve_redirects
from tests.loopback import LoopbackServer, Reply, Request

LOOPBACK_ALLOWED = AddressGuard(allow=allow_any)
AUDIO = b"ID3" + b"\0" * 100_000


def redirect(location: str, status: int = 302) -> Any:
    return lambda request: Reply(status, b"", {"Location": location})


def audio(methods: list[str]) -> Any:
    """The final file; records each request's method (a GET would send the body)."""

    def serve(request: Request) -> Reply:
        methods.append(request.method)
        return Reply(200, AUDIO, {"Content-Type": "audio/mpeg"})

    return serve


def resolve(url: str, guard: AddressGuard = LOOPBACK_ALLOWED, **options: Any) -> RedirectChain:
    options.setdefault("timeout_seconds", 5)
    return resolve_redirects(url, guard=guard, **options)


def failure(url: str, kind: type[EpisodeError] = PermanentError, **options: Any) -> EpisodeError:
    with pytest.raises(kind) as caught:
        resolve(url, **options)
    return caught.value


def test_a_tracking_chain_resolves_to_the_final_url_without_its_body() -> None:
    methods: list[str] = []
    with LoopbackServer() as server:
        server.routes.update({
            "/redirect.mp3/chrt": redirect(server.url("/track/XXXX/pdst")),
            "/track/XXXX/pdst": redirect(server.url("/pdst/megaphone"), 301),
            "/pdst/megaphone": redirect(server.url("/abc.mp3"), 307),
            "/abc.mp3": redirect(server.url("/cdn/abc.mp3?sig=s3cr3t&expires=9"), 308),
            "/cdn/abc.mp3": audio(methods),
        })
        chain = resolve(server.url("/redirect.mp3/chrt"))
    assert chain.urls == (
        server.url("/redirect.mp3/chrt"), server.url("/track/XXXX/pdst"), server.url("/pdst/megaphone"),
        server.url("/abc.mp3"), server.url("/cdn/abc.mp3?sig=s3cr3t&expires=9"),
    )
    assert (chain.hops, chain.status, chain.final) == (4, 200, chain.urls[-1])
    assert methods == ["HEAD"]  # the final server never sent the file
    assert RedirectChain.from_json(chain.to_json(), chain.status) == chain
    assert " " not in chain.to_json() and chain.to_json().startswith('["http')


def test_head_refused_falls_back_to_a_get_whose_body_is_never_read() -> None:
    released = threading.Event()
    methods: list[str] = []

    def no_head(request: Request) -> Reply:
        methods.append(request.method)
        if request.method == "HEAD":
            return Reply(405, b"", {"Allow": "GET"})

        def stalled_body() -> Iterator[bytes]:
            yield AUDIO[:1000]
            released.wait(10)  # reading past this chunk would stall until the read timeout
            yield AUDIO[1000:]

        return Reply(200, stalled_body(), {"Content-Type": "audio/mpeg"})

    try:
        with LoopbackServer({"/ep.mp3": redirect("/cdn.mp3"), "/cdn.mp3": no_head}) as server:
            started = time.monotonic()
            chain = resolve(server.url("/ep.mp3"), timeout_seconds=3)
            elapsed = time.monotonic() - started
    finally:
        released.set()
    assert (chain.final, chain.status) == (server.url("/cdn.mp3"), 200)
    assert methods == ["HEAD", "GET"]
    assert elapsed < 2  # returned on the headers, not after the stalled body timed out


@pytest.mark.parametrize("refusal", [400, 403, 501])
def test_other_head_refusals_fall_back_to_get(refusal: int) -> None:
    def picky(request: Request) -> Reply:
        if request.method == "HEAD":
            return Reply(refusal)
        return Reply(302, b"", {"Location": "/file.mp3"})

    with LoopbackServer({"/ep.mp3": picky, "/file.mp3": audio([])}) as server:
        chain = resolve(server.url("/ep.mp3"))
    assert (chain.urls, chain.status) == ((server.url("/ep.mp3"), server.url("/file.mp3")), 200)


def test_relative_locations_are_resolved_against_the_hop() -> None:
    with LoopbackServer({
        "/a/b/ep.mp3": redirect("../c/ep.mp3"),
        "/a/c/ep.mp3": redirect("/root.mp3?x=1", 303),
        "/root.mp3": audio([]),
    }) as server:
        chain = resolve(server.url("/a/b/ep.mp3"))
    assert chain.urls == (server.url("/a/b/ep.mp3"), server.url("/a/c/ep.mp3"), server.url("/root.mp3?x=1"))


def test_no_redirect_is_a_chain_of_one() -> None:
    with LoopbackServer({"/ep.mp3": audio([])}) as server:
        chain = resolve(server.url("/ep.mp3"))
    assert (chain.urls, chain.hops, chain.status) == ((server.url("/ep.mp3"),), 0, 200)


def test_the_last_answer_is_reported_whatever_its_status() -> None:
    with LoopbackServer({"/ep.mp3": redirect("/gone.mp3")}) as server:  # unrouted paths answer 404
        chain = resolve(server.url("/ep.mp3"))
    assert (chain.final, chain.status) == (server.url("/gone.mp3"), 404)


def test_a_loop_is_refused_and_its_reason_hides_passwords() -> None:
    with LoopbackServer({"/a": redirect("/b"), "/b": redirect("/a")}) as server:
        url = server.url("/a").replace("http://", "http://user:hunter2@")
        error = failure(url)
        assert server.hits == {"/a": 1, "/b": 1}
    assert error.code == "redirect-loop"
    assert "hunter2" not in error.reason and "user:***@" in error.reason


def test_more_than_max_hops_is_refused() -> None:
    def onwards(request: Request) -> Reply:
        return Reply(302, b"", {"Location": f"/n/{int(request.path.rsplit('/', 1)[1]) + 1}"})

    with LoopbackServer({"/n/*": onwards}) as server:
        error = failure(server.url("/n/0"), max_hops=3)
        assert sum(server.hits.values()) == 4  # the third redirect's target is never asked
    assert error.code == "too-many-redirects"
    with LoopbackServer({"/n/3": audio([]), "/n/*": onwards}) as server:
        assert resolve(server.url("/n/0"), max_hops=3).hops == 3  # exactly max_hops is fine


def test_a_redirect_to_another_scheme_is_a_bad_url() -> None:
    with LoopbackServer({"/ep.mp3": redirect("ftp://files.example/ep.mp3")}) as server:
        assert failure(server.url("/ep.mp3")).code == "bad-url"
    assert failure("file:///etc/passwd").code == "bad-url"


# The default policy, trusting only the test server's host: the hop is refused before connecting.
@pytest.mark.parametrize(("location", "code"), [
    ("http://169.254.169.254/latest/meta-data/", "blocked-address"),
    ("http://10.0.0.7/ep.mp3", "blocked-address"),
    ("http://localhost:1/ep.mp3", "blocked-address"),
    ("http://metadata.internal/ep.mp3", "blocked-address"),
    ("http://0177.0.0.1/ep.mp3", "bad-url"),  # a form httpx does not parse: never connected to either
])
def test_a_hop_to_a_private_address_is_refused(location: str, code: str) -> None:
    lookups: list[str] = []

    def resolver(host: str, port: int) -> list[Any]:
        lookups.append(host)
        if host == "metadata.internal":  # a public-looking name that resolves inside
            return [ipaddress.ip_address("10.0.0.8")]
        return system_resolver(host, port)

    guard = AddressGuard(resolver=resolver).trusting(["127.0.0.1"])
    with LoopbackServer({"/ep.mp3": redirect(location)}) as server:
        error = failure(server.url("/ep.mp3"), guard=guard)
    assert error.code == code
    assert set(lookups) <= {"127.0.0.1", "metadata.internal"}  # no other host was even resolved


def test_the_default_guard_refuses_the_first_url_too() -> None:
    with LoopbackServer({"/ep.mp3": audio([])}) as server:
        assert failure(server.url("/ep.mp3"), guard=AddressGuard()).code == "blocked-address"
        assert server.hits == {}
    assert failure("http://0177.0.0.1:1/ep.mp3", guard=AddressGuard()).code == "blocked-address"


def test_a_given_client_is_used_and_left_open() -> None:
    with LoopbackServer({"/ep.mp3": redirect("/file.mp3"), "/file.mp3": audio([])}) as server:
        with download_client(5, LOOPBACK_ALLOWED) as client:
            for _ in range(2):
                assert resolve(server.url("/ep.mp3"), client=client).hops == 1
            assert not client.is_closed


def test_a_stalled_server_is_a_transient_timeout() -> None:
    released = threading.Event()

    def stall(request: Request) -> None:
        released.wait(10)

    try:
        with LoopbackServer({"/ep.mp3": redirect("/slow.mp3"), "/slow.mp3": stall}) as server:
            error = failure(server.url("/ep.mp3"), TransientError, timeout_seconds=0.5)
    finally:
        released.set()
    assert error.code == "timeout"


def test_a_refused_connection_is_transient() -> None:
    with socket.socket() as probe:  # a port nothing listens on once it is closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert failure(f"http://127.0.0.1:{port}/ep.mp3", TransientError).code == "connection"


def test_from_json_refuses_what_is_not_a_chain() -> None:
    for text in ("[]", '{"urls": []}', "[1]", '"http://a/"'):
        with pytest.raises(ValueError):
            RedirectChain.from_json(text)
