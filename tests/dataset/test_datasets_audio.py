"""What a trainer runs: `load_dataset("parquet", data_dir=..., split="train")[0]["audio"]["array"]`
is the turn's waveform at 16 kHz, decoded by `datasets` itself (torchcodec over FFmpeg, the
`dataset` extra), for `--audio flac` (sample-exact) and `--audio opus` (within codec tolerance),
read whole and streamed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from podcastpile.dataset.audio import AudioOptions
from podcastpile.dataset.export import export_dataset
from podcastpile.store import EpisodeStore
from tests.dataset.archived import RATE, access, add_archived, turn_pcm
from tests.wayback import WaybackDouble


@pytest.fixture
def ia() -> Iterator[WaybackDouble]:
    with WaybackDouble() as double:
        yield double


def expected(made: dict, row: dict) -> np.ndarray:
    """The turn's original samples as floats in [-1, 1) (what a decoder of 16-bit audio returns)."""
    item = {item.url_hash: item for item in made.values()}[row["episode_id"]]
    return turn_pcm(item, item.result["turns"][row["turn_index"]]).astype(np.float64) / 32768


def test_flac_turns_decode_in_datasets_to_the_turns_samples(
    store: EpisodeStore, ia: WaybackDouble, tmp_path: Path,
) -> None:
    import datasets

    made = add_archived(store, ia, ["first", "second"], turns=3)
    out = tmp_path / "dataset"
    export_dataset(store.engine, str(out), audio=AudioOptions(codec="flac", access=access(ia)))
    turns = datasets.load_dataset(
        "parquet", data_dir=str(out / "data" / "turns"), split="train", cache_dir=str(tmp_path / "hf"),
    )
    first = turns[0]["audio"]
    assert first["sampling_rate"] == RATE
    array = np.asarray(first["array"])
    assert array.ndim == 1 and array.dtype == np.float32
    want = expected(made, turns[0])
    assert len(want) > RATE // 10  # a real span, not an empty slice
    # FLAC is lossless and int16 / 32768 is exact in float32: the very samples, not close ones.
    np.testing.assert_array_equal(array.astype(np.float64), want)

    streamed = datasets.load_dataset(
        "parquet", data_dir=str(out / "data" / "turns"), split="train", streaming=True,
    )
    seen = 0
    for row in streamed:
        assert row["audio"]["sampling_rate"] == RATE
        np.testing.assert_array_equal(np.asarray(row["audio"]["array"]).astype(np.float64), expected(made, row))
        seen += 1
    assert seen == len(turns) == 6


def test_opus_turns_decode_in_datasets_at_16k_close_to_the_original(
    store: EpisodeStore, ia: WaybackDouble, tmp_path: Path,
) -> None:
    import datasets

    made = add_archived(store, ia, ["lossy"], turns=2)
    out = tmp_path / "dataset"
    export_dataset(store.engine, str(out), audio=AudioOptions(codec="opus", access=access(ia)))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["layout"]["audio"] == "opus"
    turns = datasets.load_dataset(
        "parquet", data_dir=str(out / "data" / "turns"), split="train", cache_dir=str(tmp_path / "hf"),
    )
    for row in turns:
        audio = row["audio"]
        assert audio["sampling_rate"] == RATE  # Opus decodes at 48 kHz: `datasets` resamples to the feature's rate
        decoded, want = np.asarray(audio["array"], np.float64), expected(made, row)
        assert abs(len(decoded) - len(want)) <= RATE // 50  # within 20 ms (codec and resampler delay)
        length = min(len(decoded), len(want))
        # Lossy: the waveform, not the samples. The synthetic signal's tones dominate its noise.
        assert np.corrcoef(decoded[:length], want[:length])[0, 1] > 0.9
        assert np.sqrt(np.mean(decoded ** 2)) == pytest.approx(np.sqrt(np.mean(want ** 2)), rel=0.2)
