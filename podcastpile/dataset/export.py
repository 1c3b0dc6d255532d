"""Incremental export: completed episodes not yet in the dataset become new Parquet shards.

One run is one *generation*:

1. Repair what an interrupted run left (`reconcile`): committed shards still in staging are
   moved into place, retired shards still present are deleted, half-written files are dropped,
   and the manifest and card are rendered again from the ledger.
2. Retire stale rows: each live shard holding an episode whose result was reprocessed is
   rewritten without those rows (as a new shard of this generation), so no episode is ever
   in the dataset twice; the retired episodes become pending again.
3. Stream pending episodes from the store in chunks into the shard writer. Each finished shard
   is committed in the ledger, moved to its final name, and the manifest is rewritten.

A kill at any point loses at most the shard being written (it only ever existed in staging);
the next run starts over from step 1 and continues where the ledger says.
"""

from __future__ import annotations

import posixpath
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from sqlalchemy import Engine

from podcastpile.dataset.destination import STAGING, Destination, open_destination
from podcastpile.dataset.manifest import publish_manifest
from podcastpile.dataset.schema import EPISODES_SCHEMA, episode_record, episodes_table
from podcastpile.dataset.writer import ShardWriter, StagedShard, WriterLimits, shard_names
from podcastpile.store.exports import ExportLedger, NewShard, ShardRecord

ProgressCallback = Callable[[int], None]


class DatasetInconsistent(RuntimeError):
    """The ledger and the dataset's files disagree in a way the exporter cannot repair."""


@dataclass
class ExportSummary:
    """What one export run did, and the dataset's size afterwards."""

    dataset: str
    generation: int
    episodes_written: int = 0  # new rows, including replacements
    episodes_replaced: int = 0  # of those, replacing a row an earlier generation held
    shards_written: int = 0  # including rewrites of shards with stale rows
    shards_retired: int = 0
    repaired_files: int = 0  # leftovers of an interrupted run that were cleaned up or published
    dataset_episodes: int = 0
    dataset_audio_hours: float = 0.0
    dataset_shards: int = 0
    seconds: float = 0.0


def export_dataset(
    engine: Engine,
    location: str,
    *,
    limits: WriterLimits = WriterLimits(),
    chunk_size: int = 16,
    on_start: ProgressCallback | None = None,
    on_progress: ProgressCallback | None = None,
) -> ExportSummary:
    """Export every completed episode the dataset at `location` lacks; return what was done.

    `location` is a folder or an fsspec URL. `chunk_size` episodes are read from the store at
    a time (their result dicts are the bulk of memory). `on_start(total)` gets the number of
    episodes to write, `on_progress(n)` is called as each chunk is handed to the writer.
    Raises `ExportBusy` when another export to the same dataset is running.
    """
    started = time.monotonic()
    destination = open_destination(location)
    ledger = ExportLedger(engine, destination.url)
    with ledger.exclusive():
        return _export(destination, ledger, limits, chunk_size, on_start, on_progress, started)


def _export(
    destination: Destination,
    ledger: ExportLedger,
    limits: WriterLimits,
    chunk_size: int,
    on_start: ProgressCallback | None,
    on_progress: ProgressCallback | None,
    started: float,
) -> ExportSummary:
    generation = ledger.next_generation()
    summary = ExportSummary(dataset=destination.url, generation=generation)
    summary.repaired_files = reconcile(destination, ledger)
    if on_start:
        on_start(ledger.count_pending())
    names = shard_names(generation)

    for old in ledger.stale_shards():
        _retire_stale_rows(destination, ledger, old, generation, names, limits, summary)

    def publish(staged: StagedShard) -> None:
        record = NewShard(
            name=staged.name, generation=staged.generation, audio_seconds=staged.audio_seconds,
            episodes=staged.episodes, files=_public(staged.files),
        )
        ledger.record_shard(record, staged.keys)  # the commit point
        _move_into_place(destination, staged)
        publish_manifest(destination, ledger.shards())
        summary.shards_written += 1
        summary.episodes_written += staged.episodes
        summary.episodes_replaced += sum(1 for key in staged.keys if key.previously_exported)

    with ShardWriter(destination, generation, names, publish, limits) as writer:
        for chunk in ledger.pending(chunk_size=chunk_size):
            table = episodes_table(
                episode_record(
                    url_hash=episode.url_hash, url=episode.url, podcast_id=episode.podcast_id,
                    language=episode.language, archive_url=episode.archive_url,
                    archive_timestamp=episode.archive_timestamp, result=episode.result,
                    result_created_at=episode.result_created_at,
                )
                for episode in chunk
            )
            writer.write(table, [episode.key for episode in chunk])
            del chunk  # the result dicts are the bulk of memory: drop them before the next read
            if on_progress:
                on_progress(table.num_rows)

    destination.remove_staging_if_empty()
    live = ledger.shards(live=True)
    summary.dataset_episodes = sum(shard.episodes for shard in live)
    summary.dataset_audio_hours = sum(shard.audio_seconds for shard in live) / 3600.0
    summary.dataset_shards = len(live)
    summary.seconds = time.monotonic() - started
    return summary


def reconcile(destination: Destination, ledger: ExportLedger) -> int:
    """Bring the dataset's files in line with the ledger after an interrupted run.

    Returns how many files were moved, deleted or dropped from staging.
    """
    present = destination.files("data")
    staged = destination.files(STAGING)
    repaired = 0
    shards = ledger.shards()
    known = {file["path"] for shard in shards for file in shard.files.values()}
    foreign = sorted(path for path in present if path.endswith(".parquet") and path not in known)
    if foreign:
        # Shard names restart at g00001 for a store that never exported here: writing on would
        # overwrite another dataset's files (say, one exported from a different database).
        raise DatasetInconsistent(
            f"{destination.url} holds {len(foreign)} shard file(s) this episode store did not "
            f"write (e.g. {foreign[0]}); export to an empty location or the store that made them"
        )
    for shard in shards:
        for file in shard.files.values():
            path = file["path"]
            if shard.removed_generation is not None:
                if path in present:  # retired, but the run died before deleting it
                    destination.delete(path)
                    repaired += 1
            elif path not in present:  # committed, but the run died before moving it
                if posixpath.join(STAGING, path) not in staged:
                    raise DatasetInconsistent(
                        f"{destination.url}: shard file {path} is recorded in the episode store "
                        "but missing from the dataset"
                    )
                destination.publish(destination.staging_path(path), path)
                repaired += 1
    repaired += destination.clear_staging()
    publish_manifest(destination, shards)
    return repaired


def _retire_stale_rows(
    destination: Destination,
    ledger: ExportLedger,
    old: ShardRecord,
    generation: int,
    names: Iterator[str],
    limits: WriterLimits,
    summary: ExportSummary,
) -> None:
    """Rewrite `old` without its rows whose episode has a newer result; retire `old`."""
    stale = ledger.stale_rows(old.id)
    drop = pa.array(sorted(stale), pa.string())
    rewritten: list[StagedShard] = []
    # One shard out, whatever its size: the rewrite is never larger than the original.
    unbounded = replace(limits, max_bytes=2**62, max_rows=2**62)
    source_path = destination.path(old.files["episodes"]["path"])
    with destination.filesystem.open_input_file(source_path) as source:
        parquet = pq.ParquetFile(source)
        with ShardWriter(destination, generation, names, rewritten.append, unbounded) as writer:
            for batch in parquet.iter_batches(batch_size=limits.row_group_rows):
                table = pa.Table.from_batches([batch]).cast(EPISODES_SCHEMA)
                keep = pc.invert(pc.is_in(table.column("episode_id"), value_set=drop))
                writer.write(table.filter(keep))
    replacement = None
    if rewritten:
        (staged,) = rewritten
        replacement = NewShard(
            name=staged.name, generation=generation, audio_seconds=staged.audio_seconds,
            episodes=staged.episodes, files=_public(staged.files),
        )
    ledger.record_rewrite(old, generation, replacement, list(stale.values()))  # the commit point
    if rewritten:
        _move_into_place(destination, rewritten[0])
        summary.shards_written += 1
    publish_manifest(destination, ledger.shards())
    for file in old.files.values():
        destination.delete(file["path"])
    summary.shards_retired += 1


def _public(files: dict[str, dict]) -> dict[str, dict]:
    """A shard's file entries without the staging path (which is only meaningful during a run)."""
    return {config: {k: v for k, v in file.items() if k != "staged"} for config, file in files.items()}


def _move_into_place(destination: Destination, staged: StagedShard) -> None:
    for file in staged.files.values():
        destination.publish(file["staged"], file["path"])
