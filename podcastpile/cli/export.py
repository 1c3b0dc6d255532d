"""`ppcli export`: write completed episodes not yet in the dataset as new Parquet shards."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Annotated

import typer
from sqlalchemy.exc import SQLAlchemyError

from podcastpile.cli.application import app
from podcastpile.cli.common import EXIT_SETUP, JsonOption, fail, open_store, settings
from podcastpile.cli.display import errors, say


@app.command("export")
def export_command(
    out: Annotated[
        str | None,
        typer.Option("--out", help="Dataset folder or fsspec URL (s3://, hf://); default DATASET_DIR."),
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Export completed episodes not yet in the dataset; rerunning exports nothing twice."""
    # Imported here so other commands start without loading pyarrow (or rich's progress bars).
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from podcastpile.dataset.destination import DestinationError
    from podcastpile.dataset.export import DatasetInconsistent, export_dataset
    from podcastpile.dataset.writer import WriterLimits
    from podcastpile.store.exports import ExportBusy

    config = settings()
    store = open_store(config)
    location = out or config.dataset_dir
    limits = WriterLimits(max_bytes=config.shard_max_bytes, max_rows=config.shard_max_rows)
    progress = Progress(
        TextColumn("exporting"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=errors, disable=json_output or not errors.is_terminal, transient=True,
    )
    task = progress.add_task("export", total=None)
    try:
        with progress:
            summary = export_dataset(
                store.engine, location, limits=limits,
                on_start=lambda total: progress.update(task, total=total),
                on_progress=lambda n: progress.advance(task, n),
            )
    except (DestinationError, DatasetInconsistent, ExportBusy) as error:
        fail(str(error))
    except (OSError, ValueError) as error:  # pyarrow/fsspec I/O and format errors
        fail(f"{location}: {error}".splitlines()[0])
    except SQLAlchemyError as error:
        fail(f"episode database: {error}".splitlines()[0], code=EXIT_SETUP)
    if json_output:
        print(json.dumps(asdict(summary)))
        return
    totals = (
        f"dataset {summary.dataset} holds {summary.dataset_episodes:,} episodes, "
        f"{summary.dataset_audio_hours:,.2f} hours in {summary.dataset_shards} shard(s)"
    )
    if not summary.shards_written and not summary.shards_retired:
        say(f"nothing new to export; {totals}")
        return
    say(
        f"generation {summary.generation}: wrote {summary.episodes_written:,} episodes "
        f"({summary.episodes_replaced:,} replacing reprocessed ones) in {summary.shards_written} "
        f"shard(s), retired {summary.shards_retired}; {totals}"
    )
