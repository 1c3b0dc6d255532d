"""One episode through the speech core: fetch → decode → diarize → transcribe → merge.

Each step is a plain function so a Prefect task can wrap each one; `process_source` chains
them for `ppcli transcribe` and for callers that want the whole thing in one call.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

from podcastpile import audio as audio_module
from podcastpile import signal
from podcastpile.audio import DecodedAudio
from podcastpile.errors import PermanentError, TransientError
from podcastpile.fetch import MAX_REDIRECTS, DownloadedAudio, download, local_file
from podcastpile.merge import SpeakerTurn, merge_words
from podcastpile.models import Diarization, SpeechModels, Transcript
from podcastpile.netguard import AddressGuard, allow_any, is_public
from podcastpile.result import EpisodeResult, Turn
from podcastpile.version import code_version


def is_url(source: str) -> bool:
    """True for http(s) URLs; anything else is taken as a local path."""
    return source.lower().startswith(("http://", "https://"))


def address_guard(settings: Any) -> AddressGuard:
    """The download guard the settings ask for: public addresses only unless ALLOW_PRIVATE_ADDRESSES."""
    return AddressGuard(allow=allow_any if settings.allow_private_addresses else is_public)


def trusted_hosts(settings: Any) -> set[str]:
    """Hosts whose downloads skip the address guard: the configured archive (WAYBACK_URL's host)."""
    host = urlsplit(settings.wayback_url).hostname
    return {host} if host else set()


@contextmanager
def fetch(source: str, settings: Any) -> Iterator[DownloadedAudio]:
    """The original bytes of `source` (URL or local path) on disk, hashed; temp files removed on exit."""
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
        guard=address_guard(settings),
    ) as downloaded:
        yield downloaded


def decode(downloaded: DownloadedAudio, live: bool = False) -> DecodedAudio:
    """Probe and decode the downloaded bytes to 16 kHz mono float32 (see `podcastpile.audio`).

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


def diarize(models: SpeechModels, decoded: DecodedAudio) -> Diarization:
    """Speaker segments of the whole episode."""
    return models.diarize(decoded)


def transcribe(models: SpeechModels, decoded: DecodedAudio, language: str | None = None) -> Transcript:
    """One ASR pass over the whole episode with word timestamps."""
    return models.transcribe(decoded, language)


def _turn(turn: SpeakerTurn, decoded: DecodedAudio) -> Turn:
    rms, peak, clipped = signal.levels(signal.span(decoded.samples, decoded.sample_rate, turn.start, turn.end))
    words = [(w.start, w.end) for w in turn.words]
    return Turn(
        speaker=turn.speaker, start=round(turn.start, 3), end=round(turn.end, 3), text=turn.text,
        words=turn.words, rms_dbfs=round(rms, 2), peak_dbfs=round(peak, 2),
        clipped_ratio=round(clipped, 6), speech_ratio=round(signal.speech_ratio(words, turn.start, turn.end), 4),
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
    rms, peak, clipped = signal.levels(decoded.samples)
    covered = signal.covered_seconds([(t.start, t.end) for t in turns])
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


def process_downloaded(
    downloaded: DownloadedAudio, models: SpeechModels, language: str | None = None, live: bool = False
) -> EpisodeResult:
    """Decode → diarize → transcribe → merge for bytes already on disk.

    Decoding comes first, so bytes that are not audio fail before any model is loaded.
    `live` as in `decode`.
    Model loading (once per process) is kept off the clock: `processing_seconds` and `rtf`
    measure the work on this episode.
    """
    started = time.perf_counter()
    decoded = decode(downloaded, live=live)
    decode_seconds = time.perf_counter() - started
    models.diarizer()
    models.asr(language)
    started = time.perf_counter()
    diarization = diarize(models, decoded)
    transcript = transcribe(models, decoded, language)
    seconds = decode_seconds + time.perf_counter() - started
    return build_result(downloaded, decoded, diarization, transcript, seconds)


def process_source(
    source: str, models: SpeechModels, settings: Any, language: str | None = None, live: bool = False
) -> EpisodeResult:
    """The whole speech core for one URL or local file. Raises PermanentError / TransientError.

    `live`: `source` is a live URL (see `decode`)."""
    with fetch(source, settings) as downloaded:
        return process_downloaded(downloaded, models, language, live=live)
