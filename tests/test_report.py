"""The operator's dashboard computed from the store, on both databases."""

from __future__ import annotations

from podcastpile.errors import PermanentError
from podcastpile.store import EpisodeStore, NewEpisode
from podcastpile.store.report import dashboard, render_markdown
from tests.conftest import FakeClock


def test_dashboard_counts_throughput_failures_and_eta(store: EpisodeStore, clock: FakeClock) -> None:
    store.add([NewEpisode(f"https://example.com/ep{i}.mp3") for i in range(6)])
    store.add([NewEpisode("https://user:S3cret@example.com/a|b`c.mp3")])
    for worker, n in (("gpu-a/run1", 2), ("gpu-b/run2", 1)):
        for claim in store.claim_batch(worker, n):
            store.complete(claim.episode_id, claim.lease_token,
                           {"duration": 3600.0, "processing_seconds": 36.0})
    (bad,) = store.claim_batch("gpu-a/run3", 1)
    store.fail(bad.episode_id, bad.lease_token, PermanentError("http-404", "gone"))
    clock.advance(25 * 3600)  # the first three completions fall out of the 24 h window ...
    (late,) = store.claim_batch("gpu-a/run4", 1)
    store.complete(late.episode_id, late.lease_token, {"duration": 1800.0, "processing_seconds": 9.0})

    board = dashboard(store)
    assert board.stats.by_status["completed"] == 4 and board.stats.audio_hours_done == 3.5
    assert board.episodes_last_24h == 1 and board.audio_hours_last_24h == 0.5
    (worker,) = board.workers
    assert worker.worker == "gpu-a" and worker.real_time_factor == 9.0 / 1800.0
    assert board.failures == [{"code": "http-404", "episodes": 1, "example_url": "https://example.com/ep3.mp3"}]
    assert board.ready == 2 and board.eta_hours == 48.0  # 2 ready at one episode a day

    text = render_markdown(board)
    assert "| `gpu-a` | 1 | 0.50 | 0.0050 |" in text and "`http-404`" in text
    assert "about 48.0 h to clear" in text


def test_dashboard_hides_passwords_and_keeps_tables_intact(store: EpisodeStore) -> None:
    store.add([NewEpisode("https://user:S3cret@example.com/a|b.mp3")])
    (claim,) = store.claim_batch("w", 1)
    store.fail(claim.episode_id, claim.lease_token, PermanentError("http-404", "gone"))
    text = render_markdown(dashboard(store))
    assert "S3cret" not in text
    assert "a\\|b.mp3" in text  # a pipe in a URL does not split the table row
