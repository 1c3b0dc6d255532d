"""The episode counters stay exact: after every kind of change, on SQLite and real PostgreSQL,
against a recount of the table (`tests/counting.py`), and under concurrent workers."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import text

from podcastpile.errors import PermanentError, TransientError
from podcastpile.store import EpisodeStore, LeaseLost, NewEpisode, make_engine, migrate
from podcastpile.store import operations
from podcastpile.store.archive import ArchiveClaim, ArchiveQueue, Capture
from podcastpile.store.engine import alembic_config
from podcastpile.store.tables import EpisodeStatus
from tests import postgres
from tests.conftest import FakeClock
from tests.counting import assert_exact, differences
from tests.processes import run_together
from tests.storehelpers import mark_archived, release

TRIGGERS = ["insert", "update", "delete"]
CODES = ["http-404", "not-audio", "timeout", "lease-expired"]


class Scenario:
    """Random operations through every write path of the store, with a check after each."""

    # The lease holders' steps come up more often, so episodes get through to every end state.
    WEIGHTS = {"op_add": 2, "op_claim": 3, "op_start": 3, "op_complete": 4, "op_fail": 2, "op_archive_claim": 2,
               "op_archive_outcome": 5}

    def __init__(self, store: EpisodeStore, clock: FakeClock, seed: int) -> None:
        self.store, self.clock, self.rng = store, clock, random.Random(seed)
        self.archive_store = EpisodeStore(
            store.engine, lease_seconds=600, max_attempts=3, archive_required=True, clock=clock
        )
        self.queues = [ArchiveQueue(self.archive_store, max_attempts=2, fallback_to_live=live)
                       for live in (False, True)]
        self.claims: list[Any] = []
        self.archive_claims: list[tuple[ArchiveQueue, ArchiveClaim]] = []
        self.dialect = store.engine.dialect.name

    def run(self, steps: int, check: Callable[[str], None]) -> None:
        names = [name for name in dir(self) if name.startswith("op_")]
        weights = [self.WEIGHTS.get(name, 1) for name in names]
        for step in range(steps):
            operation = getattr(self, self.rng.choices(names, weights)[0])
            try:
                operation()
            except LeaseLost:
                pass  # the claim it used had expired or been taken: a legitimate refusal
            check(f"after step {step} ({operation.__name__})")

    def _take(self, items: list[Any]) -> Any:
        return items.pop(self.rng.randrange(len(items))) if items else None

    def _duration(self) -> float | None:
        return self.rng.choice([None, 0.0, self.rng.randint(1, 10**7) / 1000])

    def _execute(self, sql: str, **params: Any) -> None:
        with self.store.engine.begin() as connection:
            connection.execute(text(sql), params)

    # --- the store's own operations ---------------------------------------------------------

    def op_add(self) -> None:
        store = self.rng.choice([self.store, self.archive_store])
        urls = [f"https://example.com/{self.rng.randrange(400)}.mp3" for _ in range(self.rng.randint(1, 25))]
        store.add([NewEpisode(url) for url in urls], chunk_size=self.rng.choice([3, 100]))

    def op_claim(self) -> None:
        run = self.rng.choice(["run-a", "run-b", None])
        self.claims += self.store.claim_batch(f"w{self.rng.randrange(3)}", self.rng.randint(1, 8), run_id=run)

    def op_start(self) -> None:
        if claim := self._take(self.claims):
            sha = self.rng.choice([None, "a" * 64, "b" * 64, "c" * 64])
            if self.store.start(claim.episode_id, claim.lease_token, sha) is None:
                self.claims.append(claim)

    def op_renew(self) -> None:
        if self.claims:
            claim = self.rng.choice(self.claims)
            self.store.renew(claim.episode_id, claim.lease_token)

    def op_complete(self) -> None:
        if claim := self._take(self.claims):
            self.store.complete(claim.episode_id, claim.lease_token, {
                "duration": self._duration(), "sha256": self.rng.choice(["a", "d"]) * 64,
                "code_version": self.rng.choice(["v1", "v2"]),
            })

    def op_fail(self) -> None:
        if claim := self._take(self.claims):
            kind = self.rng.choice([PermanentError, TransientError])
            self.store.fail(claim.episode_id, claim.lease_token, kind(self.rng.choice(CODES), "why"))

    def op_release(self) -> None:
        if claim := self._take(self.claims):
            release(self.store, claim.episode_id, claim.lease_token)

    def op_release_claims(self) -> None:
        taken = [self._take(self.claims) for _ in range(self.rng.randint(1, 4))]
        self.store.release_claims([claim for claim in taken if claim])

    def op_requeue_expired(self) -> None:
        self.clock.advance(self.rng.choice([0, 700]))
        self.store.requeue_expired()

    def op_requeue_run(self) -> None:
        self.store.requeue_run(self.rng.choice(["run-a", "run-b"]))

    def op_retry(self) -> None:
        status = self.rng.choice([EpisodeStatus.failed, EpisodeStatus.duplicate])
        reason = self.rng.choice([None, *CODES]) if status == EpisodeStatus.failed else None
        operations.retry(self.rng.choice([self.store, self.archive_store]), status=status, reason=reason)

    def op_invalidate(self) -> None:
        operations.invalidate(self.rng.choice([self.store, self.archive_store]), code_version="v1")

    # --- the archive stage ------------------------------------------------------------------

    def op_archive_claim(self) -> None:
        queue = self.rng.choice(self.queues)
        self.archive_claims += [(queue, claim) for claim in queue.claim("archiver", self.rng.randint(1, 6))]

    def op_archive_outcome(self) -> None:
        taken = self._take(self.archive_claims)
        if taken is None:
            return
        queue, claim = taken
        outcome = self.rng.choice(["submitted", "archived", "retry", "defer", "give_up", "release"])
        if outcome == "submitted":
            self.archive_claims.append((queue, queue.submitted(claim, "job-1")))
        elif outcome == "archived":
            capture = Capture("20260101000000", f"https://web.archive.org/web/x/{claim.url}", "D" * 32, 1000)
            queue.archived(claim, capture, reused=self.rng.random() < 0.5)
        elif outcome == "retry":
            queue.retry_later(claim, self.rng.choice(CODES), "flaky", self.rng.choice([0, 3600]))
        elif outcome == "defer":
            queue.defer(claim, "daily-quota", "quota", self.clock() + self.rng.choice([-1, 1]) * timedelta(hours=1))
        elif outcome == "give_up":
            queue.give_up(claim, self.rng.choice(CODES), "no capture")
        else:
            queue.release(claim)

    def op_skip_archive(self) -> None:
        waiting = [row.id for row in self.store.list(status="archive_pending", limit=None)]
        self.store.skip_archive(self.rng.sample(waiting, min(len(waiting), 3)))

    def op_mark_archived(self) -> None:
        waiting = self.store.list(status="archive_pending", limit=None)
        if waiting:
            episode = self.rng.choice(waiting)
            mark_archived(self.store, episode.id, timestamp="20260101000000", archive_url=f"https://ia/{episode.id}")

    # --- SQL written by hand: the triggers cover it too ---------------------------------------

    def op_sql_delete(self) -> None:
        self._execute("DELETE FROM episodes WHERE id IN (SELECT id FROM episodes ORDER BY id DESC LIMIT :n)",
                      n=self.rng.randint(1, 3))

    def op_sql_same_status_new_duration(self) -> None:
        # The status stays; the duration (or a failure's code, or the capture flag) changes.
        self._execute("UPDATE episodes SET duration_seconds = :d WHERE status = 'completed'"
                      " AND id % 3 = :k", d=self._duration(), k=self.rng.randrange(3))
        self._execute("UPDATE episodes SET error_code = :code WHERE status = 'failed' AND id % 2 = :k",
                      code=self.rng.choice([None, *CODES]), k=self.rng.randrange(2))
        self._execute("UPDATE episodes SET archive_reused = NOT archive_reused WHERE archive_url IS NOT NULL"
                      " AND archive_reused IS NOT NULL AND id % 4 = 0")

    def op_sql_upsert(self) -> None:
        # An insert that updates on conflict: PostgreSQL fires the insert and update triggers,
        # SQLite's OR REPLACE deletes the old row (recursive_triggers) and inserts the new one.
        n = self.rng.randrange(400)
        columns = ("url_hash, url, status, attempts, archive_attempts, duration_seconds, created_at,"
                   " updated_at")
        values = f"'h{n}', 'https://example.com/sql-{n}.mp3', :status, 0, 0, :d, '2026-01-01', '2026-01-01'"
        status = self.rng.choice(["pending", "completed", "failed"])
        if self.dialect == "postgresql":
            self._execute(f"INSERT INTO episodes ({columns}) VALUES ({values}) ON CONFLICT (url_hash)"
                          " DO UPDATE SET status = excluded.status, duration_seconds = excluded.duration_seconds",
                          status=status, d=self._duration())
        else:
            self._execute(f"INSERT OR REPLACE INTO episodes ({columns}) VALUES ({values})",
                          status=status, d=self._duration())


@pytest.fixture
def pg_store(clock: FakeClock) -> Iterator[EpisodeStore]:
    """A store on PostgreSQL only: for what SQLite does not have (TRUNCATE, concurrent writers)."""
    with postgres.fresh_database() as url:
        engine = make_engine(url)
        migrate(engine)
        store = EpisodeStore(engine, lease_seconds=600, max_attempts=3, archive_required=False, clock=clock)
        yield store
        store.close()


def drop_trigger(store: EpisodeStore, name: str) -> None:
    on = " ON episodes" if store.engine.dialect.name == "postgresql" else ""
    with store.engine.begin() as connection:
        connection.exec_driver_sql(f"DROP TRIGGER episode_counters_{name}{on}")


@pytest.mark.parametrize("seed", [1, 2])
def test_counters_equal_a_recount_after_every_operation(store: EpisodeStore, clock: FakeClock, seed: int) -> None:
    Scenario(store, clock, seed).run(200, lambda context: assert_exact(store, context))
    assert store.stats().total > 0


@pytest.mark.parametrize("trigger", TRIGGERS)
def test_a_missing_trigger_is_caught(store: EpisodeStore, clock: FakeClock, trigger: str) -> None:
    """The recount is a real check: without any one trigger the counters go wrong."""
    drop_trigger(store, trigger)
    found: list[str] = []
    Scenario(store, clock, seed=1).run(200, lambda context: found.append(context) if differences(store.engine) else None)
    assert found, f"dropping the {trigger} trigger went unnoticed"


def test_status_unchanged_but_duration_or_reason_changed(store: EpisodeStore) -> None:
    store.add([NewEpisode(f"https://example.com/{i}.mp3") for i in range(2)])
    done, failed = store.claim_batch("w", 2)
    store.complete(done.episode_id, done.lease_token, {"duration": 60.0})
    store.fail(failed.episode_id, failed.lease_token, PermanentError("http-404", "gone"))
    with store.engine.begin() as connection:
        connection.execute(text("UPDATE episodes SET duration_seconds = 90.5 WHERE status = 'completed'"))
        connection.execute(text("UPDATE episodes SET error_code = 'not-audio' WHERE status = 'failed'"))
    assert_exact(store)
    stats = store.stats()
    assert stats.audio_hours_done == 90.5 / 3600 and stats.failures_by_reason == {"not-audio": 1}


def test_many_rows_in_one_statement(store: EpisodeStore) -> None:
    """A batch claim, a bulk requeue and a bulk delete each count every row they touch."""
    store.add([NewEpisode(f"https://example.com/{i}.mp3") for i in range(500)])
    claims = store.claim_batch("w", 300)
    for claim in claims[:200]:
        store.complete(claim.episode_id, claim.lease_token, {"duration": 1.25, "code_version": "v1"})
    assert operations.invalidate(store, code_version="v1") == 200
    with store.engine.begin() as connection:
        connection.execute(text("DELETE FROM episodes WHERE id % 2 = 0"))
    assert_exact(store)
    assert store.stats().total == 250


@pytest.mark.parametrize("reset", ["counted", "uncounted"])
def test_truncate_resets_the_counters_on_postgresql(pg_store: EpisodeStore, reset: str) -> None:
    store = pg_store  # SQLite has no TRUNCATE
    store.add([NewEpisode(f"https://example.com/{i}.mp3") for i in range(5)])
    if reset == "uncounted":
        drop_trigger(store, "truncate")
    with store.engine.begin() as connection:
        connection.execute(text("TRUNCATE episodes CASCADE"))
    assert bool(differences(store.engine)) == (reset == "uncounted")


def test_upgrade_counts_the_rows_already_there(database_url: str) -> None:
    """Migration 0005 fills the counters from the existing rows, whatever state they are in."""
    from alembic import command

    engine = make_engine(database_url)
    migrate(engine, "0004")
    rows = [
        ("pending", None, None, None, None), ("completed", None, None, None, 1800.25),
        ("completed", None, "https://ia/1", True, 60.0), ("failed", "http-404", None, None, None),
        ("failed", None, "https://ia/2", False, None), ("archive_pending", "timeout", None, None, None),
        ("duplicate", "duplicate", "https://ia/3", None, 12.0), ("assigned", None, None, None, None),
    ]
    with engine.begin() as connection:
        for n, (status, code, archive_url, reused, duration) in enumerate(rows):
            connection.execute(text(
                "INSERT INTO episodes (url_hash, url, status, error_code, archive_url, archive_reused,"
                " duration_seconds, attempts, archive_attempts, created_at, updated_at) VALUES"
                " (:h, :u, :s, :c, :a, :r, :d, 0, 0, '2026-01-01', '2026-01-01')"
            ), {"h": f"h{n}", "u": f"https://example.com/{n}.mp3", "s": status, "c": code,
                "a": archive_url, "r": reused, "d": duration})
    migrate(engine)
    store = EpisodeStore(engine, archive_required=False)
    assert_exact(store)
    assert store.stats().total == len(rows)
    with engine.begin() as connection:  # and down again: the triggers and the table go
        config = alembic_config()
        config.attributes["connection"] = connection
        command.downgrade(config, "0004")
    with engine.begin() as connection:
        connection.execute(text("UPDATE episodes SET status = 'pending'"))  # no trigger left to fire
    engine.dispose()


def work_concurrently(database_url: str, worker: str, barrier) -> int:  # type: ignore[no-untyped-def]
    """One worker process: claim, start, complete / fail / release, until the queue is empty.
    The first worker also imports more episodes while the others work; the second now and then
    sends failures and duplicates back to the queue, as an operator would."""
    engine = make_engine(database_url)
    store = EpisodeStore(engine, archive_required=False, max_attempts=2)
    rng = random.Random(worker)
    barrier.wait()
    if worker == "w0":
        for chunk in range(2):
            store.add([NewEpisode(f"https://example.com/late-{chunk}-{i}.mp3") for i in range(100)])
    handled = retries = 0
    while claims := store.claim_batch(worker, rng.randint(1, 6), run_id=worker):
        for claim in claims:
            handled += 1
            choice = rng.random()
            if store.start(claim.episode_id, claim.lease_token, rng.choice([None, f"{handled % 7}" * 64])):
                continue  # a duplicate: its lease ended
            if choice < 0.6:
                store.complete(claim.episode_id, claim.lease_token, {"duration": rng.randint(1, 10**6) / 1000})
            elif choice < 0.85:
                kind = rng.choice([PermanentError, TransientError])
                store.fail(claim.episode_id, claim.lease_token, kind(rng.choice(CODES), "why"))
            else:
                release(store, claim.episode_id, claim.lease_token)
        if worker == "w1" and retries < 3 and handled > 40 * (retries + 1):
            operations.retry(store, status=rng.choice([EpisodeStatus.failed, EpisodeStatus.duplicate]))
            retries += 1
    engine.dispose()
    return handled


def one_slot(engine: Any) -> None:
    """Make every PostgreSQL writer add to the same counter rows: the most contention there is."""
    with engine.begin() as connection:
        definition = connection.exec_driver_sql(
            "SELECT pg_get_functiondef('episode_counters_count'::regproc)"
        ).scalar_one()
        assert "slots CONSTANT integer := 16;" in definition
        one = definition.replace("slots CONSTANT integer := 16;", "slots CONSTANT integer := 1;")
        connection.exec_driver_sql(one.replace("%", "%%"))  # no parameters: % is the operator


def test_concurrent_workers_leave_the_counters_exact(database_url: str) -> None:
    check_concurrent_workers(database_url, "spread")


def test_concurrent_workers_on_one_slot_leave_the_counters_exact() -> None:
    """Every PostgreSQL writer forced onto the same counter rows (SQLite has one writer at a time
    and one slot anyway)."""
    with postgres.fresh_database() as url:
        check_concurrent_workers(url, "one")


def check_concurrent_workers(database_url: str, slots: str) -> None:
    engine = make_engine(database_url)
    migrate(engine)
    if slots == "one":
        one_slot(engine)
    store = EpisodeStore(engine, archive_required=False)
    store.add([NewEpisode(f"https://example.com/{i}.mp3") for i in range(300)])
    handled = run_together(work_concurrently, [(database_url, f"w{n}") for n in range(4)])
    assert sum(1 for n in handled if n) > 1, "the workers did not run concurrently"
    assert_exact(store)
    stats = store.stats()
    assert stats.total == 500 and stats.by_status["pending"] == 0 and stats.by_status["assigned"] == 0
    if slots == "one":
        with engine.connect() as connection:
            assert connection.exec_driver_sql("SELECT DISTINCT slot FROM episode_counters").scalars().all() == [0]
    store.close()


def test_open_transactions_write_different_slots(pg_store: EpisodeStore) -> None:
    """On PostgreSQL each writing transaction holds its own slot, so writers never wait on each
    other's counter rows (16 slots; here 6 transactions open at once; SQLite has one writer)."""
    store = pg_store
    store.add([NewEpisode(f"https://example.com/{i}.mp3") for i in range(6)])
    connections = [store.engine.connect() for _ in range(6)]
    held = []
    for n, connection in enumerate(connections, start=1):
        connection.execute(text("UPDATE episodes SET status = 'assigned' WHERE id = :id"), {"id": n})
        held += connection.exec_driver_sql(
            "SELECT objid FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
        ).scalars().all()
    assert len(held) == 6 and len(set(held)) == 6, held
    for connection in connections:
        connection.commit()
        connection.close()
    assert_exact(store)
    assert store.stats().by_status["assigned"] == 6
