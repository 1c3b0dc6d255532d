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
            it); else SSL_CERT_FILE (OpenSSL's and Prefect's own override); else this machine's
            trust store (OpenSSL's default CA file and directory: the OS's ca-certificates,
            where an organisation's CA is installed) plus certifi's public CAs, as one PEM file
            (`system_ca_file`). The path is made absolute: workers and flow runs start elsewhere.

PREFECT_API_URL, PREFECT_API_AUTH_STRING, PREFECT_API_KEY and PREFECT_API_SSL_CERT_FILE are read
where Prefect's own client reads them: the environment, then `.env` in the working directory,
then the active profile (`prefect config set` writes there). The password goes as HTTP Basic
credentials, as Prefect's client sends PREFECT_API_AUTH_STRING; without one, PREFECT_API_KEY
goes as a bearer token. The CA file reaches workers and their flow runs as
PREFECT_API_SSL_CERT_FILE (`PrefectAPI.client_environment`): Prefect's client verifies with one
CA file (else certifi's alone), so the system store goes to it as a file too, and every client,
`ppcli`'s checks and the workers' Prefect clients alike, trusts the same CAs. (The `truststore`
package would verify through the OS in this process only; Prefect's worker and flow-run
processes build their own SSL contexts, from the file.)

The manager's own server demands a password only with WORKER_AUTH_ENABLED (`server_password`).

Plain Python without Prefect: the core never imports it, and `ppcli stats`, which must answer
in a fraction of a second, could not afford its import (seconds) anyway.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    import ssl

    from podcastpile.config import Settings

LOCAL_HOST = "127.0.0.1"
_HASHED_CERTIFICATE = re.compile(r"^[0-9a-f]{8}\.[0-9]+$")  # OpenSSL's CA directory names: c_rehash's
_PEM_CERTIFICATE = re.compile(rb"-----BEGIN CERTIFICATE-----\r?\n.+?-----END CERTIFICATE-----", re.DOTALL)


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
        """What an https:// API is verified with: `verify_file()`, the file the workers' own
        Prefect clients get too, so that a check passes exactly where they will. OSError or
        ssl.SSLError for an unreadable CA file."""
        import ssl  # here: commands that never call an https:// manager skip it

        return ssl.create_default_context(cafile=self.verify_file())

    def verify_file(self) -> str:
        """The CA file an https:// API is verified with: `ca_file`, else SSL_CERT_FILE, else
        this machine's trust store plus certifi's CAs (`system_ca_file`)."""
        return self.ca_file or os.environ.get("SSL_CERT_FILE") or system_ca_file()

    def client_environment(self) -> dict[str, str]:
        """The environment variables that point a Prefect client (a worker, `prefect deploy`)
        at this API with these credentials and, for https://, the CA file to verify it with."""
        env = {"PREFECT_API_URL": self.url}
        if self.ca_file or urlsplit(self.url).scheme == "https":
            env["PREFECT_API_SSL_CERT_FILE"] = self.verify_file()
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


@cache  # once per process: it reads a few hundred files, and the store changes with a restart
def system_ca_file() -> str:
    """A PEM file of this machine's trusted CAs plus certifi's: OpenSSL's default CA file and
    directory (SSL_CERT_DIR moves the directory) and certifi's bundle, each certificate once.
    Written once per content under the user's cache directory (a private temporary directory
    where that is not writable), never in a shared directory where another user could put
    their own CA first; Prefect's clients and flow runs read it by path."""
    import ssl
    import tempfile

    import certifi

    paths = ssl.get_default_verify_paths()
    sources = [Path(paths.openssl_cafile)]
    directory = os.environ.get(paths.openssl_capath_env) or paths.openssl_capath
    if directory and Path(directory).is_dir():
        sources += sorted(path for path in Path(directory).iterdir() if _HASHED_CERTIFICATE.match(path.name))
    sources.append(Path(certifi.where()))
    certificates: dict[bytes, None] = {}  # ordered, each certificate once
    for source in sources:
        try:
            text = source.read_bytes()
        except OSError:
            continue  # a missing default file (macOS, Windows): certifi's alone then
        for match in _PEM_CERTIFICATE.finditer(text):
            certificates.setdefault(match.group().replace(b"\r\n", b"\n"), None)
    bundle = b"\n".join(certificates) + b"\n"
    name = f"ca-bundle-{hashlib.sha256(bundle).hexdigest()[:16]}.pem"
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "podcastpile"
    for directory_path in (cache, None):
        try:
            if directory_path is None:
                directory_path = Path(tempfile.mkdtemp(prefix="podcastpile-ca-"))  # mode 0700
            directory_path.mkdir(parents=True, exist_ok=True)
            target = directory_path / name
            if not target.is_file() or target.read_bytes() != bundle:
                with tempfile.NamedTemporaryFile(dir=directory_path, delete=False) as temporary:
                    temporary.write(bundle)
                os.chmod(temporary.name, 0o644)  # public certificates: readable as any CA bundle
                os.replace(temporary.name, target)
            return str(target)
        except OSError:
            continue
    raise OSError("cannot write the CA bundle: neither the cache directory nor a temporary one is writable")


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
