"""The episode store: queue and record of episodes, on SQLite or PostgreSQL."""

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
from podcastpile.store.tables import Episode, EpisodeStatus

__all__ = [
    "AddSummary", "Claim", "Episode", "EpisodeStatus", "EpisodeStore", "LeaseLost", "NewEpisode",
    "Preview", "Rejected", "SampleRow", "Selection", "Stats", "StoreUnavailable", "UnknownEpisode",
    "invalidate", "invalidate_selection", "make_engine", "migrate", "normalize_language", "preview",
    "requeue", "retry", "retry_selection",
]
