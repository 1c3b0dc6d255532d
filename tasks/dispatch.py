"""Tasks the dispatcher uses: how much work is ready, how many batch runs already wait, start more."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from prefect import task
from prefect.cache_policies import NONE
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterEndTime,
    FlowRunFilterExpectedStartTime,
    FlowRunFilterId,
    FlowRunFilterState,
    FlowRunFilterStateType,
    WorkerFilter,
    WorkerFilterStatus,
)
from prefect.client.schemas.objects import StateType, WorkerStatus
from prefect.deployments import run_deployment
from prefect.runtime import deployment as this_deployment
from prefect.runtime import flow_run as this_flow_run
from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter, EventResourceFilter
from prefect.states import Cancelled, Crashed

from podcastpile.config import Settings
from podcastpile.runs import DEAD_STATES
from tasks.resources import store_for


@task(name="cancel-late-dispatch-runs", cache_policy=NONE)
def cancel_late_runs(most: int = 2000) -> int:
    """Cancel the other runs of this run's deployment that are due but not started: runs that
    fell late while no CPU worker was up. This run does their work; returns how many.

    The deployment's concurrency limit (1, CANCEL_NEW) cancels late runs a worker submits
    together, but a worker that takes one run at a time (`--limit 1`) would start each in turn,
    seconds of process start-up apiece, hundreds after an outage of hours. Cancelled here
    before a worker takes them, they never start a process. Runs scheduled for later are kept.
    """
    me, deployment_id = this_flow_run.get_id(), this_deployment.get_id()
    if not (me and deployment_id):
        return 0  # called outside a deployment run (a test, an ad-hoc call): nothing to judge
    cancelled = 0
    with get_client(sync_client=True) as client:
        while cancelled < most:
            late = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
                flow_run_filter=FlowRunFilter(
                    id=FlowRunFilterId(not_any_=[me]),
                    state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED])),
                    expected_start_time=FlowRunFilterExpectedStartTime(before_=datetime.now(UTC)),
                ),
                limit=200,
            )
            for run in late:
                client.set_flow_run_state(
                    run.id, Cancelled(message=f"fell late; dispatch run {this_flow_run.get_name()} did its work"))
            cancelled += len(late)
            if len(late) < 200:
                break
    return cancelled


@task(name="count-ready-episodes", cache_policy=NONE)
def count_ready(settings: Settings) -> int:
    """Episodes a batch would claim now: ready ones and leases past their deadline."""
    return store_for(settings).count_claimable()


@task(name="requeue-expired-leases", cache_policy=NONE)
def requeue_expired(settings: Settings) -> int:
    """Return expired leases to the queue (nobody has to claim first for that to happen)."""
    return store_for(settings).requeue_expired()


@task(name="requeue-dead-runs", cache_policy=NONE)
def requeue_dead_runs(settings: Settings, deployment: str, hours: float = 6.0) -> dict[str, int]:
    """Return the episodes of batch runs that ended crashed, failed or cancelled in the last
    `hours` to the queue at once, instead of after their lease (`JOB_TIMEOUT_HOURS`).

    A run whose process died is marked CRASHED by the heartbeat automation (see
    deployments/automations.yaml); one that ended normally released its episodes itself, so
    for it this finds nothing. Returns episodes requeued per run id.
    """
    since = datetime.now(UTC) - timedelta(hours=hours)
    with get_client(sync_client=True) as client:
        target = client.read_deployment_by_name(deployment)
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[target.id])),
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(
                    any_=[StateType(name) for name in DEAD_STATES])),
                end_time=FlowRunFilterEndTime(after_=since),
            ),
            limit=200,
        )
    store = store_for(settings)
    requeued = {str(run.id): store.requeue_run(str(run.id)) for run in runs}
    return {run_id: count for run_id, count in requeued.items() if count}


# The heartbeat automation marks a silent run CRASHED after 90 s; this is its backstop, so it
# waits longer: ten missed heartbeats (job template: one every 30 s).
SILENT_SECONDS = 300.0


@task(name="crash-silent-runs", cache_policy=NONE)
def crash_silent_runs(deployment: str, silent_seconds: float = SILENT_SECONDS) -> list[str]:
    """Mark CRASHED the batch runs still RUNNING with no heartbeat for `silent_seconds`; returns
    their ids (`requeue_dead_runs` then gives their episodes back).

    The heartbeat automation does this first, but it can miss a run: a run killed while
    Prefect's database was down sent its last heartbeats nowhere, and the automation forgets
    what it waited for when it is replaced. A run it missed would keep its episodes leased for
    JOB_TIMEOUT_HOURS. A run wrongly crashed loses nothing: its leases are fenced, so its late
    results are refused and the episodes are done once, by whoever claims them next.
    """
    now = datetime.now(UTC)
    since = now - timedelta(seconds=silent_seconds)
    crashed: list[str] = []
    with get_client(sync_client=True) as client:
        target = client.read_deployment_by_name(deployment)
        running = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[target.id])),
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
                type=FlowRunFilterStateType(any_=[StateType.RUNNING]))),
            limit=200,
        )
        for run in running:
            if run.state is None or run.state.timestamp > since:
                continue  # running for less than the window: it may not have beaten yet
            beats = client.read_events(EventFilter(
                occurred=EventOccurredFilter(since=since, until=now),
                event=EventNameFilter(name=["prefect.flow-run.heartbeat"]),
                resource=EventResourceFilter(id=[f"prefect.flow-run.{run.id}"]),
            ), limit=1)
            if beats.events:
                continue
            client.set_flow_run_state(run.id, Crashed(
                message=f"No heartbeat for {silent_seconds:g} s (found by dispatch); the process running it is gone. "
                        "Its episodes go back to the queue."), force=True)
            crashed.append(str(run.id))
    return crashed


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
