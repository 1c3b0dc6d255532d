"""Tasks over the speech core: load models, download, and run one step of the chain.

The chain itself (decode → diarize → transcribe → merge → quality) is defined once, in
`podcastpile.speech.pipeline.STEPS`; `run_step` is the one task that runs any of its steps,
named after the step. Downloads retry transient failures (timeouts, 429, 5xx, resets) with
exponential backoff; permanent ones (404, not audio, too large) fail at once. Model inference
is not retried here: an inference failure is recorded on the episode and the store's attempt
limit decides.
"""

from __future__ import annotations

import threading
from contextlib import ExitStack
from typing import Any

from prefect import task
from prefect.cache_policies import NONE
from prefect.tasks import exponential_backoff

from podcastpile.config import Settings
from podcastpile.errors import TransientError
from podcastpile.net.fetch import DownloadedAudio, DownloadStopped
from podcastpile.speech import pipeline
from podcastpile.speech.nemo_models import SpeechModels
from podcastpile.speech.pipeline import EpisodeWork, Step
from tasks.resources import models_for, playback_throttle_for


def _transient(task: Any, task_run: Any, state: Any) -> bool:
    return isinstance(state.result(raise_on_failure=False), TransientError)


@task(name="load-models", cache_policy=NONE)
def load_models(settings: Settings, languages: list[str | None]) -> SpeechModels:
    """The process's models, loaded now for the languages of this batch (a no-op when loaded)."""
    return pipeline.load_models(models_for(settings), languages)


@task(
    name="download-audio", retries=3, retry_delay_seconds=exponential_backoff(backoff_factor=2),
    retry_jitter_factor=0.5, retry_condition_fn=_transient, cache_policy=NONE,
)
def download_audio(
    url: str, settings: Settings, capture_timestamp: str | None = None, stop: threading.Event | None = None
) -> tuple[DownloadedAudio, ExitStack]:
    """Fetch the audio into a temporary file. Close the returned stack to delete the file.

    `capture_timestamp`: `url` is the Wayback Machine's copy made then; only that capture is
    accepted (a replay lag is a TransientError, retried here and then by the store), after
    any pause of the archive's lookups and downloads ends; a 429 from it pauses them for
    everyone (`PlaybackThrottle`). `stop`, once set, ends the download at its next chunk
    (DownloadStopped, not retried)."""
    throttle = playback_throttle_for(settings) if capture_timestamp else None
    if throttle is not None:
        throttle.wait(stop)  # someone met a 429 from the archive: nobody behind us asks now
        if stop is not None and stop.is_set():
            raise DownloadStopped("stopped while the archive's downloads were paused")
    with ExitStack() as stack:
        try:
            downloaded = stack.enter_context(pipeline.fetch(url, settings, capture_timestamp, stop))
        except TransientError as error:
            if throttle is not None and error.code == "http-429":
                throttle.throttled(str(error))
            raise
        return downloaded, stack.pop_all()


@task(cache_policy=NONE)
def run_step(step: Step, episode: EpisodeWork, models: SpeechModels) -> EpisodeWork:
    """One step of the speech chain over one episode (the task is named after the step)."""
    return step(episode, models)
