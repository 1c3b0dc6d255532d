"""Temporary audio of killed processes is removed at the next start; files of live ones are kept.

The children are real processes downloading through the real `download()` from a loopback
server that stalls mid-body, so their files exist exactly as a worker's do when it is killed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from podcastpile.net.fetch import remove_orphaned_downloads
from tests.loopback import LoopbackServer, Reply

ROOT = Path(__file__).resolve().parent.parent

# A child that downloads `url` into `folder` and stays stuck in the download (the server stalls).
CHILD = """
import sys
from podcastpile.net.fetch import download
from podcastpile.net.guard import AddressGuard
url, folder = sys.argv[1:3]
with download(url, max_bytes=10**9, timeout_seconds=120, temp_dir=folder,
              guard=AddressGuard(allow=lambda address: True)):
    pass
"""


@pytest.fixture
def stalling_host() -> Iterator[LoopbackServer]:
    """Sends the first bytes of an audio file, then nothing until the test ends."""
    release = threading.Event()

    def stall(request):  # type: ignore[no-untyped-def]
        def body() -> Iterator[bytes]:
            yield b"ID3" + b"\0" * 200_000  # several of the downloader's chunks: some reach the disk
            release.wait(120)
        return Reply(200, body(), {"Content-Type": "audio/mpeg"})

    with LoopbackServer({"/ep.mp3": stall}) as server:
        yield server
        release.set()


def _start_download(url: str, folder: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", CHILD, url, str(folder)], env=env)


def _wait_for_file(pid: int, folder: Path, child: subprocess.Popen) -> Path:
    """The child's temporary file once the first bytes are in it."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert child.poll() is None, f"download child exited early ({child.returncode})"
        found = [p for p in folder.glob(f"podcastpile-{pid}-*.audio") if p.stat().st_size > 0]
        if found:
            return found[0]
        time.sleep(0.05)
    raise AssertionError("the child never started writing its download")


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_files_of_a_killed_download_are_removed_and_a_live_ones_kept(
    stalling_host: LoopbackServer, tmp_path: Path
) -> None:
    killed = _start_download(stalling_host.url("/ep.mp3"), tmp_path)
    alive = _start_download(stalling_host.url("/ep.mp3"), tmp_path)
    try:
        killed_file = _wait_for_file(killed.pid, tmp_path, killed)
        alive_file = _wait_for_file(alive.pid, tmp_path, alive)
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=30)
        assert killed_file.exists()  # the defect: SIGKILL leaves it behind

        assert remove_orphaned_downloads(tmp_path) == 1

        assert not killed_file.exists()
        assert alive_file.exists() and alive.poll() is None
        assert remove_orphaned_downloads(tmp_path) == 0  # nothing more to do
    finally:
        for child in (killed, alive):
            if child.poll() is None:
                child.kill()
            child.wait(timeout=30)
    # Once the live one is killed as well, its file is an orphan too.
    assert remove_orphaned_downloads(tmp_path) == 1
    assert not alive_file.exists()


def test_a_file_older_than_the_process_now_holding_its_pid_is_removed(tmp_path: Path) -> None:
    # This process lives; a file named after its pid but last written a day before it started
    # belonged to an earlier process that had the same pid.
    stale = tmp_path / f"podcastpile-{os.getpid()}-stale.audio"
    current = tmp_path / f"podcastpile-{os.getpid()}-current.audio"
    for path in (stale, current):
        path.write_bytes(b"audio")
    day_ago = time.time() - 86400
    os.utime(stale, (day_ago, day_ago))

    assert remove_orphaned_downloads(tmp_path) == 1
    assert not stale.exists() and current.exists()


def test_only_podcastpile_downloads_are_touched(tmp_path: Path) -> None:
    pid = _dead_pid()
    orphan = tmp_path / f"podcastpile-{pid}-abc.audio"
    others = [
        tmp_path / f"podcastpile-{pid}-abc.wav",
        tmp_path / f"other-{pid}-abc.audio",
        tmp_path / "podcastpile-demo-abc.audio",
    ]
    for path in [orphan, *others]:
        path.write_bytes(b"x")
    (tmp_path / f"podcastpile-{pid}-dir.audio").mkdir()  # not a file: left, no error

    assert remove_orphaned_downloads(tmp_path) == 1
    assert not orphan.exists() and all(path.exists() for path in others)
    assert remove_orphaned_downloads(tmp_path / "missing") == 0  # never raises


def test_ppcli_transcribe_cleans_up_at_start(tmp_path: Path) -> None:
    orphan = tmp_path / f"podcastpile-{_dead_pid()}-left.audio"
    orphan.write_bytes(b"audio")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "podcastpile.cli", "transcribe", str(tmp_path / "no-such-file.wav")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 1 and "no such file" in done.stderr
    assert not orphan.exists()
