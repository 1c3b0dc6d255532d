"""Store operations only tests need: shortcuts production reaches another way.

`mark_archived` stands in for the archive stage (which records a capture through
`ArchiveQueue.archived`); `release` gives back one claim, which workers do for a whole batch
with `EpisodeStore.release_claims`.
"""

from __future__ import annotations

from sqlalchemy import update

from podcastpile.store import EpisodeStatus, EpisodeStore
from podcastpile.store.tables import episodes as _episodes


def mark_archived(store: EpisodeStore, episode_id: int, *, timestamp: str, archive_url: str) -> None:
    """Record an Internet Archive capture of an episode and make it ready to claim.

    Raises `UnknownEpisode` for an unknown id, ValueError for an episode not waiting for one.
    """
    now = store.clock()
    with store.engine.begin() as connection:
        result = connection.execute(
            update(_episodes)
            .where(
                _episodes.c.id == episode_id,
                _episodes.c.status.in_([EpisodeStatus.archive_pending, EpisodeStatus.archiving]),
            )
            .values(
                status=EpisodeStatus.pending,
                archive_timestamp=timestamp,
                archive_url=archive_url,
                archived_at=now,
                updated_at=now,
            )
        )
    if result.rowcount != 1:
        store.get(episode_id)  # raises UnknownEpisode
        raise ValueError(f"episode {episode_id} is not waiting for an archive capture")


def release(store: EpisodeStore, episode_id: int, lease_token: str) -> None:
    """Give one episode back unprocessed; the attempt is not counted. Raises `LeaseLost`."""
    values = {
        "status": EpisodeStatus.pending,
        "lease_token": None,
        "leased_until": None,
        "attempts": _episodes.c.attempts - 1,
    }
    store.fenced_update(episode_id, lease_token, values)
