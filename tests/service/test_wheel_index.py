"""The wheel `ppcli manager` publishes for GPU machines without a checkout (deployments/wheel_index.py).

A real `ppcli manager` with auth on: the index answers 401 without the password; with it in
the URL, as an operator writes it, `pip download` gets the wheel of exactly the manager's code
version, from the index and from the file's own URL. The builder and its cache are checked on
their own beside it.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from deployments.wheel_index import (
    PACKAGES,
    SOURCE,
    Unavailable,
    WheelPublisher,
    copy_sources,
    is_wheel_path,
    project_page,
    published_filename,
    wheel_filename,
)
from podcastpile.version import code_version, git_version
from tests.manager import Manager
from tests.prefect_server import free_port
from tests.processes import stop_tree

PASSWORD = "correct horse: battery/staple"  # characters a URL must escape


def wheel_stamp(wheel: Path) -> tuple[str, str]:
    """The wheel's BUILD_VERSION and the version its metadata declares."""
    with zipfile.ZipFile(wheel) as archive:
        stamp = archive.read("podcastpile/BUILD_VERSION").decode().strip()
        (metadata,) = [name for name in archive.namelist() if name.endswith(".dist-info/METADATA")]
        version = re.search(r"^Version: (.+)$", archive.read(metadata).decode(), re.MULTILINE)
    assert version is not None
    return stamp, version.group(1).strip()


def test_the_published_wheel_holds_the_whole_checkout_stamped_with_its_version(tmp_path: Path) -> None:
    """Built from a copy: every module and data file of the packages, and nothing left in ./build."""
    # The checkout's version now: a commit since this process read code_version() is refused.
    version = git_version(SOURCE) or code_version()
    publisher = WheelPublisher(SOURCE, version, tmp_path / "cache", delay=0)
    wheel = publisher.get(wait=300)
    assert wheel.name == wheel_filename(version) and published_filename() == wheel_filename(code_version())
    (tmp_path / wheel.name).write_bytes(wheel.data)
    assert wheel_stamp(tmp_path / wheel.name) == (version, version)
    names = set(zipfile.ZipFile(tmp_path / wheel.name).namelist())
    expected = {path.relative_to(SOURCE).as_posix() for package in PACKAGES for path in (SOURCE / package).rglob("*.py")
                if "__pycache__" not in path.parts}
    assert expected - names == set()
    assert {"deployments/prefect.yaml", "deployments/gpu-pool.json", "podcastpile/store/migrations/env.py"} <= names
    assert hashlib.sha256(wheel.data).hexdigest() == wheel.sha256
    if publisher.dirty:  # uncommitted changes name no one tree: nothing cached for another start
        assert not list((tmp_path / "cache").rglob("*.whl"))


def test_a_clean_version_is_built_once_and_read_from_the_cache_later(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tree = tmp_path / "tree"  # a tree without git, at a clean version of its own
    copy_sources(SOURCE, tree, "0.1.0+gcafe")
    cache = tmp_path / "cache"
    (cache / "0.1.0+gold").mkdir(parents=True)  # an older version's wheel: forgotten
    first = WheelPublisher(tree, "0.1.0+gcafe", cache, delay=0).get(wait=300)
    assert first.name == "podcastpile-0.1.0+gcafe-py3-none-any.whl"
    assert [path.relative_to(cache).as_posix() for path in cache.rglob("*") if path.is_file()] == [f"0.1.0+gcafe/{first.name}"]

    def no_build(*_: object) -> None:
        raise AssertionError("built again")

    monkeypatch.setattr("deployments.wheel_index.build_wheel", no_build)
    again = WheelPublisher(tree, "0.1.0+gcafe", cache, delay=3600)
    started = time.monotonic()
    assert again.get(wait=30) == first and time.monotonic() - started < 10  # a request does not wait for `delay`


def test_a_build_leaves_nothing_in_the_temp_folder_and_clears_what_killed_builds_left(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A manager SIGKILLed mid-build left `podcastpile-wheel-*` in TMPDIR for good (the chaos
    soak's check for orphaned temporary files found it). Builds now work under the cache, and
    the next build removes a dead process's scratch there, never a running one's."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setenv("TMPDIR", str(temp))
    monkeypatch.setattr("tempfile.tempdir", None)  # read TMPDIR again
    tree = tmp_path / "tree"
    copy_sources(SOURCE, tree, "0.1.0+gcafe")
    builds = tmp_path / "cache" / ".builds"
    finished = subprocess.Popen(["true"])
    finished.wait()
    dead = builds / f"podcastpile-wheel-{finished.pid}-abc" / "source"
    living = builds / f"podcastpile-wheel-{os.getppid()}-def"
    for folder in (dead, living):
        folder.mkdir(parents=True)
    wheel = WheelPublisher(tree, "0.1.0+gcafe", tmp_path / "cache", delay=0).get(wait=300)
    assert wheel.name == "podcastpile-0.1.0+gcafe-py3-none-any.whl"
    assert list(temp.iterdir()) == [], "nothing of the build (pip's files included) in the temp folder"
    assert sorted(path.name for path in builds.iterdir()) == [living.name]
    assert (tmp_path / "cache" / "0.1.0+gcafe" / wheel.name).is_file()


def test_what_the_index_serves() -> None:
    assert is_wheel_path("/simple/") and is_wheel_path("/simple/podcastpile/") and is_wheel_path("/dist/x.whl")
    assert not is_wheel_path("/api/jobs") and not is_wheel_path("/simpler") and not is_wheel_path("/")
    from deployments.wheel_index import Wheel

    page = project_page(Wheel("podcastpile-0.1.0+gabc-py3-none-any.whl", b"", "f" * 64))
    assert '<a href="../../dist/podcastpile-0.1.0%2Bgabc-py3-none-any.whl#sha256=' + "f" * 64 + '"' in page
    assert 'data-requires-python="&gt;=3.11"' in page


def test_a_manager_without_a_checkout_publishes_nothing_and_says_why(tmp_path: Path) -> None:
    publisher = WheelPublisher(tmp_path, "0.1.0+gcafe", tmp_path / "cache", delay=0)
    publisher.start()  # nothing to build
    with pytest.raises(Unavailable) as refused:
        publisher.get(wait=5)
    assert refused.value.status == 404 and "installed package" in refused.value.detail
    assert not (tmp_path / "cache").exists()


def test_pip_gets_the_manager_s_version_from_the_manager_with_the_password(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("PREFECT_", "WORKER_", "PIP_")) and key not in ("TRUSTED_PROXIES", "FORWARDED_ALLOW_IPS")}
    env.update(DATABASE_URL=f"sqlite:///{tmp_path / 'episodes.db'}", ARCHIVE_MODE="off",
               PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               WORKER_AUTH_ENABLED="true", WORKER_PASSWORD=PASSWORD,
               PIP_CONFIG_FILE=os.devnull)  # pip asks the manager alone, not this machine's indexes
    version = git_version(SOURCE) or code_version()  # the manager's, which it reads as it starts
    manager = Manager(env, tmp_path / "manager.log", free_port())
    secret = "worker:" + PASSWORD
    authorized = {"Authorization": "Basic " + base64.b64encode(secret.encode()).decode()}
    # As an operator writes it: the password URL-quoted in the index URL.
    quoted = manager.url.replace("://", f"://worker:{quote(PASSWORD, safe='')}@")
    pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-input", "--disable-pip-version-check",
           "--no-cache-dir", "--retries", "10"]
    try:
        manager.wait_ready()
        with httpx.Client(base_url=manager.url, trust_env=False, timeout=30) as http:
            for path in ("/simple/", "/simple/podcastpile/", f"/dist/{wheel_filename(version)}"):
                assert http.get(path).status_code == 401, path
                assert http.get(path, headers={"X-Worker-Password": "swordfish"}).status_code == 401, path
            deadline = time.monotonic() + 300  # the build may still run: 503, try again
            while (page := http.get("/simple/podcastpile/", headers=authorized)).status_code == 503:
                assert time.monotonic() < deadline, page.text
                time.sleep(2)
            assert page.status_code == 200, page.text
            assert http.get("/simple/torch/", headers=authorized).status_code == 404  # found elsewhere
        (sha,) = re.findall(r"#sha256=([0-9a-f]{64})", page.text)

        refused = subprocess.run([*pip, "--index-url", manager.url + "/simple/", "-d", str(tmp_path / "refused"),
                                  "podcastpile"], env=env, capture_output=True, text=True, timeout=300)
        assert refused.returncode != 0 and not list(tmp_path.glob("refused/*.whl"))  # pip saw a 401: no versions

        # pip --index-url with the exact version (a local version: PyPI cannot hold it).
        fetched = subprocess.run([*pip, "--index-url", quoted + "/simple/", "-d", str(tmp_path / "index"),
                                  f"podcastpile=={version}"], env=env, capture_output=True, text=True, timeout=300)
        assert fetched.returncode == 0, fetched.stdout[-2000:] + fetched.stderr[-3000:]
        (wheel,) = (tmp_path / "index").glob("*.whl")
        assert wheel_stamp(wheel) == (version, version)
        assert hashlib.sha256(wheel.read_bytes()).hexdigest() == sha

        # The file's own URL, as `pip install "podcastpile[worker] @ URL"` takes it.
        direct = subprocess.run([*pip, "-d", str(tmp_path / "direct"), f"podcastpile @ {quoted}/dist/{wheel.name}"],
                                env=env, capture_output=True, text=True, timeout=300)
        assert direct.returncode == 0, direct.stdout[-2000:] + direct.stderr[-3000:]
        assert (tmp_path / "direct" / wheel.name).read_bytes() == wheel.read_bytes()
    finally:
        stop_tree(manager.process, grace=60)
        print(manager.output()[-3000:])
    assert PASSWORD not in manager.output()
