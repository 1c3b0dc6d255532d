"""Episode counts read from the counters the database keeps, in time independent of the table's size.

`episode_counters` (model in `tables.py`) is maintained by triggers on `episodes` (migration
0005) in the same transaction as every change, so a read here equals a count over `episodes`
at the same moment. Each counter row is one cell of episodes:

- `status`: the episode status;
- `reason`: for a failed episode its `error_code` ('unknown' when it has none), else '';
- `archived`: 'no' without an Internet Archive copy (`archive_url` NULL), else 'new' or
  'reused' by `archive_reused` ('unknown' when that is NULL);
- `episodes`: how many episodes are in the cell, and `duration_us` their summed
  `duration_seconds` in whole microseconds (integers add and subtract exactly; a float total
  would drift), non-finite durations counting 0.

On PostgreSQL a cell is spread over slots (each writing transaction adds to one that no other
open transaction is writing), which readers sum. A cell whose episodes all moved on stays as a row of zeros.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select

from podcastpile.store.tables import episode_counters as _counters

MICROSECONDS_PER_HOUR = 3_600_000_000


@dataclass(frozen=True)
class Counts:
    """The episode counts, summed over slots. Cells holding no episode are left out."""

    by_status: dict[str, int]
    failures_by_reason: dict[str, int]  # failed episodes by error_code, most first
    duration_us_by_status: dict[str, int]  # summed duration_seconds, in microseconds
    archived: dict[str, int]  # no, new, reused, unknown -> episodes


def read_counts(connection: Any) -> Counts:
    """Sum the counter cells (a few hundred rows at most) on an open connection."""
    c = _counters.c
    rows = connection.execute(
        select(c.status, c.reason, c.archived, func.sum(c.episodes), func.sum(c.duration_us))
        .group_by(c.status, c.reason, c.archived)
    ).all()
    by_status: dict[str, int] = {}
    failures: dict[str, int] = {}
    durations: dict[str, int] = {}
    archived: dict[str, int] = {}
    for status, reason, archive, episodes, duration_us in rows:
        episodes, duration_us = int(episodes), int(duration_us)
        if episodes:
            by_status[status] = by_status.get(status, 0) + episodes
            archived[archive] = archived.get(archive, 0) + episodes
            if status == "failed":
                failures[reason] = failures.get(reason, 0) + episodes
        if duration_us:
            durations[status] = durations.get(status, 0) + duration_us
    return Counts(
        by_status=by_status,
        failures_by_reason=dict(sorted(failures.items(), key=lambda item: (-item[1], item[0]))),
        duration_us_by_status=durations,
        archived=archived,
    )
