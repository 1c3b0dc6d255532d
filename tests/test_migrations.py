"""Migrations: empty → head, previous head → head keeping rows, models and migrations agree."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

from podcastpile.store import EpisodeStore, NewEpisode, make_engine, migrate
from podcastpile.store.engine import alembic_config, current_revision, head_revision
from podcastpile.store.tables import metadata
from tests.counting import differences
from tests.processes import run_together


def revisions_oldest_first() -> list[str]:
    script = ScriptDirectory.from_config(alembic_config())
    return [rev.revision for rev in reversed(list(script.walk_revisions()))]


def test_schema_revision_constant_is_the_newest_migration() -> None:
    from podcastpile.store.engine import SCHEMA_REVISION

    assert SCHEMA_REVISION == head_revision() == revisions_oldest_first()[-1]


def test_empty_database_is_brought_to_head(database_url: str) -> None:
    engine = make_engine(database_url)
    assert current_revision(engine) is None
    migrate(engine)
    assert current_revision(engine) == head_revision()
    assert {"episodes", "results", "alembic_version"} <= set(inspect(engine).get_table_names())
    migrate(engine)  # a second call is a no-op
    engine.dispose()


def test_opening_a_store_migrates(database_url: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from podcastpile.config import load_settings

    store = EpisodeStore.open(load_settings(env_file=None, database_url=database_url))
    assert current_revision(store.engine) == head_revision()
    store.engine.dispose()


def test_models_match_migrations(database_url: str) -> None:
    engine = make_engine(database_url)
    migrate(engine)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        diff = compare_metadata(context, metadata)
    assert diff == [], f"tables.py and the migrations disagree: {diff}"
    engine.dispose()


def test_upgrade_from_each_previous_revision_keeps_rows(database_url: str) -> None:
    revisions = revisions_oldest_first()
    assert len(revisions) >= 2
    for previous in revisions[:-1]:
        engine = make_engine(database_url)
        with engine.begin() as connection:  # start from scratch for each previous revision
            # children before parents, so foreign keys never block a drop
            for table in [t.name for t in reversed(metadata.sorted_tables)] + ["alembic_version"]:
                connection.execute(text(f"DROP TABLE IF EXISTS {table}"))
        migrate(engine, previous)
        assert current_revision(engine) == previous
        with engine.begin() as connection:
            connection.execute(text(
                "INSERT INTO episodes (url_hash, url, status, attempts, archive_attempts, created_at, updated_at)"
                " VALUES ('h1', 'https://example.com/kept.mp3', 'pending', 0, 0, '2026-01-01', '2026-01-01')"
            ))
        migrate(engine)
        assert current_revision(engine) == head_revision()
        store = EpisodeStore(engine, archive_required=False)
        (row,) = store.list()
        assert row.url == "https://example.com/kept.mp3" and row.status == "pending"
        (claim,) = store.claim_batch("w", 1)  # and the upgraded database works as a queue
        store.complete(claim.episode_id, claim.lease_token, {"duration": 1.0})
        assert not differences(engine), f"episode counters wrong after upgrading from {previous}"
        engine.dispose()


def test_downgrade_to_empty_and_back(database_url: str) -> None:
    from alembic import command

    engine = make_engine(database_url)
    migrate(engine)
    with engine.begin() as connection:
        config = alembic_config()
        config.attributes["connection"] = connection
        command.downgrade(config, "base")
    assert current_revision(engine) is None
    assert "episodes" not in inspect(engine).get_table_names()
    migrate(engine)
    assert current_revision(engine) == head_revision()
    engine.dispose()


def _open_and_add(database_url: str, n: int, barrier) -> int:  # type: ignore[no-untyped-def]
    engine = make_engine(database_url)
    barrier.wait()
    migrate(engine)
    added = EpisodeStore(engine).add([NewEpisode(f"https://example.com/{n}.mp3")]).added
    engine.dispose()
    return added


def test_many_processes_migrating_at_once(database_url: str) -> None:
    """Workers starting together on an empty database must not trip over each other's migration."""
    results = run_together(_open_and_add, [(database_url, n) for n in range(4)])
    assert results == [1, 1, 1, 1]
    engine = make_engine(database_url)
    assert current_revision(engine) == head_revision()
    engine.dispose()


def test_the_episode_row_types_every_column_of_episodes() -> None:
    """`rows.Episode` maps `tables.episodes` whole; its annotations type the attributes, and a
    column added to the table without one would be an untyped attribute."""
    from podcastpile.store.rows import Episode
    from podcastpile.store.tables import episodes

    assert set(Episode.__annotations__) == {column.name for column in episodes.columns}
    assert set(Episode.__mapper__.columns.keys()) == {column.name for column in episodes.columns}
