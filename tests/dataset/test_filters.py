"""`--where`: one predicate for the export, duckdb, pandas and `datasets`, parsed (never eval'd)."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pytest

from podcastpile.dataset import where
from podcastpile.dataset.export import DatasetInconsistent, export_dataset
from podcastpile.dataset.filters import FilterError, RowFilter
from podcastpile.dataset.schema import EPISODES_SCHEMA
from podcastpile.store import EpisodeStore
from tests.dataset.conftest import add_completed

TABLE = pa.table({
    "duration": [10.0, 700.0, None, 1200.5, 650.0],
    "num_speakers": pa.array([1, 2, 3, None, 2], pa.int32()),
    "language": ["en", "de", "en", "en", None],
    "speech_ratio": [0.9, 0.5, 0.95, 0.85, 0.81],
})

PREDICATES = [
    "duration >= 600 and num_speakers = 2",
    "duration > 600 or language = 'de'",
    "not (language == 'en') ",
    "num_speakers in (1, 3)",
    "language not in ('en')",
    "duration is null or num_speakers is null",
    "speech_ratio >= 0.8 and (duration < 1e3 or language <> 'en')",
    "-1 < num_speakers and num_speakers != 2",
    "language is not null and speech_ratio between_is_not_supported",
]


def duck(predicate: str) -> list[int]:
    frame = TABLE.append_column("row", pa.array(range(TABLE.num_rows)))  # noqa: F841 - read by duckdb
    return [row[0] for row in duckdb.sql(f"SELECT row FROM frame WHERE {predicate} ORDER BY row").fetchall()]


@pytest.mark.parametrize("predicate", PREDICATES[:-1])
def test_the_same_rows_as_duckdb_pandas_and_datasets(predicate: str) -> None:
    import datasets

    expected = duck(predicate)
    kept = RowFilter(predicate).mask(TABLE).to_pylist()
    assert [i for i, keep in enumerate(kept) if keep] == expected
    frame = TABLE.to_pandas()
    assert list(frame[where(predicate).mask(frame).to_numpy(zero_copy_only=False)].index) == expected
    rows = datasets.Dataset(TABLE).add_column("row", list(range(TABLE.num_rows)))
    assert rows.filter(where(predicate), batched=True)["row"] == expected
    assert rows.filter(where(predicate))["row"] == expected  # one row at a time


@pytest.mark.parametrize(
    ("predicate", "message"),
    [
        (PREDICATES[-1], "unexpected 'between_is_not_supported'"),
        ("duration >= ", "expected a value"),
        ("__import__('os').system('true')", "cannot read the filter"),
        ("duration >= 600; drop table x", "cannot read the filter"),
        ("pesq >= 3.0", "no column 'pesq'"),
        ("language >= 3", "language >= 3"),  # a string compared with a number
        ("duration", "not a true/false condition"),
        ("", "empty"),
    ],
)
def test_bad_filters_are_refused_with_a_reason(predicate: str, message: str) -> None:
    with pytest.raises(FilterError, match=message):
        RowFilter(predicate, EPISODES_SCHEMA)


def test_where_export_writes_a_filtered_release(store: EpisodeStore, tmp_path: Path) -> None:
    add_completed(store, [f"https://example.com/few-{n}.mp3" for n in range(3)], turns=1)
    add_completed(store, [f"https://example.com/many-{n}.mp3" for n in range(2)], seed=40, turns=6)
    full, release = tmp_path / "full", tmp_path / "release"
    predicate = "num_speakers = 2 and duration >= 0"
    export_dataset(store.engine, str(full))
    summary = export_dataset(store.engine, str(release), where=predicate)
    assert (summary.episodes_written, summary.episodes_filtered, summary.where) == (2, 3, predicate)

    info = json.loads((release / "manifest.json").read_text())
    assert info["layout"]["where"] == predicate and info["episodes"] == 2
    assert f"only episodes with `{predicate}`" in (release / "README.md").read_text()
    # The release holds exactly the rows duckdb selects from the full dataset with the same text.
    selected = duckdb.sql(
        f"SELECT episode_id FROM read_parquet('{full}/data/episodes/*.parquet') WHERE {predicate} ORDER BY 1"
    ).fetchall()
    written = pd.read_parquet(release / "data" / "episodes")["episode_id"].sort_values().tolist()
    assert written == [row[0] for row in selected] and len(written) == 2

    assert export_dataset(store.engine, str(release), where=predicate).episodes_written == 0
    with pytest.raises(DatasetInconsistent, match="--where"):
        export_dataset(store.engine, str(release), where="num_speakers = 1")


def test_where_filters_on_the_quality_scores(store: EpisodeStore, tmp_path: Path) -> None:
    add_completed(store, [f"https://example.com/q-{n}.mp3" for n in range(12)])
    full, release = tmp_path / "full", tmp_path / "release"
    predicate = "dnsmos_ovrl >= 3.0 and speech_ratio >= 0.8 and overlap_ratio < 0.1"
    export_dataset(store.engine, str(full))
    summary = export_dataset(store.engine, str(release), where=predicate)
    selected = duckdb.sql(
        f"SELECT episode_id FROM read_parquet('{full}/data/episodes/*.parquet') WHERE {predicate} ORDER BY 1"
    ).fetchall()
    assert 0 < len(selected) < 12  # the synthetic scores put episodes on both sides
    written = pd.read_parquet(release / "data" / "episodes")["episode_id"].sort_values().tolist()
    assert written == [row[0] for row in selected]
    assert (summary.episodes_written, summary.episodes_filtered) == (len(selected), 12 - len(selected))
