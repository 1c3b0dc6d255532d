"""The few calls `ppcli worker` makes to the manager's Prefect API itself.

Before starting workers it checks that the manager answers and accepts the worker password,
so a wrong address or password is one clear line at start instead of a worker retrying (and
logging tracebacks) forever. The manager runs the Prefect server with
`PREFECT_SERVER_API_AUTH_STRING` set to the worker password; clients send it as HTTP Basic
credentials, which is what Prefect's own client does with `PREFECT_API_AUTH_STRING`.
"""

from __future__ import annotations

import base64
from urllib.parse import urlsplit

TIMEOUT_SECONDS = 10.0
FINAL_STATES = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


class ManagerProblem(RuntimeError):
    """The manager cannot be used as given; the message is one line for the operator."""

    def __init__(self, message: str, *, no_manager: bool = False) -> None:
        super().__init__(message)
        # Nothing listens there, or something other than Prefect does (as opposed to a refusal).
        self.no_manager = no_manager


def api_url(manager: str) -> str:
    """The Prefect API URL for a manager address: `http://host:8000` → `http://host:8000/api`."""
    url = manager.rstrip("/")
    return url if url.endswith("/api") else url + "/api"


def manager_address(api: str) -> str:
    """The address the operator gave, for messages: the API URL without `/api`."""
    return api.removesuffix("/api")


def prefect_defaults() -> tuple[str | None, str | None]:
    """The API URL and auth string Prefect itself would use (environment, then profile)."""
    from prefect.settings import get_current_settings

    api = get_current_settings().api
    return api.url, api.auth_string.get_secret_value() if api.auth_string else None


def headers(password: str | None) -> dict[str, str]:
    """The Authorization header Prefect's client sends for `PREFECT_API_AUTH_STRING`."""
    if not password:
        return {}
    return {"Authorization": "Basic " + base64.b64encode(password.encode()).decode()}


def check_manager(api: str, password: str | None) -> None:
    """Raise `ManagerProblem` unless the manager answers and accepts `password` (or needs none).

    `GET /health` is open on a Prefect server with auth on; `GET /admin/version` is not, so a
    401 there means the password is missing or wrong. The password is never part of a message.
    """
    import httpx  # here, not at the top: every ppcli command imports this module

    where = manager_address(api)
    if urlsplit(api).scheme not in ("http", "https"):
        raise ManagerProblem(f"the manager address must be a URL such as http://manager:8000, not {where!r}")
    try:
        health = httpx.get(f"{api}/health", timeout=TIMEOUT_SECONDS)
        if health.status_code != 200:
            raise ManagerProblem(
                f"no Prefect API at {where} (GET {api}/health answered {health.status_code})", no_manager=True
            )
        answer = httpx.get(f"{api}/admin/version", headers=headers(password), timeout=TIMEOUT_SECONDS)
    except httpx.HTTPError as error:
        raise ManagerProblem(f"cannot reach the manager at {where}: {_reason(error)}", no_manager=True) from None
    if answer.status_code == 401:
        if password:
            raise ManagerProblem(f"the manager at {where}: wrong worker password (-p/--password or WORKER_PASSWORD)")
        raise ManagerProblem(
            f"the manager at {where} requires the worker password (-p/--password or WORKER_PASSWORD)"
        )
    if answer.status_code != 200:
        raise ManagerProblem(f"the manager at {where} answered {answer.status_code} to GET {api}/admin/version")


def flow_run_state(api: str, password: str | None, run_id: str) -> str | None:
    """The state type of a flow run (`RUNNING`, `COMPLETED`…), None when it cannot be read now."""
    import httpx

    try:
        answer = httpx.get(f"{api}/flow_runs/{run_id}", headers=headers(password), timeout=TIMEOUT_SECONDS)
        answer.raise_for_status()
        return (answer.json().get("state") or {}).get("type")
    except (httpx.HTTPError, ValueError):
        return None


def _reason(error: Exception) -> str:
    """One line for a transport error (some have empty or multi-line messages)."""
    text = " ".join(str(error).split())
    return text or type(error).__name__
