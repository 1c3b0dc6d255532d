"""The claim: one UPDATE … RETURNING that leases the oldest ready episodes to a worker.

Built once per shape (by id or not, how many languages) with bind parameters, so a busy queue
does not compile SQL on every claim.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from typing import Any

from sqlalchemy import String, Update, bindparam, func, or_, select, update

from podcastpile.store.languages import normalize_language
from podcastpile.store.tables import EpisodeStatus
from podcastpile.store.tables import episodes as _episodes


@lru_cache(maxsize=64)
def claim_statement(
    dialect: str, by_id: bool = False, languages: int = 0, unknown_language: bool = False
) -> Update:
    """UPDATE … RETURNING that leases the `n` oldest ready episodes, built once per shape with bind params.

    On PostgreSQL the candidate rows are locked `FOR UPDATE SKIP LOCKED` in a materialized CTE,
    so concurrent claimers skip each other's rows instead of waiting or double-claiming.
    `languages` > 0 restricts the claim to `:languages` and their subtags (`:language_prefix_N`
    = `es-%`), and to episodes of no language with `unknown_language`. It filters the rows the
    claim reads in queue order (`ix_episodes_status_id`: pending, oldest first) and stops after
    `n` matches, so the plan is the unfiltered claim's (no scan or sort of the queue); it reads
    more index entries when the languages asked for are rare in the queue.

    The claimer's address is the one the database server sees (PostgreSQL's
    `inet_client_addr()`); where it sees none (SQLite, a Unix socket: the same machine) the
    claimer's own `:local_ip`. A `:worker_ip` the caller gives wins over both.
    """
    column = _episodes.c.language
    ready = _episodes.c.status == EpisodeStatus.pending.value
    if by_id:
        ready = ready & _episodes.c.id.in_(bindparam("ids", expanding=True))
    if languages:
        wanted = [column.in_(bindparam("languages", expanding=True))]
        wanted += [column.like(bindparam(f"language_prefix_{i}")) for i in range(languages)]
        if unknown_language:
            wanted.append(column.is_(None))
        ready = ready & or_(*wanted)
    picked = (
        select(_episodes.c.id)
        .where(ready)
        .order_by(_episodes.c.id)
        .limit(bindparam("n"))
        .with_for_update(skip_locked=True)
        .cte("picked")
        .prefix_with("MATERIALIZED", dialect="postgresql")
    )
    seen_from: list[Any] = [bindparam("worker_ip", type_=String)]
    if dialect == "postgresql":
        seen_from.append(func.host(func.inet_client_addr()))
    seen_from.append(bindparam("local_ip", type_=String))
    return (
        update(_episodes)
        .where(_episodes.c.id.in_(select(picked.c.id)))
        .values(
            status=EpisodeStatus.assigned.value,
            worker_id=bindparam("worker_id"),
            worker_ip=func.coalesce(*seen_from),
            gpu=bindparam("gpu"),
            code_version=bindparam("code_version"),
            claimed_by_run=bindparam("run_id"),
            lease_token=bindparam("token"),
            leased_until=bindparam("until"),
            claimed_at=bindparam("now"),
            attempts=_episodes.c.attempts + 1,
            updated_at=bindparam("now"),
        )
        .returning(
            _episodes.c.id,
            _episodes.c.url,
            _episodes.c.archive_url,
            _episodes.c.archive_digest,
            _episodes.c.language,
            _episodes.c.podcast_id,
            _episodes.c.attempts,
        )
    )


def language_params(languages: Iterable[str] | None) -> tuple[dict[str, Any], bool]:
    """Bind parameters of the claim's language filter, and whether episodes of no language
    match (they are processed as English, so a worker asked for `en` takes them)."""
    codes = sorted({code for value in languages or () if (code := normalize_language(value))})
    params: dict[str, Any] = {"languages": codes}
    params.update({f"language_prefix_{i}": f"{code}-%" for i, code in enumerate(codes)})
    return (params if codes else {}), any(code in ("en", "eng") for code in codes)
