"""The pipeline's flows: a batch of episodes per run on the `gpu` work pool, and one ad-hoc episode.

One flow run per batch, not per episode: a process worker spends seconds starting each run and
NeMo's import and model loads cost tens of seconds, so models are loaded once per batch and
every episode runs as tasks inside the run: its download, then each step of the speech chain
(`podcastpile.speech.pipeline.STEPS`: decode → diarize → transcribe → merge → quality) as a `run_step`
task. Downloads of the next episodes overlap inference of the current one (bounded prefetch), and
an episode's quality scores (CPU) and completion overlap the next episodes' GPU steps: they run in
background threads (`tasks.overlap.EpisodeTails`, at most QUALITY_IN_FLIGHT waiting), and the
batch waits for them before it ends.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.futures import PrefectFuture
from prefect.runtime import deployment, flow_run

from podcastpile.archive.wayback import digest_matches
from podcastpile.claimguard import ClaimGuard
from podcastpile.config import Settings
from podcastpile.errors import PermanentError, Stopped, TransientError, as_episode_error
from podcastpile.leases import LeaseKeeper
from podcastpile.net.fetch import DownloadedAudio, remove_orphaned_downloads, wayback_timestamp
from podcastpile.net.urls import mask_secrets
from podcastpile.speech.nemo_models import SpeechModels
from podcastpile.speech.pipeline import HEAD_STEPS, TAIL_STEPS, EpisodeWork, Step, StepRunner, run_chain
from podcastpile.store import Claim, LeaseLost, NewEpisode
from podcastpile.store.outage import StoreOutage
from tasks.export import publish_when_drained
from tasks.overlap import EpisodeTails
from tasks.resources import models_for, store_for
from tasks.settings import flow_settings
from tasks.speech import download_audio, load_models, run_step
from tasks.store import (
    claim_episodes, complete_episode, count_archive_bytes, fail_episode, release_unfinished, start_episode,
)


def _worker_name(settings: Settings) -> str:
    run = flow_run.get_id()
    return f"{settings.worker_id}/{str(run)[:8]}" if run else settings.worker_id


# Episodes whose quality (and completion) may wait in the background while the next episode's
# GPU steps run; each keeps its decoded audio until done, so this also bounds memory. 0: serial.
QUALITY_IN_FLIGHT = 2


class _Budget:
    """An episode's time budget (JOB_TIMEOUT_HOURS, its lease): calling it gives the seconds
    left, or raises TimeoutError once they are spent."""

    def __init__(self, settings: Settings) -> None:
        self.hours = settings.job_timeout_hours
        self.deadline = time.monotonic() + settings.lease_seconds

    def __call__(self) -> float:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"over {self.hours:g} h")
        return remaining


def _step_runner(claim: Claim, budget: _Budget | None) -> StepRunner:
    """Run each step as a task named by step and episode in the UI, bounded by what is left of
    `budget`. Without one (in a tail's thread, where Prefect cannot interrupt a task and only
    warns), the caller checks the budget after the step instead."""

    def as_task(step: Step, episode: EpisodeWork, models: SpeechModels) -> EpisodeWork:
        limit = {"timeout_seconds": budget()} if budget is not None else {}
        return run_step.with_options(name=step.name, task_run_name=f"{step.name}-ep{claim.episode_id}", **limit)(
            step, episode, models
        )

    return as_task


@contextmanager
def _recording(settings: Settings, claim: Claim, outcome: dict[str, Any]) -> Iterator[None]:
    """Turn whatever the body raises into the episode's recorded outcome, in `outcome`."""
    try:
        yield
    except LeaseLost as error:
        get_run_logger().warning("episode %s: %s; result dropped", claim.episode_id, error)
        outcome.update(status="lease-lost", reason=str(error))
    except StoreOutage:
        raise  # the database is gone for longer than we wait: stop the batch, do not record more
    except Exception as raised:  # every failure becomes a recorded state, never a crashed batch
        error = as_episode_error(raised)
        try:
            status = fail_episode(settings, claim, error)
        except LeaseLost as lost:
            status, error.reason = "lease-lost", f"{error.reason}; {lost}"
        get_run_logger().warning("episode %s %s: %s", claim.episode_id, status, mask_secrets(str(error)))
        outcome.update(status=str(status), reason=str(error))


def _process_episode(
    settings: Settings, models: SpeechModels, claim: Claim, download: PrefectFuture | None,
    tails: EpisodeTails[dict[str, Any] | None],
) -> dict[str, Any] | None:
    """One episode's DAG inside the batch: its download and `HEAD_STEPS` here, then its
    `TAIL_STEPS` and completion handed to `tails` (see `_finish_episode`).

    Returns the outcome when the episode ended here (failed, duplicate, lease lost), None once
    its tail was handed off. Every outcome is recorded, nothing is raised but StoreOutage.
    """
    budget = _Budget(settings)
    outcome: dict[str, Any] = {"episode_id": claim.episode_id, "url": claim.url}
    stack = None
    tail = None
    try:
        with _recording(settings, claim, outcome):
            if download is None:
                raise PermanentError("not-archived", "no Internet Archive copy; refusing the live URL")
            downloaded, stack = download.result(timeout=budget())
            _check_digest(claim, downloaded)
            if claim.archive_url:
                _count_archive_bytes(settings, claim, downloaded)
            first = start_episode(settings, claim, downloaded.sha256)
            if first is not None:
                outcome.update(status="duplicate", reason=f"same audio as episode {first}")
                return outcome
            # A cut file from the archive stays cut; one from the original host may download whole next time.
            episode = EpisodeWork(downloaded, language=claim.language, live=claim.archive_url is None,
                                  stop=tails.stopping)
            run_chain(episode, models, runner=_step_runner(claim, budget), steps=HEAD_STEPS)
            tail = partial(_finish_episode, settings, models, claim, episode, budget, outcome)
    finally:
        # The temporary audio file is not needed once decoded; a tail that never runs (the
        # batch stopped) must not leave it behind either.
        if stack is not None:
            stack.close()
        elif download is not None:  # it failed or never came: delete the file once it ends
            _discard(download)
    if tail is None:
        return outcome
    # Outside `_recording`: what `submit` raises (another tail's StoreOutage) is not this episode's failure.
    tails.submit(claim.episode_id, tail)
    return None


def _finish_episode(
    settings: Settings, models: SpeechModels, claim: Claim, episode: EpisodeWork, budget: _Budget,
    outcome: dict[str, Any],
) -> dict[str, Any] | None:
    """An episode's tail, in a background thread: quality scores, then the stored result.

    Returns the outcome, or None when the batch stopped first (the batch releases the episode:
    it is not done; `episode.stop` says so). A quality failure fails the episode with its
    reason, as any step's does.
    """
    stopping = episode.stop
    assert stopping is not None, "the batch gives each episode its tails' stop event"
    if stopping.is_set():
        return None
    with _recording(settings, claim, outcome):
        try:
            result = run_chain(episode, models, runner=_step_runner(claim, None), steps=TAIL_STEPS)
        except Stopped:
            return None  # the batch is stopping: nothing recorded, the batch releases it
        budget()  # over its budget: requeued as a timeout, as a step interrupted in the flow's thread is
        if stopping.is_set():
            return None
        complete_episode(settings, claim, result)
        outcome.update(status="completed", audio_seconds=result.duration, speakers=result.num_speakers,
                       step_seconds=episode.seconds)
    return outcome


def _check_digest(claim: Claim, downloaded: DownloadedAudio) -> None:
    """Refuse bytes that are not the capture CDX listed (when CDX gave a digest).

    CDX digests the body as archived: de-chunked but still content-encoded, hence `sha1_raw`.
    A first mismatch is retried (transient). The claim does not say why an earlier attempt
    failed, so a mismatch on any later attempt is permanent: with the replay checks of the
    download, the same capture gives the same bytes, and retrying would only re-download them.
    """
    if not claim.archive_digest or digest_matches(downloaded.sha1_raw, claim.archive_digest):
        return
    reason = (f"downloaded bytes (sha1 {downloaded.sha1_raw} as received) do not match the capture's "
              f"CDX digest {claim.archive_digest}")
    if claim.attempts > 1:
        raise PermanentError("archive-digest-mismatch", f"{reason} (attempt {claim.attempts}: not retried)")
    raise TransientError("archive-digest-mismatch", reason)


def _count_archive_bytes(settings: Settings, claim: Claim, downloaded: DownloadedAudio) -> None:
    """Count the capture's downloaded size against its day's bytes. A failure is only logged:
    the episode's audio is good, and the daily budget is a safeguard, not a ledger."""
    try:
        count_archive_bytes(settings, claim, downloaded.bytes_raw)
    except StoreOutage:
        raise  # the database is gone: the batch stops, as at any other store call
    except Exception as error:
        get_run_logger().warning("episode %s: archive bytes not counted: %s", claim.episode_id, error)


def _capture_timestamp(claim: Claim) -> str | None:
    """The capture an archived episode must be downloaded from (None for a live download)."""
    return wayback_timestamp(claim.archive_url) if claim.archive_url else None


def _discard(download: PrefectFuture) -> None:
    """Delete an unused download's temporary file once it finishes (it may still be running)."""

    def close(future: PrefectFuture) -> None:
        if future.state.is_completed():
            future.result()[1].close()

    download.add_done_callback(close)


@flow(name="process-batch", log_prints=True)
def process_batch(batch_size: int | None = None, episode_ids: list[int] | None = None) -> dict[str, Any]:
    """Claim up to `batch_size` ready episodes (default BATCH_SIZE) and process them.

    `episode_ids` restricts the claim to those episodes (used by `ppcli process`). Returns a
    summary; a table of outcomes is also published as the run's artifact.
    """
    remove_orphaned_downloads()  # temp audio of killed workers on this machine: nothing else removes it
    settings = flow_settings()
    logger = get_run_logger()
    size = batch_size or settings.batch_size
    run = flow_run.get_id()
    claims = claim_episodes(settings, size, _worker_name(settings), episode_ids, str(run) if run else None)
    summary: dict[str, Any] = {"claimed": len(claims), "outcomes": [], "models_loaded": 0}
    if not claims:
        logger.info("no episodes ready")
        return summary
    # Gives the claims back if this process is killed before it settles them: the Prefect
    # worker SIGKILLs its runs when it is stopped, and the kernel may too (see claimguard).
    guard = ClaimGuard.start(settings.database_url, claims, max_attempts=settings.max_attempts)
    started = time.perf_counter()
    loaded_before = models_for(settings).loaded_count
    # Keep the leases alive from the claim on: loading models can take a while.
    with LeaseKeeper(store_for(settings), claims, interval=settings.lease_seconds / 4) as keeper, \
            EpisodeTails[dict[str, Any] | None](QUALITY_IN_FLIGHT, on_done=keeper.drop) as tails:
        downloads: dict[int, PrefectFuture | None] = {}
        stop_downloads = threading.Event()  # set when the batch ends: prefetches still running stop
        settled: dict[int, dict[str, Any]] = {}  # outcome by episode id, each recorded once
        try:
            models = load_models(settings, sorted({c.language or "" for c in claims}))
            summary["models_loaded"] = models.loaded_count - loaded_before
            summary["load_seconds"] = round(time.perf_counter() - started, 3)
            for index, claim in enumerate(claims):
                _prefetch(settings, claims, index, downloads, stop_downloads)
                guard.blame(claim.episode_id)  # a death from now on is counted against this one, not its tails
                outcome = _process_episode(settings, models, claim, downloads.pop(index), tails)
                if outcome is not None:
                    settled[claim.episode_id] = outcome
                    keeper.drop(claim.episode_id)
                _settle(settled, tails.finished())  # raises a tail's StoreOutage: the batch stops
            _settle(settled, tails.drain())
        finally:  # models failed to load, or stopped (SIGTERM): give back what was not finished
            # First, so a stop does not wait for the rest of a long download: the task runner
            # waits for its threads before the process can exit.
            stop_downloads.set()
            tails.stop()  # an episode whose quality still runs is not done: it is released too
            if release_unfinished(settings, [c for c in claims if c.episode_id not in settled]) is not None:
                guard.dismiss()  # every claim is settled; if not, the guard retries once we are gone
            for download in downloads.values():
                if download is not None:
                    _discard(download)
    summary["outcomes"] = [settled[c.episode_id] for c in claims]  # in claim order, as processed
    summary["wall_seconds"] = round(time.perf_counter() - started, 3)
    summary["audio_seconds"] = round(sum(o.get("audio_seconds", 0.0) for o in summary["outcomes"]), 3)
    summary["by_status"] = dict(Counter(o["status"] for o in summary["outcomes"]))
    summary["step_seconds"] = _step_totals(summary["outcomes"])
    create_table_artifact(
        key="batch-outcomes",
        table=[{k: mask_secrets(str(o[k])) if k in ("reason", "url") and k in o else o.get(k, "")
                for k in ("episode_id", "status", "audio_seconds", "reason", "url")}
               for o in summary["outcomes"]],  # stored in Prefect's database: passwords hidden
        description=f"{_outcome_line(summary['by_status'])}; {summary['audio_seconds']:.0f} s of audio in {summary['wall_seconds']} s",
    )
    _label_run(summary["by_status"])
    if summary["by_status"].get("completed") and deployment.id:
        publish_when_drained(settings)  # a drained queue is published now, not at the hourly export
    logger.info("batch done: %s, %.0f s of audio in %.1f s", _outcome_line(summary["by_status"]), summary["audio_seconds"], summary["wall_seconds"])
    return summary


def _prefetch(
    settings: Settings, claims: list[Claim], index: int, downloads: dict[int, PrefectFuture | None],
    stop: threading.Event,
) -> None:
    """Submit the downloads of episode `index` and the PREFETCH episodes after it, once each;
    `stop` ends those still running at their next chunk."""
    for ahead in range(index, min(index + 1 + settings.prefetch, len(claims))):
        if ahead not in downloads:
            url = claims[ahead].download_url
            named = download_audio.with_options(task_run_name=f"download-ep{claims[ahead].episode_id}")
            downloads[ahead] = named.submit(url, settings, _capture_timestamp(claims[ahead]), stop) if url else None


def _settle(settled: dict[int, dict[str, Any]], finished: dict[int, dict[str, Any] | None]) -> None:
    """Add the outcomes of tails that ended (None: stopped before recording, so still unsettled)."""
    settled.update({key: outcome for key, outcome in finished.items() if outcome is not None})


def _step_totals(outcomes: list[dict[str, Any]]) -> dict[str, float]:
    """Seconds each step of the chain spent over the batch's episodes: where the batch's time went."""
    totals: Counter[str] = Counter()
    for outcome in outcomes:
        totals.update(outcome.get("step_seconds", {}))
    return {name: round(seconds, 3) for name, seconds in totals.items()}


def _outcome_line(by_status: dict[str, int]) -> str:
    """`3 completed, 1 failed` in a fixed order."""
    order = ["completed", "failed", "pending", "duplicate", "lease-lost"]
    keys = sorted(by_status, key=lambda k: (order.index(k) if k in order else len(order), k))
    return ", ".join(f"{by_status[k]} {'requeued' if k == 'pending' else k}" for k in keys)


def _label_run(by_status: dict[str, int]) -> None:
    """Name the batch run after what happened to its episodes, and tag it when some failed, so the
    runs list in the UI says it (a failed episode never fails the run itself)."""
    run = flow_run.get_id()
    if not run:
        return
    try:
        from prefect.client.orchestration import get_client

        tags = list(flow_run.get_tags()) + (["episode-failures"] if by_status.get("failed") else [])
        with get_client(sync_client=True) as client:
            client.update_flow_run(run, name=f"batch: {_outcome_line(by_status)}"[:200], tags=tags)
    except Exception as error:  # a label is not worth failing a finished batch over
        get_run_logger().warning("could not label the run: %s", error)


@flow(name="process-episode", log_prints=True)
def process_episode(url: str, language: str | None = None, podcast_id: str | None = None) -> dict[str, Any]:
    """Add one episode by URL (if new) and process it now: for ad-hoc runs from the Prefect UI."""
    settings = flow_settings()
    store = store_for(settings)
    new = NewEpisode.checked(url, language=language, podcast_id=podcast_id)  # ValueError: refused
    store.add([new])
    episode = store.find(new)
    assert episode is not None
    if episode.status in ("archive_pending", "archiving"):
        from flows.archive import archive_flow

        archive_flow(episode_ids=[episode.id])
        episode = store.get(episode.id)
    if episode.status != "pending":
        raise ValueError(f"episode {episode.id} is {episode.status}, not ready to process")
    return process_batch(batch_size=1, episode_ids=[episode.id])
