"""Which Prefect API a command talks to, and the password it sends there: one rule for all.

Every command that calls the manager's Prefect API (`ppcli worker`, `ppcli setup`, `ppcli
manager`'s calls to its own server, `ppcli stats` asking which runs are dead) finds it with
`find_prefect_api()`:

  address   the -m/--manager option (`http://host:8000`; `/api` is added when missing);
            else PREFECT_API_URL, taken as Prefect takes it (a full API URL: Prefect
            Cloud's ends in its workspace), except that a bare `http://host:port` gets `/api`;
            else, only where the command allows the guess (`ppcli worker`), the manager on this
            machine at PORT (the one-machine install: `ppcli manager` plus `ppcli worker`).
  password  the -p/--password option; else WORKER_PASSWORD whenever it is set (a server
            without auth ignores it, so sending it is never wrong); else PREFECT_API_AUTH_STRING.
  CA        for an https:// manager, the certificates its certificate is verified with: the
            --ca option; else TLS_CA_FILE; else PREFECT_API_SSL_CERT_FILE (where Prefect reads
            it); else what Prefect's client trusts by default, SSL_CERT_FILE or certifi's bundle
            of public CAs. The path is made absolute: workers and flow runs start elsewhere.

PREFECT_API_URL, PREFECT_API_AUTH_STRING, PREFECT_API_KEY and PREFECT_API_SSL_CERT_FILE are read
where Prefect's own client reads them: the environment, then `.env` in the working directory,
then the active profile (`prefect config set` writes there). The password goes as HTTP Basic
credentials, as Prefect's client sends PREFECT_API_AUTH_STRING; without one, PREFECT_API_KEY
goes as a bearer token. The CA file reaches workers and their flow runs as
PREFECT_API_SSL_CERT_FILE (`PrefectAPI.client_environment`).

The manager's own server demands a password only with WORKER_AUTH_ENABLED (`server_password`).

Plain Python without Prefect: the core never imports it, and `ppcli stats`, which must answer
in a fraction of a second, could not afford its import (seconds) anyway.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    import ssl

    from podcastpile.config import Settings

LOCAL_HOST = "127.0.0.1"


@dataclass(frozen=True)
class PrefectAPI:
    """A Prefect API to call and the credentials to send; the secrets never show in its repr."""

    url: str  # the API URL, e.g. http://manager:8000/api, without a trailing slash
    auth_string: str | None = field(default=None, repr=False)  # sent as HTTP Basic credentials
    api_key: str | None = field(default=None, repr=False)  # sent as a bearer token (Prefect Cloud)
    guessed: bool = False  # nothing named a server: this is the manager on this machine at PORT
    ca_file: str | None = None  # an absolute path: the CAs an https:// manager is verified with

    @property
    def address(self) -> str:
        """The address as operators give it to -m, for messages: the URL without `/api`."""
        return self.url.removesuffix("/api")

    def headers(self) -> dict[str, str]:
        """The Authorization header Prefect's client would send with these credentials."""
        return auth_headers(self.auth_string, self.api_key)

    def ssl_context(self) -> ssl.SSLContext:
        """What an https:// API is verified with: `ca_file`, else the CAs Prefect's client
        trusts by default (SSL_CERT_FILE, else certifi's bundle), so that a check passes exactly
        where the workers' own clients will. OSError or ssl.SSLError for an unreadable CA file."""
        import ssl  # here, like certifi: commands that never call an https:// manager skip both

        cafile = self.ca_file or os.environ.get("SSL_CERT_FILE")
        if not cafile:
            import certifi

            cafile = certifi.where()
        return ssl.create_default_context(cafile=cafile)

    def client_environment(self) -> dict[str, str]:
        """The environment variables that point a Prefect client (a worker, `prefect deploy`)
        at this API with these credentials and, where one is named, this CA file."""
        env = {"PREFECT_API_URL": self.url}
        if self.ca_file:
            env["PREFECT_API_SSL_CERT_FILE"] = self.ca_file
        if self.auth_string:
            env["PREFECT_API_AUTH_STRING"] = self.auth_string
        if self.api_key:
            env["PREFECT_API_KEY"] = self.api_key
        return env


def find_prefect_api(
    settings: Settings,
    *,
    manager: str | None = None,
    password: str | None = None,
    ca: str | None = None,
    guess_local: bool = False,
    environ: Mapping[str, str] | None = None,
) -> PrefectAPI | None:
    """The Prefect API to call, its password and CA file, by the rule in this module's docstring.

    `manager`, `password` and `ca` are the command's -m, -p and --ca options (None or empty: not given).
    None when nothing names a server and `guess_local` is off.
    """
    environ = os.environ if environ is None else environ
    guessed = False
    if manager:
        url = api_url(manager)
    elif configured := prefect_setting("PREFECT_API_URL", environ):
        url = configured.strip().rstrip("/")
        if not urlsplit(url).path:  # a bare server address, `http://manager:8000`, cannot be the API
            url += "/api"
    elif guess_local:
        url, guessed = api_url(f"http://{LOCAL_HOST}:{settings.port}"), True
    else:
        return None
    worker_password = settings.worker_password.get_secret_value() if settings.worker_password else None
    auth = password or worker_password or prefect_setting("PREFECT_API_AUTH_STRING", environ)
    key = None if auth else prefect_setting("PREFECT_API_KEY", environ)
    ca_file = ca or settings.tls_ca_file or prefect_setting("PREFECT_API_SSL_CERT_FILE", environ)
    if ca_file:
        ca_file = str(Path(ca_file).expanduser().absolute())
    return PrefectAPI(url, auth_string=auth or None, api_key=key, guessed=guessed, ca_file=ca_file)


def server_password(settings: Settings) -> str | None:
    """The password the manager's own Prefect server demands: WORKER_PASSWORD when
    WORKER_AUTH_ENABLED is on, else none (the server is open)."""
    secret = settings.worker_password if settings.worker_auth_enabled else None
    return secret.get_secret_value() if secret else None


def api_url(manager: str) -> str:
    """The Prefect API URL for a manager address: `http://host:8000` → `http://host:8000/api`."""
    url = manager.strip().rstrip("/")
    return url if url.endswith("/api") else url + "/api"


def auth_headers(auth_string: str | None, api_key: str | None = None) -> dict[str, str]:
    """Prefect's client rule: PREFECT_API_AUTH_STRING as HTTP Basic credentials, else
    PREFECT_API_KEY as a bearer token, else nothing."""
    if auth_string:
        return {"Authorization": "Basic " + base64.b64encode(auth_string.encode()).decode()}
    if api_key:
        return {"Authorization": f"Bearer {api_key}"}
    return {}


def prefect_setting(name: str, environ: Mapping[str, str] | None = None) -> str | None:
    """A Prefect setting (`PREFECT_API_URL`…) where Prefect reads it: the environment, then
    `.env` in the working directory, then the active profile. None when unset or empty."""
    environ = os.environ if environ is None else environ
    for source in (environ, _dotenv(), _active_profile(environ)):
        value = source.get(name)
        if value not in (None, ""):
            return str(value)
    return None


def _dotenv() -> Mapping[str, Any]:
    """`.env` in the working directory, which Prefect's settings read too."""
    path = Path(".env")
    if not path.is_file():
        return {}
    from dotenv import dotenv_values  # here: most commands never need it

    try:
        return {key: value for key, value in dotenv_values(path).items() if value is not None}
    except (OSError, UnicodeDecodeError):
        return {}


def _active_profile(environ: Mapping[str, str]) -> Mapping[str, Any]:
    """The settings of the active Prefect profile (PREFECT_PROFILE, else the file's `active`)
    in PREFECT_PROFILES_PATH, else `profiles.toml` in PREFECT_HOME (default `~/.prefect`)."""
    home = Path(environ.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser()
    path = Path(environ.get("PREFECT_PROFILES_PATH") or home / "profiles.toml").expanduser()
    try:
        import tomllib

        profiles = tomllib.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    active = environ.get("PREFECT_PROFILE") or profiles.get("active")
    chosen = profiles.get("profiles", {}).get(active, {}) if active else {}
    return chosen if isinstance(chosen, dict) else {}
