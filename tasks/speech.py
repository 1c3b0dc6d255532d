"""Tasks over the speech core: load models, download, decode, diarize, transcribe, merge.

Downloads retry transient failures (timeouts, 429, 5xx, resets) with exponential backoff;
permanent ones (404, not audio, too large) fail at once. Model inference is not retried here:
an inference failure is recorded on the episode and the store's attempt limit decides.
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any

from prefect import task
from prefect.cache_policies import NONE
from prefect.tasks import exponential_backoff

from podcastpile import speech
from podcastpile.audio import DecodedAudio
from podcastpile.config import Settings
from podcastpile.errors import TransientError
from podcastpile.fetch import DownloadedAudio
from podcastpile.models import Diarization, SpeechModels, Transcript
from tasks.resources import models_for


def _transient(task: Any, task_run: Any, state: Any) -> bool:
    return isinstance(state.result(raise_on_failure=False), TransientError)


@task(name="load-models", cache_policy=NONE)
def load_models(settings: Settings, languages: list[str | None]) -> SpeechModels:
    """The process's models, loaded now for the languages of this batch (a no-op when loaded)."""
    models = models_for(settings)
    models.diarizer()
    for language in languages:
        models.asr(language)
    return models


@task(
    name="download-audio", retries=3, retry_delay_seconds=exponential_backoff(backoff_factor=2),
    retry_jitter_factor=0.5, retry_condition_fn=_transient, cache_policy=NONE,
)
def download_audio(url: str, settings: Settings) -> tuple[DownloadedAudio, ExitStack]:
    """Fetch the audio into a temporary file. Close the returned stack to delete the file."""
    with ExitStack() as stack:
        downloaded = stack.enter_context(speech.fetch(url, settings))
        return downloaded, stack.pop_all()


@task(name="decode-audio", cache_policy=NONE)
def decode_audio(downloaded: DownloadedAudio, live: bool = False) -> DecodedAudio:
    """Probe and decode to 16 kHz mono float32. `live`: a truncated file is transient (re-download)."""
    return speech.decode(downloaded, live=live)


@task(name="diarize", cache_policy=NONE)
def diarize(models: SpeechModels, decoded: DecodedAudio) -> Diarization:
    """Who speaks when (Sortformer)."""
    return speech.diarize(models, decoded)


@task(name="transcribe", cache_policy=NONE)
def transcribe(models: SpeechModels, decoded: DecodedAudio, language: str | None) -> Transcript:
    """One ASR pass with word timestamps (Parakeet)."""
    return speech.transcribe(models, decoded, language)


@task(name="merge-turns", cache_policy=NONE)
def merge_turns(
    downloaded: DownloadedAudio, decoded: DecodedAudio, diarization: Diarization,
    transcript: Transcript, processing_seconds: float,
) -> dict[str, Any]:
    """Words into speaker turns, levels, the typed result as a JSON-able dict."""
    return speech.build_result(downloaded, decoded, diarization, transcript, processing_seconds).to_dict()
