"""Episode counters kept by triggers, so statistics read a few rows instead of the whole table;
a partial index for the archive episodes deferred to a later time.

Every insert, update and delete on `episodes` adds its change to `episode_counters` in the same
transaction, whatever made it (claims, results, operator commands, COPY imports, hand-written
SQL), so the counters can never drift from the table. One counter row is one cell: the
episodes of one status, failure reason and archive outcome (see `podcastpile/store/counters.py`).

PostgreSQL: statement-level triggers over transition tables, so a statement changing N rows
(a batch claim, a bulk requeue, a COPY of 20,000 rows) updates each affected cell once, not N
times; changes that leave every cell as it was (renewing a lease) write nothing. Each cell is
spread over slots: a writing transaction takes a slot no other open transaction holds, so
hundreds of workers do not queue on one hot row; readers sum the slots. SQLite (one writer at
a time): row-level triggers.

The counters are filled from the existing rows here. Creating the triggers locks `episodes`
against writes until the migration commits (PostgreSQL: CREATE TRIGGER; SQLite: the write
lock), so no change falls between the fill and the first trigger.

This file carries its own copy of the cell definitions on purpose: a migration must keep doing
what it did when it was written. `tests/counting.py` computes the same cells the slow way and
the tests compare the two.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# Slots per cell on PostgreSQL: up to this many transactions add to the counters at once
# without waiting on each other; readers sum them all (16 × a few dozen cells: a few hundred rows).
SLOTS = 16
_SLOT_LOCK_KEY = 0x636E7472  # "cntr": the advisory locks (this key, slot) a writer holds a slot by
_TRIGGERS = ("insert", "update", "delete", "truncate")
_KEY = ("status", "reason", "archived")
# The statuses in the order of an episode's life (a status not listed sorts after them).
_LIFE = ("archive_pending", "archiving", "pending", "assigned", "processing", "completed", "failed", "duplicate")


def _cell(row: str) -> list[str]:
    """The cell of a row: status, reason, archived; `row` qualifies its columns (e.g. `NEW.`).

    reason: a failed episode's error_code ('unknown' when it has none), '' for every other status.
    archived: 'no' without an Internet Archive copy, else whether the capture was reused
    ('new' / 'reused'; 'unknown' when a copy was recorded without saying).
    """
    return [
        f"{row}status",
        f"CASE WHEN {row}status = 'failed' THEN COALESCE({row}error_code, 'unknown') ELSE '' END",
        f"CASE WHEN {row}archive_url IS NULL THEN 'no' WHEN {row}archive_reused THEN 'reused' "
        f"WHEN NOT {row}archive_reused THEN 'new' ELSE 'unknown' END",
    ]


def _cells(row: str) -> str:
    """The cell of a row as `status, reason, archived` select-list items."""
    return ", ".join(f"{expression} AS {name}" for expression, name in zip(_cell(row), _KEY))


def _microseconds(row: str, dialect: str) -> str:
    """A row's duration_seconds in whole microseconds: integer sums add and subtract exactly,
    where a floating-point total would drift with every change. Non-finite values count 0."""
    rounded = f"round({row}duration_seconds * 1000000)"
    cast = f"{rounded}::bigint" if dialect == "postgresql" else f"CAST({rounded} AS INTEGER)"
    return f"CASE WHEN {row}duration_seconds BETWEEN -1e12 AND 1e12 THEN {cast} ELSE 0 END"


def _add_change(change: str, slot: str) -> str:
    """Add a change (rows of status, reason, archived, n, us) to the counters, one upsert per cell.

    Cells are written in one fixed order, statuses in the order of an episode's life, so
    transactions sharing a slot take its rows' locks in the same order and cannot deadlock:
    within a statement, and across the statements of one transaction as long as they move
    episodes forward (`start` with a sha256 goes assigned → processing, then processing →
    duplicate). A transaction that moved episodes backwards in a later statement could deadlock
    with another; PostgreSQL would then cancel one of the two.
    """
    return f"""
        INSERT INTO episode_counters AS c (slot, status, reason, archived, episodes, duration_us)
        SELECT {slot}, status, reason, archived, sum(n), sum(us) FROM ({change}) AS change
        GROUP BY status, reason, archived
        HAVING sum(n) <> 0 OR sum(us) <> 0
        ORDER BY array_position(ARRAY[{', '.join(f"'{status}'" for status in _LIFE)}], status::text),
                 status, reason, archived
        ON CONFLICT (slot, status, reason, archived) DO UPDATE
        SET episodes = c.episodes + excluded.episodes, duration_us = c.duration_us + excluded.duration_us"""


def _postgresql_upgrade() -> None:
    added = f"SELECT {_cells('')}, 1 AS n, {_microseconds('', 'postgresql')} AS us FROM new_rows"
    removed = f"SELECT {_cells('')}, -1 AS n, -({_microseconds('', 'postgresql')}) AS us FROM old_rows"
    # The slot: the first, from this server process's own, that no other open transaction is
    # writing (a transaction-scoped advisory lock per slot says so), so concurrent writers do
    # not wait on each other's counter rows. With every slot taken, wait for its own.
    op.execute(f"""
        CREATE OR REPLACE FUNCTION episode_counters_count() RETURNS trigger LANGUAGE plpgsql AS $$
        DECLARE
            slots CONSTANT integer := {SLOTS};
            preferred integer := pg_backend_pid() % slots;
            chosen smallint := preferred;
        BEGIN
            FOR step IN 0 .. slots - 1 LOOP
                IF pg_try_advisory_xact_lock({_SLOT_LOCK_KEY}, (preferred + step) % slots) THEN
                    chosen := (preferred + step) % slots;
                    EXIT;
                END IF;
            END LOOP;
            IF TG_OP = 'INSERT' THEN
                {_add_change(added, "chosen")};
            ELSIF TG_OP = 'DELETE' THEN
                {_add_change(removed, "chosen")};
            ELSE
                {_add_change(f"{added} UNION ALL {removed}", "chosen")};
            END IF;
            RETURN NULL;
        END
        $$""")
    op.execute("""
        CREATE OR REPLACE FUNCTION episode_counters_reset() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            DELETE FROM episode_counters;
            RETURN NULL;
        END
        $$""")
    # COPY fires these too. Transition tables rule out a column list (`UPDATE OF ...`), so the
    # update trigger sees every UPDATE; one that changes no cell adds nothing.
    op.execute("""CREATE TRIGGER episode_counters_insert AFTER INSERT ON episodes
        REFERENCING NEW TABLE AS new_rows
        FOR EACH STATEMENT EXECUTE FUNCTION episode_counters_count()""")
    op.execute("""CREATE TRIGGER episode_counters_update AFTER UPDATE ON episodes
        REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
        FOR EACH STATEMENT EXECUTE FUNCTION episode_counters_count()""")
    op.execute("""CREATE TRIGGER episode_counters_delete AFTER DELETE ON episodes
        REFERENCING OLD TABLE AS old_rows
        FOR EACH STATEMENT EXECUTE FUNCTION episode_counters_count()""")
    op.execute("""CREATE TRIGGER episode_counters_truncate AFTER TRUNCATE ON episodes
        FOR EACH STATEMENT EXECUTE FUNCTION episode_counters_reset()""")


def _sqlite_add(row: str, sign: str) -> str:
    """One row's share of its cell, added (`sign` '') or taken away ('-')."""
    return f"""
        INSERT INTO episode_counters (slot, status, reason, archived, episodes, duration_us)
        VALUES (0, {', '.join(_cell(row))}, {sign}1, {sign}({_microseconds(row, 'sqlite')}))
        ON CONFLICT (slot, status, reason, archived) DO UPDATE
        SET episodes = episodes + excluded.episodes, duration_us = duration_us + excluded.duration_us;"""


def _sqlite_upgrade() -> None:
    op.execute(f"""CREATE TRIGGER episode_counters_insert AFTER INSERT ON episodes
        BEGIN {_sqlite_add('NEW.', '')} END""")
    op.execute(f"""CREATE TRIGGER episode_counters_delete AFTER DELETE ON episodes
        BEGIN {_sqlite_add('OLD.', '-')} END""")
    # Only updates that set a column a cell depends on, and only rows where one changed.
    columns = ("status", "error_code", "archive_url", "archive_reused", "duration_seconds")
    changed = " OR ".join(f"OLD.{column} IS NOT NEW.{column}" for column in columns)
    op.execute(f"""CREATE TRIGGER episode_counters_update AFTER UPDATE OF {', '.join(columns)} ON episodes
        WHEN {changed}
        BEGIN {_sqlite_add('OLD.', '-')} {_sqlite_add('NEW.', '')} END""")


def upgrade() -> None:
    op.create_table(
        "episode_counters",
        sa.Column("slot", sa.SmallInteger(), primary_key=True),
        sa.Column("status", sa.String(20), primary_key=True),
        sa.Column("reason", sa.String(64), primary_key=True),
        sa.Column("archived", sa.String(8), primary_key=True),
        sa.Column("episodes", sa.BigInteger(), nullable=False),
        sa.Column("duration_us", sa.BigInteger(), nullable=False),
    )
    op.create_index(
        "ix_episodes_archive_not_before",
        "episodes",
        ["archive_not_before"],
        postgresql_where=sa.text("archive_not_before IS NOT NULL"),
        sqlite_where=sa.text("archive_not_before IS NOT NULL"),
    )
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        _postgresql_upgrade()
    else:
        _sqlite_upgrade()
    # The rows already there, counted once (slot 0).
    op.execute(f"""
        INSERT INTO episode_counters (slot, status, reason, archived, episodes, duration_us)
        SELECT 0, status, reason, archived, count(*), sum(us)
        FROM (SELECT {_cells('')}, {_microseconds('', dialect)} AS us FROM episodes) AS cells
        GROUP BY status, reason, archived""")


def downgrade() -> None:
    for name in _TRIGGERS:
        op.execute(f"DROP TRIGGER IF EXISTS episode_counters_{name}" + (
            " ON episodes" if op.get_bind().dialect.name == "postgresql" else ""
        ))
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS episode_counters_count()")
        op.execute("DROP FUNCTION IF EXISTS episode_counters_reset()")
    op.drop_index("ix_episodes_archive_not_before", table_name="episodes")
    op.drop_table("episode_counters")
