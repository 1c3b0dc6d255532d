"""Password guessing on the manager's port, limited per client address.

Everything the manager serves (Prefect's API, its websockets and UI, the docs, whatever else
runs on that port) goes through `LoginLimit` when a password is configured. A request that
carries credentials other than the password is a wrong guess: an `Authorization` header that is
not `Basic base64(password)` or `Basic base64(user:password)` (a malformed header or another
scheme counts too), an `X-Worker-Password` header (the original manager's, which the job API
takes: deployments/jobs_api.py) that is not the password, or, on a websocket, Prefect's first
`{"type": "auth", "token": ...}` message with a token that is not the password. A request with no credentials at all is no guess (the
UI's pages, a browser before its login box): the app answers it as before.

After `attempts` wrong guesses within a sliding `window` seconds, the address is refused for
`window` seconds: every request, with the right password too (answering the right password
would tell a guesser when it hit), HTTP with 429 and Retry-After, a websocket handshake with
429 where the server can send one (else a 1008 close). `GET /api/health` and `GET /api/ready`
stay open throughout and are never counted (Prefect does not check credentials there). What
the app answers a wrong guess (Prefect: 401) is unchanged: this only counts and refuses.

Each wrong guess and each block is logged at WARNING with the address; the attempted password
and the Authorization header never are. Success does not clear the count: a guesser sharing an
address with a busy worker would otherwise be let off every few seconds.

An address is the connecting peer (`scope["client"]`): IPv4 as is, IPv6 by its /64 (one host
usually holds a whole /64). Behind a reverse proxy, the proxy's X-Forwarded-For is honoured only
when the proxy is named as trusted (deployments/server.py: `--trusted-proxy`, TRUSTED_PROXIES);
otherwise every client behind it shares the proxy's address and one guesser blocks them all.
The table is bounded: addresses without recent failures are swept once a window, and past
`max_clients` the least recently seen are forgotten first.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import json
import logging
import math
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

ATTEMPTS = 10  # wrong guesses allowed per address within a window
WINDOW_SECONDS = 60.0  # the sliding window, and how long an address stays blocked
MAX_CLIENTS = 10_000  # addresses remembered at most
OPEN_PATHS = frozenset({"/api/health", "/api/ready"})  # for GET: never counted, never refused

logger = logging.getLogger("podcastpile.manager.login")


def password_matches(secret: str, password: str) -> bool:
    """Whether decoded Basic credentials are the password: Prefect's clients send the auth
    string itself, a browser `user:password` (any user)."""
    return hmac.compare_digest(secret.encode(), password.encode()) or hmac.compare_digest(
        secret.partition(":")[2].encode(), password.encode()
    )


def header_verdict(headers: Iterable[tuple[bytes, bytes]], password: str) -> bool | None:
    """What the request's Authorization header says: None without one, True when it carries the
    password (either Basic form), False for anything else (a wrong guess)."""
    values = [value for name, value in headers if name.lower() == b"authorization"]
    if not values:
        return None
    if len(values) > 1:
        return False
    scheme, _, credentials = values[0].decode("latin-1").strip().partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return False
    return password_matches(decoded, password)


def worker_header_verdict(headers: Iterable[tuple[bytes, bytes]], password: str) -> bool | None:
    """What the request's X-Worker-Password header says: None without one, True when it is the
    password (compared in constant time), False for anything else (a wrong guess)."""
    values = [value for name, value in headers if name.lower() == b"x-worker-password"]
    if not values:
        return None
    return len(values) == 1 and hmac.compare_digest(values[0], password.encode())


def credentials_verdict(headers: Iterable[tuple[bytes, bytes]], password: str) -> bool | None:
    """Both headers together: None when the request carries neither, False when either is wrong,
    else True."""
    headers = list(headers)
    verdicts = {header_verdict(headers, password), worker_header_verdict(headers, password)} - {None}
    return None if not verdicts else False not in verdicts


def auth_message_token(message: Message) -> Any:
    """The token of Prefect's websocket auth message (`{"type": "auth", "token": ...}`), or None
    when the message is something else or carries no token (no guess)."""
    text = message.get("text")
    if text is None and message.get("bytes") is not None:
        try:
            text = message["bytes"].decode()
        except UnicodeDecodeError:
            return None
    if not text:
        return None
    try:
        parsed = json.loads(text)
    except ValueError:
        return None
    if not isinstance(parsed, dict) or parsed.get("type") != "auth":
        return None
    return parsed.get("token") or None


def address_key(host: str) -> str:
    """What failures are counted against: an IPv4 address, an IPv6 /64, else the host as given."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def printable(text: str) -> str:
    """`text` safe for one log line (an address can come from a header)."""
    return text if text.isprintable() else repr(text)


@dataclass
class _Client:
    failures: deque[float]
    blocked_until: float = 0.0
    last_seen: float = 0.0


class FailureTable:
    """Wrong guesses per address in a sliding window, and which addresses are blocked; bounded."""

    def __init__(self, attempts: int = ATTEMPTS, window: float = WINDOW_SECONDS,
                 max_clients: int = MAX_CLIENTS, clock: Callable[[], float] = time.monotonic) -> None:
        if attempts < 1 or window <= 0 or max_clients < 1:
            raise ValueError("attempts, window and max_clients must be positive")
        self.attempts, self.window, self.max_clients, self.clock = attempts, window, max_clients, clock
        self._clients: OrderedDict[str, _Client] = OrderedDict()
        self._next_sweep = clock() + window

    def __len__(self) -> int:
        return len(self._clients)

    def blocked_for(self, key: str) -> float:
        """Seconds `key` stays blocked; 0 when it is not."""
        client = self._clients.get(key)
        if client is None:
            return 0.0
        now = self.clock()
        if client.blocked_until > now:
            client.last_seen = now
            self._clients.move_to_end(key)
            return client.blocked_until - now
        return 0.0

    def fail(self, key: str) -> int:
        """Count a wrong guess from `key`; the number of failures in the window so far, the
        last of which (`attempts`) blocks the address for a window."""
        now = self.clock()
        self._sweep(now)
        client = self._clients.get(key)
        if client is None:
            client = self._clients[key] = _Client(deque(maxlen=self.attempts))
            while len(self._clients) > self.max_clients:
                self._clients.popitem(last=False)  # the least recently seen
        else:
            self._clients.move_to_end(key)
        client.last_seen = now
        while client.failures and client.failures[0] <= now - self.window:
            client.failures.popleft()
        client.failures.append(now)
        count = len(client.failures)
        if count >= self.attempts:
            client.blocked_until = now + self.window
            client.failures.clear()
        return count

    def _sweep(self, now: float) -> None:
        """Forget addresses with no failure in the window and no block, once a window."""
        if now < self._next_sweep:
            return
        self._next_sweep = now + self.window
        for key in [key for key, client in self._clients.items()
                    if client.blocked_until <= now and client.last_seen <= now - self.window]:
            del self._clients[key]


class LoginLimit:
    """ASGI middleware: count wrong passwords per client address and refuse an address that
    guessed `attempts` times within `window` seconds, for `window` seconds (see the module)."""

    def __init__(self, app: ASGIApp, password: str, *, attempts: int = ATTEMPTS,
                 window: float = WINDOW_SECONDS, max_clients: int = MAX_CLIENTS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.app = app
        self.password = password
        self.table = FailureTable(attempts, window, max_clients, clock)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket") or (
            kind == "http" and scope["method"] == "GET" and scope["path"] in OPEN_PATHS
        ):
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        address = str(client[0]) if client else "unknown"
        key = address_key(address)
        wait = self.table.blocked_for(key)
        if wait > 0:
            await self._refuse(scope, receive, send, wait)
            return
        where = f"{scope.get('method', 'WEBSOCKET')} {scope['path']}"
        if credentials_verdict(scope.get("headers") or [], self.password) is False:
            self._failed(address, key, where)
        if kind == "websocket":
            receive = self._watching_auth_message(receive, address, key, where)
        await self.app(scope, receive, send)

    def _failed(self, address: str, key: str, where: str) -> None:
        count = self.table.fail(key)
        logger.warning("wrong password from %s (%s): %d of %d allowed within %g s",
                       printable(address), printable(where), count, self.table.attempts, self.table.window)
        if count >= self.table.attempts:
            blocked = printable(address if key == address else f"{address} ({key})")
            logger.warning("blocking %s for %g s: %d wrong passwords within %g s",
                           blocked, self.table.window, count, self.table.window)

    def _watching_auth_message(self, receive: Receive, address: str, key: str, where: str) -> Receive:
        """`receive`, counting a wrong token in the websocket's first message (Prefect's auth)."""
        first = True

        async def watched() -> Message:
            nonlocal first
            message = await receive()
            if first and message["type"] == "websocket.receive":
                first = False
                token = auth_message_token(message)
                if token is not None and not (isinstance(token, str) and password_matches(token, self.password)):
                    self._failed(address, key, where)
            return message

        return watched

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, wait: float) -> None:
        retry_after = str(max(1, math.ceil(wait))).encode()
        body = json.dumps({"exception_message": "Too many wrong passwords from this address; "
                           f"try again in {retry_after.decode()} s"}).encode()
        headers = [(b"content-type", b"application/json"), (b"retry-after", retry_after),
                   (b"content-length", str(len(body)).encode())]
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 429, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        await receive()  # websocket.connect
        if "websocket.http.response" in (scope.get("extensions") or {}):
            await send({"type": "websocket.http.response.start", "status": 429, "headers": headers})
            await send({"type": "websocket.http.response.body", "body": body})
        else:
            await send({"type": "websocket.close", "code": 1008, "reason": "too many wrong passwords"})
