"""Task over the dashboard: compute it from the store."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NONE

from podcastpile.config import Settings
from podcastpile.store.archive import archive_queue_for
from podcastpile.store.report import dashboard, render_markdown
from tasks.resources import store_for


# A Prefect variable the manager sets while it serves without auth on a non-loopback address
# (`ppcli manager --insecure`), so the dashboard says so where operators look.
INSECURE_VARIABLE = "podcastpile-manager-insecure"


def security_warnings() -> list[str]:
    """What the dashboard must shout: an insecure manager, flow runs the workers refused."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterStateName, FlowRunFilterState
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.variables import Variable

    from podcastpile.runs import REFUSED_STATE

    warnings = []
    insecure = Variable.get(INSECURE_VARIABLE, default=None)
    if insecure:
        warnings.append(str(insecure))
    refused = FlowRunFilter(state=FlowRunFilterState(name=FlowRunFilterStateName(any_=[REFUSED_STATE])))
    with get_client(sync_client=True) as client:
        count = client.count_flow_runs(flow_run_filter=refused)
        if count:
            latest = client.read_flow_runs(flow_run_filter=refused, sort=FlowRunSort.END_TIME_DESC, limit=1)
            reason = latest[0].state.message if latest and latest[0].state is not None else ""
            warnings.append(f"{count:,} flow run{'s' if count != 1 else ''} refused by workers (not this "
                            f"project's deployments, or changed to run something else); last: {reason}")
    return warnings


@task(name="compute-dashboard", cache_policy=NONE, retries=2, retry_delay_seconds=10)
def compute_dashboard(settings: Settings, loops: dict[str, dict[str, Any]] | None = None) -> tuple[str, list[dict[str, Any]]]:
    """The dashboard as Markdown, and its per-worker table rows; `loops` as the manager gave them."""
    store = store_for(settings)
    board = dashboard(store)
    archive = None
    if settings.archives:
        from dataclasses import asdict

        archive = asdict(archive_queue_for(store, settings).stats(settings.spn_daily_bytes))
    rows = [{"worker": w.worker, "episodes": w.episodes, "audio_hours": round(w.audio_hours, 3),
             "real_time_factor": round(w.real_time_factor, 5) if w.real_time_factor else None}
            for w in board.workers]
    return render_markdown(board, archive, security_warnings(), loops), rows
