"""The stats flow: publish the operator's dashboard as Prefect artifacts, on a schedule.

One stable artifact key each, so the Prefect UI shows the dashboard's history (at
`/artifacts/key/podcastpile-dashboard`, and on each stats run's Artifacts tab), next to the
per-batch tables.
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from tasks.settings import flow_settings
from tasks.report import compute_dashboard

DASHBOARD_KEY = "podcastpile-dashboard"


@flow(name="stats")
def stats_flow(loops: dict[str, dict[str, Any]] | None = None) -> str:
    """Compute the dashboard and publish it; returns the Markdown. `loops`: what the manager's
    control loops last saw (podcastpile/cli/control.py), shown so an idle manager is seen alive."""
    markdown, workers = compute_dashboard(flow_settings(), loops)
    create_markdown_artifact(key=DASHBOARD_KEY, markdown=markdown,
                             description="Episodes by status, throughput, failures, queue ETA")
    create_table_artifact(key=f"{DASHBOARD_KEY}-workers", table=workers or [{"worker": "", "episodes": 0}],
                          description="Throughput and real-time factor per worker, last 24 h")
    return markdown
