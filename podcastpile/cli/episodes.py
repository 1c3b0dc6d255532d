"""`ppcli create | import | list | stats`: put episodes in the store and look at it.

URLs are stored as given, passwords included (they may be what opens the file). What these
commands print for people shows them through `display_url` (`user:***@`); `--json` output is
for scripts and keeps URLs and reasons as stored, so a script can still fetch what it lists.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Annotated, Any, NoReturn
from urllib.parse import urlsplit

import typer
from rich.table import Table

from podcastpile.cli import app
from podcastpile.cli.display import console, errors, literal, say, tell
from podcastpile.config import Settings, SettingsError, load_settings
from podcastpile.store import (
    EpisodeStatus,
    EpisodeStore,
    NewEpisode,
    Rejected,
    StoreUnavailable,
    normalize_language,
)
from podcastpile.urls import InvalidURL, display_url, mask_secrets, normalize_url

LIST_STATUSES = [status.value for status in EpisodeStatus] + ["expired"]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


EXIT_MODEL_LOAD = 3  # a model could not be loaded: fix the settings (or the network), not the input


def fail(message: str, code: int = 1) -> NoReturn:
    """Print one clear line on stderr (outside text in it shown literally, passwords hidden) and exit non-zero."""
    tell("error", mask_secrets(message), style="red")
    raise typer.Exit(code)


def private_address(url: str) -> str | None:
    """Why downloads will refuse `url` when its host is a literal non-public address, else None.

    Literal only (an IP in any form a resolver reads, or localhost): no DNS at queueing time.
    """
    from podcastpile.netguard import address_kind, literal_address  # loads httpx: not for `stats`

    try:
        host = urlsplit(url.strip()).hostname or ""
    except ValueError:
        return None
    address = literal_address(host)
    kind = address_kind(address) if address is not None else None
    if not kind:
        return None
    named = f"{host} is {address}," if host != str(address) else f"{host} is"
    return f"{named} a {kind} address"


def settings() -> Settings:
    try:
        return load_settings()
    except SettingsError as error:
        fail(str(error), code=2)


def open_store() -> EpisodeStore:
    """The store named by the settings, migrated; setting or database errors end the command."""
    config = settings()
    try:
        return EpisodeStore.open(config)
    except StoreUnavailable as error:
        fail(str(error), code=2)


@app.command()
def create(
    url: Annotated[str, typer.Argument(help="Episode audio URL.")],
    language: Annotated[str | None, typer.Option(help="Language code, e.g. en.")] = None,
    podcast_id: Annotated[str | None, typer.Option(help="Id of the podcast it belongs to.")] = None,
) -> None:
    """Add one episode (nothing happens if it is already there)."""
    try:
        normalize_url(url)
        normalize_language(language)
    except (InvalidURL, ValueError) as error:
        fail(str(error))
    config = settings()
    store = open_store()
    summary = store.add([NewEpisode(url, language=language, podcast_id=podcast_id)])
    if summary.rejected:
        fail(summary.rejected[0].reason)
    episode = store.find(url)
    assert episode is not None  # just added or already present
    verb = "added" if summary.added else "already present:"
    say(f"{verb} episode {episode.id} ({episode.status}) {display_url(episode.url)}")
    blocked = None if config.allow_private_addresses else private_address(episode.url)
    if blocked:
        tell("warning", f"{blocked}: downloads will refuse this episode (blocked-address) "
             "unless ALLOW_PRIVATE_ADDRESSES=true", style="yellow")


@app.command("import")
def import_(
    source: Annotated[
        str, typer.Argument(help="JSONL/CSV/text file, or an RSS/Atom feed (file or URL).")
    ],
    json_output: JsonOption = False,
) -> None:
    """Add many episodes from a file or feed; reports added / already present / rejected."""
    # Here, not at the top: they load httpx, which the quick commands (`stats`) do without.
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from podcastpile.netguard import AddressGuard, allow_any, is_public
    from podcastpile.sources import Entry, SourceError, read_source

    check_addresses = not settings().allow_private_addresses
    guard = AddressGuard(allow=is_public if check_addresses else allow_any)
    try:
        total, entries = read_source(source, guard=guard)
    except SourceError as error:
        fail(str(error))
    store = open_store()
    rejected: list[Rejected] = []
    private: list[Rejected] = []  # stored, but downloads will refuse them

    def episodes(items: Iterator[Entry]) -> Iterator[NewEpisode]:
        for item in items:
            if isinstance(item, Rejected):
                rejected.append(item)
                progress.advance(task)
                continue
            blocked = private_address(item.url) if check_addresses else None
            if blocked:
                private.append(Rejected(item.line, item.url, blocked))
            yield item

    progress = Progress(
        TextColumn("importing"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=errors, disable=json_output or not errors.is_terminal, transient=True,
    )
    with progress:
        task = progress.add_task("import", total=total)
        summary = store.add(
            episodes(entries), on_progress=lambda n: progress.advance(task, n)
        )
    summary.rejected[:0] = rejected
    summary.rejected.sort(key=lambda item: item.line or 0)
    if json_output:
        print(json.dumps({
            "added": summary.added,
            "present": summary.present,
            "rejected": [vars(item) for item in summary.rejected],
            "private_addresses": [vars(item) for item in private],
        }))
        return
    say(f"added {summary.added}, already present {summary.present}, rejected {len(summary.rejected)}")
    _print_lines(summary.rejected)
    if private:
        tell("warning", f"{len(private)} URL(s) name a private or loopback address: downloads will "
             "refuse them (blocked-address) unless ALLOW_PRIVATE_ADDRESSES=true", style="yellow")
        _print_lines(private, stderr=True)


def _print_lines(items: list[Rejected], stderr: bool = False) -> None:
    """The first 20 items as `line N: reason`, literally."""
    out = errors if stderr else console
    for item in items[:20]:
        where = f"line {item.line}" if item.line is not None else "input"
        out.print(literal(f"  {where}: {mask_secrets(item.reason)}"), soft_wrap=True)
    if len(items) > 20:
        out.print(f"  … and {len(items) - 20} more (use --json for all)")


@app.command("list")
def list_(
    status: Annotated[
        str | None, typer.Option(help=f"Only this status: {', '.join(LIST_STATUSES)}.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many episodes.")] = 50,
    language: Annotated[str | None, typer.Option(help="Only this language.")] = None,
    json_output: JsonOption = False,
) -> None:
    """List episodes, oldest first."""
    if status is not None and status not in LIST_STATUSES:
        fail(f"unknown status {status!r}; choose from {', '.join(LIST_STATUSES)}")
    try:
        normalize_language(language)
    except ValueError as error:
        fail(str(error))
    rows = open_store().list(status=status, language=language, limit=limit)
    if json_output:
        print(json.dumps([_episode_dict(row) for row in rows], default=str))
        return
    # Only columns that say something for these rows, so the table fits a terminal.
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
    console.print(table)
    if not rows:
        console.print("no episodes" + (f" with status {status}" if status else ""))


@app.command()
def stats(json_output: JsonOption = False) -> None:
    """Counts by status, the archive stage, hours of audio done, failures by reason."""
    from podcastpile.cli.archive import archive_stats, archive_table
    from podcastpile.runs import held_by_runs

    store = open_store()
    try:
        result = store.stats()
        archive = archive_stats(store)
        leased = store.leased_by_run()
    finally:
        store.close()  # closed here: the command ends without the interpreter's teardown
    held = held_by_runs(leased)  # asks the Prefect API only if something is leased
    if json_output:
        print(json.dumps({
            "total": result.total,
            "by_status": result.by_status,
            "expired_leases": result.expired_leases,
            "held_by_dead_runs": held.dead,  # null when unknown, with the reason below
            "held_by_runs_unknown_to_prefect": held.unknown_runs,
            "held_by_runs_unknown_reason": held.reason,
            "audio_hours_done": round(result.audio_hours_done, 3),
            "failures_by_reason": result.failures_by_reason,
            "archive": archive,
        }))
        return
    table = Table("status", "episodes", title="Episodes")
    for name, count in result.by_status.items():
        table.add_row(literal(name), f"{count:,}")
    table.add_row("[b]total[/b]", f"[b]{result.total:,}[/b]")
    console.print(table)
    console.print(archive_table(archive))
    console.print(f"leases past their deadline: {result.expired_leases:,}")
    console.print(f"held by dead runs: {held.describe()}")
    console.print(f"audio done: {result.audio_hours_done:,.2f} hours")
    if result.failures_by_reason:
        failures = Table("reason", "episodes", title="Failures")
        for reason, count in result.failures_by_reason.items():
            failures.add_row(literal(mask_secrets(reason)), f"{count:,}")
        console.print(failures)


def _shown(row: Any, key: str) -> str:
    """A column of `ppcli list`'s table: URLs and error reasons with passwords hidden."""
    value = getattr(row, key)
    if value is None:
        return ""
    return mask_secrets(value) if key in ("url", "error") else str(value)


def _episode_dict(row: Any) -> dict[str, Any]:
    keys = [
        "id", "url", "podcast_id", "language", "status", "attempts", "worker_id", "leased_until",
        "archive_url", "archive_timestamp", "archive_reused", "archive_error", "duration_seconds",
        "audio_sha256", "duplicate_of", "error_code",
        "error", "created_at", "updated_at", "completed_at",
    ]
    return {key: getattr(row, key) for key in keys}
