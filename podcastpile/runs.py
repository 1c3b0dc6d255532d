"""Which flow runs holding episodes are dead, asked of the Prefect API without importing Prefect.

`ppcli stats` shows how many leased episodes are held by dead batch runs next to the expired
leases. The store records the run of each claim (`claimed_by_run`); Prefect knows which runs
are dead. Importing Prefect costs seconds and `ppcli stats` must answer in a fraction of one,
so this is one plain HTTP request (`POST {api}/flow_runs/filter`) with the stdlib client (a
third of httpx's import time), a short timeout, and never an exception: when there is no
server to ask, the count is unknown and says why. Which server, and with which password, is
the rule every command follows (`podcastpile.prefect_api`).

A run is dead in the states `dispatch` requeues the episodes of (`DEAD_STATES`, used by
tasks/dispatch.py too): crashed, failed or cancelled. A run id the server does not know (a run
of `ppcli process`'s temporary local server, another Prefect database) is not counted as dead,
since it may well be alive elsewhere and nothing requeues its episodes but lease expiry: it is
counted apart, as held by runs unknown to Prefect.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from podcastpile.prefect_api import PrefectAPI

# The flow-run state types whose episodes `dispatch` gives back at once (tasks/dispatch.py).
DEAD_STATES = ("CRASHED", "FAILED", "CANCELLED")
# The name of the Failed state a worker gives a run that is not one of its checkout's
# deployments (deployments/worker.py).
REFUSED_STATE = "Refused"
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


@dataclass(frozen=True)
class RefusedRuns:
    """Flow runs the workers refused (deployments/allowlist.py): None when unknown."""

    count: int | None
    last_message: str | None = None  # the latest refusal's reason, as its state says it
    reason: str | None = None  # why the count is unknown

    def describe(self) -> str:
        """`0`, `3 (last: refused by worker w: deployment 'x' is not ...)`, or `unknown (...)`."""
        if self.count is None:
            return f"unknown ({self.reason})"
        return f"{self.count:,}" + (f" (last: {self.last_message})" if self.count and self.last_message else "")


def refused_runs(api: PrefectAPI | None, *, timeout: float = TIMEOUT_SECONDS) -> RefusedRuns:
    """How many flow runs workers refused, and the latest one's reason; never raises."""
    if api is None:
        return RefusedRuns(count=None, reason="no Prefect server")
    refused = {"flow_runs": {"state": {"name": {"any_": [REFUSED_STATE]}}}}
    try:
        count = _post(api, "/flow_runs/count", refused, timeout)
        latest = _post(api, "/flow_runs/filter", {**refused, "sort": "END_TIME_DESC", "limit": 1}, timeout) if count else []
    except RunStatesUnavailable as error:
        return RefusedRuns(count=None, reason=str(error))
    message = ((latest[0].get("state") or {}).get("message") if latest else None) or None
    return RefusedRuns(count=int(count), last_message=message)


def _post(api: PrefectAPI, path: str, body: dict, timeout: float) -> object:
    """One JSON POST to the Prefect API; RunStatesUnavailable with a short reason on any failure."""
    from urllib.error import HTTPError, URLError
    from urllib.request import Request, urlopen

    headers = {"Content-Type": "application/json", "Accept": "application/json", **api.headers()}
    request = Request(f"{api.url}{path}", data=json.dumps(body).encode(), headers=headers, method="POST")
    try:
        # An https:// manager is verified as the workers verify it (--ca, TLS_CA_FILE, ...).
        context = api.ssl_context() if api.url.startswith("https://") else None
        with urlopen(request, timeout=timeout, context=context) as response:
            return json.loads(response.read())
    except HTTPError as error:
        raise RunStatesUnavailable(f"Prefect server answered {error.code}") from None
    except (URLError, OSError) as error:
        import ssl

        if isinstance(getattr(error, "reason", error), ssl.SSLError):
            raise RunStatesUnavailable("cannot verify the Prefect server's certificate; give its CA with TLS_CA_FILE") from error
        raise RunStatesUnavailable("Prefect server unreachable") from error
    except ValueError:
        raise RunStatesUnavailable("Prefect server answered something else than JSON") from None


def run_states(
    run_ids: list[str], api: PrefectAPI | None, *, timeout: float = TIMEOUT_SECONDS
) -> dict[str, str]:
    """State type (`RUNNING`, `CRASHED`, …) of each run the server at `api` knows, by run id.

    Raises `RunStatesUnavailable` with a short reason when there is no server (`api` is None),
    or it cannot be asked, or it does not answer.
    """
    if api is None:
        raise RunStatesUnavailable("no Prefect server")
    states: dict[str, str] = {}
    for start in range(0, len(run_ids), _PAGE):
        page = run_ids[start:start + _PAGE]
        runs = _post(api, "/flow_runs/filter", {"flow_runs": {"id": {"any_": page}}, "limit": _PAGE}, timeout)
        if not isinstance(runs, list):
            raise RunStatesUnavailable("Prefect server answered something else than runs")
        for run in runs:
            state = run.get("state") or {}
            states[str(run["id"])] = str(state.get("type") or "")
    return states


def held_by_runs(
    leased: Mapping[str | None, int], api: PrefectAPI | None, *, timeout: float = TIMEOUT_SECONDS
) -> HeldByRuns:
    """Split leased-episode counts per claiming run (`EpisodeStore.leased_by_run`) into held by
    dead runs and by runs Prefect does not know, asking the server at `api` (None: there is
    none) only when something is leased."""
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
        states = run_states(sorted(held), api, timeout=timeout)
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
