"""The code version recorded with every result, so bad results can be found and invalidated later.

It is also the version `ppcli setup` gives every deployment and the one a worker compares it with
(deployments/versions.py): a worker whose code differs from what the manager deployed says so.
In a checkout it comes from git; an installed wheel carries the one of the checkout it was built
from (`BUILD_VERSION`, written by setup.py's build step), since site-packages has no git history.
"""

from __future__ import annotations

import subprocess
from functools import cache
from pathlib import Path

from podcastpile import __version__

ROOT = Path(__file__).resolve().parent.parent
# Written into the wheel by setup.py (build_py): `code_version()` of the checkout it was built from.
BUILD_VERSION = Path(__file__).with_name("BUILD_VERSION")


@cache
def code_version() -> str:
    """`<package version>+g<git sha>[.dirty]` in a git checkout; in an installed package, the
    version of the checkout its wheel was built from; else the package version."""
    if (ROOT / ".git").exists():  # only the checkout's own .git: a venv inside a checkout is not one
        return git_version(ROOT) or __version__
    try:
        stamped = BUILD_VERSION.read_text().strip()
    except OSError:
        return __version__
    return stamped or __version__


def git_version(root: Path) -> str | None:
    """`<package version>+g<sha>[.dirty]` for the git checkout at `root`, None without git."""
    try:
        sha = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=10", "HEAD"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{__version__}+g{sha}{'.dirty' if dirty else ''}" if sha else None
