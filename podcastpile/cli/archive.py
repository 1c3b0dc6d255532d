"""`ppcli archive`: the archive stage in this process, and how the stage is shown in other commands."""

from __future__ import annotations

import json
import socket
from dataclasses import asdict
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from podcastpile.cli import app
from podcastpile.cli.display import say
from podcastpile.cli.episodes import console, fail, open_store, settings
from podcastpile.store import EpisodeStore
from podcastpile.store.archive import ArchiveStats, archive_queue_for
from podcastpile.store.episodes import utcnow
from podcastpile.urls import mask_secrets

if TYPE_CHECKING:
    from podcastpile.store.rows import Episode


def archive_state(row: Episode, now: datetime | None = None) -> str:
    """One line on where an episode is in the archive stage, from its stored state (passwords hidden).

    Capture URLs embed the episode URL (`.../web/<ts>id_/<url>`), so they are masked like it.
    """
    return mask_secrets(_archive_state(row, now or utcnow()))


def _archive_state(row: Episode, now: datetime) -> str:
    if row.status == "archive_pending":
        if row.archive_not_before and row.archive_not_before > now:
            return f"waiting until {row.archive_not_before:%Y-%m-%d %H:%M:%S} UTC ({row.error_code or 'backoff'})"
        if row.leased_until and row.leased_until > now:
            return "looking up an existing capture"
        return "waiting for an archive run"
    if row.status == "archiving":
        waited = (now - row.archive_submitted_at).total_seconds() if row.archive_submitted_at else 0.0
        return f"submitted to Save Page Now (job {row.archive_job_id}), pending {waited:.0f} s"
    if row.archive_url:
        how = "reused an existing capture" if row.archive_reused else "archived"
        return f"{how}: {row.archive_url}"
    if row.archive_error:
        return f"no archived copy ({row.archive_error}); the original URL is used"
    if row.status == "failed":
        return f"failed: {row.error_code}: {row.error}"
    return "not archived (ARCHIVE_MODE=off)"


@app.command()
def archive(
    limit: Annotated[int | None, typer.Option(min=1, help="At most this many episodes (default ARCHIVE_BATCH_SIZE).")] = None,
    max_minutes: Annotated[float, typer.Option(min=0.1, help="Stop after this long; unfinished jobs are resumed by the next run.")] = 10.0,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Archive waiting episodes in the Internet Archive now, in this process (no Prefect needed)."""
    # Here, not at the top: the stage loads httpx, which `ppcli stats` (using this module) does without.
    from podcastpile.archive.stage import ArchiveLimits, ArchiveStage, describe_event
    from podcastpile.archive.wayback import ServiceRefused, WaybackClient

    config = settings()
    if not config.archives:
        fail("ARCHIVE_MODE=off: there is nothing to archive")
    store = open_store()
    queue = archive_queue_for(store, config)
    claims = queue.claim(f"{socket.gethostname()}/ppcli-archive", limit or config.archive_batch_size)
    if not claims and not json_output:
        console.print("no episodes waiting for a capture (or all are deferred or held by another run)")

    def show(episode_id: int, event: str, detail: str) -> None:
        if not json_output and event != "pending":
            say(f"episode {episode_id}: {mask_secrets(describe_event(event, detail))}")

    with WaybackClient.from_settings(config) as client:
        try:
            summary = ArchiveStage(queue, client, ArchiveLimits.from_settings(config), on_event=show).run(
                claims, max_seconds=max_minutes * 60
            )
        except ServiceRefused as error:
            fail(str(error))
    if json_output:
        print(json.dumps({"claimed": len(claims), "submitted": summary.submitted, **summary.counts}))
    elif claims:
        say(f"{len(claims)} episodes: " + ", ".join(f"{k} {v}" for k, v in sorted(summary.counts.items())))


def archive_stats_dict(stats: ArchiveStats) -> dict[str, Any]:
    """The archive stage's counts as JSON-able values."""
    data = asdict(stats)
    data["deferred_until"] = stats.deferred_until.isoformat() if stats.deferred_until else None
    data["pauses"] = {reason: until.isoformat() for reason, until in stats.pauses.items()}
    return data


def archive_stats(store: EpisodeStore) -> dict[str, Any]:
    """The archive stage's counts for `ppcli stats`."""
    config = settings()
    return archive_stats_dict(archive_queue_for(store, config).stats(config.spn_daily_bytes))


def archive_table(stats: dict[str, Any]) -> Table:
    """The archive stage as a table: waiting, submitted, archived, deferred, today's quota."""
    table = Table("archive stage", "episodes", title="Internet Archive")
    table.add_row("waiting for a capture", f"{stats['waiting']:,}")
    table.add_row("submitted (polling)", f"{stats['submitted']:,}")
    table.add_row("archived: new captures", f"{stats['archived_new']:,}")
    table.add_row("archived: reused captures", f"{stats['archived_reused']:,}")
    for code, count in stats["deferred"].items():
        until = f" (first due {stats['deferred_until'][:16].replace('T', ' ')} UTC)" if stats["deferred_until"] else ""
        table.add_row(f"deferred: {code}{until}", f"{count:,}")
    used, quota = stats["bytes_today"], stats["daily_bytes"]
    table.add_row("captured today (UTC)", f"{stats['captures_today']:,} captures, {used / 1e9:.2f} of {quota / 1e9:.2f} GB")
    for reason, until in stats["pauses"].items():
        table.add_row(f"submissions paused: {reason}", f"until {until[:19].replace('T', ' ')} UTC")
    return table
