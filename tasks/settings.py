"""Settings for a flow run: the local ones, with the episode database taken from the server.

A GPU machine joins with only the manager's URL (and password): `ppcli setup` saves the
store's connection as a `prefect-sqlalchemy` SqlAlchemyConnector block (password kept as a
secret), and flow runs load it from there. A DATABASE_URL set on the machine (environment or
.env) still wins, so a worker can be pointed elsewhere, and runs without a Prefect server
(tests, `ppcli process`) never need the block.
"""

from __future__ import annotations

import logging

from podcastpile.config import Settings, load_settings, safe_database_url

STORE_BLOCK = "podcastpile-store"

log = logging.getLogger("podcastpile.settings")


def flow_settings() -> Settings:
    """This machine's settings; DATABASE_URL from the server's store block when not set here."""
    settings = load_settings()
    if "database_url" in settings.model_fields_set:
        return settings
    url = stored_database_url()
    if url is None:
        return settings
    log.info("episode database from the server's %r block: %s", STORE_BLOCK, safe_database_url(url))
    return settings.model_copy(update={"database_url": url})


def stored_database_url() -> str | None:
    """The URL in the server's store block, or None when there is no block (or no server)."""
    from prefect.settings import PREFECT_API_URL
    from prefect_sqlalchemy import ConnectionComponents, SqlAlchemyConnector
    from sqlalchemy.engine import make_url

    if not PREFECT_API_URL.value():
        return None
    try:
        connector = SqlAlchemyConnector.load(STORE_BLOCK)
    except ValueError:  # no such block: setup has not saved one
        return None
    info = connector.connection_info
    url = info.create_url() if isinstance(info, ConnectionComponents) else make_url(str(info))
    return url.render_as_string(hide_password=False)
