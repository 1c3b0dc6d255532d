"""How `ppcli` shows the store to people: its tables and lines, and their JSON for scripts.

Outside text (URLs, error reasons, transcripts) goes through `display.literal` with passwords
hidden (`mask_secrets`, `display_url`); `--json` output keeps URLs and reasons as stored, so a
script can still fetch what it lists. Nothing here loads the ORM, httpx or Prefect at import:
`ppcli stats` uses this module and must answer at once.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from rich.table import Table
from rich.text import Text

from podcastpile.cli.display import console, literal
from podcastpile.jsonviews import (  # noqa: F401  (re-exported: the commands import them from here)
    EPISODE_FIELDS,
    archive_stats,
    archive_stats_dict,
    episode_dict,
    stats_dict,
)
from podcastpile.net.urls import display_url, mask_secrets
from podcastpile.runs import HeldByRuns, RefusedRuns
from podcastpile.store import EpisodeStatus, EpisodeStore, Stats, utcnow
from podcastpile.store.archive import PAUSE_TEXT, pause_text
from podcastpile.store.archive_limits import HOST_SCOPE, LOOKUP_SCOPE
from podcastpile.store.tables import ARCHIVE_WAITING

if TYPE_CHECKING:
    from podcastpile.store.rows import Episode

_WAITING_FOR_CAPTURE = {status.value for status in ARCHIVE_WAITING}

def archive_state(row: Episode, now: datetime | None = None) -> str:
    """One line on where an episode is in the archive stage, from its stored state (passwords hidden).

    Capture URLs embed the episode URL (`.../web/<ts>id_/<url>`), so they are masked like it.
    """
    return mask_secrets(_archive_state(row, now or utcnow()))


def _archive_state(row: Episode, now: datetime) -> str:
    if row.status == "archive_pending":
        if row.archive_not_before and row.archive_not_before > now:
            why = row.error_code or "backoff"
            if _explained(why):  # keys, a paused host: the code alone would not say what to do
                why = f"{why}: {pause_text(why)}"
            return f"waiting until {row.archive_not_before:%Y-%m-%d %H:%M:%S} UTC ({why})"
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


def _explained(code: str) -> bool:
    """Whether `pause_text` has its own words for this pause or deferral code."""
    return code in PAUSE_TEXT or code.startswith(HOST_SCOPE)


def waiting_reason(code: str | None, error: str | None) -> str:
    """One line on why an episode waits for its capture: the pause's own words for a known
    pause or deferral (keys, a paused host, a per-URL or account cap, a lookup slot, replay
    lag), else the reason stored with the code (a back-off after a failed try, a quota)."""
    if code and _explained(code):
        return pause_text(code)
    if error:
        return error if not code or code in error else f"{code}: {error}"
    return code or "backing off after a failed try"


def deferral(row: Episode, now: datetime | None = None) -> tuple[str, datetime] | None:
    """(code, next try) of an episode whose capture waits for a time still ahead, else None."""
    if row.status not in _WAITING_FOR_CAPTURE or not row.archive_not_before:
        return None
    if row.archive_not_before <= (now or utcnow()):
        return None
    return row.error_code or "backoff", row.archive_not_before


def deferred_line(row: Episode) -> str:
    """`episode N: deferred: <why> (next try <when> UTC)`, passwords hidden; for a deferred episode."""
    when = f" (next try {row.archive_not_before:%Y-%m-%d %H:%M} UTC)" if row.archive_not_before else ""
    return mask_secrets(f"episode {row.id}: deferred: {waiting_reason(row.error_code, row.error)}{when}")


def archive_table(stats: dict[str, Any]) -> Table:
    """The archive stage as a table: waiting, submitted, archived, deferred, today's quota."""
    table = Table("archive stage", "episodes", title="Internet Archive")
    table.add_row("waiting for a capture", f"{stats['waiting']:,}")
    table.add_row("submitted (polling)", f"{stats['submitted']:,}")
    table.add_row("archived: new captures", f"{stats['archived_new']:,}")
    table.add_row("archived: reused captures", f"{stats['archived_reused']:,}")
    for code, count in stats["deferred"].items():
        until = f" (first due {stats['deferred_until'][:16].replace('T', ' ')} UTC)" if stats["deferred_until"] else ""
        why = f": {pause_text(code)}" if _explained(code) else ""
        table.add_row(literal(mask_secrets(f"deferred: {code}{until}{why}")), f"{count:,}")
    used, quota = stats["bytes_today"], stats["daily_bytes"]
    table.add_row("captured today (UTC)", f"{stats['captures_today']:,} captures, {used / 1e9:.2f} of {quota / 1e9:.2f} GB")
    for reason, until in stats["pauses"].items():
        table.add_row(literal(mask_secrets(pause_line(reason))), f"until {until[:19].replace('T', ' ')} UTC")
    return table


def pause_line(reason: str) -> str:
    """One line on a pause in the store, by its scope: one host's submissions, lookups, or all
    submissions (refused keys, a 429, a quota, trouble on IA's side)."""
    if reason.startswith(HOST_SCOPE):
        return f"Save Page Now paused crawling {reason.removeprefix(HOST_SCOPE)}"
    if reason.startswith(LOOKUP_SCOPE):
        return PAUSE_TEXT.get(reason, f"Wayback lookups paused: {reason}")  # the text says "lookups paused"
    why = f": {PAUSE_TEXT[reason]}" if reason in PAUSE_TEXT else ""
    return f"submissions paused: {reason}{why}"


def print_stats(result: Stats, archive: dict[str, Any], held: HeldByRuns, refused: RefusedRuns) -> None:
    """`ppcli stats` for people: episodes by status, the archive stage, leases, failures."""
    table = Table("status", "episodes", title="Episodes")
    for name, count in result.by_status.items():
        table.add_row(literal(name), f"{count:,}")
    table.add_row("[b]total[/b]", f"[b]{result.total:,}[/b]")
    console.print(table)
    console.print(archive_table(archive))
    console.print(f"leases past their deadline: {result.expired_leases:,}")
    console.print(f"held by dead runs: {held.describe()}")
    if refused.count is not None:  # without a Prefect server there are no workers to refuse
        style = "red" if refused.count else ""
        console.print(literal(f"flow runs refused by workers: {mask_secrets(refused.describe())}", style), soft_wrap=True)
    console.print(f"audio done: {result.audio_hours_done:,.2f} hours")
    if result.failures_by_reason:
        failures = Table("reason", "episodes", title="Failures")
        for reason, count in result.failures_by_reason.items():
            failures.add_row(literal(mask_secrets(reason)), f"{count:,}")
        console.print(failures)


def episode_table(rows: list[Any]) -> Table:
    """`ppcli list` for people: only the columns that say something for these rows, so the
    table fits a terminal; URLs and error reasons with their passwords hidden."""
    columns = {"id": "id", "status": "status", "language": "lang", "attempts": "tries"}
    if any(row.worker_id for row in rows):
        columns["worker_id"] = "worker"
    columns["url"] = "url"
    if any(row.error for row in rows):
        columns["error"] = "error"
    table = Table()
    for key, title in columns.items():
        table.add_column(title, overflow="fold", no_wrap=key in ("id", "status"))
    for row in rows:
        table.add_row(*(literal(_shown(row, key)) for key in columns))
    return table


def _shown(row: Any, key: str) -> str:
    """A column of `ppcli list`'s table: URLs and error reasons with passwords hidden."""
    value = getattr(row, key)
    if value is None:
        return ""
    return mask_secrets(value) if key in ("url", "error") else str(value)


def print_results(store: EpisodeStore, rows: list[Episode]) -> None:
    """`ppcli process`'s summary: each episode's outcome and, when completed, its speaker turns."""
    for row in rows:
        if row.status in _WAITING_FOR_CAPTURE:  # only deferred episodes are left waiting at the end
            console.print(literal(deferred_line(row), "yellow"), soft_wrap=True)
            continue
        if row.status != EpisodeStatus.completed:
            console.print(Text.assemble((f"episode {row.id} {row.status}", "red"), ": ",
                                        literal(mask_secrets(f"{row.error}  {row.url}"))), soft_wrap=True)
            continue
        result = store.result(row.id) or {}
        console.print(Text.assemble((f"episode {row.id}", "green"), " ", literal(display_url(row.url))), soft_wrap=True)
        console.print(
            f"  {result.get('duration', 0):.1f} s of audio, {result.get('num_speakers', 0)} speakers, "
            f"{sum(len(t['words']) for t in result.get('turns', []))} words, "
            f"real-time factor {result.get('rtf', 0):.3f}",
        )
        table = Table("speaker", "start", "end", "text", show_header=True)
        for turn in result.get("turns", [])[:50]:
            table.add_row(literal(turn["speaker"]), f"{turn['start']:.2f}", f"{turn['end']:.2f}", literal(turn["text"]))
        console.print(table)
