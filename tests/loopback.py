"""A real HTTP server on 127.0.0.1 for tests: routes map a path to a handler.

A handler gets the request and returns a `Reply` (status, headers, body), or writes to the
socket itself for misbehaviour a `Reply` cannot express (a stall, a connection cut mid-body).
"""

from __future__ import annotations

import ssl
import sys
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


@dataclass
class Reply:
    """An HTTP answer. `body` may be bytes or an iterable of byte chunks (sent as they come)."""

    status: int = 200
    body: bytes | Iterable[bytes] = b""
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Request:
    """What a handler sees of a request."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    handler: BaseHTTPRequestHandler  # for handlers that misbehave on purpose

    def form(self) -> dict[str, list[str]]:
        """The body parsed as application/x-www-form-urlencoded."""
        return parse_qs(self.body.decode())


Handler = Callable[[Request], Reply | None]


class _QuietHTTPServer(ThreadingHTTPServer):
    """Does not print a traceback when a client hangs up: tests that time out or cap a download do that."""

    def handle_error(self, request: object, client_address: object) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)  # type: ignore[arg-type]


class LoopbackServer:
    """Serve `routes` on 127.0.0.1 (or another loopback `host`) on a free port (or `port`), in a
    background thread; over TLS when given a server `tls` context.

    Use as a context manager. `hits[path]` counts requests per path.
    A route key is an exact path, or a prefix ending in `*`.
    """

    def __init__(
        self,
        routes: dict[str, Handler] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.routes: dict[str, Handler] = dict(routes or {})
        self.hits: dict[str, int] = defaultdict(int)
        self._server = _QuietHTTPServer((host, port), self._make_handler())
        if tls is not None:  # HTTPS: the handshake happens on the handler thread's first read
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
        self._scheme = "https" if tls is not None else "http"
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        """The port it listens on."""
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"{self._scheme}://{host}:{port}"

    def url(self, path: str) -> str:
        """The absolute URL of `path` on this server."""
        return self.base_url + path

    def __enter__(self) -> "LoopbackServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _route(self, path: str) -> Handler | None:
        if path in self.routes:
            return self.routes[path]
        for key, handler in self.routes.items():
            if key.endswith("*") and path.startswith(key[:-1]):
                return handler
        return None

    def _make_handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in separate writes: without this, a kept-alive connection
            # waits ~40 ms per request for a delayed ACK (Nagle), which slows every test client.
            disable_nagle_algorithm = True

            def log_message(self, *args: object) -> None:  # keep test output clean
                pass

            def _serve(self) -> None:
                split = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                server.hits[split.path] += 1
                handler = server._route(split.path)
                request = Request(
                    method=self.command,
                    path=split.path,
                    query=parse_qs(split.query),
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=body,
                    handler=self,
                )
                reply = handler(request) if handler else Reply(404, b"not found")
                if reply is None:  # the handler wrote its own answer
                    self.close_connection = True
                    return
                self._send(reply)

            def _send(self, reply: Reply) -> None:
                self.send_response(reply.status)
                for key, value in reply.headers.items():
                    self.send_header(key, value)
                if isinstance(reply.body, bytes):
                    self.send_header("Content-Length", str(len(reply.body)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(reply.body)
                    return
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for chunk in reply.body:
                    if chunk:
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.write(b"0\r\n\r\n")

            do_GET = do_POST = do_HEAD = _serve

        return _Handler
