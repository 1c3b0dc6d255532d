"""The truth the counters must equal, computed the slow way: read every episode and count.

Written independently of the triggers' SQL (in Python, over plain rows), so a trigger that
misses a change, or counts one twice, shows up as a difference.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

from sqlalchemy import Engine, func, select

from podcastpile.store import EpisodeStore
from podcastpile.store.tables import episode_counters as _counters
from podcastpile.store.tables import episodes as _episodes

Cell = tuple[str, str, str]  # status, reason, archived


def cell_of(status: str, error_code: str | None, archive_url: str | None, archive_reused: Any) -> Cell:
    """Which counter cell an episode belongs to (see podcastpile/store/counters.py)."""
    reason = (error_code if error_code is not None else "unknown") if status == "failed" else ""
    if archive_url is None:
        archived = "no"
    elif archive_reused is None:
        archived = "unknown"
    else:
        archived = "reused" if archive_reused else "new"
    return status, reason, archived


def microseconds(duration: float | None) -> int:
    """duration_seconds as the counters sum it: whole microseconds, non-finite as 0."""
    if duration is None or not math.isfinite(duration) or abs(duration) > 1e12:
        return 0
    return round(duration * 1_000_000)


def recount(engine: Engine) -> dict[Cell, tuple[int, int]]:
    """Every cell's (episodes, duration_us), counted over the episodes table row by row."""
    episodes: Counter[Cell] = Counter()
    duration: Counter[Cell] = Counter()
    columns = _episodes.c
    with engine.connect() as connection:
        for row in connection.execute(select(
            columns.status, columns.error_code, columns.archive_url, columns.archive_reused,
            columns.duration_seconds,
        )):
            cell = cell_of(row.status, row.error_code, row.archive_url, row.archive_reused)
            episodes[cell] += 1
            duration[cell] += microseconds(row.duration_seconds)
    return {cell: (episodes[cell], duration[cell]) for cell in episodes}


def counted(engine: Engine) -> dict[Cell, tuple[int, int]]:
    """Every cell's (episodes, duration_us) as the counters hold it, slots summed, empty cells left out."""
    c = _counters.c
    with engine.connect() as connection:
        rows = connection.execute(
            select(c.status, c.reason, c.archived, func.sum(c.episodes), func.sum(c.duration_us))
            .group_by(c.status, c.reason, c.archived)
        ).all()
    return {
        (status, reason, archived): (int(n), int(us))
        for status, reason, archived, n, us in rows
        if int(n) or int(us)
    }


def differences(engine: Engine) -> dict[Cell, tuple[tuple[int, int] | None, tuple[int, int] | None]]:
    """Cells where the counters and a recount disagree: cell -> (counters, recount)."""
    truth, kept = recount(engine), counted(engine)
    return {
        cell: (kept.get(cell), truth.get(cell))
        for cell in set(truth) | set(kept)
        if kept.get(cell) != truth.get(cell)
    }


def slow_stats(store: EpisodeStore) -> dict[str, Any]:
    """What `stats()` returned before the counters: GROUP BY over the table (seconds as floats)."""
    with store.engine.connect() as connection:
        by_status = dict(connection.execute(
            select(_episodes.c.status, func.count()).group_by(_episodes.c.status)
        ).all())
        seconds = connection.execute(
            select(func.coalesce(func.sum(_episodes.c.duration_seconds), 0.0))
            .where(_episodes.c.status == "completed")
        ).scalar_one()
        failures: Counter[str] = Counter()
        for code, count in connection.execute(
            select(_episodes.c.error_code, func.count())
            .where(_episodes.c.status == "failed").group_by(_episodes.c.error_code)
        ):
            failures["unknown" if code is None else code] += count
        archived = dict(connection.execute(
            select(_episodes.c.archive_reused, func.count())
            .where(_episodes.c.archive_url.is_not(None)).group_by(_episodes.c.archive_reused)
        ).all())
    return {
        "by_status": by_status, "hours": float(seconds) / 3600, "failures": dict(failures),
        "archived_new": archived.get(False, 0), "archived_reused": archived.get(True, 0),
    }


def assert_exact(store: EpisodeStore, context: str = "") -> None:
    """The counters equal a recount, and `stats()` equals the old table-scanning stats."""
    wrong = differences(store.engine)
    assert not wrong, f"counters differ from a recount {context}: {wrong}"
    stats, slow = store.stats(), slow_stats(store)
    assert {s: n for s, n in stats.by_status.items() if n} == slow["by_status"], context
    assert stats.failures_by_reason == slow["failures"], context
    assert math.isclose(stats.audio_hours_done, slow["hours"], rel_tol=1e-9, abs_tol=1e-9), context
