"""`ppcli`: the command line over the episode store and the pipeline.

The console script `ppcli` and `python -m podcastpile.cli` run `main()`. Importing this package
registers every command; command modules import `podcastpile.cli.application` for the app
and never this package, so none of them depends on the others being loaded first.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import NoReturn

# Each module registers its commands on `app`; `ppcli --help` lists them in this order.
from podcastpile.cli import episodes  # noqa: F401,I001  (create, import, list, stats)
from podcastpile.cli import transcribe  # noqa: F401
from podcastpile.cli import export  # noqa: F401
from podcastpile.cli import archive  # noqa: F401
from podcastpile.cli import process  # noqa: F401
from podcastpile.cli import worker  # noqa: F401
from podcastpile.cli import operate  # noqa: F401  (retry, invalidate)
from podcastpile.cli import manager  # noqa: F401  (setup, manager)
from podcastpile.cli.application import app

__all__ = ["QUICK_EXIT_COMMANDS", "app", "exit_without_teardown", "main"]

# Read-only commands that close what they open: they end without the interpreter's teardown.
QUICK_EXIT_COMMANDS = frozenset({"stats"})


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except SystemExit as stop:
        if sys.argv[1:2] and sys.argv[1] in QUICK_EXIT_COMMANDS:
            exit_without_teardown(stop.code)
        raise


def exit_without_teardown(code: int | str | None) -> NoReturn:
    """End the process now, as `sys.exit(code)` would, minus the interpreter's teardown.

    Tearing down the 600 modules SQLAlchemy, pydantic and rich load takes 0.1-0.2 s, measured
    (a third of `ppcli stats`' 0.5 s budget). Only for commands that closed their connections
    and files themselves: what is left is flushing, done here.
    """
    if isinstance(code, str):
        print(code, file=sys.stderr)
        code = 1
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed or broken pipe: nothing more can be written anyway
            pass
    os._exit(code or 0)
