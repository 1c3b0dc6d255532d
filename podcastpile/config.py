"""Settings, read from the environment and `.env`.

The original Podcast Pile's names and defaults still hold (`DATABASE_URL`, `HOST`, `PORT`,
`WORKER_AUTH_ENABLED`, `WORKER_PASSWORD`, `JOB_TIMEOUT_HOURS`), so its `.env` files keep
working; everything else has a default that works on a laptop. `.env.example` and
docs/settings.md document every field.
"""

from __future__ import annotations

import re
import socket
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from podcastpile.net.urls import MASK, mask_secrets
# The store owns what a database URL means; the settings only check and show DATABASE_URL.
from podcastpile.store.engine import normalize_database_url


class SettingsError(ValueError):
    """A setting is missing or invalid. The message names the setting and says what is wrong."""


class DiarizationLatency(StrEnum):
    """Streaming Sortformer presets (see the model card); very-high keeps speaker identity best."""

    very_high = "very-high"
    high = "high"
    low = "low"
    ultra_low = "ultra-low"


class DatasetAudio(StrEnum):
    """Whether, and how, `ppcli export` writes each turn's audio into the dataset."""

    none = "none"
    flac = "flac"  # lossless 16-bit
    opus = "opus"  # lossy, about a tenth of FLAC's size


class ArchiveMode(StrEnum):
    """How episodes relate to the Internet Archive (see docs/archive.md)."""

    required = "required"  # only archived copies are ever downloaded: the dataset is reproducible
    prefer = "prefer"  # archive first; after a permanent archive failure, download the original
    off = "off"  # no archiving: download the original URL


class Settings(BaseSettings):
    """All of Podcast Pile's settings. Field names are the environment variable names, upper-cased."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        case_sensitive=False,
        extra="ignore",
        validate_default=True,
    )

    # --- the original Podcast Pile's settings ------------------------------------------------
    database_url: str = Field(
        "sqlite:///./podcastpile.db",
        description="Episode database. SQLite for one machine; postgresql://... for many workers.",
    )
    host: str | None = Field(
        None,
        description="Address the manager (Prefect server) binds to; unset: 0.0.0.0 (every address) "
        "with WORKER_AUTH_ENABLED, 127.0.0.1 (this machine only) without. A non-loopback address "
        "without auth is refused unless `ppcli manager --insecure`.",
    )
    port: int = Field(8000, ge=1, le=65535, description="Port the manager (Prefect server) serves on.")
    trusted_proxies: str = Field(
        "", description="Comma-separated addresses of reverse proxies in front of the manager whose "
        "X-Forwarded-For names the client (for the wrong-password limit and the IP a worker is "
        "recorded with); empty: none. FORWARDED_ALLOW_IPS (uvicorn's name) is read too.",
        # TRUSTED_PROXIES first: where both are set it wins.
        validation_alias=AliasChoices("trusted_proxies", "forwarded_allow_ips"),
    )
    tls_cert_file: str | None = Field(
        None, description="The manager serves HTTPS with this certificate (PEM; any intermediate "
        "certificates after it) on its one port; needs TLS_KEY_FILE. Unset: plain HTTP. "
        "`ppcli manager --tls-cert` overrides it.",
    )
    tls_key_file: str | None = Field(
        None, description="The private key of TLS_CERT_FILE (PEM, not encrypted). `ppcli manager --tls-key` overrides it.",
    )
    tls_ca_file: str | None = Field(
        None, description="CA certificates (PEM) that clients of an https:// manager verify its "
        "certificate with: workers and their flow runs, `ppcli setup`. Unset: SSL_CERT_FILE, else "
        "this machine's trust store plus certifi's public CAs; the manager's own clients: "
        "TLS_CERT_FILE when it holds a self-signed certificate. `--ca` overrides it.",
    )
    worker_auth_enabled: bool = Field(False, description="Require a password from workers.")
    worker_password: SecretStr | None = Field(None, description="The password the manager demands when auth is on; clients send it whenever set.")
    manager_url: str | None = Field(
        None, description="The manager, e.g. http://manager:8000: `ppcli worker` joins it, and `ppcli create | "
        "import | list | stats | retry | invalidate` go through its HTTP API (with WORKER_PASSWORD) instead of "
        "DATABASE_URL; `-m` overrides it. Unset: workers use PREFECT_API_URL, the queue commands the database.",
    )
    run_retention_days: float = Field(
        30.0, ge=1 / 24,
        description="The manager's Prefect server deletes flow runs (and their logs) older than this.",
    )
    event_retention_days: float = Field(
        2.0, ge=1 / 24,
        description="The manager's Prefect server deletes events older than this (they are most of its database).",
    )
    control_check_seconds: float = Field(
        10.0, gt=0, le=60,
        description="How often the manager asks the store whether archive, dispatch, export or stats have work.",
    )
    job_timeout_hours: float = Field(
        2.0, gt=0, description="Lease length: an episode not finished in this time is requeued."
    )

    store_outage_seconds: float = Field(
        300.0, ge=0, description="How long store calls back off and retry while the episode "
        "database is unreachable before a batch gives up (its episodes are then requeued).",
    )

    # --- queue ------------------------------------------------------------------------------------
    max_attempts: int = Field(
        3, ge=1, description="Claims (and transient failures) an episode gets before it is failed."
    )
    batch_size: int = Field(16, ge=1, description="Episodes one worker claims per batch flow run.")
    prefetch: int = Field(
        2, ge=0, description="Episodes a worker downloads ahead while it transcribes the current one."
    )
    work_pool: str = Field("gpu", description="Prefect work pool the batch flows run on.")
    worker_id: str = Field(
        default_factory=socket.gethostname, description="Name this worker reports; default: hostname."
    )
    worker_languages: str = Field(
        "",
        description="Languages this worker's batches claim, comma-separated (es,pt-br; a code "
        "takes its subtags too, en also episodes of no language); empty: every language. "
        "`ppcli worker --languages` sets it.",
    )

    # --- Internet Archive -------------------------------------------------------------------------
    archive_mode: ArchiveMode = Field(
        ArchiveMode.required,
        description="required: download only archived copies (web.archive.org/web/<ts>id_/<url>); "
        "prefer: archive first, download the original after a permanent archive failure; "
        "off: no archiving, download the original.",
    )
    archive_required: bool | None = Field(
        None,
        description="Old name, kept for existing .env files: true = ARCHIVE_MODE=required, "
        "false = off. Ignored when ARCHIVE_MODE is set.",
    )
    ia_access_key: SecretStr | None = Field(
        None, description="archive.org S3-style access key (https://archive.org/account/s3.php); "
        "Save Page Now 2 needs it for new captures.",
    )
    ia_secret_key: SecretStr | None = Field(None, description="archive.org S3-style secret key.")
    wayback_url: str = Field("https://web.archive.org", description="Wayback Machine / SPN2 base URL.")
    archive_api_url: str = Field("https://archive.org", description="archive.org API base URL (the availability API); no longer used: lookups go to CDX. Kept so existing .env files load.")
    spn_captures_per_minute: float = Field(
        7.0, gt=0, description="Save Page Now 2 captures submitted per minute (IA's limit: ~7)."
    )
    spn_daily_bytes: int = Field(
        5_000_000_000, gt=0, description="Bytes captured per day per account (IA's limit: 5 GB)."
    )
    archive_reuse_days: float = Field(
        3650.0, ge=0, description="Reuse an existing capture younger than this many days."
    )
    spn_poll_seconds: float = Field(
        5.0, gt=0, description="Seconds between status polls of a submitted capture job."
    )
    cdx_requests_per_minute: float = Field(
        24.0, gt=0, description="Wayback lookups (CDX and availability API) per minute, shared by every "
        "archive run on every machine through the store (IA's limit: 30; IA asks for 80 %). Going over "
        "gets the address firewalled for an hour, GPU workers' downloads included.",
    )
    spn_job_stale_seconds: float = Field(
        1800.0, gt=0, description="A capture job still pending after this many seconds is checked "
        "against CDX for a capture since its submission and reused, or submitted again (IA keeps a "
        "job's status about an hour, then answers `pending` for ever).",
    )
    archive_max_attempts: int = Field(
        5, ge=1, description="Transient archive failures an episode gets before it is failed."
    )
    archive_batch_size: int = Field(
        50, ge=1, description="Episodes one archive flow run takes at a time."
    )

    # --- download -----------------------------------------------------------------------------
    download_max_bytes: int = Field(
        2_000_000_000, gt=0, description="Largest audio file accepted (bytes)."
    )
    download_timeout_seconds: float = Field(
        60.0, gt=0, description="Connect/read timeout for one HTTP read."
    )
    allow_private_addresses: bool = Field(
        False,
        description="Let downloads connect to private, loopback, link-local and other non-public "
        "addresses (off: such URLs fail with blocked-address). For local tests and demos only.",
    )

    # --- models -------------------------------------------------------------------------------
    diar_model: str = Field(
        "nvidia/diar_streaming_sortformer_4spk-v2",
        description="Sortformer: a Hugging Face id or a local .nemo path.",
    )
    diar_latency: DiarizationLatency = Field(
        DiarizationLatency.very_high, description="Streaming preset: very-high, high, low, ultra-low."
    )
    asr_model: str = Field(
        "nvidia/parakeet-tdt-0.6b-v2", description="ASR for English: a Hugging Face id or .nemo path."
    )
    asr_model_multilingual: str = Field(
        "nvidia/parakeet-tdt-0.6b-v3",
        description="ASR for non-English episodes (25 European languages).",
    )
    local_attention_above_seconds: float = Field(
        1200.0, gt=0,
        description="Longest audio ASR runs with full attention; longer (or shorter, when the device's "
        "memory is short) gets local attention in windows.",
    )
    device: str = Field("auto", description="auto (CUDA when present), cpu, cuda, cuda:N.")

    # --- dataset ------------------------------------------------------------------------------
    dataset_dir: str = Field("./dataset", description="Where Parquet shards go: a folder or fsspec URL.")
    shard_max_bytes: int = Field(256_000_000, gt=0, description="Target size of one Parquet shard.")
    shard_max_rows: int = Field(
        100_000, gt=0, description="Most episodes in one Parquet shard (bounds the per-turn files too)."
    )
    dataset_audio: DatasetAudio = Field(
        DatasetAudio.none,
        description="Write each turn's audio (from the archived copy) into the turns files: none, flac or opus.",
    )
    dataset_audio_pad: float = Field(
        0.0, ge=0, le=10, description="Seconds of audio added before and after each turn's span (with audio)."
    )

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        # The messages never quote the value: `_describe` shows it, with its password hidden.
        try:
            url = make_url(value)
        except (ArgumentError, ValueError):  # ValueError: a port that is not a number
            raise ValueError(
                "cannot parse it as a database URL; expected e.g. sqlite:///./podcastpile.db "
                "or postgresql://user:pass@host:5432/db"
            ) from None
        if url.get_backend_name() not in ("sqlite", "postgresql"):
            raise ValueError(
                f"unsupported database {url.get_backend_name()!r}; use sqlite or postgresql"
            )
        return value

    @field_validator("host")
    @classmethod
    def _check_host(cls, value: str | None) -> str | None:
        # HOST= (empty) in .env means unset: the manager picks by whether auth is on.
        return (value.strip() or None) if value is not None else None

    @field_validator("tls_cert_file", "tls_key_file", "tls_ca_file")
    @classmethod
    def _check_tls_file(cls, value: str | None) -> str | None:
        # TLS_CERT_FILE= (empty, as .env.example leaves it) means unset: plain HTTP.
        return (value.strip() or None) if value is not None else None

    @field_validator("worker_languages")
    @classmethod
    def _check_worker_languages(cls, value: str) -> str:
        from podcastpile.store.languages import normalize_language

        # Normalized here so a typo stops the worker at start, not its first claim.
        codes = [normalize_language(part) for part in value.split(",") if part.strip()]
        return ",".join(code for code in codes if code)

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        if value not in ("auto", "cpu", "cuda") and not (
            value.startswith("cuda:") and value[5:].isdigit()
        ):
            raise ValueError(f"{value!r} is not one of auto, cpu, cuda, cuda:N")
        return value

    @model_validator(mode="before")
    @classmethod
    def _legacy_archive_required(cls, data: Any) -> Any:
        # ARCHIVE_REQUIRED predates ARCHIVE_MODE; an old .env with ARCHIVE_REQUIRED=false must
        # not silently start archiving (and waiting for captures) after an upgrade.
        if isinstance(data, dict):
            lowered = {str(key).lower(): value for key, value in data.items()}
            legacy = lowered.get("archive_required")
            if legacy is not None and lowered.get("archive_mode") is None:
                required = str(legacy).strip().lower() in ("1", "true", "yes", "on")
                data = {**data, "archive_mode": ArchiveMode.required if required else ArchiveMode.off}
        return data

    @model_validator(mode="after")
    def _check_auth(self) -> "Settings":
        if self.worker_auth_enabled and not (
            self.worker_password and self.worker_password.get_secret_value()
        ):
            raise ValueError("WORKER_AUTH_ENABLED is true but WORKER_PASSWORD is empty; set one")
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError("set both TLS_CERT_FILE and TLS_KEY_FILE, or neither")
        if bool(self.ia_access_key) != bool(self.ia_secret_key):
            raise ValueError("set both IA_ACCESS_KEY and IA_SECRET_KEY, or neither")
        return self

    def __repr_args__(self) -> Any:
        # repr() of the settings ends up in tracebacks and log lines; SecretStr fields already
        # print as stars, DATABASE_URL (a plain string the store needs) and URLs must as well.
        for name, value in super().__repr_args__():
            if name == "database_url" and isinstance(value, str):
                value = safe_database_url(value)
            elif isinstance(value, str):
                value = mask_secrets(value)
            yield name, value

    @property
    def archives(self) -> bool:
        """New episodes wait for an Internet Archive capture before they are processed."""
        return self.archive_mode != ArchiveMode.off

    @property
    def archive_only(self) -> bool:
        """Only archived copies are ever downloaded, never the original URL."""
        return self.archive_mode == ArchiveMode.required

    @property
    def languages(self) -> list[str] | None:
        """WORKER_LANGUAGES as a list; None: every language."""
        return self.worker_languages.split(",") if self.worker_languages else None

    @property
    def lease_seconds(self) -> float:
        """How long a claim holds an episode before it is requeued."""
        return self.job_timeout_hours * 3600.0

    @cached_property
    def sqlalchemy_url(self) -> str:
        """DATABASE_URL with an explicit driver (psycopg 3 for PostgreSQL)."""
        return normalize_database_url(self.database_url)


def safe_database_url(value: str) -> str:
    """DATABASE_URL as it may be printed or logged: every password in it shown as `***`.

    Also for values that are not a usable URL (`postgresq://user:pw@host/db`, `user:pw@host`),
    since those are exactly the ones an error message quotes.
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(value)
    except (ArgumentError, ValueError):
        # Not a URL SQLAlchemy reads: hide everything from the first ':' after the user name to
        # the last '@' (a password may hold '/' or '@'), whatever the rest looks like.
        return mask_secrets(_LOOSE_USERINFO.sub(rf"\g<head>{MASK}@", value, count=1))
    # SQLAlchemy stops the password at the first '@' and leaves `?password=` alone: mask_secrets
    # hides the rest of the userinfo up to the last '@', and that query parameter.
    return mask_secrets(url.render_as_string(hide_password=True))


# Settings whose values are never shown in an error, not even masked.
_SECRET_NAMES = ("PASSWORD", "KEY", "SECRET", "TOKEN")
# userinfo of a value SQLAlchemy cannot parse: optional scheme, user, ':', anything to the last '@'
_LOOSE_USERINFO = re.compile(r"^(?P<head>(?:[A-Za-z][A-Za-z0-9+.\-]*:/*)?[^:/@]*:).*@", re.S)


def _describe(error: ValidationError) -> str:
    """One line per bad setting, named as the user writes it (its environment variable).

    Values are shown with their passwords hidden; secret settings are not shown at all.
    """
    lines = []
    for item in error.errors():
        name = ".".join(str(part) for part in item["loc"]).upper() or "settings"
        message = item["msg"].removeprefix("Value error, ")
        value = item.get("input")
        if name == "settings":
            lines.append(message)
            continue
        if isinstance(value, dict) or any(word in name for word in _SECRET_NAMES):
            shown = ""
        elif name == "DATABASE_URL" and isinstance(value, str):
            shown = f"={safe_database_url(value)!r}"
        else:
            shown = f"={mask_secrets(str(value))!r}" if isinstance(value, str) else f"={value!r}"
        lines.append(f"{name}{shown}: {message}")
    # Belt and braces: a validator's message may quote a value too.
    return mask_secrets("; ".join(lines))


def load_settings(env_file: str | Path | None = ".env", **overrides: object) -> Settings:
    """Read settings from the environment and `env_file`; raise `SettingsError` with a clear message."""
    try:
        return Settings(_env_file=env_file, **overrides)  # type: ignore[call-arg]
    except ValidationError as error:
        raise SettingsError(f"invalid settings: {_describe(error)}") from None
