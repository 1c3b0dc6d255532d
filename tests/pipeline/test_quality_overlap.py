"""Quality beside the GPU steps: each episode's quality and completion run in the background
(`tasks.overlap.EpisodeTails`) while the batch goes on with the next episode."""

from __future__ import annotations

import contextvars
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from podcastpile.errors import PermanentError, Stopped
from podcastpile.net.fetch import TEMP_PREFIX, TEMP_SUFFIX
from podcastpile.store import EpisodeStore, NewEpisode
from tasks.overlap import EpisodeTails
from tests.pipeline.conftest import AudioHost

# ---- the helper alone -------------------------------------------------------------------------


def test_at_most_max_waiting_tails_run_and_submit_waits_for_room() -> None:
    release = threading.Event()
    running: list[int] = []
    ended: list[int] = []

    def tail(key: int) -> int:
        running.append(key)
        release.wait(10)
        return key * 10

    with EpisodeTails[int](2, on_done=ended.append) as tails:
        tails.submit(1, lambda: tail(1))
        tails.submit(2, lambda: tail(2))
        third = threading.Thread(target=tails.submit, args=(3, lambda: tail(3)))
        third.start()
        time.sleep(0.3)
        assert third.is_alive() and sorted(running) == [1, 2]  # the third waits for room
        release.set()
        third.join(10)
        assert tails.drain() == {1: 10, 2: 20, 3: 30}
        assert tails.finished() == {} and tails.in_flight() == set()  # each result handed back once
    assert sorted(ended) == [1, 2, 3]


def test_a_tail_runs_in_the_submitters_context() -> None:
    seen = contextvars.ContextVar("seen", default="unset")
    seen.set("flow context")
    with EpisodeTails[str](2) as tails:
        tails.submit(1, seen.get)
        assert tails.drain() == {1: "flow context"}


def test_what_a_tail_lets_through_is_raised_in_the_callers_thread() -> None:
    def broken() -> int:
        raise ConnectionError("store gone")

    with EpisodeTails[int](2) as tails:
        tails.submit(1, lambda: 1)
        tails.submit(2, broken)
        with pytest.raises(ConnectionError, match="store gone"):
            tails.drain()


def test_stop_drops_tails_not_started_and_tells_running_ones() -> None:
    started, release = threading.Event(), threading.Event()

    def running() -> str:
        started.set()
        release.wait(10)
        return "stopped" if tails.stopping.is_set() else "recorded"

    tails = EpisodeTails[str](1)
    tails.submit(1, running)
    started.wait(10)
    waiting = threading.Thread(target=tails.submit, args=(2, lambda: "never"))
    waiting.start()  # blocks: one place, taken
    tails.stop()
    release.set()
    waiting.join(10)
    assert tails.drain() == {1: "stopped"}  # episode 2's tail never ran: it stays unsettled


def test_no_room_means_serial() -> None:
    order: list[str] = []
    with EpisodeTails[int](0) as tails:
        tails.submit(1, lambda: order.append("tail 1") or 1)
        order.append("after submit")
        assert tails.finished() == {1: 1}
    assert order == ["tail 1", "after submit"]


# ---- the batch flow ---------------------------------------------------------------------------


@pytest.fixture
def database_url(tmp_path: Path) -> Iterator[str]:
    # SQLite only: the overlap is the flow's, not the store's (the batch flow's own tests run both).
    yield f"sqlite:///{tmp_path / 'episodes.db'}"


@pytest.fixture(scope="module", autouse=True)
def prefect_server() -> Iterator[None]:
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def _task_runs(flow_run_id: object) -> dict[str, tuple[datetime, datetime]]:
    """(start, end) of each task run of a flow run, by task run name (e.g. `quality-ep3`)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {run.name: (run.start_time, run.end_time) for run in runs if run.start_time and run.end_time}


def test_quality_of_one_episode_runs_beside_the_next_episodes_gpu_steps(
    pipeline_store: EpisodeStore, audio_host: AudioHost, conversation: dict
) -> None:
    from flows.process import process_batch

    names = [f"good-overlap-{n}.wav" for n in range(4)]
    pipeline_store.add([NewEpisode(audio_host.url(name), language="en") for name in names])
    state = process_batch(return_state=True)
    summary = state.result()

    ids = [row.id for row in pipeline_store.list()]
    assert [o["episode_id"] for o in summary["outcomes"]] == ids  # in claim order, once each
    assert summary["by_status"] == {"completed": 4}
    for row in pipeline_store.list():
        assert row.status == "completed" and row.lease_token is None
        result = pipeline_store.result(row.id)
        assert [(t["speaker"], t["text"]) for t in result["turns"]] == conversation["truth"]
        assert result["dnsmos_ovrl"] is not None and all("speech_ratio" in t for t in result["turns"])
    runs = _task_runs(state.state_details.flow_run_id)
    for earlier, later in zip(ids, ids[1:]):
        quality = runs[f"quality-ep{earlier}"]
        gpu = (runs[f"diarize-ep{later}"][0], runs[f"transcribe-ep{later}"][1])
        # Serial, quality N would end before episode N+1 is even decoded.
        assert quality[0] < gpu[1] and gpu[0] < quality[1], (earlier, quality, later, gpu)
        assert runs[f"complete-ep{earlier}"][0] >= quality[1]  # stored once scored, not before


def test_a_quality_failure_fails_that_episode_with_its_reason_and_no_other(
    pipeline_store: EpisodeStore, audio_host: AudioHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.process import process_batch
    from podcastpile.speech import pipeline

    scored = pipeline.add_quality
    calls = {"n": 0}
    lock = threading.Lock()

    def second_one_breaks(result, decoded, executor=None, stop=None):  # type: ignore[no-untyped-def]
        with lock:
            calls["n"] += 1
            broken = calls["n"] == 2
        if broken:
            raise PermanentError("quality-model", "DNSMOS session failed")
        scored(result, decoded, executor, stop)

    monkeypatch.setattr(pipeline, "add_quality", second_one_breaks)
    pipeline_store.add([NewEpisode(audio_host.url(f"good-qf-{n}.wav"), language="en") for n in range(3)])
    summary = process_batch()

    assert summary["by_status"] == {"completed": 2, "failed": 1}
    (failed,) = [o for o in summary["outcomes"] if o["status"] == "failed"]
    assert failed["reason"].startswith("quality-model") and "DNSMOS session failed" in failed["reason"]
    rows = {row.id: row for row in pipeline_store.list()}
    assert rows[failed["episode_id"]].error_code == "quality-model"
    assert sorted(row.status for row in rows.values()) == ["completed", "completed", "failed"]


def test_a_stop_while_an_episode_is_scored_releases_it_with_the_unfinished_ones(
    pipeline_store: EpisodeStore, audio_host: AudioHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    import flows.process as process
    from podcastpile.speech import pipeline

    scoring, resume, scored_all = threading.Event(), threading.Event(), threading.Event()
    stopped_early = threading.Event()
    scored = pipeline.add_quality

    def held(result, decoded, executor=None, stop=None):  # type: ignore[no-untyped-def]
        scoring.set()
        resume.wait(120)
        try:
            scored(result, decoded, executor, stop)
        except Stopped:
            stopped_early.set()
            raise
        finally:
            scored_all.set()

    head = process._process_episode

    def stop_at_the_second(settings, models, claim, download, tails):  # type: ignore[no-untyped-def]
        if claim.episode_id != first:
            # The first SIGTERM is a KeyboardInterrupt in the flow's thread (`graceful_signals`),
            # here while episode 1 is being scored in the background.
            assert scoring.wait(120)
            process._discard(download)  # as the real one does with the download it was handed
            raise KeyboardInterrupt("signal SIGTERM")
        return head(settings, models, claim, download, tails)

    monkeypatch.setattr(pipeline, "add_quality", held)
    monkeypatch.setattr(process, "_process_episode", stop_at_the_second)
    pipeline_store.add([NewEpisode(audio_host.url(f"good-stop-{n}.wav"), language="en") for n in range(3)])
    first = pipeline_store.list()[0].id
    try:
        with pytest.raises(KeyboardInterrupt):
            process.process_batch()
        # Released at once, the episode being scored too: not done, its attempt not counted.
        assert [(r.status, r.attempts, r.lease_token) for r in pipeline_store.list()] == [("pending", 0, None)] * 3
    finally:
        resume.set()
    assert scored_all.wait(120)
    assert stopped_early.is_set()  # the turns not scored yet were skipped, not scored for nothing
    time.sleep(1.0)  # what the tail would do next (store its result) has had its chance
    assert [r.status for r in pipeline_store.list()] == ["pending"] * 3  # never completed behind the release
    downloads = Path(tempfile.gettempdir()).glob(f"{TEMP_PREFIX}{os.getpid()}-*{TEMP_SUFFIX}")
    assert list(downloads) == []  # no temporary audio left behind by the stopped batch
