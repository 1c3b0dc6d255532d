"""The one rule every command follows to find the Prefect API and the password it sends."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from podcastpile.config import Settings, load_settings
from podcastpile.prefect_api import auth_headers, find_prefect_api, prefect_setting, server_password


def config(**values: object) -> Settings:
    return load_settings(env_file=None, **{"worker_password": None, "port": 8123, **values})


@pytest.fixture(autouse=True)
def no_dotenv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory without `.env`; returns it."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def profile(home: Path, **values: str) -> dict[str, str]:
    """An environment whose active Prefect profile (in `home`) holds `values`."""
    home.mkdir(exist_ok=True)
    lines = "".join(f'{key} = "{value}"\n' for key, value in values.items())
    (home / "profiles.toml").write_text(f'active = "ops"\n[profiles.ops]\n{lines}')
    return {"PREFECT_HOME": str(home)}


def test_address_option_then_setting_then_the_local_guess(tmp_path: Path) -> None:
    env = {"PREFECT_HOME": str(tmp_path / "none"), "PREFECT_API_URL": "http://env:4200/api/"}
    api = find_prefect_api(config(), manager="http://flag:8000", environ=env)
    assert api is not None and (api.url, api.address, api.guessed) == ("http://flag:8000/api", "http://flag:8000", False)
    api = find_prefect_api(config(), environ=env)
    assert api is not None and api.url == "http://env:4200/api"
    bare = {"PREFECT_HOME": str(tmp_path / "none")}
    assert find_prefect_api(config(), environ=bare) is None
    api = find_prefect_api(config(), environ=bare, guess_local=True)
    assert api is not None and (api.url, api.guessed) == ("http://127.0.0.1:8123/api", True)


def test_prefect_api_url_is_taken_as_prefect_takes_it(tmp_path: Path) -> None:
    # A full API URL (Prefect Cloud's does not end in /api): only -m gets `/api` added.
    cloud = "https://api.prefect.cloud/api/accounts/a/workspaces/w"
    api = find_prefect_api(config(), environ={"PREFECT_HOME": str(tmp_path), "PREFECT_API_URL": cloud})
    assert api is not None and api.url == cloud
    bare = find_prefect_api(config(), environ={"PREFECT_HOME": str(tmp_path), "PREFECT_API_URL": "http://m:8000/"})
    assert bare is not None and bare.url == "http://m:8000/api"


def test_settings_come_from_the_environment_then_dotenv_then_the_active_profile(
    tmp_path: Path, no_dotenv: Path
) -> None:
    env = profile(tmp_path / "home", PREFECT_API_URL="http://profile/api", PREFECT_API_AUTH_STRING="p")
    assert prefect_setting("PREFECT_API_URL", env) == "http://profile/api"
    (no_dotenv / ".env").write_text("PREFECT_API_URL=http://dotenv/api\n")
    assert prefect_setting("PREFECT_API_URL", env) == "http://dotenv/api"
    assert prefect_setting("PREFECT_API_URL", {**env, "PREFECT_API_URL": "http://env/api"}) == "http://env/api"
    assert prefect_setting("PREFECT_API_URL", {**env, "PREFECT_API_URL": ""}) == "http://dotenv/api"  # empty: unset
    assert prefect_setting("PREFECT_API_AUTH_STRING", {**env, "PREFECT_PROFILE": "other"}) is None


def test_password_option_then_worker_password_even_with_auth_off_then_auth_string(tmp_path: Path) -> None:
    env = {"PREFECT_HOME": str(tmp_path), "PREFECT_API_URL": "http://m/api", "PREFECT_API_AUTH_STRING": "auth"}
    with_password = config(worker_password="worker", worker_auth_enabled=False)
    assert find_prefect_api(with_password, password="flag", environ=env).auth_string == "flag"  # type: ignore[union-attr]
    assert find_prefect_api(with_password, environ=env).auth_string == "worker"  # type: ignore[union-attr]
    assert find_prefect_api(with_password, password="", environ=env).auth_string == "worker"  # type: ignore[union-attr]
    assert find_prefect_api(config(), environ=env).auth_string == "auth"  # type: ignore[union-attr]
    bare = find_prefect_api(config(), environ={"PREFECT_HOME": str(tmp_path), "PREFECT_API_URL": "http://m/api"})
    assert bare is not None and bare.auth_string is None and bare.headers() == {}


def test_credentials_are_sent_as_prefects_client_sends_them(tmp_path: Path) -> None:
    env = {"PREFECT_HOME": str(tmp_path), "PREFECT_API_URL": "http://m/api", "PREFECT_API_KEY": "key"}
    api = find_prefect_api(config(worker_password="s3cret"), environ=env)
    assert api is not None
    assert api.headers() == {"Authorization": "Basic " + base64.b64encode(b"s3cret").decode()}
    assert api.client_environment() == {"PREFECT_API_URL": "http://m/api", "PREFECT_API_AUTH_STRING": "s3cret"}
    assert "s3cret" not in repr(api)
    keyed = find_prefect_api(config(), environ=env)
    assert keyed is not None and keyed.headers() == {"Authorization": "Bearer key"}
    assert auth_headers(None) == {}


def test_the_managers_server_demands_the_password_only_with_auth_on() -> None:
    assert server_password(config(worker_password="s3cret", worker_auth_enabled=True)) == "s3cret"
    assert server_password(config(worker_password="s3cret", worker_auth_enabled=False)) is None
