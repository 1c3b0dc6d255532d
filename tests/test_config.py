"""Settings: the original Podcast Pile's names and defaults, `.env` reading, and one clear message for bad values."""

from __future__ import annotations

from pathlib import Path

import pytest

from podcastpile.config import ArchiveMode, DiarizationLatency, SettingsError, load_settings

SEED_SETTINGS = [
    "DATABASE_URL", "HOST", "PORT", "WORKER_AUTH_ENABLED", "WORKER_PASSWORD", "JOB_TIMEOUT_HOURS",
]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SEED_SETTINGS + ["MAX_ATTEMPTS", "DIAR_LATENCY", "IA_ACCESS_KEY", "IA_SECRET_KEY", "ARCHIVE_MODE", "ARCHIVE_REQUIRED"]:
        monkeypatch.delenv(name, raising=False)


def test_seed_defaults() -> None:
    settings = load_settings(env_file=None)
    assert settings.database_url == "sqlite:///./podcastpile.db"
    assert settings.host is None  # the manager picks 0.0.0.0 with auth, 127.0.0.1 without
    assert settings.port == 8000
    assert settings.worker_auth_enabled is False
    assert settings.worker_password is None
    assert settings.job_timeout_hours == 2
    assert settings.lease_seconds == 7200
    assert settings.diar_latency is DiarizationLatency.very_high
    assert settings.archive_mode is ArchiveMode.required and settings.archives


def test_environment_and_env_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("PORT=9000\nJOB_TIMEOUT_HOURS=0.5\nMAX_ATTEMPTS=5\n")
    monkeypatch.setenv("PORT", "9100")  # the environment wins over .env
    settings = load_settings(env_file=env_file)
    assert settings.port == 9100
    assert settings.lease_seconds == 1800
    assert settings.max_attempts == 5


def test_postgres_url_gets_psycopg_driver() -> None:
    settings = load_settings(env_file=None, database_url="postgresql://u:p@db:5432/pile")
    assert settings.sqlalchemy_url == "postgresql+psycopg://u:p@db:5432/pile"


def test_env_example_documents_every_setting() -> None:
    from podcastpile.config import Settings

    example = (Path(__file__).parent.parent / ".env.example").read_text()
    documented = {line.split("=")[0].lstrip("# ").strip() for line in example.splitlines() if "=" in line}
    missing = {name.upper() for name in Settings.model_fields} - documented
    assert not missing, f".env.example lacks {sorted(missing)}"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"job_timeout_hours": -1}, "JOB_TIMEOUT_HOURS"),
        ({"job_timeout_hours": 0}, "JOB_TIMEOUT_HOURS"),
        ({"database_url": "::not a url::"}, "DATABASE_URL"),
        ({"database_url": "mysql://u@h/db"}, "unsupported database 'mysql'"),
        ({"worker_auth_enabled": True}, "WORKER_PASSWORD is empty"),
        ({"port": 70000}, "PORT"),
        ({"max_attempts": 0}, "MAX_ATTEMPTS"),
        ({"diar_latency": "fast"}, "DIAR_LATENCY"),
        ({"device": "tpu"}, "DEVICE"),
        ({"ia_access_key": "only-half"}, "IA_SECRET_KEY"),
    ],
)
def test_bad_settings_name_the_setting(overrides: dict, message: str) -> None:
    with pytest.raises(SettingsError, match=message) as caught:
        load_settings(env_file=None, **overrides)
    assert "\n" not in str(caught.value)


def test_auth_with_password_is_fine() -> None:
    settings = load_settings(env_file=None, worker_auth_enabled=True, worker_password="s3cret")
    assert settings.worker_password is not None
    assert settings.worker_password.get_secret_value() == "s3cret"


def test_archive_mode_and_its_old_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARCHIVE_REQUIRED", "false")  # an old .env: must not start archiving
    assert load_settings(env_file=None).archive_mode is ArchiveMode.off
    monkeypatch.setenv("ARCHIVE_REQUIRED", "true")
    assert load_settings(env_file=None).archive_mode is ArchiveMode.required
    monkeypatch.setenv("ARCHIVE_MODE", "prefer")  # the new name wins
    settings = load_settings(env_file=None)
    assert settings.archive_mode is ArchiveMode.prefer and settings.archives
    monkeypatch.setenv("ARCHIVE_MODE", "sometimes")
    with pytest.raises(SettingsError, match="ARCHIVE_MODE"):
        load_settings(env_file=None)
