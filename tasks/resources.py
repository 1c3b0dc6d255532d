"""What a worker process opens once and reuses for every batch it runs: the store and the models."""

from __future__ import annotations

import logging
import threading
from functools import cache
from typing import Any

from podcastpile.archive.playback import PlaybackThrottle
from podcastpile.config import Settings
from podcastpile.speech.nemo_models import SpeechModels
from podcastpile.store import EpisodeStore
from podcastpile.store.archive_limits import SharedLimits

log = logging.getLogger(__name__)

_stores: dict[tuple[Any, ...], EpisodeStore] = {}
_stores_lock = threading.Lock()


def store_for(settings: Settings) -> EpisodeStore:
    """The process's store for these settings (one engine and connection pool per database)."""
    key = (settings.database_url, settings.lease_seconds, settings.max_attempts, settings.archive_mode)
    with _stores_lock:
        if key not in _stores:
            _stores[key] = EpisodeStore.open(settings)
        return _stores[key]


@cache
def _models(diar: str, latency: str, asr: str, asr_multi: str, local_above: float, device: str) -> SpeechModels:
    return SpeechModels(
        diar_model=diar, diar_latency=latency, asr_model=asr, asr_model_multilingual=asr_multi,
        local_attention_above_seconds=local_above, device=device,
    )


def models_for(settings: Settings) -> SpeechModels:
    """The process's model holder for these settings; each model loads on first use, then stays."""
    return _models(
        settings.diar_model, str(settings.diar_latency), settings.asr_model,
        settings.asr_model_multilingual, settings.local_attention_above_seconds, settings.device,
    )


def playback_throttle_for(settings: Settings) -> PlaybackThrottle | None:
    """The fleet's shared pause for downloads from the archive, through this process's store;
    None when the store cannot be opened (a download is no reason to fail then)."""
    try:
        return PlaybackThrottle(SharedLimits(store_for(settings)))
    except Exception as error:  # noqa: BLE001 - the download goes on; its own retries back off
        log.warning("no shared archive pauses (%s)", error)
        return None
