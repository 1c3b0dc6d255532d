"""Hostile and unusual text through `ppcli`: printed literally, control characters escaped.

Rich markup (`[/red]`, `[bold]`), emoji codes (`:x:`), IPv6 literals, control characters and
very long lines go through create / import / list / stats / transcribe as a user runs them
(real subprocesses, a real SQLite store), and through `process`'s results table.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from podcastpile.errors import PermanentError
from podcastpile.store import EpisodeStore, NewEpisode, make_engine, migrate
from tests.dataset.conftest import synthetic_result
from tests.test_cli import ppcli

ESC = "\x1b"
MARKUP_URLS = [
    "https://h.example/a[/red]b.mp3",
    "https://h.example/[bold]x[/bold].mp3",
    "https://h.example/:x:/ep.mp3",
    "http://[fd00::1]/x.mp3",
]
HOSTILE = "[/red] :x: [bold]b[/bold] \x1b[2J\x1b]0;pwned\x07 \x9b31m \r\x00 end"
HOSTILE_SHOWN = r"[/red] :x: [bold]b[/bold] \x1b[2J\x1b]0;pwned\x07 \x9b31m \r\x00 end"


def assert_no_raw_controls(*outputs: str) -> None:
    for output in outputs:
        assert not any(c in output for c in (ESC, "\x00", "\x07", "\x9b", "\r")), output[:300]


def store_at(tmp_path: Path) -> EpisodeStore:
    engine = make_engine(f"sqlite:///{tmp_path / 'podcastpile.db'}")  # ppcli's default database there
    migrate(engine)
    return EpisodeStore(engine, archive_required=False)


def test_create_list_and_stats_show_urls_literally(tmp_path: Path) -> None:
    for number, url in enumerate(MARKUP_URLS, start=1):
        created = ppcli("create", url, cwd=tmp_path)
        assert created.returncode == 0, created.stderr
        assert created.stdout == f"added episode {number} (archive_pending) {url}\n"
    warned = ppcli("create", "http://[fd00::1]/x.mp3", cwd=tmp_path)
    assert warned.returncode == 0 and "already present: episode 4" in warned.stdout
    assert warned.stderr.startswith("warning: fd00::1 is a private address: downloads will refuse")
    assert len(warned.stderr.strip().splitlines()) == 1

    control = ppcli("create", f"https://h.example/{ESC}[2J.mp3", cwd=tmp_path)
    assert control.returncode == 1
    assert control.stderr == "error: URL contains a control character: 'https://h.example/\\x1b[2J.mp3'\n"

    for _ in range(2):  # the bug: once such a row was stored, every later `list` crashed
        listed = ppcli("list", cwd=tmp_path)
        assert listed.returncode == 0, listed.stderr
        for url in MARKUP_URLS:
            assert url in listed.stdout
    assert [row["url"] for row in json.loads(ppcli("list", "--json", cwd=tmp_path).stdout)] == MARKUP_URLS
    assert ppcli("stats", cwd=tmp_path).returncode == 0


def test_errors_and_reasons_from_outside_are_escaped_in_list_and_stats(tmp_path: Path) -> None:
    store = store_at(tmp_path)
    store.add([NewEpisode("https://h.example/bad.mp3"), NewEpisode("https://h.example/long.mp3")])
    bad, long = store.claim_batch("worker[/red]", 2)
    store.fail(bad.episode_id, bad.lease_token, PermanentError("[/red]:x:", f"HTTP 404 {HOSTILE}"))
    listed = ppcli("list", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert f"HTTP 404 {HOSTILE_SHOWN}" in listed.stdout
    stats = ppcli("stats", cwd=tmp_path)
    assert stats.returncode == 0, stats.stderr
    assert "[/red]:x:" in stats.stdout
    assert_no_raw_controls(listed.stdout, stats.stdout)

    # A 20,000-character reason: the table folds it, nothing hangs or crashes.
    store.fail(long.episode_id, long.lease_token, PermanentError("http-404", "y" * 20_000))
    listed = ppcli("list", "--status", "failed", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.count("y") >= 20_000
    store.close()


def test_import_reports_lines_literally(tmp_path: Path) -> None:
    source = tmp_path / "urls.txt"
    lines = [
        "https://h.example/ok[/red].mp3",
        "root:x:0:0:[bold]root[/bold]:/root",
        "http://2130706433/a.mp3",
        "http://[::1]/b.mp3",
        f"https://h.example/{ESC}[2J.mp3",
        "https://h.example/nul\x00.mp3",
        "https://h.example/" + "z" * 20_000,
    ]
    source.write_text("\n".join(lines) + "\n")
    result = ppcli("import", str(source), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "added 3, already present 0, rejected 4",
        "  line 2: not an http(s) URL: 'root:x:0:0:[bold]root[/bold]:/root'",
        "  line 5: URL contains a control character: 'https://h.example/\\x1b[2J.mp3'",
        "  line 6: URL contains a control character: 'https://h.example/nul\\x00.mp3'",
        "  line 7: URL longer than 4096 characters",
    ]
    assert result.stderr.splitlines() == [
        "warning: 2 URL(s) name a private or loopback address: downloads will refuse them "
        "(blocked-address) unless ALLOW_PRIVATE_ADDRESSES=true",
        "  line 3: 2130706433 is 127.0.0.1, a loopback address",
        "  line 4: ::1 is a loopback address",
    ]
    assert_no_raw_controls(result.stdout, result.stderr)
    rerun = json.loads(ppcli("import", str(source), "--json", cwd=tmp_path).stdout)
    assert [item["line"] for item in rerun["private_addresses"]] == [3, 4]
    allowed = ppcli("import", str(source), cwd=tmp_path, env={"ALLOW_PRIVATE_ADDRESSES": "true"})
    assert allowed.returncode == 0 and allowed.stderr == ""

    missing = ppcli("import", "missing[/red]:x:.txt", cwd=tmp_path)
    assert missing.returncode == 1 and missing.stderr == "error: no such file: missing[/red]:x:.txt\n"


@pytest.mark.parametrize(
    ("source", "shown", "code"),
    [
        ("/no/such/[/red]:x:[bold]b[/bold]\x1b[31m.mp3", "/no/such/[/red]:x:[bold]b[/bold]\\x1b[31m.mp3", "not-found"),
        ("http://[fd00::1]/[/red]:x:.mp3", "http://[fd00::1]/[/red]:x:.mp3", "blocked-address"),
        ("http://169.254.169.254/latest/meta-data/", "http://169.254.169.254/latest/meta-data/", "blocked-address"),
        ("/" + "a/" * 10_000, "/" + "a/" * 10_000, "not-found"),
    ],
)
def test_transcribe_errors_show_the_source_literally(tmp_path: Path, source: str, shown: str, code: str) -> None:
    result = ppcli("transcribe", source, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith(f"error: {shown}: {code}: ")
    assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr
    assert_no_raw_controls(result.stderr)


def test_process_results_print_urls_reasons_and_transcripts_literally(tmp_path: Path, capsys) -> None:
    from podcastpile.cli.views import print_results

    store = store_at(tmp_path)
    store.add([NewEpisode("https://h.example/[/red]done:x:.mp3"), NewEpisode("https://h.example/fail[bold].mp3")])
    done, failed = store.claim_batch("w", 2)
    result = synthetic_result(1).to_dict()
    result["turns"][0]["text"] = HOSTILE
    store.complete(done.episode_id, done.lease_token, result)
    store.fail(failed.episode_id, failed.lease_token, PermanentError("http-404", HOSTILE))
    print_results(store, [store.get(done.episode_id), store.get(failed.episode_id)])
    out = capsys.readouterr().out
    assert "episode 1 https://h.example/[/red]done:x:.mp3" in out
    assert HOSTILE_SHOWN in out
    assert f"episode 2 failed: {HOSTILE_SHOWN}  https://h.example/fail[bold].mp3" in out
    assert_no_raw_controls(out)
    store.close()
