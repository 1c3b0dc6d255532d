"""Tasks over the episode store: claim, start, complete, fail, release, and counting the bytes
downloaded from a new archive capture.

A database outage (a restart, a network cut) is ridden out inside each call: it backs off and
retries for up to STORE_OUTAGE_SECONDS (see `podcastpile.store.outage`), keeping a finished
result in memory meanwhile, so Prefect's own retries (seconds apart) are not used here. A
lost lease is not retried: someone else holds the episode now.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from prefect import task
from prefect.cache_policies import NONE

from podcastpile.config import Settings
from podcastpile.errors import EpisodeError
from podcastpile.machine import gpu_name
from podcastpile.speech.result import EpisodeResult
from podcastpile.store import Claim, EpisodeStatus
from podcastpile.store.archive import archive_queue_for
from podcastpile.store.outage import ride_out
from podcastpile.version import code_version
from tasks.resources import store_for

T = TypeVar("T")
_db: dict[str, Any] = dict(cache_policy=NONE)


def _patient(settings: Settings, what: str, call: Callable[[], T]) -> T:
    return ride_out(call, budget_seconds=settings.store_outage_seconds, what=what)


@task(name="claim-episodes", **_db)
def claim_episodes(
    settings: Settings, n: int, worker_id: str, episode_ids: list[int] | None = None,
    run_id: str | None = None,
) -> list[Claim]:
    """Lease up to `n` ready episodes to this worker (for the flow run `run_id`).

    Each claim records the GPU this process computes on and the code version. WORKER_LANGUAGES
    restricts claims from the queue; chosen `episode_ids` (`ppcli process`, an ad-hoc run
    from the UI) are taken whatever their language, since someone asked for exactly those.
    """
    store = store_for(settings)
    gpu = gpu_name(settings.device)
    languages = settings.languages if episode_ids is None else None
    return _patient(settings, "claim", lambda: store.claim_batch(
        worker_id, n, gpu=gpu, code_version=code_version(), languages=languages,
        episode_ids=episode_ids, run_id=run_id))


@task(name="start-episode", task_run_name="start-ep{claim.episode_id}", **_db)
def start_episode(settings: Settings, claim: Claim, sha256: str | None = None) -> int | None:
    """Mark the episode as processing; returns the id of an episode with the same audio, if any
    (this one is then a duplicate and must not be processed)."""
    store = store_for(settings)
    return _patient(settings, f"start episode {claim.episode_id}",
                    lambda: store.start(claim.episode_id, claim.lease_token, sha256))


@task(name="complete-episode", task_run_name="complete-ep{claim.episode_id}", **_db)
def complete_episode(settings: Settings, claim: Claim, result: EpisodeResult) -> None:
    """Store the result; refused if the lease was lost meanwhile."""
    store = store_for(settings)
    stored = result.to_dict()  # the store keeps JSON; everything before it passes the typed result
    _patient(settings, f"complete episode {claim.episode_id}",
             lambda: store.complete(claim.episode_id, claim.lease_token, stored))


@task(name="fail-episode", task_run_name="fail-ep{claim.episode_id}", **_db)
def fail_episode(settings: Settings, claim: Claim, error: EpisodeError) -> EpisodeStatus:
    """Record the failure: permanent ones fail the episode, transient ones requeue it."""
    store = store_for(settings)
    return _patient(settings, f"fail episode {claim.episode_id}",
                    lambda: store.fail(claim.episode_id, claim.lease_token, error))


@task(name="count-archive-bytes", task_run_name="count-bytes-ep{claim.episode_id}", **_db)
def count_archive_bytes(settings: Settings, claim: Claim, size: int) -> int:
    """Count `size` bytes downloaded from the episode's capture against its capture day's
    bytes (SPN_DAILY_BYTES); returns the bytes added. Once per episode; reused captures add
    nothing (see `ArchiveQueue.count_downloaded_bytes`)."""
    queue = archive_queue_for(store_for(settings), settings)
    return _patient(settings, f"count archive bytes of episode {claim.episode_id}",
                    lambda: queue.count_downloaded_bytes(claim.episode_id, size))


def release_unfinished(settings: Settings, claims: list[Claim]) -> int | None:
    """Give back claims a stopping batch did not finish, in one statement, as a plain call;
    returns how many, or None when the store could not be reached.

    Not a task on purpose: it runs in a `finally` while the run is being terminated, when
    Prefect's task machinery (and its logging to a worker that may be gone) cannot be relied
    on. A failure is swallowed: the batch's claim guard tries again once the process is gone,
    and failing that an unreleased lease is requeued when its run is found dead.
    """
    if not claims:
        return 0
    try:
        return store_for(settings).release_claims(claims)
    except Exception:
        return None
