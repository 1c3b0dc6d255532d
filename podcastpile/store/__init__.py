"""The episode store: queue and record of episodes, on SQLite or PostgreSQL."""

from typing import TYPE_CHECKING, Any

from podcastpile.store.engine import StoreUnavailable, make_engine, migrate
from podcastpile.store.episodes import (
    AddSummary,
    Claim,
    EpisodeStore,
    LeaseLost,
    NewEpisode,
    Rejected,
    Stats,
    UnknownEpisode,
    normalize_language,
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
    "AddSummary", "Claim", "Episode", "EpisodeStatus", "EpisodeStore", "LeaseLost", "NewEpisode",
    "Preview", "Rejected", "SampleRow", "Selection", "Stats", "StoreUnavailable", "UnknownEpisode",
    "invalidate", "invalidate_selection", "make_engine", "migrate", "normalize_language", "preview",
    "requeue", "retry", "retry_selection",
]
