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

With `audio`, each episode's archived capture is fetched and decoded (one episode at a time)
and its turns are written with their audio; an episode whose audio cannot be had is skipped,
with its reason in the summary, and stays pending. With `where`, only the episodes the filter
keeps are written. Both are properties of the dataset (its `layout`, kept in the manifest): an
export with another layout than the dataset's refuses to mix them.
"""

from __future__ import annotations

import json
import posixpath
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from sqlalchemy import Engine

from podcastpile.dataset import stats
from podcastpile.dataset.audio import AudioOptions, AudioUnavailable, encode_turns, episode_samples
from podcastpile.dataset.destination import STAGING, Destination, open_destination
from podcastpile.dataset.filters import RowFilter
from podcastpile.dataset.manifest import MANIFEST, Layout, publish_manifest
from podcastpile.dataset.schema import (
    AUDIO, AUDIO_SAMPLE_RATE, EPISODES_SCHEMA, TURN_AUDIO_COLUMN, configs_for,
    episode_record, episodes_table,
)
from podcastpile.dataset.writer import ShardWriter, StagedShard, WriterLimits, shard_names
from podcastpile.store.exports import ExportableEpisode, ExportLedger, NewShard, ShardRecord

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
    audio: str | None = None  # the codec of the turns' audio; None: no audio
    where: str | None = None  # the filter this dataset's rows passed
    episodes_filtered: int = 0  # left out by `where`
    # episodes whose audio could not be had: {episode_id, url, code, reason}; they stay pending
    skipped: list[dict[str, str]] = field(default_factory=list)
    audio_seconds_written: float = 0.0  # of the episodes written with audio


def export_dataset(
    engine: Engine,
    location: str,
    *,
    limits: WriterLimits = WriterLimits(),
    chunk_size: int = 16,
    on_start: ProgressCallback | None = None,
    on_progress: ProgressCallback | None = None,
    audio: AudioOptions | None = None,
    where: str | None = None,
) -> ExportSummary:
    """Export every completed episode the dataset at `location` lacks; return what was done.

    `location` is a folder or an fsspec URL. `chunk_size` episodes are read from the store at
    a time (their result dicts are the bulk of memory). `on_start(total)` gets the number of
    episodes to write, `on_progress(n)` is called as each chunk is handed to the writer.
    `audio`: write each turn's audio into the `turns` files (see `podcastpile.dataset.audio`).
    `where`: a filter over the `episodes` columns (see `podcastpile.dataset.filters`).
    Raises `ExportBusy` when another export to the same dataset is running, `FilterError` for
    a bad `where`, `DatasetInconsistent` when the dataset was written with another layout.
    """
    started = time.monotonic()
    row_filter = RowFilter(where, EPISODES_SCHEMA) if where else None
    layout = Layout(
        audio=audio.codec if audio else None, audio_pad=audio.pad if audio else 0.0,
        where=row_filter.text if row_filter else None,
    )
    destination = open_destination(location)
    ledger = ExportLedger(engine, destination.url)
    with ledger.exclusive():
        layout = _check_layout(destination, ledger, layout)
        run = _Run(destination, ledger, limits, chunk_size, audio, row_filter, layout)
        return run.export(on_start, on_progress, started)


def _check_layout(destination: Destination, ledger: ExportLedger, layout: Layout) -> Layout:
    """The layout to write: the dataset's own; refuse to add rows of another layout (audio,
    filter) to it. A dataset of schema version 1 (before turns carried `audio_sha256`) goes on
    in version 1 when no audio is asked for.

    Shards of different schemas in one configuration are a dataset no reader can load whole.
    """
    if not ledger.shards(live=True):
        return layout
    text = destination.read_text(MANIFEST)
    if text is None:
        return layout  # a run died before its first manifest: reconcile renders one with this layout
    found = Layout.from_manifest(json.loads(text))
    if found.schema_version == 1 and layout.audio is None:
        layout = replace(layout, schema_version=1)
    if found != layout:
        raise DatasetInconsistent(
            f"{destination.url} holds rows exported with {found.describe()}; this export asks for "
            f"{layout.describe()}: export to another location (--out) or repeat its options"
        )
    return layout


class _Run:
    """One export run's state: what it writes, and how."""

    def __init__(
        self, destination: Destination, ledger: ExportLedger, limits: WriterLimits, chunk_size: int,
        audio: AudioOptions | None, row_filter: RowFilter | None, layout: Layout,
    ) -> None:
        self.destination, self.ledger, self.limits = destination, ledger, limits
        self.chunk_size, self.audio, self.row_filter, self.layout = chunk_size, audio, row_filter, layout
        self.configs = configs_for(audio is not None, layout.schema_version)
        # What `where` left out in this run: filtered episodes are never recorded, so each run
        # sees all of them again and its tally is the release's (for the card's hours kept).
        self.left_out: dict[str, dict[str, float]] = {}

    def export(
        self, on_start: ProgressCallback | None, on_progress: ProgressCallback | None, started: float,
    ) -> ExportSummary:
        destination, ledger, limits = self.destination, self.ledger, self.limits
        generation = ledger.next_generation()
        summary = ExportSummary(
            dataset=destination.url, generation=generation, audio=self.layout.audio, where=self.layout.where,
        )
        summary.repaired_files = reconcile(destination, ledger, self.layout)
        if on_start:
            on_start(ledger.count_pending())
        names = shard_names(generation)

        for old in ledger.stale_shards():
            self._retire_stale_rows(old, generation, names, summary)

        def publish(staged: StagedShard) -> None:
            record = NewShard(
                name=staged.name, generation=staged.generation, audio_seconds=staged.audio_seconds,
                episodes=staged.episodes, files=_public(staged.files),
            )
            ledger.record_shard(record, staged.keys)  # the commit point
            _move_into_place(destination, staged)
            publish_manifest(destination, ledger.shards(), self.layout)
            summary.shards_written += 1
            summary.episodes_written += staged.episodes
            summary.episodes_replaced += sum(1 for key in staged.keys if key.previously_exported)

        with ShardWriter(destination, generation, names, publish, limits, self.configs) as writer:
            for chunk in ledger.pending(chunk_size=self.chunk_size):
                done = len(chunk)
                for table, keys in self._tables(chunk, summary):
                    writer.write(table, keys)
                del chunk  # the result dicts are the bulk of memory: drop them before the next read
                if on_progress:
                    on_progress(done)

        if self.row_filter is not None:  # the card's hours kept, now counted over every pending episode
            publish_manifest(destination, ledger.shards(), self.layout, left_out=self.left_out)
        destination.remove_staging_if_empty()
        live = ledger.shards(live=True)
        summary.dataset_episodes = sum(shard.episodes for shard in live)
        summary.dataset_audio_hours = sum(shard.audio_seconds for shard in live) / 3600.0
        summary.dataset_shards = len(live)
        summary.seconds = time.monotonic() - started
        return summary

    def _tables(
        self, chunk: list[ExportableEpisode], summary: ExportSummary,
    ) -> Iterator[tuple[pa.Table, list[Any]]]:
        """A chunk's rows as `episodes` tables: the whole chunk at once, or with audio one
        episode at a time (its encoded turns are the bulk of memory then)."""
        table = episodes_table(
            episode_record(
                url_hash=episode.url_hash, url=episode.url, podcast_id=episode.podcast_id,
                language=episode.language, archive_url=episode.archive_url,
                archive_timestamp=episode.archive_timestamp, result=episode.result,
                result_created_at=episode.result_created_at,
            )
            for episode in chunk
        )
        keys = [episode.key for episode in chunk]
        if self.row_filter is not None:
            keep = self.row_filter.mask(table)
            summary.episodes_filtered += table.num_rows - (pc.sum(keep).as_py() or 0)
            stats.add_filtered(self.left_out, stats.filtered_out(table, keep))
            table = table.filter(keep)
            keys = [key for key, kept in zip(keys, keep.to_pylist()) if kept]
        if self.audio is None:
            if table.num_rows:
                yield table, keys
            return
        by_key = {episode.key: episode for episode in chunk}
        for index, key in enumerate(keys):
            row = table.slice(index, 1)
            episode = by_key[key]
            try:
                samples = episode_samples(
                    episode.archive_url, row.column("audio_sha256")[0].as_py(), self.audio.access,
                )
                turns = row.column("turns")[0].as_py()
                audio = encode_turns(samples, turns, episode.url_hash, self.audio)
            except AudioUnavailable as error:
                summary.skipped.append({
                    "episode_id": episode.url_hash, "url": episode.url, "code": error.code, "reason": error.reason,
                })
                continue
            summary.audio_seconds_written += len(samples) / AUDIO_SAMPLE_RATE
            del samples
            column = pa.array([audio], pa.list_(AUDIO))
            yield row.append_column(TURN_AUDIO_COLUMN, column), [key]

    def _retire_stale_rows(
        self, old: ShardRecord, generation: int, names: Iterator[str], summary: ExportSummary,
    ) -> None:
        """Rewrite `old` without its rows whose episode has a newer result; retire `old`."""
        destination, ledger, limits = self.destination, self.ledger, self.limits
        stale = ledger.stale_rows(old.id)
        drop = pa.array(sorted(stale), pa.string())
        rewritten: list[StagedShard] = []
        # One shard out, whatever its size: the rewrite is never larger than the original.
        unbounded = replace(limits, max_bytes=2**62, max_rows=2**62)
        with ShardWriter(destination, generation, names, rewritten.append, unbounded, self.configs) as writer:
            for table in _old_rows(destination, old, limits.row_group_rows, self.audio is not None):
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
        publish_manifest(destination, ledger.shards(), self.layout)
        for file in old.files.values():
            destination.delete(file["path"])
        summary.shards_retired += 1


def _old_rows(destination: Destination, old: ShardRecord, batch_rows: int, audio: bool) -> Iterator[pa.Table]:
    """A shard's `episodes` rows in batches; with `audio`, each with its turns' audio attached
    (read in step from the shard's `turns` file, whose rows are the episodes' turns in order)."""
    with destination.filesystem.open_input_file(destination.path(old.files["episodes"]["path"])) as source:
        batches = pq.ParquetFile(source).iter_batches(batch_size=batch_rows)
        if not audio:
            for batch in batches:
                yield pa.Table.from_batches([batch]).cast(EPISODES_SCHEMA)
            return
        turns_path = destination.path(old.files["turns"]["path"])
        with destination.filesystem.open_input_file(turns_path) as turns_source:
            audio_batches = pq.ParquetFile(turns_source).iter_batches(batch_size=batch_rows, columns=["audio"])
            buffered: list[pa.Array] = []
            held = 0
            for batch in batches:
                table = pa.Table.from_batches([batch]).cast(EPISODES_SCHEMA)
                counts = pc.list_value_length(table.column("turns")).fill_null(0).to_numpy(zero_copy_only=False)
                needed = int(counts.sum())
                while held < needed:
                    piece = next(audio_batches).column(0)
                    buffered.append(piece)
                    held += len(piece)
                values = pa.concat_arrays(buffered) if buffered else pa.array([], AUDIO)
                offsets = pa.array([0, *counts.cumsum().tolist()], pa.int32())
                column = pa.ListArray.from_arrays(offsets, values.slice(0, needed)).cast(pa.list_(AUDIO))
                rest = values.slice(needed)
                buffered, held = ([rest] if len(rest) else []), len(rest)
                yield table.append_column(TURN_AUDIO_COLUMN, column)


def reconcile(destination: Destination, ledger: ExportLedger, layout: Layout = Layout()) -> int:
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
    publish_manifest(destination, shards, layout)
    return repaired


def _public(files: dict[str, dict]) -> dict[str, dict]:
    """A shard's file entries without the staging path (which is only meaningful during a run)."""
    return {config: {k: v for k, v in file.items() if k != "staged"} for config, file in files.items()}


def _move_into_place(destination: Destination, staged: StagedShard) -> None:
    for file in staged.files.values():
        destination.publish(file["staged"], file["path"])
