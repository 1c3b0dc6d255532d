"""Database engines for the episode store, and bringing a database's schema to the newest revision."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError, SQLAlchemyError

_MIGRATIONS = Path(__file__).with_name("migrations")
# Any constant works; it only has to be the same for every process migrating one database.
_MIGRATION_LOCK_ID = 0x70_6F_64_63  # "podc"
READ_ONLY = {"podcastpile_read_only": True}
# The newest migration's revision. Opening a store compares the database against it with one
# query, so commands on an up-to-date database never import Alembic (a third of `ppcli stats`'s
# start-up). tests/test_migrations.py checks it is the real head.
SCHEMA_REVISION = "0006"


class StoreUnavailable(RuntimeError):
    """The episode database cannot be reached or opened. The message names the (password-less) URL."""


def normalize_database_url(url: str) -> str:
    """Give a plain `postgresql://` URL the psycopg 3 driver; leave explicit drivers alone."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def make_engine(database_url: str, connections: int | None = None, **kwargs: Any) -> Engine:
    """An engine for `database_url` tuned for the store's access pattern.

    SQLite: WAL (readers never block the writer), a 30 s busy timeout, and write transactions
    that take the write lock at BEGIN (`BEGIN IMMEDIATE`) so a claim's read and update are one
    atomic step across processes. Read-only work opts out with `execution_options(**READ_ONLY)`.
    `connections`: see `pool_options` (PostgreSQL only).
    """
    url = make_url(normalize_database_url(database_url))
    if url.get_backend_name() == "sqlite":
        database = url.database
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30}, **kwargs)
        _tune_sqlite(engine)
        return engine
    # No pre-ping: it costs a round trip per transaction (a third of a claim). A connection
    # that died with a server restart fails one operation, which callers retry as transient,
    # and SQLAlchemy then discards the dead pool.
    kwargs.setdefault("pool_recycle", 3600)
    return create_engine(url, **pool_options(url.get_backend_name(), connections), **kwargs)


def pool_options(backend: str, connections: int | None, spare: int = 4) -> dict[str, int]:
    """Engine options that keep `connections` pooled connections (and open up to `spare` more,
    closed when given back), for a store used by that many threads at once; none for SQLite
    or when `connections` is None (SQLAlchemy's default pool: 5 kept, 10 more on demand)."""
    if connections is None or backend == "sqlite":
        return {}
    return {"pool_size": connections, "max_overflow": spare}


def make_queue_engine(engine: Engine, **pool: Any) -> Engine:
    """The engine for lease changes (claim, start, renew, fail, release, requeue) beside `engine`.

    Each is a single UPDATE, atomic by itself. On PostgreSQL they run in autocommit mode (no
    BEGIN/COMMIT round trips) without waiting for the WAL flush (`synchronous_commit=off`):
    a server crash can forget the last fraction of a second of lease changes, which only means
    an episode is leased again; the forgotten lease token fences the old worker out, so nothing
    is stored twice. Results and imports keep fully durable commits on the main engine.
    SQLite keeps its `BEGIN IMMEDIATE` transactions, on `engine` itself.

    `pool`: SQLAlchemy pool options (`pool_size`, `max_overflow`, ...) for a process with more
    threads claiming at once than the default pool keeps (5): the overflow connections it
    opens are closed when given back, a PostgreSQL backend start per claim under load.
    """
    if engine.dialect.name != "postgresql":
        return engine
    return create_engine(
        engine.url,
        isolation_level="AUTOCOMMIT",
        connect_args={"options": "-c synchronous_commit=off"},
        pool_recycle=3600,
        **pool,
    )


def _tune_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event below issue BEGIN instead of the sqlite3 module.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        # Rows an INSERT OR REPLACE deletes then fire delete triggers too, so the episode
        # counters (migration 0005) stay exact even for that statement.
        cursor.execute("PRAGMA recursive_triggers=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        read_only = connection.get_execution_options().get("podcastpile_read_only")
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


def safe_url(engine: Engine) -> str:
    """The engine's URL with the password hidden, for messages."""
    return engine.url.render_as_string(hide_password=True)


def alembic_config() -> Any:
    """Alembic configuration pointing at the packaged migrations (no alembic.ini needed)."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    return config


def head_revision() -> str:
    """The newest migration revision shipped with this code."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    """The database's migration revision (None for an empty database)."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def _is_current(engine: Engine) -> bool:
    """True if the database is at SCHEMA_REVISION (one query; False for an empty database)."""
    with engine.execution_options(**READ_ONLY).connect() as connection:
        try:
            version = connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
        except SQLAlchemyError:
            return False
    return version == SCHEMA_REVISION


@contextmanager
def _sqlite_file_lock(engine: Engine) -> Iterator[None]:
    """Hold an exclusive flock on `<database>.migrate.lock` (SQLite files only; else a no-op)."""
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:" or database.startswith("file:"):
        yield
        return
    import fcntl

    with open(f"{Path(database).expanduser()}.migrate.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def migrate(engine: Engine, revision: str = "head") -> None:
    """Bring the database to `revision` (default: newest). Safe when many processes start at once.

    The upgrade runs in one transaction holding a lock (PostgreSQL: an advisory lock; SQLite: a
    file lock beside the database, taken before the first connection, because a brand-new SQLite
    file is also switched to WAL then and concurrent switchers can fail with "database is locked"
    without waiting), so concurrent starters wait and then find nothing left to do.
    """
    try:
        with _sqlite_file_lock(engine):
            if revision == "head" and _is_current(engine):
                return
            from alembic import command

            with engine.begin() as connection:
                if connection.dialect.name == "postgresql":
                    connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK_ID})")
                config = alembic_config()
                config.attributes["connection"] = connection
                command.upgrade(config, revision)
    except OperationalError as error:
        first_line = str(error.orig).strip().splitlines()[0] if str(error.orig).strip() else ""
        raise StoreUnavailable(
            f"cannot open the episode database {safe_url(engine)}: {first_line}"
        ) from None
    except SQLAlchemyError as error:
        raise StoreUnavailable(f"episode database {safe_url(engine)}: {error}") from None
