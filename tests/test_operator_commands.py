"""`ppcli retry` / `ppcli invalidate` and the store operations under them, on both databases.

Episodes reach their end states through the store's real API (claim, fail, start with a
duplicate hash, the archive queue giving up, complete); exports are real Parquet runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from podcastpile.dataset.export import export_dataset
from podcastpile.errors import PermanentError
from podcastpile.store import (
    EpisodeStatus,
    EpisodeStore,
    NewEpisode,
    invalidate,
    invalidate_selection,
    preview,
    retry,
    retry_selection,
)
from podcastpile.store.archive import ArchiveQueue
from podcastpile.store.tables import dataset_exports
from podcastpile.store.tables import results as results_table
from tests.conftest import FakeClock
from tests.dataset.conftest import read_parquet_rows, synthetic_result
from tests.dataset.test_export import SMALL, by_id, listed_files
from tests.storehelpers import mark_archived
from tests.test_cli import ppcli


def add(store: EpisodeStore, *names: str) -> list[int]:
    """Add episodes by name; return their ids in the same order."""
    urls = [f"https://example.com/{name}.mp3" for name in names]
    store.add([NewEpisode(url, language="en") for url in urls])
    return [store.find(url).id for url in urls]  # type: ignore[union-attr]


def fail(store: EpisodeStore, episode_id: int, code: str) -> None:
    """Claim one episode and fail it permanently with `code`."""
    (claim,) = store.claim_batch("w", 1, episode_ids=[episode_id])
    assert store.fail(claim.episode_id, claim.lease_token, PermanentError(code, f"{code} for test")) == "failed"


def complete(store: EpisodeStore, episode_id: int, seed: int, **changes: Any) -> dict[str, Any]:
    """Claim one episode and complete it with a synthetic result (fields overridden by `changes`)."""
    result = synthetic_result(seed).model_copy(update=changes).to_dict()
    (claim,) = store.claim_batch("w", 1, episode_ids=[episode_id])
    store.complete(claim.episode_id, claim.lease_token, result)
    return result


def ids(store: EpisodeStore, selection: Any) -> list[int]:
    found = preview(store, selection, sample=100)
    assert found.count == len(found.sample)
    return [row.id for row in found.sample]


def snapshot(store: EpisodeStore) -> list[tuple[Any, ...]]:
    return [
        (e.id, e.status, e.attempts, e.error_code, e.updated_at, e.archive_attempts, e.duplicate_of)
        for e in store.list(limit=None)
    ]


# --- retry --------------------------------------------------------------------------------------


def test_retry_failed_by_reason_and_since(store: EpisodeStore, clock: FakeClock) -> None:
    gone, expired, late_gone, done = add(store, "gone", "expired", "late-gone", "done")
    fail(store, gone, "http-404")
    fail(store, expired, "lease-expired")
    clock.advance(3600)
    cutoff = clock()
    fail(store, late_gone, "http-404")
    complete(store, done, seed=1)

    assert ids(store, retry_selection()) == [gone, expired, late_gone]
    assert ids(store, retry_selection(reason="http-404")) == [gone, late_gone]
    assert ids(store, retry_selection(reason="http-40")) == []  # exact, not a prefix
    assert ids(store, retry_selection(since=cutoff)) == [late_gone]

    clock.advance(60)
    assert retry(store, reason="http-404", since=cutoff) == 1
    back = store.get(late_gone)
    assert (back.status, back.attempts, back.error_code, back.error) == ("pending", 0, None, None)
    assert back.updated_at == clock()
    assert store.get(gone).status == "failed" and store.get(gone).error_code == "http-404"

    assert retry(store) == 2  # the default: every failed episode
    assert {store.get(i).status for i in (gone, expired, late_gone)} == {"pending"}
    assert store.get(done).status == "completed"
    assert retry(store) == 0
    # Back in the queue with a fresh attempt budget.
    claimed = store.claim_batch("w", 10)
    assert sorted(c.episode_id for c in claimed) == [gone, expired, late_gone]
    assert {c.attempts for c in claimed} == {1}


def test_dry_run_changes_nothing(store: EpisodeStore, clock: FakeClock) -> None:
    first, second = add(store, "a", "b")
    fail(store, first, "not-audio")
    complete(store, second, seed=2)
    before = snapshot(store)
    clock.advance(60)
    found = preview(store, retry_selection())
    assert found.count == 1
    (row,) = found.sample
    assert (row.id, row.status, row.error_code, row.url, row.to) == (
        first, "failed", "not-audio", "https://example.com/a.mp3", "pending")
    assert preview(store, invalidate_selection(code_version="0.1.0+test")).count == 1
    assert snapshot(store) == before


def test_preview_samples_at_most_ten_oldest_first(store: EpisodeStore) -> None:
    episodes = add(store, *(f"ep-{n}" for n in range(12)))
    for episode_id in episodes:
        fail(store, episode_id, "http-410")
    found = preview(store, retry_selection(reason="http-410"))
    assert found.count == 12 and [row.id for row in found.sample] == episodes[:10]


def test_retry_duplicates(store: EpisodeStore) -> None:
    original, copy = add(store, "original", "copy")
    claims = {c.episode_id: c for c in store.claim_batch("w", 2)}
    assert store.start(original, claims[original].lease_token, sha256="ab" * 32) is None
    same_audio = synthetic_result(3).model_copy(update={"sha256": "ab" * 32}).to_dict()
    store.complete(original, claims[original].lease_token, same_audio)
    assert store.start(copy, claims[copy].lease_token, sha256="ab" * 32) == original
    assert store.get(copy).status == "duplicate"

    assert retry(store) == 0  # failed is the default; duplicates only when asked
    assert ids(store, retry_selection(status="duplicate")) == [copy]
    assert retry(store, status=EpisodeStatus.duplicate) == 1
    back = store.get(copy)
    assert (back.status, back.duplicate_of, back.error_code, back.attempts) == ("pending", None, None, 0)
    assert store.get(original).status == "completed"
    with pytest.raises(ValueError, match="cannot retry status 'completed'"):
        retry_selection(status="completed")
    with pytest.raises(ValueError, match="cannot retry status 'bogus'"):
        retry_selection(status="bogus")


def test_failed_archive_goes_back_to_archive_pending(store: EpisodeStore, clock: FakeClock) -> None:
    archiving = EpisodeStore(store.engine, archive_required=True, max_attempts=3, clock=clock)
    archived, unarchivable = add(archiving, "archived", "unarchivable")
    mark_archived(archiving, archived, timestamp="20260102030405",
                  archive_url="https://web.archive.org/web/20260102030405id_/x")
    fail(archiving, archived, "http-404")  # the download of the archived copy failed
    queue = ArchiveQueue(archiving, max_attempts=2)
    (claim,) = queue.claim("archiver", 1, episode_ids=[unarchivable])
    queue.submitted(claim, "job-1")
    assert queue.give_up(claim, "not-found", "capture failed", attempts=2) == "failed"
    assert store.get(unarchivable).archive_attempts == 2

    # Per row: the one without an Internet Archive copy waits for one again.
    sample = {row.id: row.to for row in preview(archiving, retry_selection()).sample}
    assert sample == {archived: "pending", unarchivable: "archive_pending"}
    # With archiving off the same rows would both be ready for a live download.
    assert {row.to for row in preview(store, retry_selection()).sample} == {"pending"}

    assert retry(archiving) == 2
    ready, waiting = store.get(archived), store.get(unarchivable)
    assert (ready.status, ready.archive_url, ready.attempts) == (
        "pending", "https://web.archive.org/web/20260102030405id_/x", 0)
    assert (waiting.status, waiting.archive_attempts, waiting.archive_job_id, waiting.archive_error,
            waiting.archive_not_before, waiting.error_code) == ("archive_pending", 0, None, None, None, None)
    # The archive stage takes it at once, and the GPU queue does not.
    assert [c.episode_id for c in queue.claim("archiver", 10)] == [unarchivable]
    assert [c.episode_id for c in archiving.claim_batch("w", 10)] == [archived]


# --- invalidate ---------------------------------------------------------------------------------


def test_invalidate_by_code_version_model_and_completion_time(store: EpisodeStore, clock: FakeClock) -> None:
    old_code, old_asr, bad_diar, late, failed = add(store, "old-code", "old-asr", "bad-diar", "late", "failed")
    results = {
        old_code: complete(store, old_code, 10, code_version="v1"),
        old_asr: complete(store, old_asr, 11, code_version="v2", asr_model="nvidia/parakeet-old",
                          asr_fingerprint="asr-fp-old"),
        bad_diar: complete(store, bad_diar, 12, code_version="v2", diar_fingerprint="diar-fp-bad"),
    }
    clock.advance(3600)
    cutoff = clock()
    results[late] = complete(store, late, 13, code_version="v2")
    fail(store, failed, "http-404")

    assert ids(store, invalidate_selection(code_version="v1")) == [old_code]
    assert ids(store, invalidate_selection(code_version="v2")) == [old_asr, bad_diar, late]
    assert ids(store, invalidate_selection(model="nvidia/parakeet-old")) == [old_asr]
    assert ids(store, invalidate_selection(model="asr-fp-old")) == [old_asr]
    assert ids(store, invalidate_selection(model="diar-fp-bad")) == [bad_diar]
    assert ids(store, invalidate_selection(model="nvidia/parakeet")) == []  # exact ids only
    assert ids(store, invalidate_selection(model="asr-fp")) == [old_code, bad_diar, late]
    assert ids(store, invalidate_selection(completed_after=cutoff)) == [late]
    assert ids(store, invalidate_selection(code_version="v2", model="asr-fp", completed_after=cutoff)) == [late]
    with pytest.raises(ValueError):
        invalidate_selection()

    with store.engine.connect() as connection:
        created_before = dict(connection.execute(select(results_table.c.episode_id, results_table.c.created_at)).all())
    assert invalidate(store, code_version="v1") == 1
    assert invalidate(store, model="diar-fp-bad") == 1
    assert invalidate(store, completed_after=cutoff) == 1
    for episode_id in (old_code, bad_diar, late):
        episode = store.get(episode_id)
        assert (episode.status, episode.attempts) == ("pending", 0)
        assert store.result(episode_id) == results[episode_id]  # kept until replaced
    assert store.get(old_asr).status == "completed" and store.get(failed).status == "failed"
    with store.engine.connect() as connection:
        assert dict(connection.execute(select(results_table.c.episode_id, results_table.c.created_at)).all()) == created_before
    assert invalidate(store, code_version="v1") == 0  # no longer completed


def test_invalidated_result_replaces_its_parquet_row(store: EpisodeStore, clock: FakeClock, tmp_path: Path) -> None:
    out = tmp_path / "dataset"
    episodes = add(store, "one", "two", "three")
    for n, episode_id in enumerate(episodes):
        complete(store, episode_id, 20 + n, code_version="v1" if n == 1 else "v2")
    assert export_dataset(store.engine, str(out), limits=SMALL).episodes_written == 3
    target = episodes[1]
    key = store.get(target).url_hash
    old_text = by_id(read_parquet_rows(listed_files(out)))[key]["text"]

    assert invalidate(store, code_version="v1") == 1
    with store.engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(dataset_exports)).scalar_one() == 3
    # Not completed now: nothing to export, and the old row stays in the dataset meanwhile.
    assert export_dataset(store.engine, str(out), limits=SMALL).episodes_written == 0
    assert by_id(read_parquet_rows(listed_files(out)))[key]["text"] == old_text

    clock.advance(3600)
    (claim,) = store.claim_batch("re-worker", 10)
    assert claim.episode_id == target
    new = synthetic_result(99, turns=2, tag="-v3").to_dict()
    store.complete(claim.episode_id, claim.lease_token, new)
    again = export_dataset(store.engine, str(out), limits=SMALL)
    assert (again.episodes_written, again.episodes_replaced, again.shards_retired) == (1, 1, 1)
    rows = by_id(read_parquet_rows(listed_files(out)))  # fails if the episode appears twice
    assert len(rows) == 3
    assert rows[key]["text"] == new["text"] != old_text
    assert rows[key]["code_version"] == "0.1.0+test-v3"


# --- the commands -------------------------------------------------------------------------------


def cli_store(database_url: str) -> EpisodeStore:
    from podcastpile.store import make_engine, migrate

    engine = make_engine(database_url)
    migrate(engine)
    return EpisodeStore(engine, archive_required=False)


def test_retry_command_dry_run_yes_and_json(database_url: str, tmp_path: Path) -> None:
    store = cli_store(database_url)
    hostile = "https://example.com/[bold]x[/bold].mp3"
    store.add([NewEpisode(hostile), NewEpisode("https://example.com/b.mp3"),
               NewEpisode("https://example.com/c.mp3")])
    first, second, third = (e.id for e in store.list())
    fail(store, first, "http-404")
    fail(store, second, "http-404")
    fail(store, third, "timeout")
    before = snapshot(store)
    env = {"ARCHIVE_MODE": "off"}

    dry = ppcli("retry", "--reason", "http-404", cwd=tmp_path, database_url=database_url, env=env)
    assert dry.returncode == 0, dry.stderr
    assert "2 failed episode(s) would go back to the queue (dry run: add --yes to apply)" in dry.stdout
    assert hostile in dry.stdout and "https://example.com/b.mp3" in dry.stdout
    assert "https://example.com/c.mp3" not in dry.stdout
    assert snapshot(store) == before

    listed = json.loads(ppcli("retry", "--since", "2000-01-01", "--json", cwd=tmp_path,
                              database_url=database_url, env=env).stdout)
    assert listed["dry_run"] is True and listed["matching"] == 3
    assert [row["url"] for row in listed["sample"]] == [
        hostile, "https://example.com/b.mp3", "https://example.com/c.mp3"]
    assert listed["sample"][0] == {"id": first, "status": "failed", "error_code": "http-404",
                                   "url": hostile, "to": "pending"}
    none = json.loads(ppcli("retry", "--since", "2999-01-01T00:00+02:00", "--json", cwd=tmp_path,
                            database_url=database_url, env=env).stdout)
    assert none["matching"] == 0 and none["sample"] == []
    assert snapshot(store) == before

    applied = ppcli("retry", "--reason", "http-404", "--yes", cwd=tmp_path, database_url=database_url, env=env)
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout == "sent 2 failed episode(s) back to the queue\n"
    assert [store.get(i).status for i in (first, second, third)] == ["pending", "pending", "failed"]
    # Default ARCHIVE_MODE (required): without a capture the episode waits for one again.
    rest = json.loads(ppcli("retry", "--yes", "--json", cwd=tmp_path, database_url=database_url).stdout)
    assert rest == {"dry_run": False, "changed": 1}
    assert store.get(third).status == "archive_pending"
    store.close()


def test_invalidate_command_dry_run_yes_and_json(database_url: str, tmp_path: Path) -> None:
    store = cli_store(database_url)
    first, second = add(store, "one", "two")
    complete(store, first, 30, code_version="v1", asr_fingerprint="fp-bad")
    complete(store, second, 31, code_version="v2")
    before = snapshot(store)
    env = {"ARCHIVE_MODE": "off"}

    dry = ppcli("invalidate", "--model", "fp-bad", cwd=tmp_path, database_url=database_url, env=env)
    assert dry.returncode == 0, dry.stderr
    assert "1 completed episode(s) would go back to the queue" in dry.stdout
    assert "https://example.com/one.mp3" in dry.stdout and "two.mp3" not in dry.stdout
    listed = json.loads(ppcli("invalidate", "--code-version", "v2", "--json", cwd=tmp_path,
                              database_url=database_url, env=env).stdout)
    assert listed["matching"] == 1 and listed["sample"][0]["id"] == second
    assert snapshot(store) == before

    applied = json.loads(ppcli("invalidate", "--code-version", "v1", "--yes", "--json", cwd=tmp_path,
                               database_url=database_url, env=env).stdout)
    assert applied == {"dry_run": False, "changed": 1}
    assert store.get(first).status == "pending" and store.result(first)["code_version"] == "v1"
    assert store.get(second).status == "completed"
    store.close()


@pytest.mark.parametrize("args, message", [
    (["retry", "--since", "yesterday"], "error: --since: not an ISO date or date-time: 'yesterday'"),
    (["invalidate", "--completed-after", "2026-13-01"], "error: --completed-after: not an ISO date"),
    (["retry", "--status", "completed"], "error: cannot retry status 'completed'; choose from failed, duplicate"),
    (["invalidate"], "error: say which results to invalidate: --code-version, --model or --completed-after"),
])
def test_bad_input_is_one_line_and_exit_1(args: list[str], message: str, tmp_path: Path) -> None:
    result = ppcli(*args, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith(message) and result.stderr.count("\n") == 1, result.stderr
    assert result.stdout == ""
