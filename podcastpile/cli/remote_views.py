"""The manager's API answers turned into what the queue commands print from the database.

`ppcli list`, `stats` and `import` given `-m` print the same tables and the same `--json` as
without it, so these rebuild the store's own objects from JSON: rows with datetimes again (a
datetime crosses HTTP as ISO text, `2026-01-31T12:00:00`, where `--json` prints
`2026-01-31 12:00:00`), the stats' parts, an import's summary with the file's own lines and URLs.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from datetime import datetime
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from podcastpile.runs import HeldByRuns, RefusedRuns
from podcastpile.store import AddSummary, NewEpisode, Rejected, Stats

if TYPE_CHECKING:
    from podcastpile.manager_client import ManagerClient

# The fields of `episode_dict` that the store holds as datetimes.
DATETIME_FIELDS = ("leased_until", "created_at", "updated_at", "completed_at")


def episode_rows(jobs: Iterable[dict[str, Any]]) -> list[SimpleNamespace]:
    """Jobs as `GET /api/jobs` lists them, as rows `episode_dict` and `episode_table` read."""
    rows = []
    for job in jobs:
        fields = dict(job)
        for key in DATETIME_FIELDS:
            if isinstance(fields.get(key), str):
                fields[key] = datetime.fromisoformat(fields[key])
        rows.append(SimpleNamespace(**fields))
    return rows


def stats_parts(data: dict[str, Any]) -> tuple[Stats, dict[str, Any], HeldByRuns, RefusedRuns]:
    """`GET /api/stats` (`stats_dict`'s JSON) as the arguments of `print_stats`."""
    result = Stats(by_status=data["by_status"], expired_leases=data["expired_leases"],
                   audio_hours_done=data["audio_hours_done"], failures_by_reason=data["failures_by_reason"])
    held = HeldByRuns(data["held_by_dead_runs"], data["held_by_runs_unknown_to_prefect"],
                      data["held_by_runs_unknown_reason"])
    refused = RefusedRuns(data["refused_runs"], data["refused_runs_last_reason"], data["refused_runs_unknown_reason"])
    return result, data["archive"], held, refused


def add_in_batches(client: ManagerClient, episodes: Iterable[NewEpisode], private: list[Rejected],
                   on_progress: Callable[[int], None]) -> AddSummary:
    """Add `episodes` through `POST /api/jobs`, a batch at a time within the API's limits (10,000
    jobs, 10 MB); one summary for them all, as `EpisodeStore.add` returns. Jobs the manager
    says downloads will refuse go to `private`. Rejections and warnings name the input's own
    line and URL (the manager names the place in its batch and hides passwords in URLs)."""
    from podcastpile.manager_client import MAX_BODY_BYTES, MAX_JOBS_PER_REQUEST

    summary = AddSummary()
    batch: list[tuple[NewEpisode, dict[str, str]]] = []
    size = 0

    def send() -> None:
        answer = client.add([record for _, record in batch])
        summary.added += answer["added"]
        summary.present += answer["present"]
        summary.rejected += [_from_batch(batch, item) for item in answer["rejected"]]
        private.extend(_from_batch(batch, item) for item in answer["private_addresses"])
        on_progress(len(batch))
        batch.clear()

    for episode in episodes:
        record = {"episode_url": episode.url}
        record.update({key: value for key, value in (("language", episode.language),
                                                      ("podcast_id", episode.podcast_id)) if value is not None})
        length = len(json.dumps(record)) + 2  # the separator in the list
        if batch and (len(batch) >= MAX_JOBS_PER_REQUEST or size + length > MAX_BODY_BYTES):
            send()
            size = 0
        batch.append((episode, record))
        size += length
    if batch:
        send()
    return summary


def _from_batch(batch: list[tuple[NewEpisode, dict[str, str]]], item: dict[str, Any]) -> Rejected:
    """The manager's `{line, url, reason}` (line: the place in the batch, from 1) as the input's own."""
    line = item.get("line")
    if isinstance(line, int) and 1 <= line <= len(batch):
        episode = batch[line - 1][0]
        return Rejected(episode.line, episode.url, item["reason"])
    return Rejected(None, item.get("url", ""), item["reason"])
