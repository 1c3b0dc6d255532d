"""`ppcli process URL...`: run the pipeline's own Prefect flows on this machine, no worker needed.

Embedded defaults: the episode store from DATABASE_URL (SQLite by default) and, unless
PREFECT_API_URL names a server, Prefect's temporary local server. Prefect is imported only when
this command runs, so the rest of `ppcli` stays light.
"""

from __future__ import annotations

import json
import os
import threading
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from podcastpile.cli import app
from podcastpile.cli.episodes import console, errors, fail, open_store
from podcastpile.store import EpisodeStatus, EpisodeStore, NewEpisode

DONE = {EpisodeStatus.completed.value, EpisodeStatus.failed.value}


@app.command()
def process(
    urls: Annotated[list[str], typer.Argument(help="Episode audio URLs.")],
    language: Annotated[str | None, typer.Option(help="Language of these episodes, e.g. en.")] = None,
    live: Annotated[
        bool,
        typer.Option(help="Download the live URLs instead of Internet Archive copies (ARCHIVE_REQUIRED=false)."),
    ] = False,
    out: Annotated[str | None, typer.Option(help="Also export the results as Parquet to this folder.")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Process episodes now on this machine through the same Prefect flows the GPU workers run."""
    if live:
        os.environ["ARCHIVE_REQUIRED"] = "false"  # the flows read their settings from the environment
    store = open_store()
    summary = store.add([NewEpisode(url, language=language) for url in urls])
    if summary.rejected:
        fail("; ".join(f"{item.url}: {item.reason}" for item in summary.rejected))
    episodes = [store.find(url) for url in urls]
    ids = sorted({episode.id for episode in episodes if episode is not None})
    waiting = [e.id for e in episodes if e is not None and e.status in ("archive_pending", "archiving")]
    if waiting:
        fail(
            f"episodes {waiting} wait for an Internet Archive capture, and the archiving flow is not "
            "built yet; use --live (or ARCHIVE_REQUIRED=false) to download the live URLs"
        )
    _run_flows(store, ids, quiet=json_output)
    rows = [store.get(episode_id) for episode_id in ids]
    if out:
        _export(out)
    if json_output:
        print(json.dumps([
            {"id": row.id, "url": row.url, "status": row.status, "error": row.error,
             "result": store.result(row.id)} for row in rows
        ]))
    else:
        _print_results(store, rows)
    if any(row.status != EpisodeStatus.completed for row in rows):
        raise typer.Exit(1)


def _run_flows(store: EpisodeStore, ids: list[int], quiet: bool) -> None:
    """Run batch flows over `ids` until none is ready (transient failures get their retries)."""
    # Our own summary reports each episode; Prefect's per-task failure logs would repeat it.
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "CRITICAL")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from flows.process import process_batch  # Prefect and the flows load only for this command

    progress = Progress(
        TextColumn("processing"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=errors, disable=quiet, transient=True,
    )
    stop = threading.Event()

    def watch() -> None:  # the flow runs in this thread; the bar follows the store
        while not stop.wait(0.5):
            done = sum(1 for i in ids if store.get(i).status in DONE)
            progress.update(task, completed=done)

    with progress:
        task = progress.add_task("episodes", total=len(ids))
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            while True:
                ready = [i for i in ids if store.get(i).status == EpisodeStatus.pending]
                if not ready or not process_batch(batch_size=len(ready), episode_ids=ready)["claimed"]:
                    break
        finally:
            stop.set()
            watcher.join()


def _export(out: str) -> None:
    try:
        from podcastpile.cli.export import export_command  # the Parquet export (its own issue)
    except ImportError:
        fail("--out needs the Parquet export, which is not built yet")
    export_command(out=out, json_output=False)


def _print_results(store: EpisodeStore, rows: list) -> None:  # type: ignore[type-arg]
    # Outside text (URLs, error reasons, transcripts) is printed literally, never as markup.
    from rich.text import Text

    from podcastpile.cli.display import literal

    for row in rows:
        if row.status != EpisodeStatus.completed:
            console.print(Text.assemble((f"episode {row.id} {row.status}", "red"), ": ",
                                        literal(f"{row.error}  {row.url}")), soft_wrap=True)
            continue
        result = store.result(row.id) or {}
        console.print(Text.assemble((f"episode {row.id}", "green"), " ", literal(row.url)), soft_wrap=True)
        console.print(
            f"  {result.get('duration', 0):.1f} s of audio, {result.get('num_speakers', 0)} speakers, "
            f"{sum(len(t['words']) for t in result.get('turns', []))} words, "
            f"real-time factor {result.get('rtf', 0):.3f}",
        )
        table = Table("speaker", "start", "end", "text", show_header=True)
        for turn in result.get("turns", [])[:50]:
            table.add_row(literal(turn["speaker"]), f"{turn['start']:.2f}", f"{turn['end']:.2f}", literal(turn["text"]))
        console.print(table)
