"""The few calls `ppcli worker` and `ppcli manager` make to the manager's Prefect API themselves.

Before starting workers (or setting up a server), `check_manager` asks whether the manager
answers and accepts the password, so a wrong address or password is one clear line at start
instead of a worker retrying (and logging tracebacks) forever. Which API and which password
come from `podcastpile.prefect_api.find_prefect_api`, the rule every command follows.

An https:// manager is verified with the CA file that rule names (`--ca`, TLS_CA_FILE), else
with the CAs Prefect's client trusts by default, so that the check passes exactly where the
workers' own Prefect clients will; a certificate that does not verify is one line too.

httpx and ssl are imported inside each function: every `ppcli` command imports this module (to
register the commands using it), and `ppcli stats` must not pay for httpx.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import urlsplit

from podcastpile.prefect_api import PrefectAPI

if TYPE_CHECKING:
    import ssl

    import httpx

TIMEOUT_SECONDS = 10.0
FINAL_STATES = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
NAME_MISMATCH = (62, 64)  # OpenSSL's X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH
ExceptionT = TypeVar("ExceptionT", bound=BaseException)


class ManagerProblem(RuntimeError):
    """The manager cannot be used as given; the message is one line for the operator."""

    def __init__(self, message: str, *, no_manager: bool = False) -> None:
        super().__init__(message)
        # Nothing listens there, or something other than Prefect does (as opposed to a refusal).
        self.no_manager = no_manager


def check_manager(api: PrefectAPI) -> None:
    """Raise `ManagerProblem` unless the manager answers and accepts the password (or needs none).

    `GET /health` is open on a Prefect server with auth on; `GET /admin/version` is not, so a
    401 there means the password is missing or wrong. The password is never part of a message.
    """
    import httpx

    url, where = api.url, api.address
    if urlsplit(url).scheme not in ("http", "https"):
        raise ManagerProblem(f"the manager address must be a URL such as http://manager:8000, not {where!r}")
    verify = _verify(api)
    try:
        health = httpx.get(f"{url}/health", timeout=TIMEOUT_SECONDS, verify=verify)
        if health.status_code != 200:
            raise ManagerProblem(
                f"no Prefect API at {where} (GET {url}/health answered {health.status_code})", no_manager=True
            )
        answer = httpx.get(f"{url}/admin/version", headers=api.headers(), timeout=TIMEOUT_SECONDS, verify=verify)
    except httpx.HTTPError as error:
        raise _unreachable(api, error) from None
    if answer.status_code == 401:
        if api.auth_string:
            raise ManagerProblem(f"the manager at {where}: wrong worker password (-p/--password or WORKER_PASSWORD)")
        raise ManagerProblem(
            f"the manager at {where} requires the worker password (-p/--password or WORKER_PASSWORD)"
        )
    if answer.status_code != 200:
        raise ManagerProblem(f"the manager at {where} answered {answer.status_code} to GET {url}/admin/version")


def is_healthy(api: PrefectAPI) -> bool:
    """Whether the manager's own server answers its (unauthenticated) health check now.

    Raises `ManagerProblem` when it answers with a certificate that does not verify (or the CA
    file cannot be read): waiting would not change that. Its hints are for the manager's operator.
    """
    import ssl

    import httpx

    verify = _verify(api)
    try:
        return httpx.get(f"{api.url}/health", timeout=2, verify=verify).status_code == 200
    except httpx.HTTPError as error:
        if _cause(error, ssl.SSLCertVerificationError) is not None:
            raise _unreachable(api, error, itself=True) from None
        return False


def flow_run_state(api: PrefectAPI, run_id: str) -> str | None:
    """The state type of a flow run (`RUNNING`, `COMPLETED`…), None when it cannot be read now."""
    import httpx

    try:
        answer = httpx.get(f"{api.url}/flow_runs/{run_id}", headers=api.headers(), timeout=TIMEOUT_SECONDS,
                           verify=_verify(api))
        answer.raise_for_status()
        return (answer.json().get("state") or {}).get("type")
    except (httpx.HTTPError, ValueError, ManagerProblem):
        return None


def online_workers(api: PrefectAPI, pool: str) -> int:
    """How many workers of `pool` the server sees online (0 when it cannot say)."""
    import httpx

    try:
        answer = httpx.post(f"{api.url}/work_pools/{pool}/workers/filter", json={}, headers=api.headers(), timeout=5,
                            verify=_verify(api))
        return sum(1 for worker in answer.json() if worker.get("status") == "ONLINE")
    except (httpx.HTTPError, ValueError, AttributeError, ManagerProblem):
        return 0


def deployed_versions(api: PrefectAPI, pool: str) -> dict[str, str | None]:
    """The version of each deployment on `pool` (name → version; `ppcli setup` gives the
    manager's code version), or `ManagerProblem` when the manager cannot say."""
    import httpx

    body = {"work_pools": {"name": {"any_": [pool]}}}
    try:
        answer = httpx.post(f"{api.url}/deployments/filter", json=body, headers=api.headers(),
                            timeout=TIMEOUT_SECONDS, verify=_verify(api))
        answer.raise_for_status()
        return {str(deployment["name"]): deployment.get("version") for deployment in answer.json()}
    except (httpx.HTTPError, ValueError, KeyError, TypeError) as error:
        raise ManagerProblem(f"the manager at {api.address} did not list its deployments: {error}") from None


def _verify(api: PrefectAPI) -> ssl.SSLContext | bool:
    """What httpx verifies `api` with; `ManagerProblem` when the CA file cannot be read."""
    import ssl

    if urlsplit(api.url).scheme != "https":
        return True  # nothing to verify; a CA named for a plain http:// manager is not read
    try:
        return api.ssl_context()
    except (OSError, ssl.SSLError) as error:
        where = api.ca_file or os.environ.get("SSL_CERT_FILE") or "the default CA bundle"
        # ssl.SSLError is an OSError too; its strerror is OpenSSL's `[X509] PEM lib`
        reason = "no PEM certificate in it" if isinstance(error, ssl.SSLError) else (error.strerror or _reason(error))
        raise ManagerProblem(f"cannot read the CA file {where} (--ca, TLS_CA_FILE or "
                             f"PREFECT_API_SSL_CERT_FILE): {reason}") from None


def _unreachable(api: PrefectAPI, error: httpx.HTTPError, *, itself: bool = False) -> ManagerProblem:
    """One line for a manager that could not be asked: its certificate, TLS, or the network.
    `itself`: the manager asking its own server, whose certificate and address it chose."""
    import ssl

    import httpx

    where, https = api.address, urlsplit(api.url).scheme == "https"
    unverified = _cause(error, ssl.SSLCertVerificationError)
    if unverified is not None:
        reason = str(unverified.verify_message or _reason(unverified)).rstrip(".")
        if itself and unverified.verify_code in NAME_MISMATCH:
            hint = ("the manager calls itself at this address: use a certificate that names it too, "
                    "or bind a name the certificate is for with --host NAME")
        elif itself:
            hint = ("give the CA that signed the certificate with --ca FILE or TLS_CA_FILE (by default the "
                    "manager trusts its certificate file only when it holds a self-signed certificate)")
        elif unverified.verify_code in NAME_MISMATCH:
            hint = "use a name or address the certificate is for in the manager's URL"
        elif api.ca_file:
            hint = f"{api.ca_file} does not hold the CA that signed it (--ca or TLS_CA_FILE)"
        else:
            hint = "give the CA that signed it with --ca FILE or TLS_CA_FILE"
        return ManagerProblem(f"cannot verify the certificate of the manager at {where}: {reason}; {hint}")
    failed_tls = _cause(error, ssl.SSLError)
    if https and failed_tls is not None:
        return ManagerProblem(f"cannot reach the manager at {where}: TLS failed ({_reason(failed_tls)}); "
                              "does it serve plain http://?", no_manager=True)
    message = f"cannot reach the manager at {where}: {_reason(error)}"
    if not https and isinstance(error, (httpx.RemoteProtocolError, httpx.ReadError)):
        message += " (a manager serving HTTPS drops plain HTTP: use https://)"
    return ManagerProblem(message, no_manager=True)


def _cause(error: BaseException, kind: type[ExceptionT]) -> ExceptionT | None:
    """The first exception of `kind` among `error` and what caused it (httpx wraps ssl's errors)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, kind):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _reason(error: Exception) -> str:
    """One line for a transport error (some have empty or multi-line messages)."""
    text = " ".join(str(error).split())
    return text or type(error).__name__
