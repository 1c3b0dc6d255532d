"""Alembic environment: runs on the connection `podcastpile.store.engine.migrate` hands over.

For `alembic revision --autogenerate` during development, set `sqlalchemy.url` with
`alembic -x url=sqlite:///dev.db ...` (see README, "Changing the schema").
"""

from __future__ import annotations

from alembic import context

from podcastpile.store.engine import make_engine
from podcastpile.store.tables import metadata

config = context.config
connection = config.attributes.get("connection")


def _run(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(
        connection=connection,
        target_metadata=metadata,
        # SQLite cannot ALTER most things; batch mode rebuilds tables instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if connection is not None:
    _run(connection)
else:
    url = context.get_x_argument(as_dictionary=True).get("url")
    if not url:
        raise SystemExit("pass the database with: alembic -x url=<DATABASE_URL> ...")
    with make_engine(url).begin() as new_connection:
        _run(new_connection)
