"""`podcastpile.dataset.turn_audio`: a turn's audio from a row of a dataset exported without it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from podcastpile.dataset import add_turn_audio, loader, turn_audio
from podcastpile.dataset.audio import AudioUnavailable
from podcastpile.dataset.export import export_dataset
from podcastpile.store import EpisodeStore
from tests.dataset.archived import access, add_archived, turn_pcm, wav_bytes
from tests.wayback import WaybackDouble


def rows(out: Path, config: str) -> list[dict]:
    files = json.loads((out / "manifest.json").read_text())["configs"][config]["files"]
    return [row for path in files for row in pq.read_table(out / path).to_pylist()]


def test_turn_audio_from_turns_and_episodes_rows_then_from_the_cache(store: EpisodeStore, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    out = tmp_path / "dataset"
    with WaybackDouble() as ia:
        made = add_archived(store, ia, ["talk", "chat"], turns=3)
        export_dataset(store.engine, str(out))  # transcripts only
        by_hash = {item.url_hash: item for item in made.values()}
        turns = rows(out, "turns")
        assert "audio" not in turns[0] and turns[0]["audio_sha256"]
        for row in turns:
            item = by_hash[row["episode_id"]]
            got = turn_audio(row, cache_dir=cache, access=access(ia))
            assert got["sampling_rate"] == 16_000 and got["array"].dtype == np.float32
            expected = turn_pcm(item, item.result["turns"][row["turn_index"]])
            np.testing.assert_array_equal(got["array"], expected.astype(np.float32) / 32768)
        assert sorted(path.name for path in cache.iterdir()) == sorted(
            f"{item.result['sha256']}.audio" for item in made.values()
        )
        episode_row = next(row for row in rows(out, "episodes") if row["episode_id"] == made["chat"].url_hash)
        padded = turn_audio(episode_row, turn_index=2, pad=0.1, cache_dir=cache, access=access(ia))
        np.testing.assert_array_equal(
            padded["array"], turn_pcm(made["chat"], made["chat"].result["turns"][2], pad=0.1).astype(np.float32) / 32768,
        )

    # The archive is gone: the disk cache (hash-checked) still serves the turn.
    loader._last.clear()
    again = turn_audio(turns[0], cache_dir=cache, access=access(ia))
    item = by_hash[turns[0]["episode_id"]]
    np.testing.assert_array_equal(again["array"], turn_pcm(item, item.result["turns"][0]).astype(np.float32) / 32768)
    # A damaged cached file is not used: it would be fetched again, and the archive is gone.
    loader._last.clear()
    (cache / f"{item.result['sha256']}.audio").write_bytes(b"damaged")
    with pytest.raises(AudioUnavailable) as caught:
        turn_audio(turns[0], cache_dir=cache, access=access(ia))
    assert caught.value.code == "connection"


def test_turn_audio_refuses_a_capture_whose_hash_differs(store: EpisodeStore, tmp_path: Path) -> None:
    loader._last.clear()
    with WaybackDouble() as ia:
        add_archived(store, ia, ["swapped"], served={"swapped": wav_bytes(np.ones(16_000, np.int16))})
        export_dataset(store.engine, str(tmp_path / "dataset"))
        row = rows(tmp_path / "dataset", "turns")[0]
        with pytest.raises(AudioUnavailable) as caught:
            turn_audio(row, cache_dir=tmp_path / "cache", access=access(ia))
    assert caught.value.code == "hash-mismatch"
    assert not list((tmp_path / "cache").glob("*.audio"))  # nothing wrong was cached


def test_add_turn_audio_as_a_datasets_map(store: EpisodeStore, tmp_path: Path) -> None:
    import datasets

    loader._last.clear()
    out = tmp_path / "dataset"
    with WaybackDouble() as ia:
        made = add_archived(store, ia, ["mapped"], turns=3)
        export_dataset(store.engine, str(out))
        turns = datasets.load_dataset(str(out), "turns", split="train", cache_dir=str(tmp_path / "hf"))
        with_audio = turns.map(add_turn_audio, fn_kwargs={"cache_dir": str(tmp_path / "cache"), "access": access(ia)})
    (item,) = made.values()
    for row in with_audio.with_format("numpy"):
        assert row["audio"]["sampling_rate"] == 16_000
        expected = turn_pcm(item, item.result["turns"][int(row["turn_index"])]).astype(np.float32) / 32768
        np.testing.assert_array_equal(row["audio"]["array"], expected)
