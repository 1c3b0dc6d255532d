"""The dispatcher: keeps batch runs waiting for the GPU workers while episodes are ready.

Runs on a short schedule. Each run counts ready episodes and batch runs not yet started, and
tops the waiting runs up to one per online worker (or `max_waiting`). A worker that finishes a
batch finds the next one already waiting, so GPUs are not left idle between batches, and
the number of runs stays bounded however long the queue is: no flood of runs.
"""

from __future__ import annotations

import math

from prefect import flow, get_run_logger

from podcastpile.config import load_settings
from tasks.dispatch import count_online_workers, count_ready, count_waiting_runs, create_batch_runs

BATCH_DEPLOYMENT = "process-batch/gpu"


@flow(name="dispatch")
def dispatch(deployment: str = BATCH_DEPLOYMENT, max_waiting: int | None = None) -> int:
    """Create the batch runs the ready episodes need; returns how many were created."""
    settings = load_settings()
    ready = count_ready(settings)
    if ready == 0:
        return 0
    limit = max_waiting or max(1, count_online_workers(settings.work_pool))
    wanted = min(math.ceil(ready / settings.batch_size), limit)
    missing = max(0, wanted - count_waiting_runs(deployment))
    if missing:
        create_batch_runs(deployment, missing)
    get_run_logger().info("%d episodes ready; created %d batch runs", ready, missing)
    return missing
