"""`ppcli worker`'s options without a manager: worker names, GPU discovery, refusals before start."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from podcastpile.cli.worker import worker_names
from podcastpile.machine import list_gpus


def fake_nvidia_smi(folder: Path, listing: str) -> str:
    """A PATH whose `nvidia-smi -L` prints `listing`."""
    script = folder / "nvidia-smi"
    script.write_text(f"#!/bin/sh\ncat <<'EOF'\n{listing}EOF\n")
    script.chmod(0o755)
    return f"{folder}{os.pathsep}{os.environ.get('PATH', '')}"


def test_worker_names() -> None:
    assert worker_names("node7", explicit=False, gpus=None) == ["node7"]
    assert worker_names("node7", explicit=False, gpus=[3]) == ["node7-gpu3"]
    assert worker_names("node7", explicit=False, gpus=[0, 1]) == ["node7-gpu0", "node7-gpu1"]
    assert worker_names("box", explicit=True, gpus=[3]) == ["box"]
    assert worker_names("box", explicit=True, gpus=[0, 2]) == ["box-gpu0", "box-gpu2"]


def test_gpus_come_from_nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", fake_nvidia_smi(tmp_path, (
        "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-aaaa)\n"
        "GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-bbbb)\n"
        "  MIG 1g.10gb Device 0: (UUID: MIG-cccc)\n"
    )))
    assert list_gpus() == [0, 1]


def test_without_m_it_says_where_it_looked_for_the_manager(tmp_path: Path) -> None:
    # `ppcli manager -p 8870` then a bare `ppcli worker`: the worker looks at PORT, and must say so.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "WORKER_"))}
    env.update(PREFECT_HOME=str(tmp_path / "prefect"), PORT="9")
    result = subprocess.run([sys.executable, "-m", "podcastpile.cli", "worker"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("error: cannot reach the manager at http://127.0.0.1:9: ")
    assert lines[0].endswith("(no -m given, so this machine at PORT=9; name the manager with -m http://HOST:PORT)")


def test_without_m_it_says_so_when_another_service_holds_port(tmp_path: Path) -> None:
    # Port 8000 is a common one for development servers: a 404 there is "no manager", not a refusal.
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)  # answers 501 to GET
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "WORKER_"))}
        env.update(PREFECT_HOME=str(tmp_path / "prefect"), PORT=str(port))
        result = subprocess.run([sys.executable, "-m", "podcastpile.cli", "worker"],
                                cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    finally:
        server.shutdown()
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: no Prefect API at http://127.0.0.1:{port} (GET ")
    assert lines[0].endswith(f"(no -m given, so this machine at PORT={port}; name the manager with -m http://HOST:PORT)")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--all-gpus"], "error: --all-gpus: no GPU found (nvidia-smi -L lists none, torch sees none); run without it for one CPU worker"),
        (["--gpus", "0", "--all-gpus"], "error: use --gpus or --all-gpus, not both"),
        (["--gpus", "0,0"], "error: --gpus takes distinct GPU numbers separated by commas, e.g. 0,1,3; not '0,0'"),
        (["--languages", "es,not a code"], "error: --languages: not a language code: 'not a code' (expected e.g. en, de, pt-br)"),
        (["-m", "manager:8000"], "error: the manager address must be a URL such as http://manager:8000, not 'manager:8000'"),
    ],
)
def test_bad_options_are_one_line_and_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "WORKER_"))}
    env.update(PATH=fake_nvidia_smi(tmp_path, ""), PREFECT_API_URL="http://127.0.0.1:9/api",
               PREFECT_HOME=str(tmp_path / "prefect"))
    result = subprocess.run([sys.executable, "-m", "podcastpile.cli", "worker", *args],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert (result.returncode, result.stderr.strip().splitlines()) == (2, [message])
