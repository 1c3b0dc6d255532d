"""Password guessing on the manager's port is limited per client address (issue 22).

The middleware is served for real: uvicorn on 127.0.0.1 in this process, around a small app
that stands in for Prefect's (401 under /api without the password, health and readiness open,
a websocket with Prefect's auth message), wrapped exactly as deployments/server.py wraps
Prefect's. Clients connect from 127.0.0.1 or 127.0.0.2 to be two addresses. One test runs the
real `python -m deployments.server` (Prefect's app on SQLite; it starts in seconds).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect as websocket_connect
from websockets.typing import Subprotocol

from deployments.login_limit import FailureTable, LoginLimit, address_key
from deployments.server import protect, trusted_proxies_from
from tests.manager import ROOT
from tests.prefect_server import free_port
from tests.processes import stop_tree

PASSWORD = "correct horse battery"
GUESSES = [f"guess-{n}-swordfish" for n in range(12)]


def basic(secret: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(secret.encode()).decode()}


async def prefect_standin(scope: dict, receive: Any, send: Any) -> None:
    """What matters of Prefect's app: /api wants `Basic base64(password)` except GET health and
    ready; the UI and the docs answer anyone; a websocket authenticates with its first message."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.accept", "subprotocol": "prefect"})
        message = json.loads((await receive())["text"])
        if message.get("token") != PASSWORD:
            await send({"type": "websocket.close", "code": 1008, "reason": "Invalid token"})
            return
        await send({"type": "websocket.send", "text": json.dumps({"type": "auth_success"})})
        await receive()  # until the client leaves
        return
    path, headers = scope["path"], dict(scope["headers"])
    open_path = scope["method"] == "GET" and path in ("/api/health", "/api/ready")
    if path.startswith("/api") and not open_path and headers.get(b"authorization") != basic(PASSWORD)["Authorization"].encode():
        status, body = 401, b'{"exception_message": "Unauthorized"}'
    else:
        status, body = 200, b'"ok"'
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """`app` on 127.0.0.1 by uvicorn in a thread, as deployments/server.py serves it; its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, proxy_headers=False,
                                           log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def client(base_url: str, address: str = "127.0.0.1") -> httpx.Client:
    """An HTTP client whose connections come from `address`."""
    return httpx.Client(base_url=base_url, transport=httpx.HTTPTransport(local_address=address),
                        trust_env=False, timeout=10)


def protected(**limits: Any) -> Any:
    return protect(prefect_standin, PASSWORD, **limits)


def test_the_eleventh_wrong_password_in_a_minute_is_refused_and_another_address_still_gets_in(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="podcastpile.manager.login")
    with serving(protected()) as url, client(url) as guesser, client(url, "127.0.0.2") as worker:
        for guess in GUESSES[:10]:
            assert guesser.post("/api/flows/filter", headers=basic(guess)).status_code == 401
        refused = guesser.post("/api/flows/filter", headers=basic(GUESSES[10]))
        assert refused.status_code == 429
        assert 55 <= int(refused.headers["retry-after"]) <= 60
        # The whole port, for every request from that address: the right password too (a
        # guesser must not learn when it hit), the browser's form, the docs, the UI.
        assert guesser.post("/api/flows/filter", headers=basic(PASSWORD)).status_code == 429
        assert guesser.get("/docs", auth=("operator", PASSWORD)).status_code == 429
        assert guesser.get("/").status_code == 429
        # Health and readiness stay open.
        assert guesser.get("/api/health").status_code == 200
        assert guesser.get("/api/ready", headers=basic(GUESSES[11])).status_code == 200
        # The right password from another address still works.
        assert worker.post("/api/flows/filter", headers=basic(PASSWORD)).status_code == 200
        assert worker.get("/docs", auth=("operator", PASSWORD)).status_code == 200

    warnings = [r.getMessage() for r in caplog.records if r.name == "podcastpile.manager.login"]
    assert len(warnings) == 11, warnings  # ten failures, one block; refused requests are not logged
    assert all("127.0.0.1" in line for line in warnings)
    assert "blocking 127.0.0.1 for 60 s" in warnings[-1]
    assert "POST /api/flows/filter" in warnings[0]
    for secret in [PASSWORD, *GUESSES]:
        for form in (secret, base64.b64encode(secret.encode()).decode(), base64.b64encode(f"operator:{secret}".encode()).decode()):
            assert form not in caplog.text
    assert "Basic" not in caplog.text


def test_the_block_lifts_after_the_window_and_old_failures_slide_out() -> None:
    with serving(protected(attempts=3, window=1.0)) as url, client(url) as guesser:
        for guess in GUESSES[:2]:
            assert guesser.get("/api/flows", headers=basic(guess)).status_code == 401
        time.sleep(1.1)  # those two left the window: two more are not yet three in a second
        for guess in GUESSES[2:4]:
            assert guesser.get("/api/flows", headers=basic(guess)).status_code == 401
        assert guesser.get("/api/flows", headers=basic(GUESSES[4])).status_code == 401  # the third
        refused = guesser.get("/api/flows", headers=basic(PASSWORD))
        assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
        time.sleep(1.1)
        assert guesser.get("/api/flows", headers=basic(PASSWORD)).status_code == 200
        assert guesser.get("/api/flows", headers=basic(GUESSES[5])).status_code == 401  # counted afresh


def test_missing_credentials_are_no_guess_but_any_other_header_is() -> None:
    with serving(protected(attempts=3)) as url, client(url) as anonymous, client(url, "127.0.0.2") as odd:
        for _ in range(10):  # the UI's pages and a browser before its login box
            assert anonymous.post("/api/flows/filter").status_code == 401
            assert anonymous.get("/docs").status_code == 401
            assert anonymous.get("/").status_code == 200
        assert anonymous.post("/api/flows/filter", headers=basic(PASSWORD)).status_code == 200
        assert anonymous.get("/docs", auth=("anyone", PASSWORD)).status_code == 200
        # A malformed header, another scheme, an empty password: each a wrong guess.
        for header in ("Basic not-base64!", "Bearer pnu_0123456789", "Basic " + base64.b64encode(b"user:").decode()):
            assert odd.get("/api/flows", headers={"Authorization": header}).status_code == 401
        assert odd.get("/api/flows", headers=basic(PASSWORD)).status_code == 429


def test_websockets_count_wrong_tokens_and_are_refused_while_blocked(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="podcastpile.manager.login")

    def authenticate(url: str, token: str, address: str = "127.0.0.1") -> str:
        with websocket_connect(url.replace("http", "ws") + "/api/events/out", subprotocols=[Subprotocol("prefect")],
                               proxy=None, source_address=(address, 0), open_timeout=5) as socket:
            socket.send(json.dumps({"type": "auth", "token": token}))
            try:
                return json.loads(socket.recv(timeout=5))["type"]
            except ConnectionClosed as closed:
                return f"closed {closed.rcvd.code if closed.rcvd else None}"

    with serving(protected(attempts=3)) as url, client(url) as http:
        for guess in GUESSES[:3]:
            assert authenticate(url, guess) == "closed 1008"
        with pytest.raises(InvalidStatus) as refused:
            authenticate(url, PASSWORD)
        assert refused.value.response.status_code == 429
        assert refused.value.response.headers["Retry-After"] == "60"
        assert http.get("/api/flows", headers=basic(PASSWORD)).status_code == 429  # the same address, over HTTP
        assert authenticate(url, PASSWORD, "127.0.0.2") == "auth_success"
    assert "blocking 127.0.0.1" in caplog.text and "WEBSOCKET /api/events/out" in caplog.text
    assert not any(guess in caplog.text for guess in GUESSES[:3])


def test_x_forwarded_for_counts_only_from_a_trusted_proxy() -> None:
    # Not trusted (the default): a guesser cannot pose as many addresses.
    with serving(protected(attempts=3)) as url, client(url) as guesser:
        for n, guess in enumerate(GUESSES[:3]):
            assert guesser.get("/api/flows", headers={**basic(guess), "X-Forwarded-For": f"10.0.0.{n}"}).status_code == 401
        assert guesser.get("/api/flows", headers={**basic(PASSWORD), "X-Forwarded-For": "10.0.0.9"}).status_code == 429
    # A trusted proxy on 127.0.0.1: its X-Forwarded-For names the client, whatever the client claimed before it.
    with serving(protected(attempts=3, trusted_proxies=["127.0.0.1"])) as url, client(url) as proxy:
        for guess in GUESSES[:3]:
            assert proxy.get("/api/flows", headers={**basic(guess), "X-Forwarded-For": "10.0.0.9, 10.0.0.1"}).status_code == 401
        assert proxy.get("/api/flows", headers={**basic(PASSWORD), "X-Forwarded-For": "10.0.0.1"}).status_code == 429
        assert proxy.get("/api/flows", headers={**basic(PASSWORD), "X-Forwarded-For": "10.0.0.2"}).status_code == 200
    assert trusted_proxies_from(None, {}) == []
    assert trusted_proxies_from(None, {"TRUSTED_PROXIES": "127.0.0.1, 10.1.0.0/16"}) == ["127.0.0.1", "10.1.0.0/16"]
    assert trusted_proxies_from(["192.0.2.7"], {"TRUSTED_PROXIES": "127.0.0.1"}) == ["192.0.2.7"]


def test_the_table_of_addresses_stays_bounded() -> None:
    now = [0.0]
    table = FailureTable(attempts=10, window=60.0, max_clients=100, clock=lambda: now[0])
    for n in range(5000):  # a guesser with many addresses
        table.fail(f"10.{n // 65536}.{n // 256 % 256}.{n % 256}")
    assert len(table) == 100
    now[0] = 50.0
    for _ in range(10):
        table.fail("192.0.2.2")
    assert table.blocked_for("192.0.2.2") == 60.0
    now[0] = 90.0  # a window on: what saw no failure since is swept with the next one; a block stays
    table.fail("192.0.2.3")
    assert len(table) == 2 and table.blocked_for("192.0.2.2") == 20.0
    now[0] = 200.0
    table.fail("192.0.2.4")
    assert len(table) == 1
    # One IPv6 host holds a /64: it is one address to the limit.
    assert address_key("2001:db8::1") == address_key("2001:db8::ffff:1") == "2001:db8::/64"
    assert address_key("::ffff:192.0.2.5") == "192.0.2.5"


def test_no_password_no_limit() -> None:
    app = protect(prefect_standin, None)
    assert app is prefect_standin
    assert isinstance(protected(), LoginLimit)


def test_the_real_server_limits_guessing(tmp_path: Path) -> None:
    """`python -m deployments.server` with Prefect's app: the 11th wrong password is a 429, the
    log in its output names the address and no password, health answers, another address gets in."""
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"),
           "PREFECT_SERVER_API_AUTH_STRING": PASSWORD, "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_SERVER_LOGGING_LEVEL": "WARNING"}
    for name in ("PREFECT_API_URL", "PREFECT_API_AUTH_STRING", "PREFECT_API_DATABASE_CONNECTION_URL", "TRUSTED_PROXIES"):
        env.pop(name, None)
    log = tmp_path / "server.log"
    with log.open("w") as output:
        server = subprocess.Popen([sys.executable, "-m", "deployments.server", "--host", "127.0.0.1", "--port", str(port)],
                                  cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        with client(url) as guesser, client(url, "127.0.0.2") as worker:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if guesser.get("/api/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert server.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.25)
            codes = [guesser.post("/api/flows/filter", json={}, headers=basic(guess)).status_code for guess in GUESSES[:11]]
            assert codes == [401] * 10 + [429]
            assert guesser.get("/openapi.json", auth=("operator", PASSWORD)).status_code == 429
            assert guesser.get("/api/health").status_code == 200
            assert worker.post("/api/flows/filter", json={}, headers=basic(PASSWORD)).status_code == 200
    finally:
        stop_tree(server, grace=20)
    output_text = log.read_text()
    assert "blocking 127.0.0.1 for 60 s" in output_text, output_text[-3000:]
    assert output_text.count("wrong password from 127.0.0.1") == 10
    assert PASSWORD not in output_text and not any(guess in output_text for guess in GUESSES)
