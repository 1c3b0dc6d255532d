"""`-m/--manager`, `-p/--password` and `--ca` for the queue commands: the manager's API instead of the database.

`ppcli create | import | list | stats | retry | invalidate` given `-m http://manager:8000` (or
MANAGER_URL) call the manager's HTTP API (`podcastpile.manager_client`) and never open
DATABASE_URL; without either they open the store as always. The password and the CA are found
as for `ppcli worker` (`podcastpile.prefect_api.find_prefect_api`): -p, else WORKER_PASSWORD,
else PREFECT_API_AUTH_STRING; --ca, else TLS_CA_FILE, else PREFECT_API_SSL_CERT_FILE.

httpx is imported only once a manager is named: `ppcli stats` against the database must not pay for it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated

import typer

from podcastpile.cli.common import EXIT_FAILED, EXIT_SETUP, fail
from podcastpile.config import Settings
from podcastpile.prefect_api import find_prefect_api

if TYPE_CHECKING:
    from podcastpile.manager_client import ManagerClient

ManagerOption = Annotated[str | None, typer.Option(
    "--manager", "-m", help="Go through this manager's API instead of the database, e.g. http://manager:8000 "
    "(default: MANAGER_URL; unset: DATABASE_URL).")]
PasswordOption = Annotated[str | None, typer.Option(
    "--password", "-p", help="With -m: the worker password (default: WORKER_PASSWORD, else "
    "PREFECT_API_AUTH_STRING). Prefer the setting: a command line is visible to every user of the machine.")]
CaOption = Annotated[str | None, typer.Option(
    "--ca", metavar="FILE", help="With -m: CA certificates (PEM) to verify an https:// manager with "
    "(default: TLS_CA_FILE, else this machine's CAs and certifi's).")]


def manager_client(config: Settings, manager: str | None, password: str | None, ca: str | None) -> ManagerClient | None:
    """A client of the manager named by -m or MANAGER_URL, None when neither names one (use the
    database). A -p or --ca without a manager ends the command: they would be silently ignored."""
    address = manager or config.manager_url
    if not address:
        if password or ca:
            fail("-p/--password and --ca are for a manager: name it with -m http://HOST:PORT or MANAGER_URL",
                 code=EXIT_SETUP)
        return None
    from podcastpile.manager_client import ManagerClient, ManagerError

    # PREFECT_API_URL is not the fallback here: it names the manager for commands that run
    # work, and machines holding DATABASE_URL set it too; only -m or MANAGER_URL switch to the API.
    api = find_prefect_api(config, manager=address, password=password, ca=ca)
    assert api is not None  # a manager was named
    try:
        return ManagerClient(api)
    except ManagerError as error:
        fail(str(error), code=EXIT_SETUP)


@contextmanager
def answering(client: ManagerClient) -> Iterator[ManagerClient]:
    """`client`, closed afterwards; a `ManagerError` inside ends the command with its one line
    (exit 2 for the setup: address, password, CA; else 1)."""
    from podcastpile.cli.manager_api import ManagerProblem, _unreachable
    from podcastpile.manager_client import ManagerError

    try:
        with client:
            yield client
    except ManagerError as error:
        message = str(error)
        if error.cause is not None:
            # The hints `ppcli worker` gives for the same failure: a certificate, TLS, the network.
            problem: ManagerProblem = _unreachable(client.api, error.cause)
            message = str(problem)
        fail(message, code=EXIT_SETUP if error.setup else EXIT_FAILED)
