"""`ppcli transcribe FILE_OR_URL`: run the speech core on one input, without the queue.

torch and NeMo are imported only when the command runs, so `ppcli --help` stays fast.
"""

from __future__ import annotations

import json
from contextlib import nullcontext

import typer
from rich.table import Table

from podcastpile.cli.application import app
from podcastpile.cli.common import EXIT_MODEL_LOAD, fail
from podcastpile.cli.display import console, errors, literal, say
from podcastpile.config import SettingsError, load_settings
from podcastpile.errors import EpisodeError
from podcastpile.net.urls import display_url, mask_secrets


@app.command("transcribe")
def transcribe_command(
    source: str = typer.Argument(..., metavar="FILE_OR_URL", help="An audio file path or an http(s) URL."),
    as_json: bool = typer.Option(False, "--json", help="Print the whole result as JSON."),
    language: str = typer.Option(
        "en", "--language", "-l",
        help="Episode language: English uses ASR_MODEL, anything else ASR_MODEL_MULTILINGUAL.",
    ),
) -> None:
    """Fetch, decode, diarize, transcribe and merge one episode; print its speaker turns."""
    try:
        settings = load_settings()
    except SettingsError as error:
        fail(str(error))  # exit 1, unlike the store commands' 2: how this command always ended
    from podcastpile.net.fetch import remove_orphaned_downloads  # loads httpx: only for this command

    remove_orphaned_downloads()  # temp audio of killed runs on this machine: nothing else removes it
    from podcastpile.speech.nemo_models import ModelLoadError, SpeechModels
    from podcastpile.speech.pipeline import process_source

    models = SpeechModels.from_settings(settings)
    try:
        with nullcontext() if as_json else errors.status("transcribing…"):
            result = process_source(source, models, settings, language=language)
    except EpisodeError as error:
        fail(f"{display_url(source)}: {error.code}: {mask_secrets(error.reason)}")
    except ModelLoadError as error:
        fail(str(error), code=EXIT_MODEL_LOAD)
    if as_json:
        print(json.dumps(result.to_dict(), ensure_ascii=False))
        return
    table = Table(show_header=True, header_style="bold", box=None)
    table.add_column("speaker")
    table.add_column("start", justify="right")
    table.add_column("end", justify="right")
    table.add_column("text", overflow="fold")
    for turn in result.turns:
        table.add_row(literal(turn.speaker), f"{turn.start:.2f}", f"{turn.end:.2f}", literal(turn.text))
    console.print(table)
    say(
        f"{result.duration:.1f} s of {result.audio_format}, {result.num_speakers} speaker(s), "
        f"{len(result.turns)} turn(s); processed in {result.processing_seconds:.2f} s, "
        f"RTF {result.rtf:.4f} (ASR {result.asr_model}, diarization {result.diar_model})"
    )

