"""`ppcli process URL...`: run the pipeline's own Prefect flows on this machine, no worker needed.

By default it follows the archive rule: the URLs are captured by the Internet Archive first
(or an existing capture is reused), then only the archived copies are downloaded and
processed. `--live` downloads the original URLs instead.

Embedded defaults: the episode store from DATABASE_URL (SQLite by default) and, unless
PREFECT_API_URL names a server, Prefect's temporary local server. Prefect is imported only when
this command runs, so the rest of `ppcli` stays light.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Annotated

import typer

from podcastpile.cli.application import app
from podcastpile.cli.common import EXIT_MODEL_LOAD, JsonOption, fail, open_store, settings
from podcastpile.cli.display import errors, literal, say
from podcastpile.cli.stopping import EXIT_INTERRUPTED, graceful_signals
from podcastpile.cli.views import archive_state, deferral, print_results
from podcastpile.store import EpisodeStatus, EpisodeStore, NewEpisode, utcnow
from podcastpile.store.tables import ARCHIVE_WAITING

if TYPE_CHECKING:
    from podcastpile.store.rows import Episode

DONE = {EpisodeStatus.completed.value, EpisodeStatus.failed.value, EpisodeStatus.duplicate.value}
SUCCEEDED = {EpisodeStatus.completed.value, EpisodeStatus.duplicate.value}
WAITING = {status.value for status in ARCHIVE_WAITING}
# sysexits.h's EX_TEMPFAIL: nothing failed, but some episodes wait for a pause or a quota (a
# paused host, a per-URL or account cap, missing keys): run the same command again later.
EXIT_DEFERRED = 75
# One archive flow run's time budget here: it returns this often, so an episode whose capture
# became ready is processed then, not after every other episode's capture.
ARCHIVE_STEP_SECONDS = 60.0


@app.command()
def process(
    urls: Annotated[list[str], typer.Argument(help="Episode audio URLs.")],
    language: Annotated[str | None, typer.Option(help="Language of these episodes, e.g. en.")] = None,
    live: Annotated[
        bool,
        typer.Option(help="Download the original URLs, not Internet Archive copies (ARCHIVE_MODE=off)."),
    ] = False,
    out: Annotated[str | None, typer.Option(help="Also export the results as Parquet to this folder.")] = None,
    json_output: JsonOption = False,
    grace: Annotated[float, typer.Option(min=0, help="Seconds one SIGTERM/Ctrl+C gives the current step before exiting anyway.")] = 60.0,
    max_wait: Annotated[float, typer.Option(
        "--max-wait", min=0, metavar="MINUTES",
        help="Wait at most this long in all for episodes whose capture is deferred (a paused host, "
             "a quota, missing keys); then stop and list them (exit 75).",
    )] = 15.0,
) -> None:
    """Archive, download, diarize and transcribe episodes now, through the Prefect flows the workers run."""
    from podcastpile.net.fetch import remove_orphaned_downloads  # loads httpx: only for this command

    remove_orphaned_downloads()  # temp audio of killed runs on this machine: nothing else removes it
    if live:
        os.environ["ARCHIVE_MODE"] = "off"  # the flows read their settings from the environment
    config = settings()
    # Validate everything before writing anything: a command that refuses adds nothing.
    try:
        episodes = [NewEpisode.checked(url, language=language) for url in urls]
    except ValueError as error:  # InvalidURL is one
        fail(str(error))
    _load_models(config, language)
    store = open_store(config)
    store.add(episodes)
    ids = sorted({found.id for found in map(store.find, episodes) if found is not None})
    if live:
        store.skip_archive(ids)
    try:
        with graceful_signals(grace):
            _run_flows(store, ids, quiet=json_output, max_wait=timedelta(minutes=max_wait))
    except KeyboardInterrupt:
        # The flows' `finally` blocks released what they had not finished.
        left = [i for i in ids if store.get(i).status not in DONE]
        errors.print(literal(f"stopped: {len(left)} episodes not finished were given back to the queue"))
        raise typer.Exit(EXIT_INTERRUPTED) from None
    rows = [store.get(episode_id) for episode_id in ids]
    if out:
        _export(out)
    if json_output:
        print(json.dumps([_episode_json(store, row) for row in rows]))
    else:
        for row in rows:
            if row.status not in WAITING:  # a deferred one gets its own line below
                say(f"episode {row.id} audio source: {archive_state(row)}")
        print_results(store, rows)
    code = exit_code(rows)
    if code:
        raise typer.Exit(code)


def exit_code(rows: list[Episode]) -> int:
    """0 when every episode completed (a duplicate counts), 1 when any failed, else 75 when
    some are deferred (still waiting for a capture when the command stopped)."""
    if all(row.status in SUCCEEDED for row in rows):
        return 0
    if any(row.status == EpisodeStatus.failed.value for row in rows):
        return 1
    return EXIT_DEFERRED if any(row.status in WAITING for row in rows) else 1


def _episode_json(store: EpisodeStore, row: Episode) -> dict[str, object]:
    """One episode in `--json` output; a deferred one has `deferred_until` and `deferred_reason`
    (the code: `host:<host>`, `ia-keys-missing`, `too-many-daily-captures`, ...)."""
    waiting = row.status in WAITING
    return {
        "id": row.id, "url": row.url, "status": row.status, "error": row.error,
        "archive_url": row.archive_url, "archive_timestamp": row.archive_timestamp,
        "archive": archive_state(row), "result": store.result(row.id),
        "deferred_until": row.archive_not_before.isoformat() if waiting and row.archive_not_before else None,
        "deferred_reason": (row.error_code or "backoff") if waiting else None,
    }


def _load_models(config: object, language: str | None) -> None:
    """Load the models before touching any episode: a missing model is one line, exit 3."""
    from podcastpile.speech.nemo_models import ModelLoadError
    from tasks.resources import models_for

    models = models_for(config)  # type: ignore[arg-type]  # the batch flow reuses these
    try:
        models.diarizer()
        models.asr(language)
    except ModelLoadError as error:
        fail(str(error), code=EXIT_MODEL_LOAD)


def _next_step(
    rows: dict[int, Episode], wait_left: timedelta, now: datetime | None = None,
) -> tuple[str, list[int]]:
    """What to do next for these episodes: process some, archive some, wait, or stop.

    Episodes ready for the GPU come first, so none waits behind other episodes' captures. An
    episode whose capture waits for a time further away than `wait_left` (what is left of
    --max-wait) is deferred: once only deferred (or finished) episodes remain, stop.
    """
    now = now or utcnow()
    ready = [i for i, row in rows.items() if row.status == EpisodeStatus.pending.value]
    if ready:
        return "process", ready
    held = {i for i, row in rows.items() if row.leased_until and row.leased_until > now}
    archivable = [
        i for i, row in rows.items() if row.status in WAITING and i not in held and deferral(row, now) is None
    ]
    if archivable:
        return "archive", archivable
    # Held by another process (its archive run or batch), or backing off briefly: wait.
    horizon = now + max(wait_left, timedelta(0))
    waiting = [
        i for i, row in rows.items() if row.status not in DONE
        and (i in held or not (row.archive_not_before and row.archive_not_before > horizon))
    ]
    return ("wait", waiting) if waiting else ("stop", [])


def _run_flows(store: EpisodeStore, ids: list[int], quiet: bool, max_wait: timedelta) -> None:
    """Run archive and batch flows over `ids` until each is done or deferred.

    `max_wait` is how long in all this may sit idle waiting for deferred captures; time spent
    archiving or processing does not count against it.
    """
    # Our own summary reports each episode; Prefect's per-task failure logs would repeat it.
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "CRITICAL")
    # Prefect's temporary server is ours to start and stop: its own start/stop chatter (a port
    # it retried, its shutdown) is not the user's business.
    os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "CRITICAL")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # Prefect's temporary server can take a while to start on a busy machine (20 s by default).
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    # The flows open the store this command opened, even where a server's store block names
    # another (flows fall back to that block only when DATABASE_URL is not set).
    os.environ["DATABASE_URL"] = str(store.engine.url.render_as_string(hide_password=False))
    _pin_temporary_server()
    from flows.archive import archive_flow  # Prefect and the flows load only for this command
    from flows.process import process_batch
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    progress = Progress(
        SpinnerColumn(), TextColumn("{task.fields[episode]}"), TextColumn("{task.description}", markup=False),
        TimeElapsedColumn(), console=errors, disable=quiet or not errors.is_terminal, transient=True,
    )
    lines = {i: progress.add_task("", episode=f"episode {i}") for i in ids[:20]}
    stop = threading.Event()

    def describe(row: Episode) -> str:
        if row.status in WAITING or (row.status == EpisodeStatus.pending.value and row.id not in started):
            return archive_state(row)
        return {"assigned": "claimed for processing", "processing": "processing"}.get(row.status, row.status)

    def watch() -> None:  # the flows run in this thread; the lines follow the store
        while not stop.wait(0.5):
            for i in lines:
                progress.update(lines[i], description=describe(store.get(i)))

    started: set[int] = set()
    announced: set[int] = set()
    waited = 0.0  # seconds spent idle, waiting for episodes (counted against max_wait)
    with progress, _archive_events_printed(ids, quiet):
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            while True:
                wait_left = max_wait - timedelta(seconds=waited)
                step, chosen = _next_step({i: store.get(i) for i in ids}, wait_left, store.clock())
                if step == "archive":
                    # A short run: it gives back what it has not finished (job ids kept), so
                    # an episode whose capture is ready meanwhile is processed next.
                    if not archive_flow(episode_ids=chosen, max_minutes=ARCHIVE_STEP_SECONDS / 60):
                        time.sleep(1.0)  # nothing claimed: taken by another process meanwhile
                elif step == "process":
                    started.update(chosen)
                    if not process_batch(batch_size=len(chosen), episode_ids=chosen)["claimed"]:
                        time.sleep(1.0)  # taken by another process meanwhile
                elif step == "wait":
                    for i in chosen:
                        row = store.get(i)
                        # One backing off briefly was announced by the archive stage's own line.
                        backing_off = row.status in WAITING and row.archive_not_before and row.archive_not_before > store.clock()
                        if i not in announced and not quiet and not backing_off:
                            holder = f" by {row.worker_id}" if row.worker_id and row.status in ("assigned", "processing") else ""
                            errors.print(literal(f"episode {i}: held{holder} ({row.status}); waiting for it"))
                            announced.add(i)
                    idle_since = time.monotonic()
                    time.sleep(1.0)
                    waited += time.monotonic() - idle_since
                else:
                    break
        finally:
            stop.set()
            watcher.join()


class _EpisodeEvents(logging.Handler):
    """Prints the archive stage's events about our episodes, one line each."""

    def __init__(self, ids: list[int]) -> None:
        super().__init__(logging.INFO)
        self.prefixes = tuple(f"episode {i}:" for i in ids)

    def emit(self, record: logging.LogRecord) -> None:
        line = record.getMessage()
        if line.startswith(self.prefixes):
            errors.print(literal(line), soft_wrap=True)


@contextmanager
def _archive_events_printed(ids: list[int], quiet: bool) -> Iterator[None]:
    if quiet:
        yield
        return
    logger = logging.getLogger("podcastpile.archive.stage")
    handler, level, propagate = _EpisodeEvents(ids), logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # printed once, here, not again by Prefect's console handler
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


def _export(out: str) -> None:
    """--out: the same export as `ppcli export --out OUT`."""
    from podcastpile.cli.export import export_command  # loads pyarrow: only when asked for

    export_command(out=out, json_output=False)


def _pin_temporary_server() -> None:
    """Give Prefect's temporary server (used when no PREFECT_API_URL is set) a port the OS chose.

    Prefect picks one at random in 8000-8999 after checking it is free: two `ppcli process` runs
    starting together can pick the same one, and then one talks to the other's server until
    that one exits ("connection refused" mid-run; seen under parallel tests). The OS hands out
    its ephemeral ports in turn, so two processes asking at once get different ones. Registered the way Prefect's own
    test harness does, so every Prefect client in this process uses it.
    """
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():
        return
    import socket

    from prefect.server.api.server import SubprocessASGIServer

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    SubprocessASGIServer._instances[None] = SubprocessASGIServer(port=port)

