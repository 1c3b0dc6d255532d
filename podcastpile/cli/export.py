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
    audio: Annotated[
        str | None,
        typer.Option(
            "--audio", metavar="none|flac|opus",
            help="Write each turn's audio (16 kHz mono, from the archived copy) into the turns "
            "files; default DATASET_AUDIO.",
        ),
    ] = None,
    audio_pad: Annotated[
        float | None,
        typer.Option("--audio-pad", min=0, max=10, help="Seconds added around each turn's audio; default DATASET_AUDIO_PAD."),
    ] = None,
    where: Annotated[
        str | None,
        typer.Option(
            "--where", metavar="EXPR",
            help="Export only episodes that pass this filter, e.g. \"duration >= 600 and num_speakers = 2\" "
            "(a filtered release: use with --out).",
        ),
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Export completed episodes not yet in the dataset; rerunning exports nothing twice."""
    # Imported here so other commands start without loading pyarrow (or rich's progress bars).
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from podcastpile.dataset.audio import CODECS, ArchiveAccess, AudioOptions
    from podcastpile.dataset.destination import DestinationError
    from podcastpile.dataset.export import DatasetInconsistent, export_dataset
    from podcastpile.dataset.filters import FilterError
    from podcastpile.dataset.writer import WriterLimits
    from podcastpile.store.exports import ExportBusy

    config = settings()
    store = open_store(config)
    location = out or config.dataset_dir
    codec = str(audio if audio is not None else config.dataset_audio)
    if codec not in ("none", *CODECS):
        fail(f"--audio {codec}: use none, {', '.join(CODECS)}", code=EXIT_SETUP)
    if where and out is None:
        # A filtered release beside the full dataset, never in its place.
        fail("--where writes a filtered release: name its location with --out", code=EXIT_SETUP)
    audio_options = None
    if codec != "none":
        pad = audio_pad if audio_pad is not None else config.dataset_audio_pad
        audio_options = AudioOptions(codec=codec, pad=pad, access=ArchiveAccess.from_settings(config))
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
                audio=audio_options, where=where,
            )
    except (DestinationError, DatasetInconsistent, ExportBusy, FilterError) as error:
        fail(str(error))
    except (OSError, ValueError) as error:  # pyarrow/fsspec I/O and format errors
        fail(f"{location}: {error}".splitlines()[0])
    except SQLAlchemyError as error:
        fail(f"episode database: {error}".splitlines()[0], code=EXIT_SETUP)
    if json_output:
        print(json.dumps(asdict(summary)))
        return
    for skipped in summary.skipped:
        say(f"skipped {skipped['url']} (no audio): {skipped['code']}: {skipped['reason']}")
    totals = (
        f"dataset {summary.dataset} holds {summary.dataset_episodes:,} episodes, "
        f"{summary.dataset_audio_hours:,.2f} hours in {summary.dataset_shards} shard(s)"
    )
    if summary.episodes_filtered:
        totals += f"; {summary.episodes_filtered:,} episode(s) left out by --where"
    if not summary.shards_written and not summary.shards_retired:
        say(f"nothing new to export; {totals}")
        return
    say(
        f"generation {summary.generation}: wrote {summary.episodes_written:,} episodes "
        f"({summary.episodes_replaced:,} replacing reprocessed ones) in {summary.shards_written} "
        f"shard(s), retired {summary.shards_retired}; {totals}"
    )
