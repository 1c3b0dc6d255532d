"""The store as JSON for scripts and services: what `ppcli stats --json`, `ppcli list --json` and
`ppcli retry | invalidate --json` print, and what the manager's own HTTP API (deployments/jobs_api.py) answers.

Here rather than in the CLI so the manager's server (a layer below the CLI) gives the very
same numbers. URLs and reasons are kept as stored: a script may need to fetch what it lists.
Nothing here loads the ORM, httpx or Prefect at import: `ppcli stats` must answer at once.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from podcastpile.runs import HeldByRuns, RefusedRuns
from podcastpile.store import EpisodeStatus, EpisodeStore, Selection, Stats, preview, requeue
from podcastpile.store.archive import ArchiveStats, archive_queue_for
from podcastpile.store.archive_limits import HOST_SCOPE

if TYPE_CHECKING:
    from podcastpile.config import Settings

# What a listing may be restricted to: a status, or `expired` (held leases past their deadline).
LIST_STATUSES = [status.value for status in EpisodeStatus] + ["expired"]

EPISODE_FIELDS = [
    "id", "url", "podcast_id", "language", "status", "attempts", "worker_id", "leased_until",
    "archive_url", "archive_timestamp", "archive_reused", "archive_error", "duration_seconds",
    "audio_sha256", "duplicate_of", "error_code",
    "error", "created_at", "updated_at", "completed_at",
]


def episode_dict(row: Any) -> dict[str, Any]:
    """An episode row as `ppcli list --json` prints it (URLs and reasons as stored)."""
    return {key: getattr(row, key) for key in EPISODE_FIELDS}


def archive_stats_dict(stats: ArchiveStats) -> dict[str, Any]:
    """The archive stage's counts as JSON-able values.

    `pauses` maps every pause's reason to its end (host pauses are keyed `host:<host>`);
    `paused_hosts` repeats the host pauses keyed by host alone.
    """
    data = asdict(stats)
    data["deferred_until"] = stats.deferred_until.isoformat() if stats.deferred_until else None
    data["pauses"] = {reason: until.isoformat() for reason, until in stats.pauses.items()}
    data["paused_hosts"] = {
        reason.removeprefix(HOST_SCOPE): until.isoformat()
        for reason, until in stats.pauses.items() if reason.startswith(HOST_SCOPE)
    }
    return data


def archive_stats(store: EpisodeStore, config: Settings) -> dict[str, Any]:
    """The archive stage's counts for `ppcli stats`."""
    return archive_stats_dict(archive_queue_for(store, config).stats(config.spn_daily_bytes))


def stats_dict(result: Stats, archive: dict[str, Any], held: HeldByRuns, refused: RefusedRuns) -> dict[str, Any]:
    """`ppcli stats --json`: the counts, with the dead-run counts null (and why) when unknown."""
    return {
        "total": result.total,
        "by_status": result.by_status,
        "expired_leases": result.expired_leases,
        "held_by_dead_runs": held.dead,  # null when unknown, with the reason below
        "held_by_runs_unknown_to_prefect": held.unknown_runs,
        "held_by_runs_unknown_reason": held.reason,
        "refused_runs": refused.count,  # flow runs workers refused to run; null when unknown
        "refused_runs_last_reason": refused.last_message,
        "refused_runs_unknown_reason": refused.reason,
        "audio_hours_done": round(result.audio_hours_done, 3),
        "failures_by_reason": result.failures_by_reason,
        "archive": archive,
    }


def operation_dict(store: EpisodeStore, selection: Selection, *, apply: bool, sample: int = 10) -> dict[str, Any]:
    """`ppcli retry | invalidate --json`: with `apply`, the selection sent back to the queue and
    how many changed; else a dry run, how many match and the first `sample` (URLs as stored)."""
    if apply:
        return {"dry_run": False, "changed": requeue(store, selection)}
    found = preview(store, selection, sample=sample)
    return {"dry_run": True, "matching": found.count, "sample": [asdict(row) for row in found.sample]}
