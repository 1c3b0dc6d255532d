"""One episode through the speech core, defined once: fetch, then the chain of `STEPS`.

The chain decode → diarize → transcribe → merge → quality is a tuple of small named steps, each a
function over one `EpisodeWork` (the episode's state as it moves along). Everything that
processes an episode runs this one definition: `process_downloaded` calls the steps directly
(`ppcli transcribe`, benchmarks), and the batch flow hands each step to a Prefect task
(`run_step`), so a step's name is its task's name in the UI. Each step times its own work
into `EpisodeWork.seconds`, which is what `processing_seconds` and the batch's per-step figures
are made of; model loading stays off that clock (once per process, not per episode).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from podcastpile.errors import PermanentError, TransientError
from podcastpile.net.fetch import MAX_REDIRECTS, DownloadedAudio, download, local_file
from podcastpile.net.guard import guard_for
from podcastpile.speech import audio as audio_module
from podcastpile.speech import levels, quality
from podcastpile.speech.audio import DecodedAudio
from podcastpile.speech.merge import SpeakerTurn, merge_words
from podcastpile.speech.nemo_models import Diarization, SpeechModels, Transcript, require_worker_extra
from podcastpile.speech.result import EpisodeResult, Turn
from podcastpile.version import code_version


def is_url(source: str) -> bool:
    """True for http(s) URLs; anything else is taken as a local path."""
    return source.lower().startswith(("http://", "https://"))


def trusted_hosts(settings: Any) -> set[str]:
    """Hosts whose downloads skip the address guard: the configured archive (WAYBACK_URL's host)."""
    host = urlsplit(settings.wayback_url).hostname
    return {host} if host else set()


@contextmanager
def fetch(
    source: str, settings: Any, capture_timestamp: str | None = None, stop: threading.Event | None = None
) -> Iterator[DownloadedAudio]:
    """The original bytes of `source` (URL or local path) on disk, hashed; temp files removed on exit.

    `capture_timestamp`: `source` is the Wayback Machine's copy made at that 14-digit timestamp,
    and no other capture's bytes are accepted (see `podcastpile.net.fetch.download`). `stop`,
    once set, ends a download at its next chunk (DownloadStopped).
    """
    if not is_url(source):
        with local_file(source) as found:
            yield found
        return
    with download(
        source,
        max_bytes=settings.download_max_bytes,
        timeout_seconds=settings.download_timeout_seconds,
        max_redirects=MAX_REDIRECTS,
        trusted_hosts=trusted_hosts(settings),
        guard=guard_for(settings),
        capture_timestamp=capture_timestamp,
        stop=stop,
    ) as downloaded:
        yield downloaded


@dataclass
class EpisodeWork:
    """One episode on its way through the chain: what went in and what each step made.

    `live`: the bytes came from the live URL, not an archived copy (see `decode`).
    `seconds`: wall time of each step's own work, by step name.
    `stop`: once set, the quality step ends early with `Stopped` (its batch is stopping).
    """

    downloaded: DownloadedAudio
    language: str | None = None
    live: bool = False
    decoded: DecodedAudio | None = None
    diarization: Diarization | None = None
    transcript: Transcript | None = None
    result: EpisodeResult | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    stop: threading.Event | None = None

    @property
    def processing_seconds(self) -> float:
        """The time the chain spent on this episode so far (model loading excluded)."""
        return sum(self.seconds.values())


@dataclass(frozen=True)
class Step:
    """A named step of the chain: reads some fields of an `EpisodeWork`, fills others."""

    name: str
    work: Callable[[EpisodeWork, SpeechModels], None]
    description: str
    needs_models: bool = False

    def __call__(self, episode: EpisodeWork, models: SpeechModels) -> EpisodeWork:
        started = time.perf_counter()
        self.work(episode, models)
        episode.seconds[self.name] = episode.seconds.get(self.name, 0.0) + time.perf_counter() - started
        return episode


def decode(downloaded: DownloadedAudio, live: bool = False) -> DecodedAudio:
    """Probe and decode the downloaded bytes to 16 kHz mono float32 (see `podcastpile.speech.audio`).

    `live`: the bytes came from the live URL, not an archived copy. A truncated live download
    may be a connection the host closed early without an error, so `truncated` is raised as a
    TransientError (same code) to be retried; an archived copy is fixed bytes: permanent.
    """
    try:
        return audio_module.decode(downloaded.path)
    except PermanentError as error:
        if live and error.code == "truncated":
            raise TransientError(error.code, f"{error.reason} (live download, will retry)") from error
        raise


def _decode(episode: EpisodeWork, models: SpeechModels) -> None:
    episode.decoded = decode(episode.downloaded, live=episode.live)


def _diarize(episode: EpisodeWork, models: SpeechModels) -> None:
    assert episode.decoded is not None, "decode runs first"
    episode.diarization = models.diarize(episode.decoded)


def _transcribe(episode: EpisodeWork, models: SpeechModels) -> None:
    assert episode.decoded is not None, "decode runs first"
    episode.transcript = models.transcribe(episode.decoded, episode.language)


def _merge(episode: EpisodeWork, models: SpeechModels) -> None:
    assert episode.decoded and episode.diarization and episode.transcript, "merge runs last"
    episode.result = build_result(
        episode.downloaded, episode.decoded, episode.diarization, episode.transcript,
        episode.processing_seconds,
    )


# CPU threads for the quality models: onnxruntime sessions are single-threaded and release
# the GIL, so this many threads use about this many cores; half the machine leaves the other
# half to decoding and to feeding the GPU.
QUALITY_WORKERS = max(1, (os.cpu_count() or 2) // 2)
_quality_pool: ThreadPoolExecutor | None = None
_quality_lock = threading.Lock()


def quality_pool() -> ThreadPoolExecutor:
    """The process's thread pool for quality scores, started on first use and kept."""
    global _quality_pool
    with _quality_lock:
        if _quality_pool is None:
            _quality_pool = ThreadPoolExecutor(QUALITY_WORKERS, thread_name_prefix="quality")
        return _quality_pool


def add_quality(
    result: EpisodeResult, decoded: DecodedAudio, executor: ThreadPoolExecutor | None = None,
    stop: threading.Event | None = None,
) -> None:
    """Fill `result`'s quality scores, per turn and for the episode, and the models' provenance
    (see `podcastpile.speech.quality`). The VAD's speech_ratio replaces the word-coverage one.
    Once `stop` is set, raises `Stopped` instead of scoring the turns left."""
    spans = [(turn.start, turn.end) for turn in result.turns]
    segments = [(s.speaker, s.start, s.end) for s in result.segments]
    episode, turns = quality.measure(decoded.samples, spans, segments, executor, stop)
    for turn, scores in zip(result.turns, turns):
        for name, value in scores.rounded().items():
            setattr(turn, name, value)
    for name, value in episode.rounded().items():
        setattr(result, name, value)
    for name, value in quality.model_ids().items():
        setattr(result, name, value)


def _quality(episode: EpisodeWork, models: SpeechModels) -> None:
    assert episode.decoded and episode.result, "quality runs after merge"
    add_quality(episode.result, episode.decoded, quality_pool(), episode.stop)


# Decoding comes first, so bytes that are not audio fail before any model is needed.
STEPS: tuple[Step, ...] = (
    Step("decode", _decode, "Probe and decode to 16 kHz mono float32."),
    Step("diarize", _diarize, "Who speaks when (Sortformer).", needs_models=True),
    Step("transcribe", _transcribe, "One ASR pass with word timestamps (Parakeet).", needs_models=True),
    Step("merge", _merge, "Words into speaker turns, levels, the typed result."),
    Step("quality", _quality, "DNSMOS, VAD, loudness, SNR, overlap per turn and episode (CPU threads)."),
)
# The batch splits the chain where the CPU-only tail begins: it runs the first part of an episode
# in its own thread and hands the tail to background threads while the next episode's GPU steps
# run (see `tasks.overlap`).
TAIL_START = next(index for index, step in enumerate(STEPS) if step.name == "quality")
HEAD_STEPS, TAIL_STEPS = STEPS[:TAIL_START], STEPS[TAIL_START:]


def load_models(models: SpeechModels, languages: list[str | None]) -> SpeechModels:
    """Load the diarizer and the ASR model of each language now (a no-op for loaded ones)."""
    require_worker_extra()
    models.diarizer()
    for language in languages:
        models.asr(language)
    quality.load()
    return models


def _turn(turn: SpeakerTurn, decoded: DecodedAudio) -> Turn:
    rms, peak, clipped = levels.levels(levels.span(decoded.samples, decoded.sample_rate, turn.start, turn.end))
    words = [(w.start, w.end) for w in turn.words]
    return Turn(
        speaker=turn.speaker, start=round(turn.start, 3), end=round(turn.end, 3), text=turn.text,
        words=turn.words, rms_dbfs=round(rms, 2), peak_dbfs=round(peak, 2),
        clipped_ratio=round(clipped, 6), speech_ratio=round(levels.speech_ratio(words, turn.start, turn.end), 4),
    )


def build_result(
    downloaded: DownloadedAudio,
    decoded: DecodedAudio,
    diarization: Diarization,
    transcript: Transcript,
    processing_seconds: float,
) -> EpisodeResult:
    """Merge words into turns, measure levels, and assemble the typed result."""
    turns = [_turn(turn, decoded) for turn in merge_words(transcript.words, diarization.segments)]
    rms, peak, clipped = levels.levels(decoded.samples)
    covered = levels.covered_seconds([(t.start, t.end) for t in turns])
    duration = decoded.duration
    speakers = {s.speaker for s in diarization.segments} | {t.speaker for t in turns}
    return EpisodeResult(
        duration=round(duration, 3), sha256=downloaded.sha256, md5=downloaded.md5,
        audio_format=decoded.format.name, audio_bytes=downloaded.bytes, decode_errors=decoded.decode_errors,
        language=transcript.language, num_speakers=len(speakers), text=transcript.text,
        turns=turns, segments=diarization.segments,
        asr_model=transcript.model, asr_fingerprint=transcript.fingerprint,
        diar_model=diarization.model, diar_fingerprint=diarization.fingerprint,
        code_version=code_version(), processing_seconds=round(processing_seconds, 3),
        rtf=round(processing_seconds / duration, 5) if duration > 0 else 0.0,
        rms_dbfs=round(rms, 2), peak_dbfs=round(peak, 2), clipped_ratio=round(clipped, 6),
        speech_ratio=round(min(1.0, covered / duration) if duration > 0 else 0.0, 4),
    )


StepRunner = Callable[[Step, EpisodeWork, SpeechModels], EpisodeWork]


def run_directly(step: Step, episode: EpisodeWork, models: SpeechModels) -> EpisodeWork:
    """Run a step in this thread, as it is: the runner outside Prefect."""
    return step(episode, models)


def run_chain(
    episode: EpisodeWork, models: SpeechModels, runner: StepRunner = run_directly,
    steps: Sequence[Step] = STEPS,
) -> EpisodeResult:
    """Every step of `steps` (default: the whole chain, `STEPS`) in order over `episode`;
    `runner` decides how a step is run (the batch flow runs each as a Prefect task, and runs
    `HEAD_STEPS` and `TAIL_STEPS` apart). Model loading happens before the first step that
    needs a model, after decoding, and off the episode's clock."""
    require_worker_extra()  # one clear line, before decoding needs PyAV or a step needs NeMo
    loaded = False
    for step in steps:
        if step.needs_models and not loaded:
            load_models(models, [episode.language])
            loaded = True
        episode = runner(step, episode, models)
    assert episode.result is not None, "merge makes the result"
    return episode.result


def process_downloaded(
    downloaded: DownloadedAudio, models: SpeechModels, language: str | None = None, live: bool = False
) -> EpisodeResult:
    """The chain for bytes already on disk. `live` as in `decode`."""
    return run_chain(EpisodeWork(downloaded, language=language, live=live), models)


def process_source(
    source: str, models: SpeechModels, settings: Any, language: str | None = None, live: bool = False
) -> EpisodeResult:
    """The whole speech core for one URL or local file. Raises PermanentError / TransientError.

    `live`: `source` is a live URL (see `decode`)."""
    with fetch(source, settings) as downloaded:
        return process_downloaded(downloaded, models, language, live=live)
