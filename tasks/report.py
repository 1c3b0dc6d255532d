"""Task over the dashboard: compute it from the store."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NONE

from podcastpile.config import Settings
from podcastpile.store.archive import archive_queue_for
from podcastpile.store.report import dashboard, render_markdown
from tasks.resources import store_for


@task(name="compute-dashboard", cache_policy=NONE, retries=2, retry_delay_seconds=10)
def compute_dashboard(settings: Settings) -> tuple[str, list[dict[str, Any]]]:
    """The dashboard as Markdown, and its per-worker table rows."""
    store = store_for(settings)
    board = dashboard(store)
    archive = None
    if settings.archives:
        from dataclasses import asdict

        archive = asdict(archive_queue_for(store, settings).stats(settings.spn_daily_bytes))
    rows = [{"worker": w.worker, "episodes": w.episodes, "audio_hours": round(w.audio_hours, 3),
             "real_time_factor": round(w.real_time_factor, 5) if w.real_time_factor else None}
            for w in board.workers]
    return render_markdown(board, archive), rows
