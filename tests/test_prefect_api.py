"""The one rule every command follows to find the Prefect API and the password it sends."""

from __future__ import annotations

import base64
import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest

from podcastpile.config import Settings, load_settings
from podcastpile.prefect_api import (
    PrefectAPI,
    auth_headers,
    find_prefect_api,
    prefect_setting,
    server_password,
    system_ca_file,
)


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


def _handshake(context: ssl.SSLContext, server: ssl.SSLContext) -> None:
    """A TLS handshake with `server` on 127.0.0.1, verified with `context`; raises as a client would."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        def serve() -> None:
            connection, _ = listener.accept()
            try:
                with server.wrap_socket(connection, server_side=True):
                    pass
            except (ssl.SSLError, OSError):
                pass  # the client refused us: that is its side's result

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        with socket.create_connection(listener.getsockname(), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname="127.0.0.1"):
                pass
        thread.join(timeout=10)


def test_without_a_ca_file_https_trusts_this_machines_store_and_certifi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No --ca, TLS_CA_FILE or SSL_CERT_FILE: an organisation's CA installed in the OS store
    (OpenSSL's CA directory, here moved with SSL_CERT_DIR) is trusted, and certifi's public
    CAs too, by `ppcli`'s checks and, through the same file, by the workers' Prefect clients."""
    import certifi
    import trustme

    organisation = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    organisation.issue_cert("127.0.0.1").configure_cert(server)
    store = tmp_path / "certs"
    store.mkdir()
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    api = PrefectAPI("https://127.0.0.1:8000/api")
    try:
        monkeypatch.setenv("SSL_CERT_DIR", str(store))  # the OS store without the organisation's CA
        system_ca_file.cache_clear()
        with pytest.raises(ssl.SSLCertVerificationError):
            _handshake(api.ssl_context(), server)

        organisation.cert_pem.write_to_path(str(store / "0a1b2c3d.0"))  # installed as c_rehash names it
        system_ca_file.cache_clear()
        _handshake(api.ssl_context(), server)
        bundle = Path(api.verify_file())
        assert bundle.parent == tmp_path / "cache" / "podcastpile" and stat.S_IMODE(bundle.stat().st_mode) == 0o644
        text = bundle.read_bytes()
        assert organisation.cert_pem.bytes().strip() in text
        public = Path(certifi.where()).read_bytes().count(b"-----BEGIN CERTIFICATE-----")
        assert text.count(b"-----BEGIN CERTIFICATE-----") >= public + 1  # certifi's, each once, and ours
        # the workers and their flow runs get the same file; an http:// manager needs none
        assert api.client_environment()["PREFECT_API_SSL_CERT_FILE"] == str(bundle)
        assert "PREFECT_API_SSL_CERT_FILE" not in PrefectAPI("http://127.0.0.1:8000/api").client_environment()
        # a named CA file, or SSL_CERT_FILE, is used alone, as before
        assert PrefectAPI(api.url, ca_file="/srv/ca.pem").verify_file() == "/srv/ca.pem"
        monkeypatch.setenv("SSL_CERT_FILE", "/etc/my-ca.pem")
        assert api.verify_file() == "/etc/my-ca.pem"
    finally:
        system_ca_file.cache_clear()
