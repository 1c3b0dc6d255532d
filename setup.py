"""Build hook (the project's metadata is in pyproject.toml): stamp a wheel with its code version.

An installed package has no git history, yet a worker must tell whether it runs the code the
manager deployed (podcastpile/version.py, deployments/versions.py). The wheel therefore carries
`podcastpile/BUILD_VERSION`: `code_version()` of the checkout it is built from, e.g.
`0.1.0+g1234abcd56.dirty`. Editable installs get none: they read git themselves.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

SOURCE = Path(__file__).resolve().parent


class StampedBuild(build_py):
    """build_py, then `podcastpile/BUILD_VERSION` in the build directory."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        # The source tree's own podcastpile.version, run by the building Python (its imports are
        # the standard library only), so the stamp is computed exactly as a checkout computes it.
        version = subprocess.run(
            [sys.executable, "-c", "from podcastpile.version import code_version; print(code_version())"],
            cwd=SOURCE, capture_output=True, text=True, check=True,
        ).stdout.strip()
        target = Path(self.build_lib) / "podcastpile" / "BUILD_VERSION"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(version + "\n")


setup(cmdclass={"build_py": StampedBuild})
