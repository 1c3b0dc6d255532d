"""Tasks the dispatcher uses: how much work is ready, how many batch runs already wait, start more."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NONE
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
    WorkerFilter,
    WorkerFilterStatus,
)
from prefect.client.schemas.objects import StateType, WorkerStatus
from prefect.deployments import run_deployment

from podcastpile.config import Settings
from podcastpile.store import EpisodeStatus
from tasks.resources import store_for


@task(name="count-ready-episodes", cache_policy=NONE)
def count_ready(settings: Settings) -> int:
    """Episodes waiting for a worker."""
    return store_for(settings).count(EpisodeStatus.pending)


@task(name="count-waiting-runs", cache_policy=NONE)
def count_waiting_runs(deployment: str) -> int:
    """Batch runs created but not started yet (scheduled, late or pending)."""
    with get_client(sync_client=True) as client:
        target = client.read_deployment_by_name(deployment)
        return client.count_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[target.id])),
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(
                    type=FlowRunFilterStateType(any_=[StateType.SCHEDULED, StateType.PENDING])
                )
            ),
        )


@task(name="count-online-workers", cache_policy=NONE)
def count_online_workers(work_pool: str) -> int:
    """Workers polling the pool now."""
    with get_client(sync_client=True) as client:
        workers = client.read_workers_for_work_pool(
            work_pool,
            worker_filter=WorkerFilter(status=WorkerFilterStatus(any_=[WorkerStatus.ONLINE])),
        )
    return len(workers)


@task(name="create-batch-runs", cache_policy=NONE)
def create_batch_runs(deployment: str, n: int) -> list[str]:
    """Create `n` runs of the batch deployment for workers to pick up; returns their ids."""
    runs = [run_deployment(deployment, timeout=0, as_subflow=False) for _ in range(n)]
    return [str(run.id) for run in runs]
