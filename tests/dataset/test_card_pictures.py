"""The dataset card's pictures and figures: PNGs in the dataset, numbers in the card's YAML, both
equal to a recount of the Parquet files; a filtered release shows the hours its filter kept."""

from __future__ import annotations

import bisect
import struct
from pathlib import Path
from typing import Any

import duckdb
import pytest
import yaml

from podcastpile.dataset import card_figures, stats
from podcastpile.dataset.export import export_dataset
from podcastpile.dataset.writer import WriterLimits
from podcastpile.store import EpisodeStore, NewEpisode
from podcastpile.store.exports import ShardRecord
from tests.dataset.conftest import synthetic_result

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# (url, language, turns, speakers): three languages and one episode without any
EPISODES = [
    ("https://example.com/en-0.mp3", "en", 3, 2), ("https://example.com/en-1.mp3", "en", 7, 3),
    ("https://example.com/en-2.mp3", "en", 1, 1), ("https://example.com/de-0.mp3", "de", 5, 2),
    ("https://example.com/de-1.mp3", "de", 2, 2), ("https://example.com/fr-0.mp3", "fr", 4, 4),
    ("https://example.com/xx-0.mp3", None, 2, 1),
]


def add_episodes(store: EpisodeStore, episodes: list[tuple[str, str | None, int, int]], seed: int = 0) -> None:
    """Complete episodes with synthetic results of the given language, turns and speakers."""
    store.add([NewEpisode(url, language=language) for url, language, _, _ in episodes])
    wanted = {url: (language, turns, speakers) for url, language, turns, speakers in episodes}
    while claims := store.claim_batch("test-worker", 50):
        for claim in claims:
            language, turns, speakers = wanted[claim.url]
            result = synthetic_result(seed + claim.episode_id, turns=turns, words_per_turn=3 + turns).to_dict()
            store.complete(claim.episode_id, claim.lease_token,
                           result | {"language": language, "num_speakers": speakers})


def front_matter(out: Path) -> dict[str, Any]:
    card = (out / "README.md").read_text()
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def bin_counts(values: list[float], edges: list[float]) -> list[int]:
    """A histogram over `edges` (the last bin open, values below the first edge in the first)."""
    counts = [0] * len(edges)
    for value in values:
        counts[max(bisect.bisect_right(edges, value) - 1, 0)] += 1
    return counts


def recount(out: Path) -> dict[str, Any]:
    """The card's figures, counted again from the Parquet files with duckdb."""
    episodes = f"read_parquet('{out}/data/episodes/*.parquet')"
    turns = f"read_parquet('{out}/data/turns/*.parquet')"
    by_language = duckdb.sql(
        f"SELECT coalesce(language, 'unknown'), sum(duration) / 3600, count(*) FROM {episodes} GROUP BY 1"
    ).fetchall()
    speakers = duckdb.sql(
        f"SELECT coalesce(CAST(num_speakers AS VARCHAR), 'unknown'), count(*) FROM {episodes} GROUP BY 1"
    ).fetchall()
    durations = [row[0] for row in duckdb.sql(f"SELECT greatest(\"end\" - start, 0) FROM {turns}").fetchall()]
    ovrl = [row[0] for row in duckdb.sql(f"SELECT dnsmos_ovrl FROM {turns}").fetchall()]
    return {
        "hours_by_language": {name: hours for name, hours, _ in by_language},
        "episodes_by_language": {name: count for name, _, count in by_language},
        "speakers": {name: count for name, count in speakers},
        "durations": durations,
        "scores": [score for score in ovrl if score is not None],
        "unscored": sum(1 for score in ovrl if score is None),
    }


def png_size(path: Path) -> tuple[int, int]:
    """Width and height of a PNG, after checking it decodes as one (Pillow verifies the chunks)."""
    from PIL import Image

    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and data[12:16] == b"IHDR"
    with Image.open(path) as image:
        image.verify()
    return struct.unpack(">II", data[16:24])


def test_card_pictures_and_yaml_equal_a_recount_of_the_parquet(store: EpisodeStore, tmp_path: Path) -> None:
    add_episodes(store, EPISODES)
    out = tmp_path / "dataset"
    export_dataset(store.engine, str(out), limits=WriterLimits(max_rows=2))  # several shards add up
    meta = front_matter(out)
    figures, counted = meta[card_figures.STATS_KEY], recount(out)

    assert meta["language"] == ["de", "en", "fr"]  # the Hub's key; rows without a language are left out
    assert figures["episodes"] == len(EPISODES) and figures["episodes_without_stats"] == 0
    assert figures["episodes_by_language"] == counted["episodes_by_language"] == {"en": 3, "de": 2, "fr": 1, "unknown": 1}
    assert figures["hours_by_language"].keys() == counted["hours_by_language"].keys()
    for name, hours in counted["hours_by_language"].items():
        assert figures["hours_by_language"][name] == pytest.approx(hours, abs=1e-6)
    assert figures["audio_hours"] == pytest.approx(sum(counted["hours_by_language"].values()), abs=1e-6)
    assert figures["speakers_per_episode"] == counted["speakers"] == {"1": 2, "2": 3, "3": 1, "4": 1}

    durations = figures["turn_duration_seconds"]
    assert figures["turns"] == len(counted["durations"]) == sum(turns for _, _, turns, _ in EPISODES)
    assert figures["turn_hours"] == pytest.approx(sum(counted["durations"]) / 3600, abs=1e-6)
    assert durations["turns"] == bin_counts(counted["durations"], durations["bin_edges"])
    assert sum(1 for count in durations["turns"] if count) >= 2  # the turns spread over several bins
    dnsmos = figures["dnsmos_ovrl"]
    assert dnsmos["bin_edges"][0] == 1.0 and dnsmos["bin_edges"][-1] == 4.75
    assert dnsmos["turns"] == bin_counts(counted["scores"], dnsmos["bin_edges"])
    assert dnsmos["turns_without_score"] == counted["unscored"] > 0  # the synthetic scores leave some out
    assert sum(dnsmos["turns"]) == len(counted["scores"]) > 0

    card = (out / "README.md").read_text()
    assert sorted(figures["pictures"]) == sorted(
        ["images/hours_by_language.png", "images/turn_durations.png", "images/dnsmos_ovrl.png",
         "images/speakers_per_episode.png"])
    for picture in figures["pictures"]:
        assert png_size(out / picture) == (640, 360)
        assert f"]({picture})" in card
    assert not (out / "images" / "hours_kept_by_filter.png").exists()  # not a filtered release

    # Nothing new: the pictures are the same bytes, so they are not written again.
    before = {picture: (out / picture).stat() for picture in figures["pictures"]}
    assert export_dataset(store.engine, str(out)).episodes_written == 0
    for picture, stat in before.items():
        after = (out / picture).stat()
        assert (after.st_ino, after.st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns), picture

    # A new episode: the figures and the pictures that show it change.
    old_speakers = (out / "images" / "speakers_per_episode.png").read_bytes()
    add_episodes(store, [("https://example.com/en-9.mp3", "en", 9, 5)], seed=100)
    export_dataset(store.engine, str(out))
    figures = front_matter(out)[card_figures.STATS_KEY]
    assert figures["episodes"] == len(EPISODES) + 1 and figures["speakers_per_episode"]["5"] == 1
    assert (out / "images" / "speakers_per_episode.png").read_bytes() != old_speakers
    assert figures["turn_duration_seconds"]["turns"] == bin_counts(
        recount(out)["durations"], figures["turn_duration_seconds"]["bin_edges"])


def test_a_filtered_release_shows_the_hours_its_filter_kept(store: EpisodeStore, tmp_path: Path) -> None:
    add_episodes(store, EPISODES)
    full, release = tmp_path / "full", tmp_path / "release"
    predicate = "num_speakers >= 2"
    export_dataset(store.engine, str(full))
    export_dataset(store.engine, str(release), where=predicate)
    total, kept = recount(full), recount(release)
    assert kept["episodes_by_language"] == {"en": 2, "de": 2, "fr": 1}

    for _ in range(2):  # the second run writes nothing and counts what was left out again
        figures = front_matter(release)[card_figures.STATS_KEY]
        chosen = figures["filter"]
        assert chosen["where"] == predicate
        assert (chosen["episodes_kept"], chosen["episodes_left_out"]) == (5, 2)
        hours_kept = sum(kept["hours_by_language"].values())
        hours_all = sum(total["hours_by_language"].values())
        assert chosen["hours_kept"] == pytest.approx(hours_kept, abs=1e-6)
        assert chosen["hours_left_out"] == pytest.approx(hours_all - hours_kept, abs=1e-5)
        for name, hours in total["hours_by_language"].items():
            left = chosen["hours_left_out_by_language"].get(name, 0.0)
            assert chosen["hours_kept_by_language"].get(name, 0.0) + left == pytest.approx(hours, abs=1e-5)
        assert "images/hours_kept_by_filter.png" in figures["pictures"]
        assert png_size(release / "images" / "hours_kept_by_filter.png") == (640, 360)
        card = (release / "README.md").read_text()
        assert f"the filter `{predicate}` kept {hours_kept:,.2f} of {hours_all:,.2f} hours" in card
        assert "](images/hours_kept_by_filter.png)" in card
        assert export_dataset(store.engine, str(release), where=predicate).episodes_written == 0


def test_shards_without_figures_are_counted_as_such() -> None:
    """A shard written before the figures were kept (or with other bins) is not added in."""
    recorded = stats.empty()
    stats.merge(recorded, {**stats.empty(), "episodes": 2, "seconds_by_language": {"en": 7200.0}})

    def shard(name: str, figures: dict[str, Any] | None, episodes: int) -> ShardRecord:
        files = {"episodes": {"path": f"data/episodes/{name}.parquet", "rows": episodes, "bytes": 1}}
        if figures is not None:
            files["episodes"]["stats"] = figures
        return ShardRecord(id=1, name=name, generation=1, episodes=episodes, replaced=0, carried=0,
                           audio_seconds=0.0, files=files, created_at=None, removed_generation=None)

    other_bins = {**recorded, "turn_seconds_edges": [0, 10]}
    total = card_figures.dataset_figures([shard("a", recorded, 2), shard("b", None, 5), shard("c", other_bins, 3)])
    assert (total["episodes"], total["unrecorded"], total["seconds_by_language"]) == (2, 8, {"en": 7200.0})
