"""`ppcli process` and deferred captures: ready episodes first, deferred ones listed, exit 75.

`_next_step` and the lines are checked over rows the archive stage really wrote (a host paused
by the loopback Internet Archive, missing keys) or the archive queue's own deferrals, on SQLite
and PostgreSQL; one run of `ppcli process` on the tiny models checks the whole command.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from podcastpile.archive.stage import ArchiveStage
from podcastpile.archive.wayback import WaybackClient
from podcastpile.cli.process import EXIT_DEFERRED, _episode_json, _next_step, exit_code
from podcastpile.cli.views import archive_stats_dict, archive_table, deferred_line, print_results, waiting_reason
from podcastpile.store import EpisodeStore, NewEpisode, make_engine, migrate
from podcastpile.store.archive import (
    ACCOUNT_DAILY_CAP, KEYS_MISSING, LOOKUP_WAIT, LOOKUPS_THROTTLED, REPLAY_LAG, URL_DAILY_CAP, ArchiveQueue,
    pause_text,
)
from podcastpile.store.tables import episodes as _episodes
from tests.archive.conftest import FAST, WAV, Harness
from tests.pipeline.conftest import FIXTURES, pipeline_environment
from tests.storehelpers import mark_archived
from tests.wayback import AdHost, WaybackDouble

MINUTE = timedelta(minutes=1)


@pytest.fixture
def store(database_url: str) -> Iterator[EpisodeStore]:
    engine = make_engine(database_url)
    migrate(engine)
    store = EpisodeStore(engine, archive_required=True)
    yield store
    store.close()


@pytest.fixture
def paused() -> Iterator[AdHost]:
    """A second podcast host (its own address): the double pauses crawling it."""
    with AdHost({f"ep{i}.wav": WAV for i in range(3)}) as host:
        yield host


@pytest.fixture
def harness(store: EpisodeStore, paused: AdHost) -> Iterator[Harness]:
    with WaybackDouble(paused_prefixes={paused.url("")}) as ia, AdHost({f"ep{i}.wav": WAV for i in range(3)}) as origin:
        yield Harness(store, ia, origin)


def _rows(store: EpisodeStore, ids: list[int]) -> dict:  # type: ignore[type-arg]
    return {i: store.get(i) for i in ids}


def _set(store: EpisodeStore, episode_id: int, **values: object) -> None:
    with store.engine.begin() as connection:
        connection.execute(update(_episodes).where(_episodes.c.id == episode_id).values(**values))


def _add(store: EpisodeStore, *urls: str) -> list[int]:
    store.add([NewEpisode(url) for url in urls])
    return [store.find(url).id for url in urls]  # type: ignore[union-attr]


def test_a_ready_episode_is_processed_before_more_archive_work(store: EpisodeStore) -> None:
    first, second, third = _add(store, *(f"https://pod.example/ep{i}.mp3" for i in range(3)))
    assert _next_step(_rows(store, [first, second, third]), 15 * MINUTE) == ("archive", [first, second, third])
    mark_archived(store, third, timestamp="20260101000000", archive_url="https://web.archive.org/web/x")
    # the third's capture is ready: it goes to the GPU now, not after the others' captures
    assert _next_step(_rows(store, [first, second, third]), 15 * MINUTE) == ("process", [third])
    _set(store, third, status="completed")
    assert _next_step(_rows(store, [first, second, third]), 15 * MINUTE) == ("archive", [first, second])


def test_a_host_paused_episode_is_waited_for_within_max_wait_then_deferred(harness: Harness, paused: AdHost) -> None:
    store = harness.store
    (ok,) = harness.add("ep0.wav")
    (held_back,) = _add(store, paused.url("ep1.wav"))
    summary = harness.run()
    assert summary.counts == {"captured": 1, "deferred": 1}, harness.events
    row = store.get(held_back)
    host = paused.url("").split("/")[2]
    assert row.status == "archive_pending" and row.error_code == f"host:{host}" and row.archive_attempts == 0
    ids = [ok, held_back]
    now = store.clock()
    assert _next_step(_rows(store, ids), 15 * MINUTE, now) == ("process", [ok])
    _set(store, ok, status="completed")
    # paused ~10 minutes: 15 minutes of waiting left is enough to wait for it, 1 minute is not
    assert _next_step(_rows(store, ids), 15 * MINUTE, now) == ("wait", [held_back])
    assert _next_step(_rows(store, ids), MINUTE, now) == ("stop", [])
    assert _next_step(_rows(store, ids), -MINUTE, now) == ("stop", [])  # waited past --max-wait
    # once the pause is over it is archived again, whatever is left of --max-wait
    assert _next_step(_rows(store, ids), timedelta(0), row.archive_not_before + MINUTE) == ("archive", [held_back])

    rows = list(_rows(store, ids).values())
    assert exit_code(rows) == EXIT_DEFERRED == 75
    line = deferred_line(row)
    assert line == (f"episode {held_back}: deferred: Save Page Now paused crawling {host}: its episodes wait "
                    f"(next try {row.archive_not_before:%Y-%m-%d %H:%M} UTC)")
    data = _episode_json(store, row)
    assert data["deferred_reason"] == f"host:{host}" and data["deferred_until"] == row.archive_not_before.isoformat()
    assert _episode_json(store, store.get(ok))["deferred_until"] is None

    # `ppcli stats`: the paused host, one line, and the host alone in `paused_hosts`
    stats = archive_stats_dict(harness.queue().stats(daily_bytes=10**9))
    assert stats["paused_hosts"] == {host: stats["pauses"][f"host:{host}"]}
    labels = [str(cell) for cell in archive_table(stats).columns[0]._cells]
    assert f"Save Page Now paused crawling {host}" in labels
    assert f"deferred: host:{host}" in "\n".join(labels) and "submissions paused" not in "\n".join(labels)


def test_an_episode_held_by_another_process_is_waited_for(store: EpisodeStore) -> None:
    first, second = _add(store, "https://pod.example/a.mp3", "https://pod.example/b.mp3")
    now = store.clock()
    _set(store, first, status="processing", leased_until=now + MINUTE, worker_id="elsewhere")
    _set(store, second, leased_until=now + MINUTE, archive_not_before=now + 60 * MINUTE, error_code=KEYS_MISSING)
    assert _next_step(_rows(store, [first, second]), timedelta(0), now) == ("wait", [first, second])
    _set(store, first, status="duplicate", leased_until=None)
    _set(store, second, leased_until=None)
    assert _next_step(_rows(store, [first, second]), timedelta(0), now) == ("stop", [])
    assert exit_code(list(_rows(store, [first, second]).values())) == EXIT_DEFERRED


def test_exit_codes(store: EpisodeStore) -> None:
    done, duplicate, failed, deferred = _add(store, *(f"https://pod.example/{i}.mp3" for i in range(4)))
    _set(store, done, status="completed")
    _set(store, duplicate, status="duplicate")
    _set(store, failed, status="failed", error_code="http-404", error="HTTP 404")
    _set(store, deferred, archive_not_before=store.clock() + MINUTE * 90, error_code=KEYS_MISSING)
    assert exit_code([store.get(done), store.get(duplicate)]) == 0
    assert exit_code([store.get(done), store.get(deferred)]) == 75
    assert exit_code([store.get(done), store.get(failed), store.get(deferred)]) == 1


def test_each_reason_reads_as_one_line(store: EpisodeStore, capsys: pytest.CaptureFixture[str]) -> None:
    """The queue's own deferrals, as the stage records them, printed the way `ppcli process` does."""
    codes = [KEYS_MISSING, URL_DAILY_CAP, ACCOUNT_DAILY_CAP, "host:cdn.example:8443"]
    ids = _add(store, *(f"https://pod.example/{i}.mp3" for i in range(len(codes) + 3)))
    queue = ArchiveQueue(store)
    claims = {claim.episode_id: claim for claim in queue.claim("test", 100)}
    until = store.clock() + timedelta(hours=2)
    for episode_id, code in zip(ids, codes):
        queue.defer(claims[episode_id], code, pause_text(code), until)
    lookup, lag, backoff = ids[len(codes):]
    queue.recheck_later(claims[lookup], LOOKUP_WAIT, "lookup deferred: CDX answered 429", until)
    queue.recheck_later(claims[lag], REPLAY_LAG, "capture 20260101000000 not listed by CDX yet", until)
    queue.retry_later(claims[backoff], "http-503", "Save Page Now answered HTTP 503", 7200)
    lines = {episode_id: deferred_line(store.get(episode_id)) for episode_id in ids}
    when = f"(next try {until:%Y-%m-%d %H:%M} UTC)"
    assert lines[ids[0]] == f"episode {ids[0]}: deferred: {pause_text(KEYS_MISSING)} {when}"
    assert "IA_ACCESS_KEY and IA_SECRET_KEY" in lines[ids[0]]
    assert "captured as often as IA allows today" in lines[ids[1]]
    assert "account's daily capture cap" in lines[ids[2]]
    assert "Save Page Now paused crawling cdn.example:8443: its episodes wait" in lines[ids[3]]
    assert "waiting for a Wayback lookup slot" in lines[lookup]
    assert "until the Wayback Machine lists and replays the capture" in lines[lag]
    assert lines[backoff].startswith(f"episode {backoff}: deferred: http-503: Save Page Now answered HTTP 503 (next try ")
    assert all("\n" not in line and "daily quota used up" not in line for line in lines.values())
    assert waiting_reason("spn-daily-bytes", pause_text("spn-daily-bytes")) == "daily quota used up (spn-daily-bytes)"

    print_results(store, [store.get(episode_id) for episode_id in ids])
    printed = capsys.readouterr().out.splitlines()
    assert printed == [lines[episode_id] for episode_id in ids]


def test_missing_keys_defer_without_failing(store: EpisodeStore) -> None:
    """No keys: the stage defers the episode that needs a new capture; `ppcli process` says so."""
    with WaybackDouble(keys={"AK:SK"}) as ia, AdHost({"a.wav": WAV}) as origin:
        (episode,) = _add(store, origin.url("a.wav"))
        harness = Harness(store, ia, origin)
        with WaybackClient(ia.base_url, ia.base_url, timeout_seconds=10) as client:  # no keys
            queue = harness.queue()
            ArchiveStage(queue, client, FAST).run(queue.claim("test", 10), max_seconds=20)
    row = store.get(episode)
    assert row.status == "archive_pending" and row.error_code == KEYS_MISSING
    assert _next_step({episode: row}, 15 * MINUTE, store.clock()) == ("stop", [])  # an hour away
    assert exit_code([row]) == EXIT_DEFERRED
    assert "set IA_ACCESS_KEY and IA_SECRET_KEY (next try" in deferred_line(row)


def test_stats_show_the_lookup_pause(store: EpisodeStore) -> None:
    queue = ArchiveQueue(store)
    until = store.clock() + 2 * MINUTE
    queue.limits.pause(LOOKUPS_THROTTLED, until)
    queue.limits.pause("host:cdn.example", until)
    stats = archive_stats_dict(queue.stats(daily_bytes=10**9))
    assert set(stats["pauses"]) == {LOOKUPS_THROTTLED, "host:cdn.example"}
    assert stats["paused_hosts"] == {"cdn.example": until.isoformat()}
    table = archive_table(stats)
    rows = dict(zip((str(c) for c in table.columns[0]._cells), (str(c) for c in table.columns[1]._cells)))
    assert rows["Save Page Now paused crawling cdn.example"] == f"until {until:%Y-%m-%d %H:%M:%S} UTC"
    (lookups,) = [label for label in rows if "429" in label]
    assert "lookups paused" in lookups and "\n" not in lookups


def _ppcli(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:  # type: ignore[type-arg]
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "ARCHIVE_"))}
    environment.update(env, COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "podcastpile.cli", *args], cwd=cwd, env=environment,
                          capture_output=True, text=True, timeout=600)


def test_ppcli_process_stops_on_a_paused_host_with_exit_75(tmp_path: Path) -> None:
    """One episode's host is paused: the other is archived and processed at once, then the
    command stops (--max-wait 0.05: 3 s) and lists the deferred one; `ppcli stats` shows the host."""
    wav = (FIXTURES / "conversation.wav").read_bytes()
    truth = [turn["text"] for turn in json.loads((FIXTURES / "conversation.json").read_text())["turns"]]
    with AdHost({"show.wav": wav}) as origin, AdHost({"show.wav": wav}) as paused, \
            WaybackDouble(paused_prefixes={paused.url("")}) as ia:
        env = pipeline_environment(f"sqlite:///{tmp_path / 'episodes.db'}")
        env.pop("ARCHIVE_MODE")
        env.update(PREFECT_HOME=str(tmp_path / "prefect"), WAYBACK_URL=ia.base_url, ARCHIVE_API_URL=ia.base_url,
                   SPN_POLL_SECONDS="0.2", SPN_CAPTURES_PER_MINUTE="60", IA_ACCESS_KEY="AK", IA_SECRET_KEY="SK")
        result = _ppcli(["process", origin.url("show.wav"), paused.url("show.wav"), "--max-wait", "0.05"],
                        tmp_path, env)
        assert result.returncode == 75, result.stderr[-3000:]
        host = paused.url("").split("/")[2]
        deferred = [line for line in result.stdout.splitlines() if line.startswith("episode 2: deferred: ")]
        assert len(deferred) == 1, result.stdout
        assert deferred[0].startswith(f"episode 2: deferred: Save Page Now paused crawling {host}: its episodes wait "
                                      "(next try "), deferred[0]
        assert "episode 1 audio source: archived: " in result.stdout
        for text in truth:
            assert text in result.stdout  # the ready episode was processed, not held back
        assert ia.host_paused_answers == 1 and "Traceback" not in result.stderr

        stats = _ppcli(["stats"], tmp_path, env)
        assert f"Save Page Now paused crawling {host}" in stats.stdout
        paused_hosts = json.loads(_ppcli(["stats", "--json"], tmp_path, env).stdout)["archive"]["paused_hosts"]
        assert list(paused_hosts) == [host]
