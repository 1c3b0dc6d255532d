"""Build hook (the rest of the project's metadata is in pyproject.toml): a wheel carries its code version.

An installed package has no git history, yet a worker must tell whether it runs the code the
manager deployed (podcastpile/version.py, deployments/versions.py). The wheel therefore carries
`podcastpile/BUILD_VERSION`: `code_version()` of the checkout it is built from, e.g.
`0.1.0+g1234abcd56.dirty`. Editable installs get none: they read git themselves.

The package's version is that code version too (a PEP 440 local version): a wheel of another
commit is another version to pip, so installing the manager's wheel over an older one replaces
it (the same "0.1.0" would be "already satisfied"), and `pip show podcastpile` names the commit.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

SOURCE = Path(__file__).resolve().parent


def source_version() -> str:
    """`code_version()` of the tree being built; in an unpacked sdist (no git, no stamp), the
    version the sdist was made with, so the wheel built from it keeps it."""
    pkg_info = SOURCE / "PKG-INFO"
    if not (SOURCE / ".git").exists() and pkg_info.is_file():
        for line in pkg_info.read_text(encoding="utf-8").splitlines():
            if line.startswith("Version:"):
                return line.partition(":")[2].strip()
    # The source tree's own podcastpile.version, run by the building Python (its imports are the
    # standard library only), so the version is computed exactly as a checkout computes it.
    return subprocess.run(
        [sys.executable, "-c", "from podcastpile.version import code_version; print(code_version())"],
        cwd=SOURCE, capture_output=True, text=True, check=True,
    ).stdout.strip()


class StampedBuild(build_py):
    """build_py, then `podcastpile/BUILD_VERSION` in the build directory."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        # The package's version as setup() got it: the stamp and the wheel's version are one string.
        target = Path(self.build_lib) / "podcastpile" / "BUILD_VERSION"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(self.distribution.get_version() + "\n")


setup(version=source_version(), cmdclass={"build_py": StampedBuild})
