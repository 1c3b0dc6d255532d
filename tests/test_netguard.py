"""The download address guard, with real resolution and real connections on loopback only.

Addresses outside 127.0.0.0/8 are never connected to here: the guard must refuse them before
any connection, and a recording network backend proves that none was opened. To test "an
allowed host" the policy is injected: 127.0.0.1 plays the public host, 127.0.0.2 (also this
machine's loopback) the private one.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpcore
import httpx
import pytest

from podcastpile.config import load_settings
from podcastpile.errors import EpisodeError, PermanentError
from podcastpile.net.fetch import download
from podcastpile.net.guard import (
    AddressGuard, BlockedAddress, PinnedTransport, is_public, literal_address, system_resolver,
)
from podcastpile.speech.pipeline import fetch
from tests.loopback import LoopbackServer, Reply

BODY = b"ID3" + b"\0" * 2000  # any bytes: these tests stop at the download
PUBLIC = ipaddress.ip_address("127.0.0.1")  # stands in for a public address
PRIVATE = ipaddress.ip_address("127.0.0.2")


def only_first_loopback(address: Any) -> bool:
    return address == PUBLIC


class RecordingBackend(httpcore.SyncBackend):
    """Real sockets, with a record of every address a connection was opened to."""

    def __init__(self) -> None:
        self.connects: list[tuple[str, int]] = []

    def connect_tcp(self, host: str, port: int, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
        self.connects.append((host, port))
        return super().connect_tcp(host, port, *args, **kwargs)


class CountingResolver:
    """Answers from a table of names, one answer per call in turn (the last one repeats); other
    hosts (the loopback literals) go to the system resolver."""

    def __init__(self, answers: dict[str, list[list[str]]]) -> None:
        self.answers = answers
        self.calls: list[str] = []

    def __call__(self, host: str, port: int) -> list[Any]:
        if host not in self.answers:
            return system_resolver(host, port)
        self.calls.append(host)
        turns = self.answers[host]
        answer = turns[min(self.calls.count(host), len(turns)) - 1]
        return [ipaddress.ip_address(text) for text in answer]


@contextmanager
def guarded(guard: AddressGuard, **transport: Any) -> Iterator[tuple[httpx.Client, RecordingBackend]]:
    backend = RecordingBackend()
    with httpx.Client(transport=PinnedTransport(guard, backend=backend, **transport), timeout=5) as client:
        yield client, backend


def get(url: str, guard: AddressGuard, client: httpx.Client | None = None, **options: Any) -> bytes:
    with download(url, max_bytes=100_000, timeout_seconds=5, guard=guard, client=client, **options) as downloaded:
        return downloaded.path.read_bytes()


def refusal(url: str, guard: AddressGuard, client: httpx.Client | None = None, **options: Any) -> EpisodeError:
    with pytest.raises(PermanentError) as caught:
        get(url, guard, client, **options)
    return caught.value


@pytest.fixture
def two_hosts() -> Iterator[tuple[LoopbackServer, LoopbackServer]]:
    """A server on 127.0.0.1 and one on 127.0.0.2, on the same port."""
    for _ in range(20):
        with LoopbackServer({"/ep.mp3": lambda r: Reply(200, BODY, {"Content-Type": "audio/mpeg"})}) as first:
            try:
                second = LoopbackServer({"/ep.mp3": lambda r: Reply(200, b"PRIVATE")}, host="127.0.0.2", port=first.port)
            except OSError:  # that port is taken on 127.0.0.2: try another
                continue
            with second:
                yield first, second
            return
    pytest.fail("no port free on both 127.0.0.1 and 127.0.0.2")


# Each class and spelling of a non-public address, resolved by the system resolver (no DNS
# server is asked: these are literals, and `localhost` comes from /etc/hosts).
REFUSED = [
    ("169.254.169.254", "link-local"),
    ("10.1.2.3", "private"),
    ("172.16.0.1", "private"),
    ("192.168.1.1", "private"),
    ("100.64.0.1", "non-global"),
    ("0.0.0.0", "unspecified"),
    ("0", "unspecified"),
    ("127.0.0.1", "loopback"),
    ("localhost", "loopback"),
    ("2130706433", "loopback"),
    ("0x7f.1", "loopback"),
    ("0177.0.0.1", "loopback"),
    ("127.1", "loopback"),
    ("224.0.0.1", "multicast"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.255", "reserved"),
    ("::1", "loopback"),
    ("::", "unspecified"),
    ("fd00::1", "private"),
    ("fe80::1", "link-local"),
    ("ff02::1", "multicast"),
    ("::ffff:127.0.0.1", "loopback"),
    ("::ffff:169.254.169.254", "link-local"),
    ("2002:a9fe:a9fe::1", "link-local"),  # 6to4 of 169.254.169.254
    ("64:ff9b::a00:1", "private"),  # NAT64 of 10.0.0.1
]


@pytest.mark.parametrize(("host", "kind"), REFUSED)
def test_every_non_public_address_is_refused_after_resolution(host: str, kind: str) -> None:
    with pytest.raises(BlockedAddress) as caught:
        AddressGuard().resolve(host, 80)
    assert caught.value.kind.startswith(kind)
    assert host in str(caught.value) and str(caught.value.address) in str(caught.value)


@pytest.mark.parametrize(("host", "kind"), REFUSED)
def test_downloads_from_them_fail_before_any_connection(host: str, kind: str) -> None:
    netloc = f"[{host}]" if ":" in host else host
    with guarded(AddressGuard()) as (client, backend):
        error = refusal(f"http://{netloc}/ep.mp3", AddressGuard(), client)
    assert error.code == "blocked-address"
    assert host in error.reason and kind in error.reason and "\n" not in error.reason
    assert backend.connects == []


def test_literal_addresses_are_read_without_dns() -> None:
    assert literal_address("2130706433") == literal_address("0x7f.1") == ipaddress.ip_address("127.0.0.1")
    assert literal_address("[fd00::1]") == ipaddress.ip_address("fd00::1")
    assert literal_address("a.localhost") == ipaddress.ip_address("127.0.0.1")
    assert literal_address("example.com") is None and literal_address("cafe.be") is None
    assert is_public(ipaddress.ip_address("8.8.8.8")) and is_public(ipaddress.ip_address("2606:4700::1111"))
    assert not is_public(ipaddress.ip_address("::ffff:10.0.0.1"))


def test_an_allowed_host_downloads(two_hosts) -> None:
    first, second = two_hosts
    guard = AddressGuard(allow=only_first_loopback)
    with guarded(guard) as (client, backend):
        assert get(first.url("/ep.mp3"), guard, client) == BODY
    assert backend.connects == [("127.0.0.1", first.port)]


def test_a_redirect_to_a_refused_address_is_refused_at_that_hop(two_hosts) -> None:
    first, second = two_hosts
    first.routes["/to-literal"] = lambda r: Reply(302, b"", {"Location": second.url("/ep.mp3")})
    first.routes["/to-name"] = lambda r: Reply(302, b"", {"Location": f"http://inside.test:{second.port}/ep.mp3"})
    resolver = CountingResolver({"inside.test": [["127.0.0.2"]]})
    guard = AddressGuard(allow=only_first_loopback, resolver=resolver)
    with guarded(guard) as (client, backend):
        literal = refusal(first.url("/to-literal"), guard, client)
        named = refusal(first.url("/to-name"), guard, client)
    assert literal.code == named.code == "blocked-address"
    assert "127.0.0.2" in literal.reason
    assert "inside.test resolves to 127.0.0.2" in named.reason
    assert second.hits["/ep.mp3"] == 0
    assert {address for address, _ in backend.connects} == {"127.0.0.1"}


def test_dns_rebinding_cannot_switch_the_connection_to_a_second_answer(two_hosts) -> None:
    first, second = two_hosts
    # The first answer passes the check; every later lookup says 127.0.0.2. A client that
    # checked one lookup and connected by name (a second lookup) would reach the private host.
    resolver = CountingResolver({"rebind.test": [["127.0.0.1"], ["127.0.0.2"]]})
    guard = AddressGuard(allow=only_first_loopback, resolver=resolver)
    with guarded(guard) as (client, backend):
        assert get(f"http://rebind.test:{first.port}/ep.mp3", guard, client) == BODY
    assert resolver.calls == ["rebind.test"]
    assert backend.connects == [("127.0.0.1", first.port)]
    assert second.hits["/ep.mp3"] == 0


def test_a_name_with_any_refused_answer_is_refused(two_hosts) -> None:
    first, second = two_hosts
    resolver = CountingResolver({"mixed.test": [["127.0.0.1", "127.0.0.2"]]})
    guard = AddressGuard(allow=only_first_loopback, resolver=resolver)
    with guarded(guard) as (client, backend):
        error = refusal(f"http://mixed.test:{first.port}/ep.mp3", guard, client)
    assert error.code == "blocked-address" and "127.0.0.2" in error.reason
    assert backend.connects == [] and first.hits["/ep.mp3"] == second.hits["/ep.mp3"] == 0


def test_the_settings_switch_and_the_trusted_archive_host(two_hosts) -> None:
    first, second = two_hosts
    first.routes["/to-second"] = lambda r: Reply(302, b"", {"Location": second.url("/ep.mp3")})

    def fetched(url: str, **settings: Any) -> bytes:
        with fetch(url, load_settings(env_file=None, **settings)) as downloaded:
            return downloaded.path.read_bytes()

    with pytest.raises(PermanentError) as caught:  # the default: loopback is refused
        fetched(first.url("/ep.mp3"))
    assert caught.value.code == "blocked-address" and first.hits["/ep.mp3"] == 0

    assert fetched(first.url("/ep.mp3"), allow_private_addresses=True) == BODY

    archive = {"wayback_url": f"http://127.0.0.1:{first.port}"}  # the archive's host is trusted
    assert fetched(first.url("/ep.mp3"), **archive) == BODY
    with pytest.raises(PermanentError) as caught:  # …but not where it redirects to
        fetched(first.url("/to-second"), **archive)
    assert caught.value.code == "blocked-address" and second.hits["/ep.mp3"] == 0
    with pytest.raises(PermanentError):  # nor other hosts
        fetched(second.url("/ep.mp3"), **archive)
    assert second.hits["/ep.mp3"] == 0


def _certificate(tmp_path: Path, name: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A CA and a server certificate for `name`: (server context, client context trusting the CA)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())

    def build(subject: str, issuer: str, public_key: Any, ca: bool, sans: list[str]) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(public_key).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(s) for s in sans]), critical=False)
        return builder.sign(key, hashes.SHA256())

    ca = build("test ca", "test ca", key.public_key(), True, [])
    leaf = build(name, "test ca", key.public_key(), False, [name])
    pem = serialization.Encoding.PEM
    (tmp_path / "ca.pem").write_bytes(ca.public_bytes(pem))
    (tmp_path / "leaf.pem").write_bytes(leaf.public_bytes(pem) + key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tmp_path / "leaf.pem")
    return server, ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))


def test_https_keeps_the_name_for_sni_and_certificate_checks(tmp_path: Path) -> None:
    server_tls, client_tls = _certificate(tmp_path, "podcast.test")
    names: list[str | None] = []
    server_tls.sni_callback = lambda sock, name, context: names.append(name)
    seen: dict[str, str] = {}

    def serve(request: Any) -> Reply:
        seen.update(request.headers)
        return Reply(200, BODY, {"Content-Type": "audio/mpeg"})

    resolver = CountingResolver({"podcast.test": [["127.0.0.1"]], "other.test": [["127.0.0.1"]]})
    guard = AddressGuard(allow=only_first_loopback, resolver=resolver)
    with LoopbackServer({"/ep.mp3": serve}, tls=server_tls) as server:
        with guarded(guard, verify=client_tls) as (client, backend):
            assert get(f"https://podcast.test:{server.port}/ep.mp3", guard, client) == BODY
            # The certificate names podcast.test: reached as other.test, verification must fail.
            with pytest.raises(EpisodeError) as caught:
                get(f"https://other.test:{server.port}/ep.mp3", guard, client)
    assert names[0] == "podcast.test" and seen["host"] == f"podcast.test:{server.port}"
    assert backend.connects[0] == ("127.0.0.1", server.port)
    assert caught.value.code == "connection" and "certificate" in caught.value.reason.lower()
