"""The archive flow: capture waiting episodes in the Internet Archive before any GPU sees them.

Deployed on the CPU work pool on a short schedule. Several runs may overlap safely: each
claims its own episodes (leases), and all of them share the submission limits kept in the
store. A run ends when its episodes are done or after `max_minutes`; unfinished ones keep
their job ids for the next run.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from tasks.archive import archive_episodes, claim_archive_work
from tasks.settings import flow_settings
from tasks.states import nothing_done


@flow(name="archive")
def archive_flow(
    limit: int | None = None, episode_ids: list[int] | None = None, max_minutes: float = 10.0
) -> Any:
    """Archive up to `limit` waiting episodes (default ARCHIVE_BATCH_SIZE); returns counts by outcome
    (a dict; empty, in a state marked "nothing to do", when no episode waited)."""
    settings = flow_settings()
    logger = get_run_logger()
    if not settings.archives:
        logger.info("ARCHIVE_MODE=off: nothing to archive")
        return nothing_done({})
    run = flow_run.get_id()
    worker = f"{settings.worker_id}/archive-{str(run)[:8]}" if run else f"{settings.worker_id}/archive"
    claims = claim_archive_work(settings, limit or settings.archive_batch_size, worker, episode_ids)
    if not claims:
        logger.info("no episodes waiting for a capture")
        # Completed with the "nothing to do" mark: the manager does not keep such a run
        return nothing_done({})
    counts = archive_episodes(settings, claims, max_minutes * 60.0)
    line = ", ".join(f"{key} {value}" for key, value in sorted(counts.items()))
    logger.info("archive run over %d episodes: %s", len(claims), line)
    create_markdown_artifact(
        key="archive-run",
        markdown=f"**{len(claims)} episodes**: {line}",
        description="Outcomes of one archive run",
    )
    return counts
