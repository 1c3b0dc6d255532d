"""The few calls `ppcli worker` and `ppcli manager` make to the manager's Prefect API themselves.

Before starting workers (or setting up a server), `check_manager` asks whether the manager
answers and accepts the password, so a wrong address or password is one clear line at start
instead of a worker retrying (and logging tracebacks) forever. Which API and which password
come from `podcastpile.prefect_api.find_prefect_api`, the rule every command follows.

httpx is imported inside each function: every `ppcli` command imports this module (to
register the commands using it), and `ppcli stats` must not pay for httpx.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from podcastpile.prefect_api import PrefectAPI

TIMEOUT_SECONDS = 10.0
FINAL_STATES = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


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
    try:
        health = httpx.get(f"{url}/health", timeout=TIMEOUT_SECONDS)
        if health.status_code != 200:
            raise ManagerProblem(
                f"no Prefect API at {where} (GET {url}/health answered {health.status_code})", no_manager=True
            )
        answer = httpx.get(f"{url}/admin/version", headers=api.headers(), timeout=TIMEOUT_SECONDS)
    except httpx.HTTPError as error:
        raise ManagerProblem(f"cannot reach the manager at {where}: {_reason(error)}", no_manager=True) from None
    if answer.status_code == 401:
        if api.auth_string:
            raise ManagerProblem(f"the manager at {where}: wrong worker password (-p/--password or WORKER_PASSWORD)")
        raise ManagerProblem(
            f"the manager at {where} requires the worker password (-p/--password or WORKER_PASSWORD)"
        )
    if answer.status_code != 200:
        raise ManagerProblem(f"the manager at {where} answered {answer.status_code} to GET {url}/admin/version")


def is_healthy(api: PrefectAPI) -> bool:
    """Whether the server answers its (unauthenticated) health check now."""
    import httpx

    try:
        return httpx.get(f"{api.url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def flow_run_state(api: PrefectAPI, run_id: str) -> str | None:
    """The state type of a flow run (`RUNNING`, `COMPLETED`…), None when it cannot be read now."""
    import httpx

    try:
        answer = httpx.get(f"{api.url}/flow_runs/{run_id}", headers=api.headers(), timeout=TIMEOUT_SECONDS)
        answer.raise_for_status()
        return (answer.json().get("state") or {}).get("type")
    except (httpx.HTTPError, ValueError):
        return None


def online_workers(api: PrefectAPI, pool: str) -> int:
    """How many workers of `pool` the server sees online (0 when it cannot say)."""
    import httpx

    try:
        answer = httpx.post(f"{api.url}/work_pools/{pool}/workers/filter", json={}, headers=api.headers(), timeout=5)
        return sum(1 for worker in answer.json() if worker.get("status") == "ONLINE")
    except (httpx.HTTPError, ValueError, AttributeError):
        return 0


def _reason(error: Exception) -> str:
    """One line for a transport error (some have empty or multi-line messages)."""
    text = " ".join(str(error).split())
    return text or type(error).__name__
