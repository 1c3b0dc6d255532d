"""The store's notion of now: naive UTC, the same on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

# What an `EpisodeStore` asks for the time; tests pass a fake one to move time by hand.
Clock = Callable[[], datetime]


def utcnow() -> datetime:
    """Naive UTC now: the store keeps naive UTC timestamps on every database."""
    return datetime.now(UTC).replace(tzinfo=None)
