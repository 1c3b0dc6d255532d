"""The episode store: queue and record of episodes, on SQLite or PostgreSQL."""

from typing import TYPE_CHECKING, Any

from podcastpile.store.clock import Clock, utcnow
from podcastpile.store.engine import StoreUnavailable, make_engine, migrate, normalize_database_url
from podcastpile.store.episodes import EpisodeStore, StoreOptions, StoreSettings
from podcastpile.store.languages import normalize_language
from podcastpile.store.records import (
    AddSummary,
    Claim,
    LeaseLost,
    NewEpisode,
    Rejected,
    Stats,
    UnknownEpisode,
)
from podcastpile.store.operations import (
    Preview,
    SampleRow,
    Selection,
    invalidate,
    invalidate_selection,
    preview,
    requeue,
    retry,
    retry_selection,
)
from podcastpile.store.tables import EpisodeStatus

if TYPE_CHECKING:
    from podcastpile.store.rows import Episode


def __getattr__(name: str) -> Any:
    # `Episode` is the ORM's row class; loading it lazily keeps the ORM out of commands that
    # never read whole rows (`ppcli stats`).
    if name == "Episode":
        from podcastpile.store.rows import Episode

        return Episode
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AddSummary", "Claim", "Clock", "Episode", "EpisodeStatus", "EpisodeStore", "LeaseLost",
    "NewEpisode", "Preview", "Rejected", "SampleRow", "Selection", "Stats", "StoreOptions",
    "StoreSettings", "StoreUnavailable", "UnknownEpisode", "invalidate", "invalidate_selection",
    "make_engine", "migrate", "normalize_database_url", "normalize_language", "preview", "requeue",
    "retry", "retry_selection", "utcnow",
]
