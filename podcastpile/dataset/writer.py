"""The shard writer: `episodes` tables in, complete zstd Parquet shards out, one file per configuration.

Rows are buffered as Arrow tables until a row group's worth (by bytes or rows) is there, then
written as one row group per configuration, so streaming readers fetch bounded pieces. A shard
rolls over once its largest file reaches `max_bytes` on disk (a target: the last row group
may overshoot it) or `max_rows` rows. Files are written under the destination's staging folder;
`on_shard` receives each finished shard and decides when it is published (see `export.py`).
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from podcastpile.dataset import stats
from podcastpile.dataset.destination import Destination
from podcastpile.dataset.schema import CONFIGS

DATA_DIR = "data"
COMPRESSION = "zstd"


def shard_names(generation: int) -> Iterator[str]:
    """`train-g00003-00000`, `train-g00003-00001`, …: names sort by generation, then write order.

    The usual `train-00000-of-00012` needs the shard count up front, which an incremental,
    streaming export never knows; renaming at the end would not be atomic on object stores.
    The `train-` prefix keeps `datasets`' split inference right even without the dataset card.
    """
    index = 0
    while True:
        yield f"train-g{generation:05d}-{index:05d}"
        index += 1


def shard_path(config: str, name: str) -> str:
    """A shard file's path relative to the dataset root."""
    return posixpath.join(DATA_DIR, config, f"{name}.parquet")


@dataclass(frozen=True)
class WriterLimits:
    """Shard and row-group sizes. Row groups bound what a streaming reader fetches at once."""

    max_bytes: int = 256_000_000
    max_rows: int = 100_000
    row_group_bytes: int = 32 * 1024 * 1024  # uncompressed Arrow bytes: ~10-15 MB compressed
    row_group_rows: int = 1_000
    compression_level: int = 3  # zstd's default: most of the ratio at a fraction of the CPU


@dataclass
class StagedShard:
    """A finished shard still under the staging folder: what `on_shard` gets."""

    name: str
    generation: int
    files: dict[str, dict[str, Any]]  # config → {path (final, relative), staged (fs path), rows, bytes}
    # (the episodes entry also carries `provenance` and the card's `stats`)
    episodes: int
    audio_seconds: float
    keys: list[Any] = field(default_factory=list)  # whatever the caller passed with its rows


# Turn audio values are whole encoded files (~100 KB for a 7 s FLAC turn). The Parquet writer
# checks a page's size once per write batch: at the default 1,024 values (more than a 32 MB row
# group holds) a row group's audio became one page, buffered, dictionary-encoded and compressed
# whole, and flushing it peaked at about 6x its size (bench/export_audio_bench.py). Batches of 8
# values keep pages near the 1 MB target.
AUDIO_WRITE_BATCH = 8


def _audio_options(schema: pa.Schema) -> dict[str, Any]:
    """Writer options for a file with an `audio` column: small write batches, and no dictionary
    for the audio (each value is a distinct file: the writer would only give up on it late)."""
    if "audio" not in schema.names:
        return {}
    buffer = pa.BufferOutputStream()
    pq.write_table(schema.empty_table(), buffer)  # the Parquet leaf paths, as the writer names them
    parquet_schema = pq.ParquetFile(pa.BufferReader(buffer.getvalue())).schema
    leaves = [parquet_schema.column(index).path for index in range(len(parquet_schema))]
    return {
        "use_dictionary": [path for path in leaves if not path.startswith("audio.")],
        "write_batch_size": AUDIO_WRITE_BATCH,
    }


class _StagedFile:
    """One Parquet file being written in the staging folder."""

    def __init__(self, destination: Destination, relative: str, schema: pa.Schema, level: int) -> None:
        self.relative = relative
        self.staged = destination.staging_path(relative)
        destination.filesystem.create_dir(posixpath.dirname(self.staged), recursive=True)
        self.sink = destination.filesystem.open_output_stream(self.staged)
        self.writer = pq.ParquetWriter(
            self.sink, schema, compression=COMPRESSION, compression_level=level, **_audio_options(schema)
        )
        self.rows = 0

    def write_row_group(self, table: pa.Table) -> None:
        self.writer.write_table(table, row_group_size=max(table.num_rows, 1))
        self.rows += table.num_rows

    @property
    def bytes_written(self) -> int:
        return self.sink.tell()

    def close(self) -> int:
        self.writer.close()
        size = self.sink.tell()
        self.sink.close()
        return size


class ShardWriter:
    """Writes `episodes` tables into shards of every configuration, rolling over by size.

    Use as a context manager; `close()` finishes the last shard. A writer that is abandoned
    (an exception, a kill) leaves only staging files, which the next export deletes.
    """

    def __init__(
        self,
        destination: Destination,
        generation: int,
        names: Iterator[str],
        on_shard: Callable[[StagedShard], None],
        limits: WriterLimits = WriterLimits(),
        configs: Mapping[str, tuple[pa.Schema, Callable[[pa.Table], pa.Table]]] = CONFIGS,
    ) -> None:
        self.destination = destination
        self.generation = generation
        self.names = names
        self.on_shard = on_shard
        self.limits = limits
        self.configs = configs
        self._pending: list[pa.Table] = []
        self._pending_keys: list[Any] = []
        self._pending_rows = 0
        self._pending_bytes = 0
        self._files: dict[str, _StagedFile] | None = None
        self._name = ""
        self._shard_rows = 0
        self._shard_keys: list[Any] = []
        self._audio_seconds = 0.0
        self._provenance = _empty_provenance()
        self._stats = stats.empty()
        self.shards_written = 0

    def write(self, episodes: pa.Table, keys: Sequence[Any] = ()) -> None:
        """Add `episodes` rows; `keys` (one per row, or none) come back with the shard holding them."""
        if keys and len(keys) != episodes.num_rows:
            raise ValueError(f"{len(keys)} keys for {episodes.num_rows} rows")
        start = 0
        while start < episodes.num_rows:
            room = min(
                self.limits.max_rows - self._shard_rows - self._pending_rows,
                self.limits.row_group_rows - self._pending_rows,
            )
            take = min(room, episodes.num_rows - start)
            piece = episodes.slice(start, take)
            self._pending.append(piece)
            self._pending_keys.extend(keys[start:start + take])
            self._pending_rows += take
            self._pending_bytes += piece.nbytes
            start += take
            if (
                self._pending_bytes >= self.limits.row_group_bytes
                or self._pending_rows >= self.limits.row_group_rows
                or self._shard_rows + self._pending_rows >= self.limits.max_rows
            ):
                self._flush_row_group()

    def close(self) -> None:
        """Write what is buffered and finish the current shard."""
        self._flush_row_group()
        self._finish_shard()

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, kind: Any, *_: Any) -> None:
        if kind is None:
            self.close()
        elif self._files is not None:  # leave no open handles; the staged files are discarded later
            for staged in self._files.values():
                try:
                    staged.close()
                except Exception:  # noqa: BLE001 - already failing; the original error matters
                    pass

    def _flush_row_group(self) -> None:
        if not self._pending_rows:
            return
        episodes = pa.concat_tables(self._pending)
        if self._files is None:
            self._open_shard()
        assert self._files is not None
        for config, (_, derive) in self.configs.items():
            self._files[config].write_row_group(derive(episodes))
        self._shard_rows += episodes.num_rows
        self._shard_keys.extend(self._pending_keys)
        self._audio_seconds += pc.sum(episodes.column("duration")).as_py() or 0.0
        _add_provenance(self._provenance, episodes)
        stats.add_rows(self._stats, episodes)
        self._pending, self._pending_keys = [], []
        self._pending_rows = self._pending_bytes = 0
        # Hand the row group's freed buffers back: Arrow's pool keeps them otherwise, and the next
        # episode's decoding (numpy, FFmpeg: the system allocator) cannot reuse them.
        pa.default_memory_pool().release_unused()
        # The largest file counts: with audio, a shard's `turns` file outgrows its `episodes` file.
        largest = max(staged.bytes_written for staged in self._files.values())
        if largest >= self.limits.max_bytes or self._shard_rows >= self.limits.max_rows:
            self._finish_shard()

    def _open_shard(self) -> None:
        self._name = next(self.names)
        self._files = {
            config: _StagedFile(
                self.destination, shard_path(config, self._name), schema,
                self.limits.compression_level,
            )
            for config, (schema, _) in self.configs.items()
        }

    def _finish_shard(self) -> None:
        if self._files is None:
            return
        files = {}
        for config, staged in self._files.items():
            size = staged.close()
            files[config] = {
                "path": staged.relative, "staged": staged.staged, "rows": staged.rows, "bytes": size,
            }
        if "episodes" in files:
            files["episodes"]["provenance"] = self._provenance
            files["episodes"]["stats"] = self._stats  # the dataset card's figures (`stats.py`)
        shard = StagedShard(
            name=self._name, generation=self.generation, files=files,
            episodes=self._shard_rows, audio_seconds=self._audio_seconds, keys=self._shard_keys,
        )
        self._files = None
        self._shard_rows, self._shard_keys, self._audio_seconds = 0, [], 0.0
        self._provenance = _empty_provenance()
        self._stats = stats.empty()
        self.shards_written += 1
        self.on_shard(shard)


def _empty_provenance() -> dict[str, Any]:
    return {"archived": 0, "asr_models": {}, "diar_models": {}}


def _add_provenance(provenance: dict[str, Any], episodes: pa.Table) -> None:
    """Count what the dataset card states about rows: archived audio or not, which models made them."""
    provenance["archived"] += pc.sum(pc.is_valid(episodes.column("archive_url"))).as_py() or 0
    for column, key in (("asr_model", "asr_models"), ("diar_model", "diar_models")):
        for item in pc.value_counts(episodes.column(column).fill_null("unknown")).to_pylist():
            provenance[key][item["values"]] = provenance[key].get(item["values"], 0) + item["counts"]
