"""What every `ppcli` command shares: exit codes, one-line errors, settings, the store, `--json`.

Nothing here loads the ORM, httpx or Prefect: `ppcli stats` uses it and must answer at once.
"""

from __future__ import annotations

from typing import Annotated, NoReturn

import typer

from podcastpile.cli.display import tell
from podcastpile.config import Settings, SettingsError, load_settings
from podcastpile.net.urls import mask_secrets
from podcastpile.store import EpisodeStore, StoreUnavailable

EXIT_FAILED = 1  # the command could not do what was asked (a bad input, a failed episode)
EXIT_SETUP = 2  # fix the setup: an invalid setting or option, an unreachable database or manager
EXIT_MODEL_LOAD = 3  # a model could not be loaded: fix the settings (or the network), not the input

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    """Print one clear line on stderr (outside text in it shown literally, passwords hidden) and exit non-zero."""
    tell("error", mask_secrets(message), style="red")
    raise typer.Exit(code)


def settings() -> Settings:
    """The settings from the environment and `.env`; an invalid one ends the command (exit 2)."""
    try:
        return load_settings()
    except SettingsError as error:
        fail(str(error), code=EXIT_SETUP)


def open_store(config: Settings | None = None) -> EpisodeStore:
    """The store named by the settings, migrated; setting or database errors end the command."""
    config = config or settings()
    try:
        return EpisodeStore.open(config)
    except StoreUnavailable as error:
        fail(str(error), code=EXIT_SETUP)
