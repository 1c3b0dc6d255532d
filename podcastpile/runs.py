"""Which flow runs holding episodes are dead, asked of the Prefect API without importing Prefect.

`ppcli stats` shows how many leased episodes are held by dead batch runs next to the expired
leases. The store records the run of each claim (`claimed_by_run`); Prefect knows which runs
are dead. Importing Prefect costs seconds and `ppcli stats` must answer in a fraction of one,
so this is one plain HTTP request (`POST {PREFECT_API_URL}/flow_runs/filter`) with the stdlib
client (a third of httpx's import time), a short timeout, and never an exception: when there
is no server to ask, the count is unknown and says why.

A run is dead in the states `dispatch` requeues the episodes of (`DEAD_STATES`, used by
tasks/dispatch.py too): crashed, failed or cancelled. A run id the server does not know (a run
of `ppcli process`'s temporary local server, another Prefect database) is not counted as dead,
since it may well be alive elsewhere and nothing requeues its episodes but lease expiry: it is
counted apart, as held by runs unknown to Prefect.
"""

from __future__ import annotations

import base64
import json
import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

# The flow-run state types whose episodes `dispatch` gives back at once (tasks/dispatch.py).
DEAD_STATES = ("CRASHED", "FAILED", "CANCELLED")
TIMEOUT_SECONDS = 1.0
_PAGE = 200  # Prefect's default (and usual maximum) page size for filters


class RunStatesUnavailable(RuntimeError):
    """The Prefect API could not say; the message is the reason in a few words."""


@dataclass(frozen=True)
class HeldByRuns:
    """Leased episodes by the fate of the run that holds them. Counts are None when unknown."""

    dead: int | None
    unknown_runs: int | None  # held by runs the server does not know, or by no recorded run
    reason: str | None = None  # why the counts are unknown

    def describe(self) -> str:
        """`3`, `3 (and 2 by runs Prefect does not know)`, or `unknown (no Prefect server)`."""
        if self.dead is None:
            return f"unknown ({self.reason})"
        if self.unknown_runs:
            return f"{self.dead:,} (and {self.unknown_runs:,} by runs this Prefect server does not know)"
        return f"{self.dead:,}"


def api_url() -> str | None:
    """PREFECT_API_URL from the environment, else from the active Prefect profile (what
    `prefect config set` writes), else None."""
    url = os.environ.get("PREFECT_API_URL")
    if url:
        return url.rstrip("/")
    home = Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser()
    path = Path(os.environ.get("PREFECT_PROFILES_PATH") or home / "profiles.toml").expanduser()
    try:
        import tomllib

        profiles = tomllib.loads(path.read_text())
    except (OSError, ValueError):
        return None
    active = os.environ.get("PREFECT_PROFILE") or profiles.get("active")
    url = profiles.get("profiles", {}).get(active, {}).get("PREFECT_API_URL") if active else None
    return str(url).rstrip("/") if url else None


def _headers() -> dict[str, str]:
    """Prefect's own client rule: PREFECT_API_AUTH_STRING (HTTP Basic), else PREFECT_API_KEY."""
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if auth := os.environ.get("PREFECT_API_AUTH_STRING"):
        headers["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
    elif key := os.environ.get("PREFECT_API_KEY"):
        headers["Authorization"] = f"Bearer {key}"
    return headers


def run_states(run_ids: list[str], *, timeout: float = TIMEOUT_SECONDS) -> dict[str, str]:
    """State type (`RUNNING`, `CRASHED`, …) of each run the server knows, by run id.

    Raises `RunStatesUnavailable` with a short reason when it cannot be asked or does not answer.
    """
    url = api_url()
    if not url:
        raise RunStatesUnavailable("no Prefect server")
    from urllib.error import HTTPError, URLError
    from urllib.request import Request, urlopen

    states: dict[str, str] = {}
    for start in range(0, len(run_ids), _PAGE):
        page = run_ids[start:start + _PAGE]
        body = json.dumps({"flow_runs": {"id": {"any_": page}}, "limit": _PAGE}).encode()
        request = Request(f"{url}/flow_runs/filter", data=body, headers=_headers(), method="POST")
        try:
            with urlopen(request, timeout=timeout) as response:
                runs = json.loads(response.read())
        except HTTPError as error:
            raise RunStatesUnavailable(f"Prefect server answered {error.code}") from None
        except (URLError, OSError) as error:
            raise RunStatesUnavailable("Prefect server unreachable") from error
        except ValueError:
            raise RunStatesUnavailable("Prefect server answered something else than runs") from None
        for run in runs:
            state = run.get("state") or {}
            states[str(run["id"])] = str(state.get("type") or "")
    return states


def held_by_runs(leased: Mapping[str | None, int], *, timeout: float = TIMEOUT_SECONDS) -> HeldByRuns:
    """Split leased-episode counts per claiming run (`EpisodeStore.leased_by_run`) into held by
    dead runs and by runs Prefect does not know; asks the server only when something is leased."""
    held: dict[str, int] = {}  # canonical run id → episodes
    unrecorded = 0  # claims with no run id, or one that is no Prefect run id
    for run, count in leased.items():
        canonical = _canonical(run)
        if canonical is None:
            unrecorded += count
        else:
            held[canonical] = held.get(canonical, 0) + count
    if not held:
        return HeldByRuns(dead=0, unknown_runs=unrecorded)
    try:
        states = run_states(sorted(held), timeout=timeout)
    except RunStatesUnavailable as error:
        return HeldByRuns(dead=None, unknown_runs=None, reason=str(error))
    states = {_canonical(run): state for run, state in states.items()}
    dead = sum(count for run, count in held.items() if states.get(run) in DEAD_STATES)
    unknown = sum(count for run, count in held.items() if run not in states)
    return HeldByRuns(dead=dead, unknown_runs=unknown + unrecorded)


def _canonical(run_id: str | None) -> str | None:
    """The run id as Prefect writes it, or None if it is no UUID (the filter would answer 422)."""
    try:
        return str(uuid.UUID(run_id)) if run_id else None
    except ValueError:
        return None
