"""Whether a worker runs the code version the manager deployed.

`ppcli setup` gives every deployment the manager's `code_version()` (`prefect deploy --version`;
podcastpile/version.py: `0.1.0+g<sha>[.dirty]` from a checkout, the same string stamped into a
wheel built from it). A worker compares it with its own code's: at start (`ppcli worker`, one
line) and for every run (deployments/worker.py), since the manager may be upgraded under it.

A mismatch refuses the run (a `Refused` state saying both versions): results must come from the
code the manager expects (the batch, the result schema, the episode database's migrations are
one version), and every result records the version that made it. An operator who upgrades
workers one by one and accepts mixed results starts them with `--allow-version-mismatch`
(this environment variable): then a mismatch is a warning. The check is about consistency, not
security: whoever holds the API can write any version; the allowlist is what keeps other code out.
"""

from __future__ import annotations

from collections.abc import Mapping

# Set by `ppcli worker --allow-version-mismatch` for its Prefect workers.
ALLOW_MISMATCH = "PODCASTPILE_ALLOW_VERSION_MISMATCH"
HINT = ("install the manager's version (the wheel it publishes at /simple/podcastpile/: docs/operate.md#workers-without-a-checkout) "
        "or start the worker with --allow-version-mismatch")


def version_mismatch(deployed: str | None, ours: str) -> str | None:
    """Why code version `ours` should not run a deployment the manager made at code version
    `deployed` (one sentence), or None when they are the same."""
    if deployed == ours:
        return None
    return f"the manager deployed code version {deployed or 'unknown'}, this worker runs {ours}"


def mismatch_allowed(environ: Mapping[str, str]) -> bool:
    """Whether this worker runs deployments of another code version anyway (with a warning)."""
    return environ.get(ALLOW_MISMATCH, "").strip().lower() in ("1", "true", "yes")


def fleet_mismatch(deployed: Mapping[str, str | None], ours: str) -> str | None:
    """One line on the deployments a worker will take (name → version), or None when all of them
    are `ours` (or there are none yet: setup has not run)."""
    others = sorted({version or "unknown" for version in deployed.values() if version_mismatch(version, ours)})
    if not others:
        return None
    return f"the manager deployed code version {', '.join(others)}, this worker runs {ours}"
