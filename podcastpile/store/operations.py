"""Operator actions over many episodes at once: retry failures, invalidate results.

Both send the episodes they select back to the queue with one UPDATE in one transaction, so a
concurrent claim or archive run sees each episode either as it was or as ready, never half-reset.
A selection is a WHERE clause built here; `preview` counts and samples it (the commands' dry run)
and `requeue` applies it.

Invalidating keeps the episode's `results` row and its `dataset_exports` row: the old result stays
readable (and its Parquet row stays in the dataset) until a worker completes the episode again.
`complete()` then replaces the result with a new `created_at`, which is how the export sees the
old row as stale and rewrites its shard (see `exports.py`). Deleting them here would leave the
dataset with a row the store no longer knows.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, case, func, literal, or_, select, update

from podcastpile.store.engine import READ_ONLY
from podcastpile.store.episodes import EpisodeStore
from podcastpile.store.tables import EpisodeStatus
from podcastpile.store.tables import episodes as _episodes
from podcastpile.store.tables import results as _results


# What `ppcli retry --status` accepts: the end states that a retry can sensibly undo.
RETRYABLE = (EpisodeStatus.failed, EpisodeStatus.duplicate)
# The result keys naming the models (and their weights) that made it; see `podcastpile.speech.result`.
MODEL_KEYS = ("asr_model", "asr_fingerprint", "diar_model", "diar_fingerprint")


@dataclass(frozen=True)
class Selection:
    """Which episodes an operator command acts on: a WHERE clause over `episodes`."""

    where: ColumnElement[bool]


@dataclass(frozen=True)
class SampleRow:
    """One selected episode as the dry run shows it; `to` is the status it would go back to."""

    id: int
    status: str
    error_code: str | None
    url: str
    to: str


@dataclass(frozen=True)
class Preview:
    """How many episodes a selection holds now, and the first few of them (oldest first)."""

    count: int
    sample: list[SampleRow]


def retry_selection(
    *,
    status: EpisodeStatus | str = EpisodeStatus.failed,
    reason: str | None = None,
    since: datetime | None = None,
) -> Selection:
    """Episodes in `status` (failed or duplicate), with `error_code == reason` when given, and
    updated at or after `since` (naive UTC) when given. Raises ValueError for another status."""
    if str(status) not in RETRYABLE:
        raise ValueError(
            f"cannot retry status {str(status)!r}; choose from {', '.join(s.value for s in RETRYABLE)}"
        )
    where = _episodes.c.status == str(status)
    if reason is not None:
        where = and_(where, _episodes.c.error_code == reason)
    if since is not None:
        where = and_(where, _episodes.c.updated_at >= since)
    return Selection(where)


def invalidate_selection(
    *,
    code_version: str | None = None,
    model: str | None = None,
    completed_after: datetime | None = None,
) -> Selection:
    """Completed episodes matching every criterion given: the result's code version, a model id
    or weights fingerprint in the result, completion at or after `completed_after` (naive UTC).

    At least one criterion is required, so a slip cannot send the whole dataset back.
    """
    if code_version is None and model is None and completed_after is None:
        raise ValueError("say which results to invalidate: a code version, a model or a completion time")
    where = _episodes.c.status == EpisodeStatus.completed.value
    if code_version is not None:
        where = and_(where, _episodes.c.code_version == code_version)
    if model is not None:
        # JSON path access SQLAlchemy renders per dialect: json_extract on SQLite, ->> on
        # PostgreSQL's JSONB. Exact string equality, so `parakeet` does not match every Parakeet.
        payload = _results.c.payload
        made_by = or_(*(payload[key].as_string() == model for key in MODEL_KEYS))
        where = and_(where, _episodes.c.id.in_(select(_results.c.episode_id).where(made_by)))
    if completed_after is not None:
        where = and_(where, _episodes.c.completed_at >= completed_after)
    return Selection(where)


def _needs_archive(store: EpisodeStore) -> ColumnElement[bool] | None:
    """Which rows go back to `archive_pending` rather than `pending` (None: none, archiving is off).

    With archiving on, an episode that never got an Internet Archive copy (`archive_url` NULL:
    archiving failed, or it was processed live) waits for one first, as a new episode would.
    """
    return _episodes.c.archive_url.is_(None) if store.archive_required else None


def _ready_status(store: EpisodeStore) -> ColumnElement[str]:
    """The status an episode goes back to, decided per row inside the statement."""
    needs_archive = _needs_archive(store)
    if needs_archive is None:
        return literal(EpisodeStatus.pending.value)
    return case(
        (needs_archive, EpisodeStatus.archive_pending.value), else_=EpisodeStatus.pending.value
    )


def preview(store: EpisodeStore, selection: Selection, *, sample: int = 10) -> Preview:
    """Count the selected episodes and return the first `sample` (oldest first); changes nothing."""
    with store.engine.execution_options(**READ_ONLY).connect() as connection:
        count = connection.execute(select(func.count()).where(selection.where)).scalar_one()
        rows = connection.execute(
            select(
                _episodes.c.id, _episodes.c.status, _episodes.c.error_code, _episodes.c.url,
                _ready_status(store).label("to"),
            )
            .where(selection.where)
            .order_by(_episodes.c.id)
            .limit(sample)
        ).all()
    return Preview(count, [SampleRow(*row) for row in rows])


def requeue(store: EpisodeStore, selection: Selection) -> int:
    """Send the selected episodes back to the queue in one UPDATE; returns how many changed.

    Attempts start again from zero and the last error is cleared. An episode going back to
    `archive_pending` also gets its archive attempts, back-off and job cleared, so the archive
    stage takes it at once. The result and its dataset export are kept (see the module doc).
    """
    to_archive = _needs_archive(store)
    archive_values: dict[str, Any] = {}
    if to_archive is not None:
        archive_values = {
            "archive_attempts": case((to_archive, 0), else_=_episodes.c.archive_attempts),
            "archive_not_before": case((to_archive, None), else_=_episodes.c.archive_not_before),
            "archive_job_id": case((to_archive, None), else_=_episodes.c.archive_job_id),
            "archive_error": case((to_archive, None), else_=_episodes.c.archive_error),
        }
    statement = (
        update(_episodes)
        .where(selection.where)
        .values(
            status=_ready_status(store),
            attempts=0,
            error_code=None,
            error=None,
            duplicate_of=None,
            lease_token=None,
            leased_until=None,
            claimed_by_run=None,
            updated_at=store.clock(),
            **archive_values,
        )
    )
    with store.engine.begin() as connection:
        return connection.execute(statement).rowcount


def retry(
    store: EpisodeStore,
    *,
    status: EpisodeStatus | str = EpisodeStatus.failed,
    reason: str | None = None,
    since: datetime | None = None,
) -> int:
    """Put failed (or duplicate) episodes back to ready; see `retry_selection`. Returns how many."""
    return requeue(store, retry_selection(status=status, reason=reason, since=since))


def invalidate(
    store: EpisodeStore,
    *,
    code_version: str | None = None,
    model: str | None = None,
    completed_after: datetime | None = None,
) -> int:
    """Send completed episodes back for reprocessing, keeping their results until replaced;
    see `invalidate_selection`. Returns how many."""
    return requeue(
        store,
        invalidate_selection(code_version=code_version, model=model, completed_after=completed_after),
    )


__all__ = [
    "MODEL_KEYS", "Preview", "RETRYABLE", "SampleRow", "Selection", "invalidate",
    "invalidate_selection", "preview", "requeue", "retry", "retry_selection",
]
