"""What a worker process opens once and reuses for every batch it runs: the store and the models."""

from __future__ import annotations

from functools import cache

from podcastpile.config import Settings
from podcastpile.models import SpeechModels
from podcastpile.store import EpisodeStore


@cache
def _store(database_url: str, lease_seconds: float, max_attempts: int, archive_required: bool) -> EpisodeStore:
    from podcastpile.store import make_engine, migrate

    engine = make_engine(database_url)
    migrate(engine)
    return EpisodeStore(
        engine, lease_seconds=lease_seconds, max_attempts=max_attempts,
        archive_required=archive_required,
    )


def store_for(settings: Settings) -> EpisodeStore:
    """The process's store for these settings (one engine and connection pool per database)."""
    return _store(
        settings.database_url, settings.lease_seconds, settings.max_attempts,
        settings.archives,
    )


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
