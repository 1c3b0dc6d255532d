"""A real Prefect server for tests, on PostgreSQL (Prefect's SQLite database breaks under concurrent runs)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests import postgres

PREFECT = str(Path(sys.executable).with_name("prefect"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(url: str, process: subprocess.Popen, log: Path, timeout: float = 120.0) -> None:
    """Wait until `url` answers 200; RuntimeError with the log's end if `process` exits or
    `timeout` passes first."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)


def busy_retried(send: Callable[[], httpx.Response], tries: int = 10) -> httpx.Response:
    """Send a Prefect API call; a busy SQLite Prefect database answers 503 (its lock wait ran out
    under the suite's load), which is tried again, as Prefect's own client does. Raises on any
    other error, with the server's answer."""
    for _ in range(tries):
        answer = send()
        if answer.status_code != 503:
            break
        time.sleep(2)
    if answer.is_error:
        raise AssertionError(f"{answer.request.method} {answer.request.url}: {answer.status_code} {answer.text[:500]}")
    return answer


@contextmanager
def prefect_server(home: Path, timeout: float = 120.0, auth: str | None = None) -> Iterator[dict[str, str]]:
    """Start `prefect server start` on a fresh PostgreSQL database; yield the client environment.

    With `auth`, the server requires it on every API call (PREFECT_SERVER_API_AUTH_STRING; the UI
    asks for it on a login page) and the yielded environment carries it for clients.
    """
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    with postgres.fresh_database("prefect") as url:
        server_env = {
            **os.environ,
            "PREFECT_HOME": str(home),
            "PREFECT_API_DATABASE_CONNECTION_URL": url.replace("+psycopg", "+asyncpg"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_UI_API_URL": api,
            # Schedules become runs within seconds, not the default minute.
            "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5",
        }
        server_env.pop("PREFECT_API_URL", None)
        server_env.pop("PREFECT_API_AUTH_STRING", None)
        client_env = {"PREFECT_API_URL": api, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        if auth is not None:
            server_env["PREFECT_SERVER_API_AUTH_STRING"] = auth
            client_env["PREFECT_API_AUTH_STRING"] = auth
        log = (home / "server.log").open("w")
        process = subprocess.Popen(
            [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=server_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            wait_healthy(f"{api}/health", process, home / "server.log", timeout)
            yield client_env
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
            log.close()


def send_heartbeat(api: str, run_id: str) -> None:
    """Send one heartbeat of a flow run, as its process does; returns once the server has stored it."""
    import asyncio

    from prefect.events import Event
    from prefect.events.clients import PrefectEventsClient

    async def send() -> None:
        async with PrefectEventsClient(api_url=api) as events:
            await events.emit(Event(event="prefect.flow-run.heartbeat",
                                    resource={"prefect.resource.id": f"prefect.flow-run.{run_id}"}))
    asyncio.run(send())
    deadline = time.monotonic() + 60  # the server stores events in batches
    while not httpx.post(f"{api}/events/filter", json={"filter": {
            "event": {"name": ["prefect.flow-run.heartbeat"]},
            "resource": {"id": [f"prefect.flow-run.{run_id}"]}}}).json()["events"]:
        assert time.monotonic() < deadline, "the heartbeat never became readable"
        time.sleep(0.5)
