"""Downloads connect to public addresses only: a guard against server-side request forgery.

Episode URLs come from whoever fills the queue. A worker that fetched them blindly could be
sent to its cloud's metadata service (169.254.169.254), to admin ports on localhost or into the
private network behind it. So every address a host name resolves to must be public, checked
*after* DNS resolution, and the connection goes to the very address that was checked: a
`PinnedBackend` resolves once per connection and connects to that answer, so a second DNS
answer (DNS rebinding) is never used. Redirects open new connections through the same backend,
so every hop is checked too.

Host names are resolved by the system resolver (`socket.getaddrinfo`), which also reads the
legacy IPv4 forms (2130706433, 0x7f.1, 0177.0.0.1) the way the connection would.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Sequence[IPAddress]]
AddressPredicate = Callable[[IPAddress], bool]

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # well-known prefix: the last 32 bits are IPv4
# RFC 6761: these names are loopback by definition, whatever a resolver says.
_LOOPBACK_NAMES = ("localhost", ".localhost")


class BlockedAddress(Exception):
    """A download would connect to an address the guard refuses. The message names host and address."""

    def __init__(self, host: str, address: IPAddress, kind: str) -> None:
        self.host = host
        self.address = address
        self.kind = kind
        where = f"{host} is" if host.strip("[]") == str(address) else f"{host} resolves to {address},"
        super().__init__(
            f"{where} a {kind} address; downloads from non-public addresses are refused "
            "(ALLOW_PRIVATE_ADDRESSES=true allows them)"
        )


def _embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses an IPv6 address leads to (mapped, 6to4, Teredo, NAT64)."""
    found = []
    if address.ipv4_mapped:
        found.append(address.ipv4_mapped)
    if address.sixtofour:
        found.append(address.sixtofour)
    if address.teredo:
        found.extend(address.teredo)
    if address in _NAT64:
        found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return found


def address_kind(address: IPAddress) -> str | None:
    """Why `address` is not public ("loopback", "private", …), or None when it is public."""
    if isinstance(address, ipaddress.IPv6Address):
        for inner in _embedded_ipv4(address):
            kind = address_kind(inner)
            if kind:
                return f"{kind} (inside IPv6 {address})"
    # Order matters: 127.0.0.1 is also "private" to Python, but "loopback" says more.
    checks = [
        ("unspecified", address.is_unspecified),
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),  # is_global is true for some multicast ranges
        ("reserved", address.is_reserved),  # before "private": Python counts 240/4 as both
        ("private", address.is_private),
        ("site-local", isinstance(address, ipaddress.IPv6Address) and address.is_site_local),
        ("non-global", not address.is_global),  # shared (100.64/10), benchmarking, documentation…
    ]
    return next((kind for kind, hit in checks if hit), None)


def is_public(address: IPAddress) -> bool:
    """The default policy: only globally routable unicast addresses."""
    return address_kind(address) is None


def allow_any(address: IPAddress) -> bool:
    """The policy when the guard is off (ALLOW_PRIVATE_ADDRESSES=true)."""
    return True


def system_resolver(host: str, port: int) -> list[IPAddress]:
    """Every address `getaddrinfo` gives for `host`, in its order, without repeats."""
    seen: dict[IPAddress, None] = {}
    for *_, sockaddr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        seen[ipaddress.ip_address(sockaddr[0])] = None
    return list(seen)


def literal_address(host: str) -> IPAddress | None:
    """The address a host written as an IP literal names, in any form a resolver accepts; else None.

    No DNS: IPv6 in brackets or not, dotted IPv4 and the legacy forms `inet_aton` reads
    (2130706433, 0x7f.1, 0177.0.0.1, 127.1). `localhost` names count as 127.0.0.1.
    """
    name = host.strip().strip("[]").lower().rstrip(".")
    if name == _LOOPBACK_NAMES[0] or name.endswith(_LOOPBACK_NAMES[1]):
        return ipaddress.IPv4Address("127.0.0.1")
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        pass
    if not name or not name[-1].isalnum() or not all(c in "0123456789abcdefx." for c in name):
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(name))
    except OSError:
        return None


def private_address(url: str) -> str | None:
    """Why downloads will refuse `url` when its host is a literal non-public address, else None.

    Literal only (an IP in any form a resolver reads, or localhost): no DNS at queueing time.
    """
    try:
        host = urlsplit(url.strip()).hostname or ""
    except ValueError:
        return None
    address = literal_address(host)
    kind = address_kind(address) if address is not None else None
    if not kind:
        return None
    named = f"{host} is {address}," if host != str(address) else f"{host} is"
    return f"{named} a {kind} address"


def _normal_host(host: str) -> str:
    return host.strip("[]").lower().rstrip(".")


@dataclass(frozen=True)
class AddressGuard:
    """Which addresses downloads may connect to.

    `allow` decides per address (default: public only). `resolver` turns a host into
    addresses (default: the system resolver). Hosts in `trusted_hosts` (the configured
    archive host) are resolved the same way but not checked.
    """

    allow: AddressPredicate = is_public
    resolver: Resolver = system_resolver
    trusted_hosts: frozenset[str] = field(default_factory=frozenset)

    def trusting(self, hosts: Collection[str]) -> "AddressGuard":
        """This guard, also trusting `hosts`."""
        added = {_normal_host(host) for host in hosts if host}
        return AddressGuard(self.allow, self.resolver, self.trusted_hosts | added)

    def is_trusted(self, host: str) -> bool:
        """Whether downloads from `host` skip the check."""
        return _normal_host(host) in self.trusted_hosts

    def check(self, host: str, address: IPAddress) -> None:
        """Raise `BlockedAddress` unless `host` is trusted or `address` is allowed."""
        if self.is_trusted(host) or self.allow(address):
            return
        raise BlockedAddress(host, address, address_kind(address) or "refused")

    def check_literal(self, host: str) -> None:
        """Refuse a host written as a refused IP literal, without any DNS lookup."""
        address = literal_address(host)
        if address is not None:
            self.check(host, address)

    def resolve(self, host: str, port: int) -> list[IPAddress]:
        """Resolve `host` once and check every answer; the addresses to connect to, in order.

        All must pass: a name that also resolves to a private address is refused, so which
        answer the connection would pick never matters. Raises `BlockedAddress`, or
        `socket.gaierror` when the name does not resolve.
        """
        addresses = list(self.resolver(host, port))
        for address in addresses:
            self.check(host, address)
        return addresses


class PinnedBackend(httpcore.NetworkBackend):
    """httpcore's network backend, connecting only to addresses the guard resolved and checked.

    httpcore asks it to connect to the URL's host name; TLS (SNI and certificate checks) and
    the Host header still use that name, only the TCP connection goes to the pinned address.
    """

    def __init__(self, guard: AddressGuard, inner: httpcore.NetworkBackend | None = None) -> None:
        self.guard = guard
        self.inner = inner or httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.NetworkStream:
        try:
            addresses = self.guard.resolve(host, port)
        except (socket.gaierror, UnicodeError) as error:
            raise httpcore.ConnectError(f"cannot resolve {host}: {error}") from error
        failure: Exception = httpcore.ConnectError(f"no address for {host}")
        for address in addresses:  # like socket.create_connection: the first that answers
            try:
                return self.inner.connect_tcp(
                    str(address), port, timeout=timeout, local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as error:
                failure = error
        raise failure

    def connect_unix_socket(self, path: str, timeout: float | None = None, socket_options: Any = None) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("unix sockets are not used for downloads")

    def sleep(self, seconds: float) -> None:
        self.inner.sleep(seconds)


class PinnedTransport(httpx.HTTPTransport):
    """An httpx transport whose connections go through a `PinnedBackend`.

    httpx takes no network backend argument, so the connection pool it builds is replaced by
    one with the same TLS settings and the pinning backend. No proxy: a proxy would resolve
    the name itself, out of the guard's reach.
    """

    def __init__(
        self,
        guard: AddressGuard,
        *,
        verify: Any = True,
        limits: httpx.Limits | None = None,
        backend: httpcore.NetworkBackend | None = None,
    ) -> None:
        """`verify` as httpx takes it; `backend` is what finally opens connections (default: sockets)."""
        super().__init__(verify=verify, trust_env=False)
        limits = limits or httpx.Limits()
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(verify=verify, trust_env=True),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=PinnedBackend(guard, backend),
        )


def guard_for(settings: Any) -> AddressGuard:
    """The guard the settings ask for: public addresses only unless ALLOW_PRIVATE_ADDRESSES."""
    return AddressGuard(allow=allow_any if settings.allow_private_addresses else is_public)
