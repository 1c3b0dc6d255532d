"""`ppcli retry | invalidate`: send many episodes back to the queue at once.

Both are dry runs unless `--yes`: an operator sees how many episodes a filter catches, and a few
of them, before anything changes. Applying is one UPDATE in one transaction (see
`podcastpile.store.operations`), so the count printed is exactly what changed. With `-m URL` (or
MANAGER_URL) both go through the manager's API (`POST /api/jobs/retry | invalidate`) and print the same.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.table import Table

from podcastpile.cli.application import app
from podcastpile.cli.common import JsonOption, fail, open_store, settings
from podcastpile.cli.display import console, literal, say
from podcastpile.cli.remote import CaOption, ManagerOption, PasswordOption, answering, manager_client
from podcastpile.jsonviews import operation_dict
from podcastpile.store import EpisodeStore, Selection, invalidate_selection, retry_selection
from podcastpile.store.operations import RETRYABLE

SAMPLE = 10
YesOption = Annotated[bool, typer.Option("--yes", help="Apply; without it, only show what would change.")]


def parse_when(value: str | None, option: str) -> datetime | None:
    """An ISO date or date-time as the store keeps times (naive UTC); a bad one ends the command.

    A time without a zone is taken as UTC, as the store records it; one with a zone is converted.
    """
    if value is None:
        return None
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        fail(f"{option}: not an ISO date or date-time: {value!r} (e.g. 2026-01-31 or 2026-01-31T12:00)")
    if when.tzinfo is not None:
        when = when.astimezone(UTC).replace(tzinfo=None)
    return when


def act(store: EpisodeStore, selection: Selection, *, yes: bool, json_output: bool, what: str) -> None:
    """Apply `selection` with `--yes`, else show its count and a sample; print for people or scripts."""
    show(operation_dict(store, selection, apply=yes, sample=SAMPLE), json_output=json_output, what=what)


def show(answer: dict[str, Any], *, json_output: bool, what: str) -> None:
    """Print `operation_dict`'s answer (from the store or the manager's API) for people or scripts."""
    if json_output:
        print(json.dumps(answer))
        return
    if not answer["dry_run"]:
        say(f"sent {answer['changed']:,} {what} episode(s) back to the queue")
        return
    count, sample = answer["matching"], answer["sample"]
    say(f"{count:,} {what} episode(s) would go back to the queue (dry run: add --yes to apply)")
    if not sample:
        return
    table = Table("id", "status", "error_code", "url", "goes to")
    for row in sample:
        table.add_row(
            literal(row["id"]), literal(row["status"]), literal(row["error_code"] or ""),
            literal(row["url"]), literal(row["to"]),
        )
    console.print(table)
    if count > len(sample):
        console.print(f"… and {count - len(sample):,} more")


@app.command()
def retry(
    status: Annotated[
        str, typer.Option(help=f"Which end state: {', '.join(s.value for s in RETRYABLE)}.")
    ] = "failed",
    reason: Annotated[
        str | None, typer.Option(help="Only this error code, exactly (e.g. http-404, lease-expired).")
    ] = None,
    since: Annotated[
        str | None, typer.Option(help="Only episodes changed at or after this ISO date/time (UTC).")
    ] = None,
    yes: YesOption = False,
    json_output: JsonOption = False,
    manager: ManagerOption = None,
    password: PasswordOption = None,
    ca: CaOption = None,
) -> None:
    """Put failed (or duplicate) episodes back in the queue, attempts reset; a dry run unless --yes."""
    # Back in the queue is `pending`, or `archive_pending` for an episode without an Internet
    # Archive copy while archiving is on (decided per episode, see store.operations).
    when = parse_when(since, "--since")
    try:
        selection = retry_selection(status=status, reason=reason, since=when)
    except ValueError as error:  # an unknown or non-retryable status
        fail(str(error).splitlines()[0])
    config = settings()
    client = manager_client(config, manager, password, ca)
    if client is None:
        act(open_store(config), selection, yes=yes, json_output=json_output, what=status)
        return
    with answering(client):
        answer = client.retry(status=status, reason=reason, since=_iso(when), apply=yes, sample=SAMPLE)
    show(answer, json_output=json_output, what=status)


@app.command()
def invalidate(
    code_version: Annotated[
        str | None, typer.Option(help="Results made by this code version (git describe).")
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="Results made with this model id or weights fingerprint.")
    ] = None,
    completed_after: Annotated[
        str | None, typer.Option(help="Results completed at or after this ISO date/time (UTC).")
    ] = None,
    yes: YesOption = False,
    json_output: JsonOption = False,
    manager: ManagerOption = None,
    password: PasswordOption = None,
    ca: CaOption = None,
) -> None:
    """Send completed episodes back for reprocessing (all criteria must match); a dry run unless --yes."""
    # The old result, and its row in an exported dataset, stay until the new result replaces them.
    when = parse_when(completed_after, "--completed-after")
    try:
        selection = invalidate_selection(code_version=code_version, model=model, completed_after=when)
    except ValueError:
        fail("say which results to invalidate: --code-version, --model or --completed-after")
    config = settings()
    client = manager_client(config, manager, password, ca)
    if client is None:
        act(open_store(config), selection, yes=yes, json_output=json_output, what="completed")
        return
    with answering(client):
        answer = client.invalidate(code_version=code_version, model=model, completed_after=_iso(when),
                                   apply=yes, sample=SAMPLE)
    show(answer, json_output=json_output, what="completed")


def _iso(when: datetime | None) -> str | None:
    """A naive UTC time as the API takes it (without a zone: UTC, as the store keeps it)."""
    return when.isoformat() if when is not None else None
