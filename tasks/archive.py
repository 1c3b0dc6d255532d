"""Tasks over the archive stage: claim episodes waiting for a capture, run the stage over them.

The stage keeps its own per-episode state in the store (job ids, backoff, quota deferral), so
a task retry only covers the database being briefly away; the Internet Archive's own hiccups
are handled inside the stage without failing the task.
"""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NONE
from prefect.tasks import exponential_backoff
from sqlalchemy.exc import OperationalError

from podcastpile.archive.stage import ArchiveLimits, ArchiveStage
from podcastpile.archive.wayback import WaybackClient
from podcastpile.config import Settings
from podcastpile.net.redirects import resolver_for
from podcastpile.store.archive import ArchiveClaim, archive_queue_for
from tasks.resources import store_for


def _database_hiccup(task: Any, task_run: Any, state: Any) -> bool:
    return isinstance(state.result(raise_on_failure=False), OperationalError)


@task(
    name="claim-archive-work", retries=3, retry_delay_seconds=exponential_backoff(backoff_factor=1),
    retry_jitter_factor=0.5, retry_condition_fn=_database_hiccup, cache_policy=NONE,
)
def claim_archive_work(
    settings: Settings, n: int, worker_id: str, episode_ids: list[int] | None = None
) -> list[ArchiveClaim]:
    """Lease up to `n` episodes waiting for a capture (not deferred, not held by another run)."""
    queue = archive_queue_for(store_for(settings), settings)
    return queue.claim(worker_id, n, episode_ids=episode_ids)


@task(name="archive-episodes", cache_policy=NONE)
def archive_episodes(settings: Settings, claims: list[ArchiveClaim], max_seconds: float) -> dict[str, Any]:
    """Reuse or capture each claimed episode; returns counts by outcome."""
    queue = archive_queue_for(store_for(settings), settings)
    with WaybackClient.from_settings(settings) as client:
        stage = ArchiveStage(queue, client, ArchiveLimits.from_settings(settings), resolve=resolver_for(settings))
        summary = stage.run(claims, max_seconds=max_seconds)
    return {"submitted": summary.submitted, "lookups": summary.lookups, **summary.counts}
