"""`export --audio`: each turn's audio, cut sample-exactly from the archived capture the row names."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from sqlalchemy import update

from podcastpile.dataset.audio import AudioOptions, turn_span
from podcastpile.dataset.export import DatasetInconsistent, export_dataset
from podcastpile.dataset.writer import WriterLimits
from podcastpile.store import EpisodeStore
from podcastpile.store.tables import EpisodeStatus, episodes
from tests.dataset.archived import (
    RATE,
    access,
    add_archived,
    decode_int16,
    turn_pcm,
    wav_bytes,
)
from tests.dataset.conftest import add_completed, synthetic_result
from tests.wayback import WaybackDouble


@pytest.fixture
def ia() -> Iterator[WaybackDouble]:
    with WaybackDouble() as double:
        yield double


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def turn_files(out: Path) -> list[str]:
    return [str(out / path) for path in manifest(out)["configs"]["turns"]["files"]]


def test_turn_span_rounds_and_clamps() -> None:
    assert turn_span(1.00003, 2.00004, 10 * RATE) == (16_000, 32_001)  # round(), not floor
    assert turn_span(0.1, 0.2, 10 * RATE, pad=0.5) == (0, 11_200)  # clamped at the start
    assert turn_span(9.8, 9.9, 10 * RATE, pad=0.5) == (148_800, 160_000)  # and at the end
    assert turn_span(12.0, 13.0, 10 * RATE) == (160_000, 160_000)  # past the end: empty, not negative


def test_flac_turns_load_in_datasets_sample_exact(store: EpisodeStore, ia: WaybackDouble, tmp_path: Path) -> None:
    import datasets

    made = add_archived(store, ia, ["one", "two", "three"], turns=4)
    out = tmp_path / "dataset"
    options = AudioOptions(codec="flac", access=access(ia))
    summary = export_dataset(store.engine, str(out), audio=options, limits=WriterLimits(max_rows=2))
    assert summary.episodes_written == 3 and summary.skipped == [] and summary.audio == "flac"
    assert summary.audio_seconds_written == pytest.approx(sum(len(m.pcm) for m in made.values()) / RATE)
    assert manifest(out)["layout"]["audio"] == "flac"
    assert "audio: Podcast Pile" not in (out / "README.md").read_text()
    assert "flac; `datasets` reads it as an `Audio` feature" in (out / "README.md").read_text()

    schema = pq.read_schema(turn_files(out)[0])
    features = json.loads(schema.metadata[b"huggingface"])["info"]["features"]
    assert features["audio"] == {"sampling_rate": 16000, "_type": "Audio"}

    turns = datasets.load_dataset(
        "parquet", data_dir=str(out / "data" / "turns"), split="train", cache_dir=str(tmp_path / "hf"),
    )
    assert turns.features["audio"] == datasets.Audio(sampling_rate=16000)
    assert len(turns) == 12
    # Decoding `Audio` needs torchcodec with FFmpeg's shared libraries; the stored bytes are
    # read here with FFmpeg through PyAV instead, which is what torchcodec wraps.
    raw = turns.cast_column("audio", datasets.Audio(sampling_rate=16000, decode=False))
    by_hash = {item.url_hash: item for item in made.values()}
    for row in raw:
        item = by_hash[row["episode_id"]]
        turn = item.result["turns"][row["turn_index"]]
        assert (row["start"], row["end"]) == (turn["start"], turn["end"])
        samples, rate = decode_int16(row["audio"]["bytes"])
        assert rate == RATE and samples.dtype == np.int16
        expected = turn_pcm(item, turn)
        assert len(expected) > RATE // 10  # a real span, not an empty slice
        np.testing.assert_array_equal(samples, expected)
        assert row["audio"]["path"] == f"{item.url_hash}-{row['turn_index']:05d}.flac"

    again = export_dataset(store.engine, str(out), audio=options)
    assert again.episodes_written == 0 and again.shards_written == 0 and again.audio_seconds_written == 0


def test_padding_widens_each_turn_within_the_episode(store: EpisodeStore, ia: WaybackDouble, tmp_path: Path) -> None:
    made = add_archived(store, ia, ["padded"], turns=3)
    out = tmp_path / "dataset"
    export_dataset(store.engine, str(out), audio=AudioOptions(codec="flac", pad=0.25, access=access(ia)))
    (item,) = made.values()
    rows = pq.read_table(turn_files(out)[0]).to_pylist()
    assert len(rows) == 3
    for row in rows:
        samples, _ = decode_int16(row["audio"]["bytes"])
        np.testing.assert_array_equal(samples, turn_pcm(item, item.result["turns"][row["turn_index"]], pad=0.25))
    first, _ = decode_int16(rows[0]["audio"]["bytes"])
    turn = item.result["turns"][0]
    assert len(first) == round((turn["end"] + 0.25) * RATE) - max(round((turn["start"] - 0.25) * RATE), 0)


def test_opus_turns_are_16k_and_close_to_the_original(store: EpisodeStore, ia: WaybackDouble, tmp_path: Path) -> None:
    import av

    made = add_archived(store, ia, ["lossy"], turns=2)
    out = tmp_path / "dataset"
    export_dataset(store.engine, str(out), audio=AudioOptions(codec="opus", access=access(ia)))
    (item,) = made.values()
    for row in pq.read_table(turn_files(out)[0]).to_pylist():
        assert row["audio"]["path"].endswith(".opus")
        expected = turn_pcm(item, item.result["turns"][row["turn_index"]]).astype(np.float64) / 32768
        with av.open(__import__("io").BytesIO(row["audio"]["bytes"])) as container:
            assert container.streams.audio[0].codec_context.name == "opus"
            resampler = av.AudioResampler(format="flt", layout="mono", rate=RATE)
            chunks = [out.to_ndarray().reshape(-1) for frame in container.decode(audio=0)
                      for out in resampler.resample(frame)]
            chunks += [out.to_ndarray().reshape(-1) for out in resampler.resample(None)]
        decoded = np.concatenate(chunks).astype(np.float64)
        assert abs(len(decoded) - len(expected)) <= RATE // 50  # within 20 ms (resampler delay)
        length = min(len(decoded), len(expected))
        correlation = np.corrcoef(decoded[:length], expected[:length])[0, 1]
        assert correlation > 0.9, correlation


def test_hash_mismatch_and_live_episodes_are_skipped_with_reasons(
    store: EpisodeStore, ia: WaybackDouble, tmp_path: Path,
) -> None:
    other = wav_bytes(np.zeros(RATE, np.int16))  # what the archive serves is not what was processed
    made = add_archived(store, ia, ["good", "tampered"], served={"tampered": other})
    add_completed(store, ["https://live.example.com/never-archived.mp3"])  # a live download
    out = tmp_path / "dataset"
    options = AudioOptions(codec="flac", access=access(ia))
    summary = export_dataset(store.engine, str(out), audio=options)
    assert summary.episodes_written == 1
    reasons = {item["url"]: item for item in summary.skipped}
    assert set(reasons) == {made["tampered"].url, "https://live.example.com/never-archived.mp3"}
    assert reasons[made["tampered"].url]["code"] == "hash-mismatch"
    assert made["tampered"].result["sha256"] in reasons[made["tampered"].url]["reason"]
    assert reasons["https://live.example.com/never-archived.mp3"]["code"] == "not-archived"
    written = pq.read_table(turn_files(out)[0]).column("episode_id").unique().to_pylist()
    assert written == [made["good"].url_hash]  # never written without audio

    again = export_dataset(store.engine, str(out), audio=options)  # still pending, still skipped
    assert again.episodes_written == 0 and len(again.skipped) == 2


def test_reprocessed_episode_rewrite_keeps_the_other_turns_audio(
    store: EpisodeStore, ia: WaybackDouble, clock, tmp_path: Path,
) -> None:
    made = add_archived(store, ia, ["keep-a", "redo", "keep-b"], turns=3)
    out = tmp_path / "dataset"
    options = AudioOptions(codec="flac", access=access(ia))
    export_dataset(store.engine, str(out), audio=options, limits=WriterLimits(row_group_rows=1))
    target = made["redo"]
    with store.engine.begin() as connection:
        connection.execute(update(episodes).where(episodes.c.id == target.episode_id).values(status=EpisodeStatus.pending))
    clock.advance(3600)
    (claim,) = store.claim_batch("re-worker", 1, episode_ids=[target.episode_id])
    new_result = synthetic_result(77, turns=2, tag="-v2").to_dict()
    new_result.update(sha256=target.result["sha256"])  # the same capture, processed again
    store.complete(claim.episode_id, claim.lease_token, new_result)

    summary = export_dataset(store.engine, str(out), audio=options, limits=WriterLimits(row_group_rows=1))
    assert summary.shards_retired == 1 and summary.episodes_replaced == 1
    by_hash = {item.url_hash: item for item in made.values()}
    rows = [row for path in turn_files(out) for row in pq.read_table(path).to_pylist()]
    assert len(rows) == 3 + 2 + 3
    for row in rows:
        item = by_hash[row["episode_id"]]
        turns = new_result["turns"] if item is target else item.result["turns"]
        samples, _ = decode_int16(row["audio"]["bytes"])
        np.testing.assert_array_equal(samples, turn_pcm(item, turns[row["turn_index"]]))


def test_a_dataset_keeps_its_layout(store: EpisodeStore, ia: WaybackDouble, tmp_path: Path) -> None:
    add_archived(store, ia, ["first"])
    out = tmp_path / "dataset"
    export_dataset(store.engine, str(out))  # no audio
    add_archived(store, ia, ["second"], seed=50)
    with pytest.raises(DatasetInconsistent, match="no audio.*--audio flac"):
        export_dataset(store.engine, str(out), audio=AudioOptions(codec="flac", access=access(ia)))
    assert export_dataset(store.engine, str(out)).episodes_written == 1  # the dataset's own layout works
