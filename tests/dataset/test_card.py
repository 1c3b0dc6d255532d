"""The dataset card says what the rows are; the dataset root holds nothing but what readers need."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from podcastpile.dataset.export import export_dataset
from podcastpile.store import EpisodeStore, NewEpisode
from tests.dataset.conftest import synthetic_result
from tests.storehelpers import mark_archived


def _complete_all(store: EpisodeStore, asr_model: str) -> None:
    for claim in store.claim_batch("test-worker", 50):
        result = synthetic_result(claim.episode_id).to_dict() | {"asr_model": asr_model}
        store.complete(claim.episode_id, claim.lease_token, result)


def test_card_counts_archived_and_live_rows_and_names_the_models(store: EpisodeStore, clock, tmp_path: Path) -> None:
    store.add([NewEpisode(f"https://example.com/live-{n}.mp3", language="en") for n in range(2)])
    _complete_all(store, "tests/fixtures/speech/tiny_asr.nemo")
    archiving = EpisodeStore(store.engine, archive_required=True, clock=clock)
    archiving.add([NewEpisode("https://example.com/archived.mp3", language="en")])
    (waiting,) = archiving.list(status="archive_pending")
    mark_archived(archiving, waiting.id, timestamp="20260102030405",
                  archive_url=f"https://web.archive.org/web/20260102030405id_/{waiting.url}")
    _complete_all(store, "nvidia/parakeet-tdt-0.6b-v2")

    out = tmp_path / "dataset"
    export_dataset(store.engine, str(out))
    card = (out / "README.md").read_text()
    assert "1 episodes from Internet Archive copies" in card
    assert "2 downloaded from the live URL" in card
    assert "`tests/fixtures/speech/tiny_asr.nemo` (2), `nvidia/parakeet-tdt-0.6b-v2` (1)" in card or (
        "`nvidia/parakeet-tdt-0.6b-v2` (1), `tests/fixtures/speech/tiny_asr.nemo` (2)" in card)
    assert "`nvidia/diar_streaming_sortformer_4spk-v2` (3)" in card
    assert "archived audio" not in card and "Parakeet TDT" not in card

    # No empty staging folder is left behind, after a run that wrote and one that did not.
    assert not (out / ".incomplete").exists()
    export_dataset(store.engine, str(out))
    assert not (out / ".incomplete").exists()

    # What the card and README tell pandas users to read.
    episodes = pd.read_parquet(out / "data" / "episodes")
    assert sorted(episodes["episode_url"]) == sorted(
        ["https://example.com/live-0.mp3", "https://example.com/live-1.mp3", "https://example.com/archived.mp3"])
    assert len(pd.read_parquet(out / "data" / "turns")) == sum(len(turns) for turns in episodes["turns"])
    assert 'pd.read_parquet("dataset/data/episodes")' in card
