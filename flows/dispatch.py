"""The dispatcher: keeps batch runs waiting for the GPU workers while episodes are ready.

Runs on a short schedule on the CPU pool. Each run first cancels the dispatch runs that fell
late (while no CPU worker was up): one run does the work of all of them. Then it returns to
the queue what dead runs held (batch runs marked crashed by the heartbeat automation, or by
dispatch itself after 5 silent minutes when the automation missed one, and leases past their
deadline), so nothing waits for a claim to notice. Then it counts claimable episodes and batch runs not yet started, and
tops the waiting runs up to one per online worker (or `max_waiting`). A worker that finishes a
batch finds the next one already waiting, so GPUs are not left idle between batches, and
the number of runs stays bounded however long the queue is: no flood of runs.
"""

from __future__ import annotations

import math
from typing import Any

from prefect import flow, get_run_logger

from tasks.dispatch import (
    SILENT_SECONDS,
    cancel_late_runs,
    count_online_workers,
    count_ready,
    count_waiting_runs,
    crash_silent_runs,
    create_batch_runs,
    requeue_dead_runs,
    requeue_expired,
)
from tasks.settings import flow_settings
from tasks.states import nothing_done

BATCH_DEPLOYMENT = "process-batch/gpu"
# `deployment` decides which runs dispatch creates and which runs' episodes it requeues: only
# prefect.yaml may set it, a run may not (deployments/allowlist.py refuses it otherwise).
FIXED_PARAMETERS = ("deployment",)


@flow(name="dispatch")
def dispatch(deployment: str = BATCH_DEPLOYMENT, max_waiting: int | None = None) -> Any:
    """Create the batch runs the ready episodes need; returns how many were created (in a state
    marked "nothing to do" when it changed nothing at all, which the manager does not keep)."""
    settings = flow_settings()
    logger = get_run_logger()
    changed = 0  # late runs cancelled, runs crashed, episodes requeued: what this run did
    if late := cancel_late_runs():
        logger.info("cancelled %d dispatch runs that fell late: this run does their work", late)
        changed += late
    for run_id in crash_silent_runs(deployment):
        logger.warning("batch run %s sent no heartbeat for %g s: marked crashed", run_id, SILENT_SECONDS)
        changed += 1
    for run_id, count in requeue_dead_runs(settings, deployment).items():
        logger.warning("requeued %d episodes held by dead batch run %s", count, run_id)
        changed += count
    if expired := requeue_expired(settings):
        logger.warning("requeued %d episodes whose lease expired", expired)
        changed += expired
    ready = count_ready(settings)
    if ready == 0:
        return 0 if changed else nothing_done(0)
    limit = max_waiting or max(1, count_online_workers(settings.work_pool))
    wanted = min(math.ceil(ready / settings.batch_size), limit)
    missing = max(0, wanted - count_waiting_runs(deployment))
    if missing:
        create_batch_runs(deployment, missing)
    logger.info("%d episodes ready; created %d batch runs", ready, missing)
    return missing if missing or changed else nothing_done(0)
