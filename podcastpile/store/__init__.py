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
from podcastpile.store.tables import Episode, EpisodeStatus

__all__ = [
    "AddSummary", "Claim", "Episode", "EpisodeStatus", "EpisodeStore", "LeaseLost", "NewEpisode",
    "Rejected", "Stats", "StoreUnavailable", "UnknownEpisode", "make_engine", "migrate",
    "normalize_language",
]
