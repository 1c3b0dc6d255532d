"""The project's wheel, published by the manager: a GPU machine installs the manager's code
version without a checkout, and without a pull step (whoever holds the API would choose the code).

`ppcli manager` serves, on its port and behind its password (`Gate`, as the job API), the wheel
of the checkout it runs from:

  GET /simple/                  a PEP 503 index of this one project
  GET /simple/podcastpile/      the wheel's link, with its sha256 (pip --index-url .../simple/)
  GET /dist/<wheel file>        the wheel (pip install "podcastpile[worker] @ .../dist/<file>")

pip sends the `user:password` of such a URL as HTTP Basic credentials, which the manager takes
with any user name; other projects' pages are 404, so `--extra-index-url` finds them elsewhere.
The wheel's version is the code version (setup.py: `0.1.0+g<commit>[.dirty]`) and it carries
`podcastpile/BUILD_VERSION`, which `ppcli worker` compares with the manager's deployments.

Built once per code version, into PREFECT_HOME/podcastpile-wheels/<version>/ (the manager's
state), and read from there by later starts. A `.dirty` version (uncommitted changes) names
no one tree: each server process builds its own and keeps it in memory only. The wheel is
served from memory, so the sha256 the index lists is always that of the bytes served.

The build does not slow the manager's start: it runs in a thread, `BUILD_DELAY_SECONDS` after
the server starts (or at once for the first request that wants it), as a low-priority `pip
wheel` of a copy of the files a wheel holds. A copy, because setuptools builds in place into
./build, whose leftovers (a module since deleted) would end up in the wheel. A request waits
`WAIT_SECONDS` for a build in progress, then gets 503 with Retry-After (pip's read timeout is
15 s). A manager running from an installed package (no checkout) publishes nothing: 404 saying so.
"""

from __future__ import annotations

import hashlib
import html
import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from deployments.login_limit import ASGIApp
from podcastpile.version import code_version, git_version

PROJECT = "podcastpile"
SOURCE = Path(__file__).resolve().parent.parent  # the checkout the manager runs from
CACHE_FOLDER = "podcastpile-wheels"  # under PREFECT_HOME
# Builds work in the cache's BUILDS_FOLDER, not the system's temp folder: a manager SIGKILLed
# mid-build leaves its scratch there, named with its pid, and the next start removes it (the
# chaos soak found such leftovers in TMPDIR, where nothing ever looks again).
BUILDS_FOLDER = ".builds"
BUILD_PREFIX = "podcastpile-wheel-"
# After the server starts: the manager's own start (setup, services; 35-65 s on a loaded 2-core
# machine) goes first. The build costs about 1.8 CPU s; a GPU machine installing sooner has it
# built at its request.
BUILD_DELAY_SECONDS = 120.0
WAIT_SECONDS = 10.0  # a request's wait for a build in progress; pip gives up reading after 15 s
RETRY_FAILED_SECONDS = 60.0  # a failed build is tried again by a request after this long
BUILD_TIMEOUT_SECONDS = 600.0
# What a wheel is built from: the metadata and build hook, the readme pyproject names, the packages.
ROOT_FILES = ("pyproject.toml", "setup.py", "README.md")
PACKAGES = ("podcastpile", "flows", "tasks", "deployments")

logger = logging.getLogger("podcastpile.manager.wheel")


def is_wheel_path(path: str) -> bool:
    """Whether `path` is the wheel index's (the rest of the port is the job API's and Prefect's)."""
    return path in ("/simple", "/dist") or path.startswith(("/simple/", "/dist/"))


def wheel_filename(version: str) -> str:
    """The file name setuptools gives the wheel of code version `version` (normalized as PEP 440)."""
    from packaging.version import Version  # a dependency of Prefect's and setuptools'

    return f"{PROJECT}-{str(Version(version)).replace('-', '_')}-py3-none-any.whl"


def is_source_tree(source: Path) -> bool:
    """Whether a wheel can be built at `source`: a checkout, not an installed package."""
    return all((source / name).is_file() for name in ("pyproject.toml", "setup.py"))


def published_filename(source: Path = SOURCE) -> str | None:
    """The wheel file this checkout's manager serves under /dist/, None when it publishes none."""
    return wheel_filename(code_version()) if is_source_tree(source) else None


class BuildFailed(RuntimeError):
    """`pip wheel` did not make the wheel; the message says why in one line."""


def build_wheel(source: Path, version: str, into: Path, scratch: Path | None = None) -> Path:
    """Build the wheel of the tree at `source`, stamped with code `version`, into the folder
    `into` (created when missing); returns the file. Its temporary files, pip's too, go in a
    folder under `scratch` (default: the system's temp folder). Raises `BuildFailed`."""
    into.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"{BUILD_PREFIX}{os.getpid()}-", dir=scratch) as temporary:
        tree, out = Path(temporary) / "source", Path(temporary) / "out"
        copy_sources(source, tree, version)
        # Without build isolation pip needs nothing from an index (setuptools is here already);
        # with it, pip would fetch setuptools into a fresh environment.
        isolation = ["--no-build-isolation", "--no-index"] if importlib.util.find_spec("setuptools") else []
        command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-cache-dir", "--disable-pip-version-check",
                   "--no-input", "-q", *isolation, str(tree), "-w", str(out)]
        process = subprocess.Popen(command, cwd=temporary, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   env={**os.environ, "TMPDIR": temporary})
        try:  # behind the server's own work: the build is never urgent enough to slow a request
            os.setpriority(os.PRIO_PROCESS, process.pid, 10)
        except (AttributeError, OSError):
            pass
        try:
            output, _ = process.communicate(timeout=BUILD_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            raise BuildFailed(f"pip wheel took over {BUILD_TIMEOUT_SECONDS:g} s") from None
        wheels = list(out.glob("*.whl"))
        if process.returncode != 0 or len(wheels) != 1:
            last = [line for line in (output or "").splitlines() if line.strip()][-1:] or ["no output"]
            logger.error("pip wheel of %s failed (exit code %s):\n%s", source, process.returncode, output[-4000:])
            raise BuildFailed(f"pip wheel failed (exit code {process.returncode}): {last[0].strip()}")
        partial = into / f".{wheels[0].name}.{os.getpid()}.partial"
        shutil.copyfile(wheels[0], partial)
        target = into / wheels[0].name
        os.replace(partial, target)  # whole or not at all, for a manager reading the cache
        return target


def _running(pid: int) -> bool:
    """Whether a process `pid` exists (one of another user counts). Not podcastpile.cli's
    `alive`: deployments may not import the CLI (the layering contract)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def copy_sources(source: Path, tree: Path, version: str) -> None:
    """Copy what a wheel is built from into the new folder `tree`, and stamp `version` into it:
    the copy has no .git, so its setup.py reads the code version from the stamp."""
    tree.mkdir(parents=True)
    for path in [*(source / name for name in ROOT_FILES), *source.glob("LICEN[CS]E*")]:
        if path.is_file():
            shutil.copyfile(path, tree / path.name)
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "BUILD_VERSION")
    for package in PACKAGES:  # links (deployments/prefect.yaml) are copied as the files they name
        shutil.copytree(source / package, tree / package, ignore=skip)
    (tree / "podcastpile" / "BUILD_VERSION").write_text(version + "\n")


@dataclass(frozen=True)
class Wheel:
    """A built wheel as it is served: its file name, bytes and their SHA-256."""

    name: str
    data: bytes
    sha256: str

    @classmethod
    def read(cls, path: Path) -> Wheel:
        """The wheel in the file `path`."""
        data = path.read_bytes()
        return cls(path.name, data, hashlib.sha256(data).hexdigest())


class Unavailable(Exception):
    """No wheel to serve now: the HTTP status and why."""

    def __init__(self, status: int, detail: str, retry_after: float | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.retry_after = status, detail, retry_after


class WheelPublisher:
    """The wheel of the checkout at `source` at code `version`, built at most once per process
    (at most once per clean version for all processes that share `cache`)."""

    def __init__(self, source: Path, version: str, cache: Path, *, delay: float = BUILD_DELAY_SECONDS) -> None:
        self.source, self.version, self.cache, self.delay = source, version, cache, delay
        self._wanted = threading.Event()  # a request is waiting: build now, not after `delay`
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._wheel: Wheel | None = None
        self._error: str | None = None
        self._failed_at: float | None = None  # when the last build failed

    @classmethod
    def for_checkout(cls, prefect_home: Path, *, delay: float = BUILD_DELAY_SECONDS) -> WheelPublisher:
        """The publisher of the checkout this code runs from, caching in Prefect's home."""
        return cls(SOURCE, code_version(), prefect_home / CACHE_FOLDER, delay=delay)

    @property
    def dirty(self) -> bool:
        """Whether the version has uncommitted changes: then no cached wheel is that tree's."""
        return "dirty" in self.version

    def start(self) -> None:
        """Build in the background, `delay` seconds from now or at the first request's ask."""
        if not is_source_tree(self.source):  # nothing to build: requests say so
            return
        with self._lock:
            self._start_thread(self.delay)

    def get(self, wait: float = WAIT_SECONDS) -> Wheel:
        """The wheel, waiting up to `wait` seconds for a build in progress (blocking: run it in a
        thread). Raises `Unavailable`."""
        if not is_source_tree(self.source):
            raise Unavailable(404, "this manager runs from an installed package, not a checkout: it publishes "
                              "no wheel; install the wheel it was installed from (docs/operate.md)")
        with self._lock:
            failed_long_ago = self._failed_at is None or time.monotonic() - self._failed_at >= RETRY_FAILED_SECONDS
            if self._wheel is None and not self._building() and failed_long_ago:
                self._start_thread(0.0)
            self._wanted.set()
        self._done.wait(wait)
        with self._lock:
            if self._wheel is not None:
                return self._wheel
            if self._error is not None:
                raise Unavailable(500, f"the manager could not build its wheel: {self._error}")
            raise Unavailable(503, "the manager is building its wheel; try again in a few seconds", retry_after=10)

    def _building(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _start_thread(self, delay: float) -> None:
        if self._building() or self._wheel is not None:
            return
        self._done.clear()
        self._error = None
        self._thread = threading.Thread(target=self._run, args=(delay,), name="wheel-build", daemon=True)
        self._thread.start()

    def _run(self, delay: float) -> None:
        self._wanted.wait(delay)
        try:
            wheel = self._cached() or self._build()
        except Exception as error:  # noqa: BLE001 - whatever it was, the requests answer it
            with self._lock:
                self._error, self._failed_at = str(error), time.monotonic()
            logger.error("could not build the wheel GPU machines install: %s", error)
        else:
            with self._lock:
                self._wheel, self._error = wheel, None
        finally:
            self._done.set()

    def _folder(self) -> Path:
        return self.cache / self.version

    def _cached(self) -> Wheel | None:
        path = self._folder() / wheel_filename(self.version)
        if self.dirty or not path.is_file():
            return None
        return Wheel.read(path)

    def _build(self) -> Wheel:
        # A checkout moved to another commit since the server started would be published
        # under the version the manager deployed: refused (the manager's restart fixes it).
        now = git_version(self.source) if (self.source / ".git").exists() else self.version
        if now is not None and now != self.version:
            raise BuildFailed(f"the checkout is at {now} now, the manager started at {self.version}: restart it")
        started = time.monotonic()
        scratch = self._scratch()
        if self.dirty:
            with tempfile.TemporaryDirectory(prefix=f"{BUILD_PREFIX}{os.getpid()}-", dir=scratch) as temporary:
                wheel = Wheel.read(build_wheel(self.source, self.version, Path(temporary), scratch))
        else:
            wheel = Wheel.read(build_wheel(self.source, self.version, self._folder(), scratch))
            self._forget_other_versions()
        logger.info("built %s (sha256 %s) in %.1f s", wheel.name, wheel.sha256, time.monotonic() - started)
        return wheel

    def _scratch(self) -> Path:
        """The builds' scratch folder, without what builds of processes no longer running left."""
        scratch = self.cache / BUILDS_FOLDER
        scratch.mkdir(parents=True, exist_ok=True)
        for leftover in scratch.glob(f"{BUILD_PREFIX}*"):
            pid = leftover.name.removeprefix(BUILD_PREFIX).split("-", 1)[0]
            if pid.isdigit() and not _running(int(pid)):
                shutil.rmtree(leftover, ignore_errors=True)
        return scratch

    def _forget_other_versions(self) -> None:
        """Other versions' wheels: workers of another version are refused anyway."""
        for folder in self.cache.iterdir():
            if folder.is_dir() and folder.name not in (self.version, BUILDS_FOLDER):
                shutil.rmtree(folder, ignore_errors=True)


def project_page(wheel: Wheel) -> str:
    """The PEP 503 page of the project: the wheel's link with its hash, relative to /simple/podcastpile/."""
    name = html.escape(wheel.name)
    href = f"../../dist/{quote(wheel.name)}#sha256={wheel.sha256}"
    return ("<!DOCTYPE html>\n<html><head><meta name=\"pypi:repository-version\" content=\"1.0\">"
            f"<title>Links for {PROJECT}</title></head>\n<body><h1>Links for {PROJECT}</h1>\n"
            f"<a href=\"{html.escape(href)}\" data-requires-python=\"&gt;=3.11\">{name}</a><br>\n</body></html>\n")


def create_wheel_app(publisher: WheelPublisher) -> Any:
    """The index's routes over `publisher`; serve it through `with_wheel_index`."""
    import anyio.to_thread
    from packaging.utils import canonicalize_name
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, Response
    from starlette.routing import Route

    async def wheel() -> Wheel | JSONResponse:
        try:
            return await anyio.to_thread.run_sync(publisher.get)
        except Unavailable as unavailable:
            headers = {"Retry-After": f"{unavailable.retry_after:g}"} if unavailable.retry_after else None
            return JSONResponse({"detail": unavailable.detail}, unavailable.status, headers=headers)

    def missing(what: str) -> JSONResponse:
        return JSONResponse({"detail": f"{what} is not here: this index holds {PROJECT} only"}, 404)

    async def projects(_: Request) -> Response:
        return HTMLResponse(f"<!DOCTYPE html>\n<html><body><a href=\"{PROJECT}/\">{PROJECT}</a><br>\n</body></html>\n")

    async def project(request: Request) -> Response:
        if canonicalize_name(request.path_params["project"]) != PROJECT:
            return missing(f"project {request.path_params['project']!r}")
        found = await wheel()
        return found if isinstance(found, Response) else HTMLResponse(project_page(found))

    async def download(request: Request) -> Response:
        found = await wheel()
        if isinstance(found, Response):
            return found
        if request.path_params["filename"] != found.name:
            return missing(f"file {request.path_params['filename']!r} (the manager's is {found.name})")
        return Response(found.data, media_type="application/octet-stream",
                        headers={"ETag": f'"{found.sha256}"', "Cache-Control": "no-cache"})

    return Starlette(routes=[
        Route("/simple/", projects), Route("/simple/{project}/", project), Route("/dist/{filename}", download),
    ])


def with_wheel_index(app: ASGIApp, wheel_app: ASGIApp, password: str | None) -> ASGIApp:
    """One ASGI app: the index's paths to `wheel_app` behind the password (`Gate`), the rest to `app`."""
    # Here, not at the top: `ppcli manager` names the wheel file without loading the job API.
    from deployments.jobs_api import gated_paths

    return gated_paths(app, wheel_app, password, is_wheel_path)
