"""The dataset's Parquet schema (explicit and versioned) and the conversion of store rows into it.

Two configurations share one source: `episodes` (one row per episode, turns and words nested)
is what the exporter builds; `turns` (one row per speaker turn) is derived from an `episodes`
table by `explode_turns`, so both are always written from the very same rows.

Times are seconds from the start of the audio (float64, as stored: exact round trip); levels
are dBFS. Bump `SCHEMA_VERSION` on any change a reader could notice.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# 2: `turns` rows carry `audio_sha256` (so a turn's audio can be fetched and checked from its
# row alone), and `ppcli export --audio` adds an `audio` column to them; turns and episodes
# carry the quality scores (`_QUALITY`) and episodes the quality models' ids.
SCHEMA_VERSION = 2
METADATA_KEY = b"podcastpile.schema_version"

WORD = pa.struct([("word", pa.string()), ("start", pa.float64()), ("end", pa.float64())])
SEGMENT = pa.struct([("speaker", pa.string()), ("start", pa.float64()), ("end", pa.float64())])
_LEVELS = [
    pa.field("rms_dbfs", pa.float64()),
    pa.field("peak_dbfs", pa.float64()),
    pa.field("clipped_ratio", pa.float64()),
    pa.field("speech_ratio", pa.float64()),
]
# Model-based quality scores (podcastpile.speech.quality); null where not measured (results
# stored before them) or not measurable (DNSMOS for a turn with under 1 s of speech).
_QUALITY = [
    pa.field("dnsmos_sig", pa.float64()),
    pa.field("dnsmos_bak", pa.float64()),
    pa.field("dnsmos_ovrl", pa.float64()),
    pa.field("vad_segments", pa.int32()),
    pa.field("loudness_lufs", pa.float64()),
    pa.field("snr_db", pa.float64()),
    pa.field("overlap_ratio", pa.float64()),
]
_TURN_TEXT = [
    pa.field("speaker", pa.string()),
    pa.field("start", pa.float64()),
    pa.field("end", pa.float64()),
    pa.field("text", pa.string()),
    pa.field("words", pa.list_(WORD)),
]
TURN = pa.struct([*_TURN_TEXT, *_LEVELS, *_QUALITY])
TURN_V1 = pa.struct([*_TURN_TEXT, *_LEVELS])
_QUALITY_MODELS = ["dnsmos_model", "vad_model", "loudness_model"]
_UTC_MILLIS = pa.timestamp("ms", tz="UTC")  # Parquet has no second unit: ms is what readers get
_UTC_MICROS = pa.timestamp("us", tz="UTC")


def _schema(fields: list[pa.Field], config: str) -> pa.Schema:
    return pa.schema(
        fields, metadata={METADATA_KEY: str(SCHEMA_VERSION).encode(), b"podcastpile.config": config.encode()}
    )


EPISODES_SCHEMA = _schema(
    [
        pa.field("episode_id", pa.string(), nullable=False),  # md5 of the normalized episode URL
        pa.field("podcast_id", pa.string()),
        pa.field("episode_url", pa.string(), nullable=False),
        pa.field("archive_url", pa.string()),  # the Internet Archive copy that was processed
        pa.field("archive_timestamp", _UTC_MILLIS),  # its Wayback capture time
        pa.field("language", pa.string()),
        pa.field("duration", pa.float64()),  # seconds of decoded audio
        pa.field("audio_sha256", pa.string()),
        pa.field("audio_md5", pa.string()),
        pa.field("audio_format", pa.string()),
        pa.field("audio_bytes", pa.int64()),
        pa.field("num_speakers", pa.int32()),
        pa.field("text", pa.string()),
        pa.field("turns", pa.list_(TURN)),
        pa.field("segments", pa.list_(SEGMENT)),  # raw diarization output
        *_LEVELS,
        *_QUALITY,
        pa.field("asr_model", pa.string()),
        pa.field("asr_fingerprint", pa.string()),
        pa.field("diar_model", pa.string()),
        pa.field("diar_fingerprint", pa.string()),
        *(pa.field(name, pa.string()) for name in _QUALITY_MODELS),
        pa.field("code_version", pa.string()),
        pa.field("processing_seconds", pa.float64()),
        pa.field("processed_at", _UTC_MICROS, nullable=False),  # when the result was stored
    ],
    "episodes",
)

# Per-turn rows carry the episode fields a training loader filters or groups by.
_TURN_EPISODE_COLUMNS = [
    "episode_id", "podcast_id", "language", "archive_url", "audio_sha256", "code_version",
]
TURNS_SCHEMA = _schema(
    [
        *(EPISODES_SCHEMA.field(name) for name in _TURN_EPISODE_COLUMNS),
        pa.field("turn_index", pa.int32(), nullable=False),
        *TURN,
    ],
    "turns",
)


def parse_archive_timestamp(value: str | None) -> datetime | None:
    """A Wayback capture timestamp (`YYYYMMDDhhmmss`, UTC) as an aware datetime; None stays None."""
    if not value:
        return None
    return datetime.strptime(value, "%Y%m%d%H%M%S").replace(tzinfo=UTC)


def episode_record(
    *,
    url_hash: str,
    url: str,
    podcast_id: str | None,
    language: str | None,
    archive_url: str | None,
    archive_timestamp: str | None,
    result: Mapping[str, Any],
    result_created_at: datetime,
) -> dict[str, Any]:
    """One `episodes` row from an episode's store columns and its result dict.

    The result's own `language` wins over the episode's (it is what the ASR model was chosen
    for). Fields a result lacks become nulls rather than failing the export.
    """
    levels = {field.name: result.get(field.name) for field in (*_LEVELS, *_QUALITY)}
    return {
        "episode_id": url_hash,
        "podcast_id": podcast_id,
        "episode_url": url,
        "archive_url": archive_url,
        "archive_timestamp": parse_archive_timestamp(archive_timestamp),
        "language": result.get("language") or language,
        "duration": result.get("duration"),
        "audio_sha256": result.get("sha256"),
        "audio_md5": result.get("md5"),
        "audio_format": result.get("audio_format"),
        "audio_bytes": result.get("audio_bytes"),
        "num_speakers": result.get("num_speakers"),
        "text": result.get("text"),
        "turns": result.get("turns") or [],
        "segments": result.get("segments") or [],
        **levels,
        "asr_model": result.get("asr_model"),
        "asr_fingerprint": result.get("asr_fingerprint"),
        "diar_model": result.get("diar_model"),
        "diar_fingerprint": result.get("diar_fingerprint"),
        **{name: result.get(name) for name in _QUALITY_MODELS},
        "code_version": result.get("code_version"),
        "processing_seconds": result.get("processing_seconds"),
        "processed_at": result_created_at.replace(tzinfo=UTC)
        if result_created_at.tzinfo is None
        else result_created_at,
    }


def episodes_table(records: Iterable[Mapping[str, Any]]) -> pa.Table:
    """An `episodes` table from records built by `episode_record` (extra keys are an error)."""
    return pa.Table.from_pylist(list(records), schema=EPISODES_SCHEMA)


def explode_turns(episodes: pa.Table) -> pa.Table:
    """The `turns` configuration of an `episodes` table: one row per turn, in episode order."""
    turns = episodes.column("turns").combine_chunks()
    parents = pc.list_parent_indices(turns)
    flat = pc.list_flatten(turns)
    # Position of each turn within its episode: its flat index minus its episode's first index.
    # (A sliced array's offsets do not start at 0; the flattened values start at offsets[0].)
    offsets = turns.offsets.to_numpy(zero_copy_only=False)
    offsets = (offsets - offsets[0])[:-1]
    parent_indices = parents.to_numpy(zero_copy_only=False)
    turn_index = np.arange(len(flat), dtype=np.int32) - offsets[parent_indices].astype(np.int32)
    columns = [episodes.column(name).take(parents) for name in _TURN_EPISODE_COLUMNS]
    columns.append(pa.array(turn_index, pa.int32()))
    columns.extend(flat.field(index) for index in range(flat.type.num_fields))
    return pa.Table.from_arrays(columns, schema=TURNS_SCHEMA)


# The dataset's configurations: name → (schema, how to build it from an `episodes` table).
CONFIGS: dict[str, tuple[pa.Schema, Callable[[pa.Table], pa.Table]]] = {
    "episodes": (EPISODES_SCHEMA, lambda table: table),
    "turns": (TURNS_SCHEMA, explode_turns),
}

# With audio, the encoded turns ride along with the `episodes` table the writer gets, as one
# list per episode (one entry per turn) in this column, which only the `turns` files keep.
TURN_AUDIO_COLUMN = "turn_audio"
# The storage of Hugging Face `datasets`' `Audio` feature: the encoded file and a name for it.
AUDIO = pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())])
AUDIO_SAMPLE_RATE = 16_000
HF_METADATA_KEY = b"huggingface"


def hf_features(schema: pa.Schema, audio_column: str | None = None) -> dict[str, Any]:
    """`datasets`' feature dict for `schema`; `audio_column` becomes an `Audio` feature.

    Lists are written in the `[feature]` form, which `datasets` 3.x reads and 4.x+ still
    accepts (4.x writes `{"_type": "List"}`, which 3.x cannot read).
    """
    def feature(data_type: pa.DataType) -> Any:
        if pa.types.is_struct(data_type):
            return {data_type.field(i).name: feature(data_type.field(i).type) for i in range(data_type.num_fields)}
        if pa.types.is_list(data_type) or pa.types.is_large_list(data_type):
            return [feature(data_type.value_type)]
        if pa.types.is_timestamp(data_type):
            zone = f", tz={data_type.tz}" if data_type.tz else ""
            return {"dtype": f"timestamp[{data_type.unit}{zone}]", "_type": "Value"}
        name = {"binary": "binary", "string": "string"}.get(str(data_type), str(data_type))
        return {"dtype": name, "_type": "Value"}

    return {
        field.name: {"sampling_rate": AUDIO_SAMPLE_RATE, "_type": "Audio"}
        if field.name == audio_column else feature(field.type)
        for field in schema
    }


def _with_audio(schema: pa.Schema) -> pa.Schema:
    """`schema` plus an `audio` column that `datasets` reads as its `Audio` feature."""
    with_audio = schema.append(pa.field("audio", AUDIO))
    features = {"info": {"features": hf_features(with_audio, "audio")}}
    metadata = {**(schema.metadata or {}), HF_METADATA_KEY: json.dumps(features).encode()}
    return with_audio.with_metadata(metadata)


TURNS_AUDIO_SCHEMA = _with_audio(TURNS_SCHEMA)


def _episodes_only(table: pa.Table) -> pa.Table:
    return table.select(EPISODES_SCHEMA.names)


def _turns_with_audio(table: pa.Table) -> pa.Table:
    turns = explode_turns(_episodes_only(table))
    audio = pc.list_flatten(table.column(TURN_AUDIO_COLUMN).combine_chunks())
    if len(audio) != turns.num_rows:
        raise ValueError(f"{len(audio)} turn audio entries for {turns.num_rows} turns")
    return turns.append_column(TURNS_AUDIO_SCHEMA.field("audio"), audio).cast(TURNS_AUDIO_SCHEMA)


AUDIO_CONFIGS: dict[str, tuple[pa.Schema, Callable[[pa.Table], pa.Table]]] = {
    "episodes": (EPISODES_SCHEMA, _episodes_only),
    "turns": (TURNS_AUDIO_SCHEMA, _turns_with_audio),
}


# Schema version 1, before turns carried `audio_sha256` and the quality scores: a dataset begun
# with it keeps it (a configuration whose shards disagree on columns cannot be loaded whole), so
# an upgrade does not stop the hourly export of a dataset already published.
_NOT_IN_V1 = {"audio_sha256", *(field.name for field in _QUALITY), *_QUALITY_MODELS}
TURNS_SCHEMA_V1 = pa.schema(
    [field for field in TURNS_SCHEMA if field.name not in _NOT_IN_V1],
    metadata={**TURNS_SCHEMA.metadata, METADATA_KEY: b"1"},
)
EPISODES_SCHEMA_V1 = pa.schema(
    [pa.field("turns", pa.list_(TURN_V1)) if field.name == "turns" else field
     for field in EPISODES_SCHEMA if field.name not in _NOT_IN_V1],
    metadata={**EPISODES_SCHEMA.metadata, METADATA_KEY: b"1"},
)


def _as_v1(table: pa.Table, schema: pa.Schema) -> pa.Table:
    # A struct cast drops the fields the target lacks (the turns' quality scores), by name.
    return table.select(schema.names).cast(schema)


CONFIGS_V1: dict[str, tuple[pa.Schema, Callable[[pa.Table], pa.Table]]] = {
    "episodes": (EPISODES_SCHEMA_V1, lambda table: _as_v1(table, EPISODES_SCHEMA_V1)),
    "turns": (TURNS_SCHEMA_V1, lambda table: _as_v1(explode_turns(table), TURNS_SCHEMA_V1)),
}


def configs_for(audio: bool, schema_version: int = SCHEMA_VERSION) -> dict[str, tuple[pa.Schema, Callable[[pa.Table], pa.Table]]]:
    """The configurations an export writes: with audio, the `turns` files carry an `audio`
    column; `schema_version` 1 for a dataset begun before version 2 (no audio then)."""
    if schema_version == 1:
        return CONFIGS_V1
    return AUDIO_CONFIGS if audio else CONFIGS
