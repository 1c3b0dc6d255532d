"""`ppcli archive` and the archive stage in `ppcli stats`, as a user runs them (subprocesses)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.wayback import AdHost, WaybackDouble
from tests.archive.conftest import WAV


def ppcli(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "ARCHIVE_"))}
    environment.update(env, COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "podcastpile.cli", *args], cwd=cwd, env=environment,
                          capture_output=True, text=True, timeout=120)


def test_ppcli_archive_and_stats(tmp_path: Path, database_url: str) -> None:
    with WaybackDouble() as ia, AdHost({"a.wav": WAV, "b.wav": WAV}) as origin:
        env = {"DATABASE_URL": database_url, "WAYBACK_URL": ia.base_url, "ARCHIVE_API_URL": ia.base_url,
               "SPN_POLL_SECONDS": "0.1", "ALLOW_PRIVATE_ADDRESSES": "true",
                   "IA_ACCESS_KEY": "AK", "IA_SECRET_KEY": "SK"}
        ia.add_capture(origin.url("b.wav"), WAV)
        ia.job_errors[origin.url("gone.wav")] = "error:not-found"
        for name in ("a.wav", "b.wav", "gone.wav"):
            assert ppcli("create", origin.url(name), cwd=tmp_path, env=env).returncode == 0

        result = ppcli("archive", cwd=tmp_path, env=env)
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert f"episode 2: reused an existing capture: {ia.base_url}/web/" in result.stdout
        assert "episode 1: submitted to Save Page Now (job spn2-000001)" in lines
        assert any(line.startswith("episode 1: archived: ") for line in lines)
        assert "episode 3: archiving failed: not-found: capture failed: error:not-found" in lines
        assert lines[-1] == "3 episodes: captured 1, failed 1, reused 1"

        stats = json.loads(ppcli("stats", "--json", cwd=tmp_path, env=env).stdout)
        archive = stats["archive"]
        assert (archive["archived_new"], archive["archived_reused"], archive["waiting"]) == (1, 1, 0)
        assert archive["captures_today"] == 1 and archive["bytes_today"] > len(WAV)
        assert stats["failures_by_reason"] == {"not-found": 1}
        table = ppcli("stats", cwd=tmp_path, env=env).stdout
        assert "archived: reused captures" in table and "captured today (UTC)" in table

        again = ppcli("archive", "--json", cwd=tmp_path, env=env)
        assert json.loads(again.stdout) == {"claimed": 0, "submitted": 0}
        off = ppcli("archive", cwd=tmp_path, env={**env, "ARCHIVE_MODE": "off"})
        assert off.returncode == 1 and "ARCHIVE_MODE=off" in off.stderr
