"""The operator's dashboard, computed from the store: where episodes are, how fast they move.

`dashboard(store)` answers, in one read-only pass: episodes by status, the archive stage,
hours processed in total and in the last 24 h, throughput and real-time factor per worker
over the last 24 h, top failure reasons with counts and an example URL each, and the time the
ready queue would take at the last 24 h's rate. The `stats` flow publishes it as a Prefect
artifact; it is plain data so anything else can show it too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select

from podcastpile.store.engine import READ_ONLY
from podcastpile.store.episodes import EpisodeStore
from podcastpile.store.records import Stats
from podcastpile.store.tables import EpisodeStatus
from podcastpile.store.tables import episodes as _episodes
from podcastpile.net.urls import display_url



@dataclass
class WorkerRate:
    """One worker's last 24 h."""

    worker: str
    episodes: int
    audio_hours: float
    processing_hours: float

    @property
    def real_time_factor(self) -> float | None:
        """Processing time per audio time (lower is faster); None without audio."""
        return self.processing_hours / self.audio_hours if self.audio_hours else None


@dataclass
class Dashboard:
    """Everything the dashboard shows; see the module docstring."""

    generated_at: datetime
    stats: Stats
    audio_hours_last_24h: float
    episodes_last_24h: int
    workers: list[WorkerRate] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)  # code, episodes, example_url
    ready: int = 0
    eta_hours: float | None = None  # the ready queue at the last 24 h's rate


def dashboard(store: EpisodeStore, *, top_failures: int = 10) -> Dashboard:
    """Compute the dashboard from the store (read-only)."""
    now = store.clock()
    since = now - timedelta(hours=24)
    stats = store.stats()
    completed_recently = (_episodes.c.status == EpisodeStatus.completed.value) & (_episodes.c.completed_at >= since)
    # A worker id is `host/<run>`: group by host so a worker's batches add up.
    host = func.coalesce(_episodes.c.worker_id, "?")
    with store.engine.execution_options(**READ_ONLY).connect() as connection:
        rows = connection.execute(
            select(
                host, func.count(), func.coalesce(func.sum(_episodes.c.duration_seconds), 0.0),
                func.coalesce(func.sum(_episodes.c.processing_seconds), 0.0),
            ).where(completed_recently).group_by(host)
        ).all()
        failures = connection.execute(
            select(func.coalesce(_episodes.c.error_code, "unknown"), func.count(), func.min(_episodes.c.id))
            .where(_episodes.c.status == EpisodeStatus.failed.value)
            .group_by(_episodes.c.error_code).order_by(func.count().desc()).limit(top_failures)
        ).all()
        examples = dict(connection.execute(
            select(_episodes.c.id, _episodes.c.url).where(_episodes.c.id.in_([row[2] for row in failures]))
        ).all()) if failures else {}
    per_host: dict[str, WorkerRate] = {}
    for worker, count, audio, processing in rows:
        name = str(worker).split("/", 1)[0]
        rate = per_host.setdefault(name, WorkerRate(name, 0, 0.0, 0.0))
        rate.episodes += count
        rate.audio_hours += float(audio) / 3600
        rate.processing_hours += float(processing) / 3600
    workers = sorted(per_host.values(), key=lambda w: -w.audio_hours)
    episodes_24h = sum(w.episodes for w in workers)
    ready = stats.by_status.get(EpisodeStatus.pending.value, 0)
    eta = ready / episodes_24h * 24 if episodes_24h else None
    return Dashboard(
        generated_at=now,
        stats=stats,
        audio_hours_last_24h=sum(w.audio_hours for w in workers),
        episodes_last_24h=episodes_24h,
        workers=workers,
        failures=[{"code": code, "episodes": count, "example_url": display_url(examples.get(first, ""))}
                  for code, count, first in failures],
        ready=ready,
        eta_hours=eta,
    )


def render_markdown(board: Dashboard, archive: dict[str, Any] | None = None,
                    warnings: list[str] | None = None, loops: dict[str, dict[str, Any]] | None = None) -> str:
    """The dashboard as Markdown (Prefect artifacts render it in the UI); `warnings` (an
    insecure manager, runs the workers refused) come first, where nobody misses them."""
    stats = board.stats
    lines = [f"# Podcast Pile — {board.generated_at:%Y-%m-%d %H:%M} UTC", ""]
    for warning in warnings or []:
        lines += [f"> **Warning**: {_cell(warning)}", ""]
    lines += ["| status | episodes |", "| --- | ---: |"]
    lines += [f"| {status} | {count:,} |" for status, count in stats.by_status.items()]
    lines += [f"| **total** | **{stats.total:,}** |", ""]
    lines.append(
        f"**Audio processed**: {stats.audio_hours_done:,.1f} h in total, {board.audio_hours_last_24h:,.1f} h "
        f"({board.episodes_last_24h:,} episode{'' if board.episodes_last_24h == 1 else 's'}) in the last 24 h. **Leases past their deadline**: "
        f"{stats.expired_leases:,}."
    )
    if board.eta_hours is not None:
        lines.append(f"**Queue**: {board.ready:,} ready; at the last 24 h's rate about {board.eta_hours:,.1f} h to clear.")
    else:
        lines.append(f"**Queue**: {board.ready:,} ready; nothing completed in the last 24 h, so no estimate.")
    if archive:
        lines += ["", "## Internet Archive", "",
                  f"waiting {archive['waiting']:,} · submitted {archive['submitted']:,} · archived new "
                  f"{archive['archived_new']:,} · reused {archive['archived_reused']:,} · deferred "
                  f"{sum(archive['deferred'].values()):,} · today {archive['captures_today']:,} captures, "
                  f"{archive['bytes_today'] / 1e9:.2f} of {archive['daily_bytes'] / 1e9:.2f} GB"]
    lines += ["", "## Workers, last 24 h", "", "| worker | episodes | audio h | real-time factor |",
              "| --- | ---: | ---: | ---: |"]
    for worker in board.workers:
        rtf = f"{worker.real_time_factor:.4f}" if worker.real_time_factor is not None else "–"
        lines.append(f"| {_cell(worker.worker)} | {worker.episodes:,} | {worker.audio_hours:,.2f} | {rtf} |")
    if loops:
        lines += ["", "## Control loops (the manager starts a run only when there is work)", "",
                  "| loop | last check (UTC) | found | last run started | runs started |", "| --- | --- | --- | --- | ---: |"]
        for name, loop in loops.items():
            lines.append(f"| {_cell(name)} | {_cell(loop.get('checked_at') or '–')} | {_cell(loop.get('found', ''))} "
                         f"| {_cell(loop.get('last_run_at') or '–')} | {int(loop.get('runs_started') or 0):,} |")
    if board.failures:
        lines += ["", "## Top failure reasons", "", "| reason | episodes | example |", "| --- | ---: | --- |"]
        lines += [f"| {_cell(f['code'])} | {f['episodes']:,} | {_cell(f['example_url'])} |" for f in board.failures]
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    """Outside text in a Markdown table cell: no pipes, no markup, as code."""
    return "`" + str(text).replace("`", "'").replace("|", "\\|").replace("\n", " ") + "`"
