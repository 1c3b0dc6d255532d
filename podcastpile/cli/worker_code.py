"""What `ppcli worker` checks about the code it runs before it starts any Prefect worker.

A GPU machine may run the installed package (`pip install podcastpile[worker]`) rather than a
checkout. Two things can then go wrong quietly, so each is one line at start instead:
- the directory it starts in (where its flow runs start, deployments/worker.py) holds another
  copy of the code, which Prefect's flow loader would import in place of the installed one;
- the installed code is another version than the one the manager deployed
  (deployments/versions.py: its runs would be refused).
"""

from __future__ import annotations

from pathlib import Path

from deployments.allowlist import ROOT, Allowlist, is_checkout
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
