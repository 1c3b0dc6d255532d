"""What `ppcli worker` checks about the code it runs before it starts any Prefect worker.

A GPU machine may run the installed package (`pip install podcastpile[worker]`) rather than a
checkout. Two things can then go wrong quietly, so each is one line at start instead:
- the directory it starts in (where its flow runs start, deployments/worker.py) holds another
  copy of the code, which Prefect's flow loader would import in place of the installed one;
- the installed code is another version than the one the manager deployed
  (deployments/versions.py: its runs would be refused).
It also says when the pool on the server is not of the `podcastpile` type (an older setup's
`process` pool, or one made again by someone holding the API): this worker still runs only its
own deployments (it passes `--type`), but any worker started there without `--type` would run
whatever it is given.
"""

from __future__ import annotations

from pathlib import Path

from deployments.allowlist import ROOT, WORKER_TYPE, Allowlist, is_checkout
from deployments.versions import fleet_mismatch
from podcastpile.cli.manager_api import deployed_versions
from podcastpile.prefect_api import PrefectAPI
from podcastpile.version import code_version

PACKAGES = ("podcastpile", "flows", "tasks", "deployments")


def shadowing_copy(directory: Path) -> str | None:
    """The first of this project's packages that `directory` holds another copy of, when flow
    runs start there (an installed package: a checkout's runs start in the checkout itself)."""
    if is_checkout() or directory.resolve() == ROOT:
        return None
    for package in PACKAGES:
        if (directory / package / "__init__.py").is_file():
            return package
    return None


def version_problem(api: PrefectAPI, pool: str, allowlist: Allowlist) -> str | None:
    """One line when the manager's deployments on `pool` (those this worker runs) were made by
    another code version than this worker's; None when they match or none exist yet."""
    versions = {name: version for name, version in deployed_versions(api, pool).items()
                if name in allowlist.deployments}
    return fleet_mismatch(versions, code_version())


def pool_type_problem(api: PrefectAPI, pool: str) -> str | None:
    """One line when `pool` exists on the server with another type than `podcastpile`; None
    when it has that type, does not exist yet (the worker makes it, of its own type) or the
    server cannot say (a warning only: check_manager has already vetted the manager)."""
    import httpx  # here: every `ppcli` command imports this module, `ppcli stats` must stay fast

    try:
        verify = api.ssl_context() if api.url.startswith("https://") else True
        answer = httpx.get(f"{api.url}/work_pools/{pool}", headers=api.headers(), timeout=10, verify=verify)
        found = answer.json().get("type") if answer.status_code == 200 else None
    except (httpx.HTTPError, OSError, ValueError, AttributeError):
        return None
    if found is None or found == WORKER_TYPE:
        return None
    return (f"pool {pool!r} is of type {found!r}, not {WORKER_TYPE!r}: this worker still runs only its own "
            f"deployments (--type {WORKER_TYPE}), but a worker started there without --type would run anything; "
            "`ppcli setup` makes it of our type again")
