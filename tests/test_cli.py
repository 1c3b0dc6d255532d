"""`ppcli` as a user runs it: a real subprocess, settings from the environment, both databases."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.loopback import LoopbackServer, Reply
from tests.test_import import RSS

PPCLI = [sys.executable, "-m", "podcastpile.cli"]


def ppcli(*args: str, cwd: Path, database_url: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "JOB_TIMEOUT_HOURS")}
    environment["COLUMNS"] = "200"
    if database_url:
        environment["DATABASE_URL"] = database_url
    environment.update(env or {})
    return subprocess.run([*PPCLI, *args], cwd=cwd, env=environment, capture_output=True, text=True, timeout=120)


def test_create_list_stats_on_each_database(database_url: str, tmp_path: Path) -> None:
    created = ppcli("create", "https://Example.com/ep1.mp3", "--language", "en", "--podcast-id", "pod",
                    cwd=tmp_path, database_url=database_url)
    assert created.returncode == 0, created.stderr
    assert "added episode 1" in created.stdout
    again = ppcli("create", "https://example.com/ep1.mp3", cwd=tmp_path, database_url=database_url)
    assert again.returncode == 0 and "already present" in again.stdout

    listed = json.loads(ppcli("list", "--json", cwd=tmp_path, database_url=database_url).stdout)
    assert [(e["id"], e["url"], e["language"], e["podcast_id"], e["status"]) for e in listed] == [
        (1, "https://example.com/ep1.mp3", "en", "pod", "archive_pending")]
    table = ppcli("list", "--status", "archive_pending", cwd=tmp_path, database_url=database_url)
    assert "https://example.com/ep1.mp3" in table.stdout
    empty = ppcli("list", "--status", "pending", cwd=tmp_path, database_url=database_url)
    assert empty.returncode == 0 and "no episodes with status pending" in empty.stdout

    stats = json.loads(ppcli("stats", "--json", cwd=tmp_path, database_url=database_url).stdout)
    assert stats["total"] == 1 and stats["by_status"]["archive_pending"] == 1
    assert "total" in ppcli("stats", cwd=tmp_path, database_url=database_url).stdout


def test_stats_loads_only_what_it_needs(database_url: str, tmp_path: Path) -> None:
    """`ppcli stats` is meant to answer at once: it reads counters through SQLAlchemy Core, so
    the ORM, the HTTP client and Prefect stay unloaded (each costs a tenth of a second or more)."""
    assert ppcli("create", "https://example.com/ep1.mp3", cwd=tmp_path, database_url=database_url).returncode == 0
    result = ppcli("stats", "--json", cwd=tmp_path, database_url=database_url, env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout)["total"] == 1
    loaded = {line.rsplit("|", 1)[1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert "sqlalchemy.engine" in loaded  # the measure works
    heavy = sorted(name for name in loaded if name.split(".")[0] in ("httpx", "prefect") or name.startswith("sqlalchemy.orm"))
    assert heavy == []


def test_stats_ends_without_teardown_but_with_its_output_and_exit_status(tmp_path: Path) -> None:
    """`ppcli stats` skips the interpreter's teardown: what it printed and its exit status must
    still come through, on success (output to a pipe, block-buffered) and on failure."""
    database = f"sqlite:///{tmp_path / 'episodes.db'}"
    assert ppcli("create", "https://example.com/ep1.mp3", cwd=tmp_path, database_url=database).returncode == 0
    done = ppcli("stats", cwd=tmp_path, database_url=database)
    assert done.returncode == 0 and done.stdout.rstrip().endswith("audio done: 0.00 hours"), done.stdout[-500:]
    refused = ppcli("stats", cwd=tmp_path, database_url="postgresql://nobody@127.0.0.1:1/none")
    assert refused.returncode == 2 and "cannot open the episode database" in refused.stderr, refused.stderr


def test_default_database_is_sqlite_in_the_working_directory(tmp_path: Path) -> None:
    result = ppcli("create", "https://example.com/a.mp3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "podcastpile.db").exists()


def test_import_file_with_bad_lines(tmp_path: Path) -> None:
    source = tmp_path / "episodes.jsonl"
    source.write_text(
        '{"episode_url": "https://a.com/1.mp3"}\n'
        "oops\n"
        '{"episode_url": "ftp://a.com/2.mp3"}\n'
        '{"episode_url": "https://a.com/1.mp3"}\n'
        '{"episode_url": "https://a.com/3.mp3", "language": "fr"}\n'
    )
    result = ppcli("import", str(source), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "added 2, already present 1, rejected 2" in result.stdout
    assert "line 2: not valid JSON" in result.stdout
    assert "line 3: not an http(s) URL" in result.stdout
    rerun = json.loads(ppcli("import", str(source), "--json", cwd=tmp_path).stdout)
    assert (rerun["added"], rerun["present"], len(rerun["rejected"])) == (0, 3, 2)


def test_import_feed_url(tmp_path: Path) -> None:
    with LoopbackServer({"/feed.xml": lambda r: Reply(200, RSS)}) as server:
        refused = ppcli("import", server.url("/feed.xml"), cwd=tmp_path)  # a loopback feed, guarded
        assert refused.returncode == 1 and "blocked-address" in refused.stderr
        result = ppcli("import", server.url("/feed.xml"), cwd=tmp_path, env={"ALLOW_PRIVATE_ADDRESSES": "true"})
    assert result.returncode == 0, result.stderr
    assert "added 2, already present 0, rejected 2" in result.stdout
    listed = json.loads(ppcli("list", "--json", "--language", "en-us", cwd=tmp_path).stdout)
    assert len(listed) == 2


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["create", "not-a-url"], {}, "not an http(s) URL"),
        (["create", "https://a.com/1.mp3", "--language", "english"], {}, "not a language code"),
        (["list", "--status", "pendng"], {}, "unknown status 'pendng'"),
        (["import", "missing.jsonl"], {}, "no such file"),
        (["stats"], {"JOB_TIMEOUT_HOURS": "-1"}, "JOB_TIMEOUT_HOURS"),
        (["stats"], {"WORKER_AUTH_ENABLED": "true"}, "WORKER_PASSWORD is empty"),
        (["stats"], {"DATABASE_URL": "oracle://x"}, "unsupported database"),
        (["stats"], {"DATABASE_URL": "postgresql://u:hunter2@127.0.0.1:9/db"}, "cannot open the episode database"),
    ],
)
def test_bad_input_gives_one_clear_line(tmp_path: Path, args: list[str], env: dict, message: str) -> None:
    result = ppcli(*args, cwd=tmp_path, env=env)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert "hunter2" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
