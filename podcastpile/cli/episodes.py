"""`ppcli create | import | list | stats`: put episodes in the store and look at it.

With `-m URL` (or MANAGER_URL) each goes through the manager's HTTP API instead of the database
(`podcastpile.cli.remote`) and prints the same.

URLs are stored as given, passwords included (they may be what opens the file). What these
commands print for people shows them through `display_url` (`user:***@`); `--json` output is
for scripts and keeps URLs and reasons as stored, so a script can still fetch what it lists.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Annotated

import typer

from podcastpile.cli.application import app
from podcastpile.cli.common import JsonOption, fail, open_store, settings
from podcastpile.cli.display import console, errors, literal, say, tell
from podcastpile.cli.remote import CaOption, ManagerOption, PasswordOption, answering, manager_client
from podcastpile.cli.remote_views import add_in_batches, episode_rows, stats_parts
from podcastpile.cli.views import archive_stats, episode_dict, episode_table, print_stats, stats_dict
from podcastpile.jsonviews import LIST_STATUSES
from podcastpile.net.urls import display_url, mask_secrets
from podcastpile.prefect_api import find_prefect_api
from podcastpile.runs import held_by_runs, refused_runs
from podcastpile.store import NewEpisode, Rejected, normalize_language


def private_address(url: str) -> str | None:
    """Why downloads will refuse `url` when its host is a literal non-public address, else None."""
    from podcastpile.net.guard import private_address as why  # loads httpx: not for `stats`

    return why(url)


@app.command()
def create(
    url: Annotated[str, typer.Argument(help="Episode audio URL.")],
    language: Annotated[str | None, typer.Option(help="Language code, e.g. en.")] = None,
    podcast_id: Annotated[str | None, typer.Option(help="Id of the podcast it belongs to.")] = None,
    manager: ManagerOption = None,
    password: PasswordOption = None,
    ca: CaOption = None,
) -> None:
    """Add one episode (nothing happens if it is already there)."""
    try:
        new = NewEpisode.checked(url, language=language, podcast_id=podcast_id)
    except ValueError as error:  # InvalidURL is one
        fail(str(error))
    config = settings()
    client = manager_client(config, manager, password, ca)
    if client is not None:
        with answering(client):
            answer = client.add({"episode_url": new.url, "language": new.language, "podcast_id": new.podcast_id})
        job = answer.get("job")
        if job is None:  # checked here as the manager checks it: only a manager of another version differs
            fail("; ".join(item["reason"] for item in answer["rejected"])
                 or f"the manager at {client.where} did not say which episode it is (an older version?)")
        verb = "added" if answer["added"] else "already present:"
        say(f"{verb} episode {job['id']} ({job['status']}) {display_url(job['url'])}")
        # The manager's ALLOW_PRIVATE_ADDRESSES decides, as its workers download.
        for item in answer["private_addresses"]:
            _warn_private(item["reason"])
        return
    store = open_store(config)
    summary = store.add([new])
    episode = store.find(new)
    assert episode is not None  # just added or already present
    verb = "added" if summary.added else "already present:"
    say(f"{verb} episode {episode.id} ({episode.status}) {display_url(episode.url)}")
    blocked = None if config.allow_private_addresses else private_address(episode.url)
    if blocked:
        _warn_private(blocked)


def _warn_private(blocked: str) -> None:
    """The warning for an episode whose host is a literal non-public address."""
    tell("warning", f"{blocked}: downloads will refuse this episode (blocked-address) "
         "unless ALLOW_PRIVATE_ADDRESSES=true", style="yellow")


@app.command("import")
def import_(
    source: Annotated[
        str, typer.Argument(help="JSONL/CSV/text file, or an RSS/Atom feed (file or URL).")
    ],
    json_output: JsonOption = False,
    manager: ManagerOption = None,
    password: PasswordOption = None,
    ca: CaOption = None,
) -> None:
    """Add many episodes from a file or feed; reports added / already present / rejected."""
    # Here, not at the top: they load httpx, which the quick commands (`stats`) do without.
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from podcastpile.net.guard import AddressGuard, allow_any, is_public
    from podcastpile.sources import Entry, SourceError, read_source

    config = settings()
    client = manager_client(config, manager, password, ca)
    check_addresses = not config.allow_private_addresses
    guard = AddressGuard(allow=is_public if check_addresses else allow_any)  # a feed is read here, either way
    # Through a manager its ALLOW_PRIVATE_ADDRESSES decides (its workers download), and it says which.
    check_addresses = check_addresses and client is None
    try:
        total, entries = read_source(source, guard=guard)
    except SourceError as error:
        fail(str(error))
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
    if client is None:
        store = open_store(config)
        with progress:
            task = progress.add_task("import", total=total)
            summary = store.add(episodes(entries), on_progress=lambda n: progress.advance(task, n))
    else:
        with answering(client), progress:
            task = progress.add_task("import", total=total)
            summary = add_in_batches(client, episodes(entries), private, lambda n: progress.advance(task, n))
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
    manager: ManagerOption = None,
    password: PasswordOption = None,
    ca: CaOption = None,
) -> None:
    """List episodes, oldest first."""
    if status is not None and status not in LIST_STATUSES:
        fail(f"unknown status {status!r}; choose from {', '.join(LIST_STATUSES)}")
    try:
        normalize_language(language)
    except ValueError as error:
        fail(str(error))
    config = settings()
    client = manager_client(config, manager, password, ca)
    if client is None:
        rows = open_store(config).list(status=status, language=language, limit=limit)
    else:
        with answering(client):
            rows = episode_rows(client.jobs(status=status, language=language, limit=limit))
    if json_output:
        print(json.dumps([episode_dict(row) for row in rows], default=str))
        return
    console.print(episode_table(rows))
    if not rows:
        console.print("no episodes" + (f" with status {status}" if status else ""))


@app.command()
def stats(
    json_output: JsonOption = False,
    manager: ManagerOption = None,
    password: PasswordOption = None,
    ca: CaOption = None,
) -> None:
    """Counts by status, the archive stage, hours of audio done, failures by reason."""
    config = settings()
    client = manager_client(config, manager, password, ca)
    if client is not None:
        with answering(client):
            data = client.stats()  # the manager asks its own Prefect API about the runs
        if json_output:
            print(json.dumps(data))
            return
        print_stats(*stats_parts(data))
        return
    store = open_store(config)
    try:
        result = store.stats()
        archive = archive_stats(store, config)
        leased = store.leased_by_run()
    finally:
        store.close()  # closed here: the command ends without the interpreter's teardown
    # Asks the Prefect API (the one every command talks to) only if something is leased.
    api = find_prefect_api(config)
    held = held_by_runs(leased, api)
    refused = refused_runs(api)
    if json_output:
        print(json.dumps(stats_dict(result, archive, held, refused)))
        return
    print_stats(result, archive, held, refused)
