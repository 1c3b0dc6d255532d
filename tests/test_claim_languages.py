"""Claims on SQLite and real PostgreSQL: who took an episode, and claims limited to languages."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import BindParameter, text
from sqlalchemy.sql import visitors
from sqlalchemy.dialects import postgresql

from podcastpile.machine import local_address
from podcastpile.store import EpisodeStore, NewEpisode, make_engine, migrate
from podcastpile.store.claims import claim_statement as _claim_statement
from podcastpile.store.claims import language_params as _language_params
from podcastpile.version import code_version
from tests import postgres


def explain(connection: Any, statement: Any, params: dict[str, Any]) -> str:
    """The database's plan for `statement` with `params` (rendered inline; nothing is executed)."""
    def with_value(element: Any) -> Any:
        if isinstance(element, BindParameter) and element.key in params:
            return element._with_value(params[element.key], maintain_key=True)
        return None

    bound = visitors.replacement_traverse(statement, {}, with_value)
    sql = str(bound.compile(dialect=connection.dialect,
                            compile_kwargs={"literal_binds": True, "render_postcompile": True}))
    if connection.dialect.name == "postgresql":
        rows = connection.exec_driver_sql("EXPLAIN " + sql)
    else:
        rows = connection.exec_driver_sql("EXPLAIN QUERY PLAN " + sql)
    return "\n".join(str(row[-1]) for row in rows)


def add(store: EpisodeStore, languages: list[str | None]) -> None:
    store.add([NewEpisode(f"https://example.com/{i}.mp3", language=lang) for i, lang in enumerate(languages)])


def test_claim_records_who_took_the_episode(store: EpisodeStore) -> None:
    add(store, [None, None, None])
    store.claim_batch("host-gpu0/run", 1, gpu="NVIDIA H100 80GB HBM3", code_version="1.2.3+gabc")
    store.claim_batch("host-gpu1/run", 1)
    store.claim_batch("elsewhere", 1, worker_ip="10.1.2.3")  # a caller that knows better wins
    first, second, third = (store.get(i) for i in (1, 2, 3))
    assert (first.worker_id, first.gpu, first.code_version) == ("host-gpu0/run", "NVIDIA H100 80GB HBM3", "1.2.3+gabc")
    assert (second.worker_id, second.gpu, second.code_version) == ("host-gpu1/run", None, code_version())
    # PostgreSQL: the address it sees the claim come from (none over a Unix socket, where the
    # claimer is on the same machine: then, as on SQLite, the claimer's own address).
    assert first.worker_ip in {"127.0.0.1", "::1", local_address()} and first.worker_ip
    assert third.worker_ip == "10.1.2.3"


def test_postgresql_claim_records_the_address_the_server_sees() -> None:
    sql = str(_claim_statement("postgresql").compile(dialect=postgresql.dialect()))
    assert "coalesce(%(worker_ip)s::VARCHAR, host(inet_client_addr()), %(local_ip)s::VARCHAR)" in sql


def test_claim_takes_only_the_languages_asked_for(store: EpisodeStore) -> None:
    add(store, ["en", "es", "es-mx", None, "de", "en-us", "est", "es"])
    spanish = store.claim_batch("w-es", 2, languages=["ES"])
    assert [c.language for c in spanish] == ["es", "es-mx"]  # oldest first; `est` is another language
    english = store.claim_batch("w-en", 10, languages=["en", "pt"])
    assert [c.language for c in english] == ["en", None, "en-us"]  # no language is processed as English
    assert store.claim_batch("w-pt", 10, languages=["pt-br"]) == []
    assert [c.language for c in store.claim_batch("w", 10, languages=[])] == ["de", "est", "es"]
    assert [c.episode_id for c in store.claim_batch("w", 10, languages=["es"], episode_ids=[8])] == []


def test_language_claim_still_walks_the_queue_index(store: EpisodeStore) -> None:
    """The filter is applied along `ix_episodes_status_id`: no full scan, no sort of the queue."""
    add(store, ["es" if i % 5 == 0 else "en" for i in range(40_000)])
    store.claim_batch("w", 39_000)  # most rows have left `pending`, as in a queue well under way
    dialect = store.engine.dialect.name
    language_params, unknown = _language_params(["es"])
    statement = _claim_statement(dialect, False, 1, unknown)
    params = {"n": 16, "worker_id": "w", "worker_ip": None, "local_ip": "127.0.0.1", "gpu": None,
              "code_version": "x", "token": "t", "run_id": None, "until": None, "now": None, **language_params}
    with store.engine.connect() as connection:
        connection.execute(text("ANALYZE"))
        plan = explain(connection, statement, params)
        connection.rollback()
    assert "ix_episodes_status_id" in plan, plan
    assert "Seq Scan on episodes" not in plan and "SCAN episodes" not in plan.replace("SCAN episodes USING", ""), plan
    assert "Sort" not in plan and "TEMP B-TREE" not in plan, plan
    claims = store.claim_batch("w", 16, languages=["es"])
    assert len(claims) == 16 and {c.language for c in claims} == {"es"}


def test_a_claim_over_tcp_records_the_address_postgresql_sees(monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers on other machines reach PostgreSQL over TCP: the claim records the address the
    server sees them come from, not the claimer's own guess (set apart here to tell them apart)."""
    monkeypatch.setattr("podcastpile.store.episodes.local_address", lambda: "192.0.2.1")
    with postgres.tcp_server() as url:
        engine = make_engine(url)
        migrate(engine)
        store = EpisodeStore(engine, archive_required=False)
        add(store, [None, None])
        store.claim_batch("remote-gpu0/run", 1)
        store.claim_batch("remote-gpu1/run", 1, worker_ip="10.1.2.3")
        assert [store.get(i).worker_ip for i in (1, 2)] == ["127.0.0.1", "10.1.2.3"]
        engine.dispose()
