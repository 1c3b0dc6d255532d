"""Export round trip through real readers, incremental runs, replacement of reprocessed results."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import select, update

from podcastpile.dataset.export import export_dataset
from podcastpile.dataset.schema import (
    EPISODES_SCHEMA,
    EPISODES_SCHEMA_V1,
    SCHEMA_VERSION,
    TURNS_SCHEMA_V1,
    explode_turns,
)
from podcastpile.dataset.writer import WriterLimits
from podcastpile.store import EpisodeStore, NewEpisode, make_engine, migrate
from podcastpile.store.tables import EpisodeStatus, episodes, results
from tests.dataset.conftest import add_completed, read_parquet_rows, synthetic_result
from tests.storehelpers import mark_archived

SMALL = WriterLimits(max_rows=3, row_group_rows=2)  # several shards and row groups from a few rows


def store_rows(store: EpisodeStore) -> dict[str, dict[str, Any]]:
    """What the store holds for each completed episode, in the dataset's terms, by url_hash."""
    with store.engine.connect() as connection:
        created = dict(connection.execute(select(results.c.episode_id, results.c.created_at)).all())
    expected = {}
    for episode in store.list(status="completed", limit=None):
        result = store.result(episode.id)
        assert result is not None
        timestamp = episode.archive_timestamp
        expected[episode.url_hash] = {
            "episode_id": episode.url_hash,
            "podcast_id": episode.podcast_id,
            "episode_url": episode.url,
            "archive_url": episode.archive_url,
            "archive_timestamp": datetime.strptime(timestamp, "%Y%m%d%H%M%S").replace(tzinfo=UTC)
            if timestamp else None,
            "language": result["language"],
            "duration": result["duration"],
            "audio_sha256": result["sha256"],
            "audio_md5": result["md5"],
            "audio_format": result["audio_format"],
            "audio_bytes": result["audio_bytes"],
            "num_speakers": result["num_speakers"],
            "text": result["text"],
            "turns": result["turns"],
            "segments": result["segments"],
            **{key: result[key] for key in ("rms_dbfs", "peak_dbfs", "clipped_ratio", "speech_ratio")},
            **{key: result[key] for key in (
                "dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl", "vad_segments", "loudness_lufs", "snr_db", "overlap_ratio",
            )},
            **{key: result[key] for key in (
                "asr_model", "asr_fingerprint", "diar_model", "diar_fingerprint",
                "dnsmos_model", "vad_model", "loudness_model", "code_version", "processing_seconds",
            )},
            "processed_at": created[episode.id].replace(tzinfo=UTC),
        }
    return expected


def plain(value: Any) -> Any:
    """Reader-specific containers (numpy arrays, pandas timestamps) as plain Python values."""
    if isinstance(value, np.ndarray):
        return [plain(item) for item in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if value is pd.NaT or (isinstance(value, float) and np.isnan(value)):
        return None  # pandas' missing value (the synthetic data has no NaN of its own)
    if isinstance(value, pd.Timestamp):
        return value.to_pydatetime()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value.astimezone(UTC)
    return value


def by_id(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    keyed = {row["episode_id"]: {key: plain(value) for key, value in row.items()} for row in rows}
    assert len(keyed) == len(rows), "an episode appears twice"
    return keyed


def manifest(out: Path) -> dict[str, Any]:
    return json.loads((out / "manifest.json").read_text())


def listed_files(out: Path, config: str = "episodes") -> list[str]:
    return [str(out / path) for path in manifest(out)["configs"][config]["files"]]


def test_round_trip_with_pandas_duckdb_and_datasets(store: EpisodeStore, clock, tmp_path: Path) -> None:
    import datasets

    add_completed(store, [f"https://example.com/plain-{n}.mp3" for n in range(5)], turns=4)
    # Two archived episodes, so the Internet Archive URL and capture time are exercised too.
    archiving = EpisodeStore(store.engine, archive_required=True, clock=clock)
    archiving.add([NewEpisode(f"https://example.com/archived-{n}.mp3", language="de") for n in range(2)])
    for episode in archiving.list(status="archive_pending"):
        mark_archived(
            archiving, episode.id, timestamp="20260102030405",
            archive_url=f"https://web.archive.org/web/20260102030405id_/{episode.url}",
        )
    add_completed(store, [], seed=100)  # claims and completes the archived ones
    expected = store_rows(store)
    assert len(expected) == 7

    out = tmp_path / "dataset"
    summary = export_dataset(store.engine, str(out), limits=SMALL)
    assert summary.episodes_written == 7 and summary.shards_written == 3
    files = listed_files(out)
    assert len(files) == 3

    assert by_id(read_parquet_rows(files)) == expected  # pyarrow
    frame = pd.concat([pd.read_parquet(path) for path in files])
    assert by_id(frame.to_dict("records")) == expected  # pandas
    result = duckdb.sql(f"SELECT * FROM read_parquet({files!r})")
    duck_rows = [dict(zip(result.columns, row)) for row in result.fetchall()]
    assert by_id(duck_rows) == expected  # duckdb
    # (A private cache: `datasets` keys its cache by relative file names and mtimes, which
    # another test's dataset could share.)
    cache = str(tmp_path / "hf-cache")
    loaded = datasets.load_dataset(str(out), split="train", cache_dir=cache)  # the card, as is
    assert by_id(list(loaded)) == expected

    turns = datasets.load_dataset(str(out), "turns", split="train", cache_dir=cache)
    assert len(turns) == sum(len(row["turns"]) for row in expected.values())
    first = turns[0]
    source_turn = expected[first["episode_id"]]["turns"][first["turn_index"]]
    assert {key: first[key] for key in source_turn} == source_turn

    info = manifest(out)
    assert info["schema_version"] == SCHEMA_VERSION and info["episodes"] == 7
    assert info["audio_hours"] == pytest.approx(sum(row["duration"] for row in expected.values()) / 3600)
    schema = pq.read_schema(files[0])
    assert schema.equals(EPISODES_SCHEMA, check_metadata=False)
    assert schema.metadata[b"podcastpile.schema_version"] == str(SCHEMA_VERSION).encode()
    assert pq.ParquetFile(files[0]).metadata.row_group(0).column(0).compression == "ZSTD"


def test_incremental_exports_and_reprocessed_episode_replaced(
    store: EpisodeStore, clock, tmp_path: Path
) -> None:
    out = tmp_path / "dataset"
    first_ids = add_completed(store, [f"https://example.com/a-{n}.mp3" for n in range(5)])
    first = export_dataset(store.engine, str(out), limits=SMALL)
    assert (first.generation, first.episodes_written) == (1, 5)

    clock.advance(60)
    add_completed(store, [f"https://example.com/b-{n}.mp3" for n in range(3)])
    second = export_dataset(store.engine, str(out), limits=SMALL)
    assert (second.generation, second.episodes_written, second.episodes_replaced) == (2, 3, 0)
    assert by_id(read_parquet_rows(listed_files(out))) == store_rows(store)

    again = export_dataset(store.engine, str(out), limits=SMALL)
    assert again.episodes_written == 0 and again.shards_written == 0

    # Invalidate one episode (as a bad-code-version sweep would: back to the queue), then
    # reprocess it through the real claim/complete path with a different result.
    target = first_ids[1]
    with store.engine.begin() as connection:
        connection.execute(
            update(episodes).where(episodes.c.id == target).values(status=EpisodeStatus.pending)
        )
    assert export_dataset(store.engine, str(out), limits=SMALL).episodes_written == 0  # old row stays
    old_files = set(manifest(out)["configs"]["episodes"]["files"])
    clock.advance(3600)
    (claim,) = store.claim_batch("re-worker", 1, episode_ids=[target])
    new_result = synthetic_result(999, turns=2, tag="-v2").to_dict()
    store.complete(claim.episode_id, claim.lease_token, new_result)

    third = export_dataset(store.engine, str(out), limits=SMALL)
    assert third.episodes_written == 1 and third.episodes_replaced == 1 and third.shards_retired == 1
    rows = by_id(read_parquet_rows(listed_files(out)))
    assert rows == store_rows(store) and len(rows) == 8
    assert rows[store.get(target).url_hash]["text"] == new_result["text"]
    turn_rows = read_parquet_rows(listed_files(out, "turns"))
    assert len(turn_rows) == sum(len(row["turns"]) for row in rows.values())

    info = manifest(out)
    latest = info["generations"][-1]
    assert info["generation"] == latest["generation"] == third.generation
    assert latest["episodes_replaced"] == 1 and len(latest["shards_removed"]) == 1
    retired = latest["shards_removed"][0]
    assert f"data/episodes/{retired}.parquet" in old_files
    assert not (out / "data" / "episodes" / f"{retired}.parquet").exists()  # deleted once unlisted
    on_disk = {str(path.relative_to(out)) for path in (out / "data").rglob("*.parquet")}
    listed = {path for config in info["configs"].values() for path in config["files"]}
    assert on_disk == listed


def test_fsspec_destination(tmp_path: Path) -> None:
    """A URL destination goes through fsspec (here its in-memory filesystem) the same way."""
    import fsspec

    engine = make_engine(f"sqlite:///{tmp_path / 'episodes.db'}")
    migrate(engine)
    store = EpisodeStore(engine, archive_required=False)
    add_completed(store, [f"https://example.com/m-{n}.mp3" for n in range(4)])
    url = f"memory://podcastpile-{tmp_path.name}/dataset"
    summary = export_dataset(engine, url, limits=SMALL)
    assert summary.dataset == url and summary.dataset_episodes == 4
    memory = fsspec.filesystem("memory")
    root = f"/podcastpile-{tmp_path.name}/dataset"
    info = json.loads(memory.cat(f"{root}/manifest.json"))
    tables = [pq.read_table(f"{root}/{path}", filesystem=memory) for path in info["configs"]["episodes"]["files"]]
    assert by_id(pa.concat_tables(tables).to_pylist()) == store_rows(store)
    assert not memory.find(f"{root}/.incomplete")
    engine.dispose()


def test_shards_roll_over_by_bytes_and_row_groups_stay_small(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'episodes.db'}")
    migrate(engine)
    store = EpisodeStore(engine, archive_required=False)
    add_completed(store, [f"https://example.com/r-{n}.mp3" for n in range(40)], turns=6, words_per_turn=30)
    limits = WriterLimits(max_bytes=20_000, max_rows=1_000, row_group_rows=4)
    export_dataset(engine, str(tmp_path / "dataset"), limits=limits)
    shards = manifest(tmp_path / "dataset")["shards"]
    assert len(shards) > 2
    for shard in shards[:-1]:  # every shard but the last was closed for reaching the byte target
        assert shard["files"]["episodes"]["bytes"] >= limits.max_bytes
    for shard in shards:
        metadata = pq.ParquetFile(tmp_path / "dataset" / shard["files"]["episodes"]["path"]).metadata
        assert metadata.num_rows == shard["episodes"]
        assert all(metadata.row_group(i).num_rows <= 4 for i in range(metadata.num_row_groups))
    assert sum(shard["episodes"] for shard in shards) == 40
    engine.dispose()


def test_explode_turns_numbers_turns_within_each_episode_of_a_slice() -> None:
    from podcastpile.dataset.schema import episode_record, episodes_table

    records = [
        episode_record(
            url_hash=f"{n:032x}", url=f"https://example.com/{n}.mp3", podcast_id=None,
            language="en", archive_url=None, archive_timestamp=None,
            result=synthetic_result(n, turns=n + 1).to_dict(), result_created_at=datetime(2026, 1, 1),
        )
        for n in range(4)
    ]
    table = episodes_table(records).slice(1, 2)  # episodes with 2 and 3 turns
    turns = explode_turns(table)
    assert turns.column("turn_index").to_pylist() == [0, 1, 0, 1, 2]
    assert turns.column("episode_id").to_pylist() == [f"{1:032x}"] * 2 + [f"{2:032x}"] * 3
    assert turns.column("text").to_pylist() == [turn["text"] for record in records[1:3] for turn in record["turns"]]


def test_refuses_a_folder_holding_shards_it_did_not_write(tmp_path: Path) -> None:
    """Another store's dataset (or a copy) must not be overwritten by shards of the same name."""
    from podcastpile.dataset.export import DatasetInconsistent

    engine = make_engine(f"sqlite:///{tmp_path / 'episodes.db'}")
    migrate(engine)
    add_completed(EpisodeStore(engine, archive_required=False), ["https://example.com/x.mp3"])
    foreign = tmp_path / "dataset" / "data" / "episodes" / "train-g00001-00000.parquet"
    foreign.parent.mkdir(parents=True)
    foreign.write_bytes(b"not ours")
    with pytest.raises(DatasetInconsistent, match="did not write"):
        export_dataset(engine, str(tmp_path / "dataset"))
    assert foreign.read_bytes() == b"not ours"
    engine.dispose()


def test_a_dataset_begun_with_schema_version_1_goes_on_in_it(store: EpisodeStore, clock, tmp_path: Path) -> None:
    """After an upgrade the hourly export of an already published dataset must not stop: one
    begun before turns carried `audio_sha256` (schema version 1) gets version-1 shards, and the
    whole `turns` configuration still loads as one table; audio is refused for it."""
    from podcastpile.dataset.audio import AudioOptions
    from podcastpile.dataset.export import DatasetInconsistent

    out = tmp_path / "dataset"
    add_completed(store, [f"https://example.com/a-{n}.mp3" for n in range(4)])
    export_dataset(store.engine, str(out), limits=SMALL)
    # What the previous release wrote: no audio_sha256 in the turns files, no quality scores,
    # version 1 everywhere.
    old_columns = {"audio_sha256", "dnsmos_ovrl", "vad_segments", "overlap_ratio", "dnsmos_model"}
    for config, schema in (("turns", TURNS_SCHEMA_V1), ("episodes", EPISODES_SCHEMA_V1)):
        for path in listed_files(out, config):
            table = pq.read_table(path)
            assert set(table.column_names) & old_columns  # written as version 2
            pq.write_table(table.select(schema.names).cast(schema), path)
    info = manifest(out)
    info["schema_version"] = 1
    info.pop("layout")
    (out / "manifest.json").write_text(json.dumps(info))

    clock.advance(60)
    add_completed(store, [f"https://example.com/b-{n}.mp3" for n in range(3)])
    more = export_dataset(store.engine, str(out), limits=SMALL)
    assert more.episodes_written == 3 and manifest(out)["schema_version"] == 1
    turns = duckdb.sql(f"SELECT * FROM read_parquet({listed_files(out, 'turns')!r})").df()
    assert "audio_sha256" not in turns.columns and turns["episode_id"].nunique() == 7
    assert not set(turns.columns) & old_columns
    episodes_v1 = duckdb.sql(f"SELECT * FROM read_parquet({listed_files(out)!r})").df()
    assert not set(episodes_v1.columns) & old_columns and len(episodes_v1) == 7
    with pytest.raises(DatasetInconsistent, match="schema version 1"):
        export_dataset(store.engine, str(out), limits=SMALL, audio=AudioOptions(codec="flac"))
