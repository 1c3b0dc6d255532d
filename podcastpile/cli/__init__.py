"""`ppcli`: the command line over the episode store and the pipeline."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="ppcli",
    help="Podcast Pile: turn podcast episode URLs into a speech dataset.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

from podcastpile.cli import episodes  # noqa: E402,F401  (registers create/import/list/stats)
from podcastpile.cli import transcribe  # noqa: E402,F401  (registers transcribe)
from podcastpile.cli import export  # noqa: E402,F401  (registers export)
from podcastpile.cli import process  # noqa: E402,F401  (registers process)
from podcastpile.cli import archive  # noqa: E402,F401  (registers archive)
from podcastpile.cli import worker  # noqa: E402,F401  (registers worker)
from podcastpile.cli import operate  # noqa: E402,F401  (registers retry/invalidate)
from podcastpile.cli import manager  # noqa: E402,F401  (registers manager/setup)


def main() -> None:
    """Console-script entry point."""
    app()
