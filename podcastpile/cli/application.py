"""The `ppcli` Typer application, on which each command module registers its commands.

Kept apart from the package's `__init__` (which imports every command module to register
them) so that command modules can import it without importing each other.
"""

from __future__ import annotations

import typer

app = typer.Typer(
    name="ppcli",
    help="Podcast Pile: turn podcast episode URLs into a speech dataset.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
