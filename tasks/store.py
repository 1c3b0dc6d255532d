"""Tasks over the episode store: claim, start, complete, fail, release.

Database calls retry a few times with backoff (a restarted or briefly unreachable database);
a lost lease is not retried: someone else holds the episode now.
"""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NONE
from prefect.tasks import exponential_backoff
from sqlalchemy.exc import OperationalError

from podcastpile.config import Settings
from podcastpile.errors import EpisodeError
from podcastpile.store import Claim, EpisodeStatus
from tasks.resources import store_for


def _database_hiccup(task: Any, task_run: Any, state: Any) -> bool:
    return isinstance(state.result(raise_on_failure=False), OperationalError)


_db = dict(
    retries=3, retry_delay_seconds=exponential_backoff(backoff_factor=1), retry_jitter_factor=0.5,
    retry_condition_fn=_database_hiccup, cache_policy=NONE,
)


@task(name="claim-episodes", **_db)
def claim_episodes(
    settings: Settings, n: int, worker_id: str, episode_ids: list[int] | None = None
) -> list[Claim]:
    """Lease up to `n` ready episodes to this worker."""
    return store_for(settings).claim_batch(worker_id, n, episode_ids=episode_ids)


@task(name="start-episode", **_db)
def start_episode(settings: Settings, claim: Claim, sha256: str | None = None) -> int | None:
    """Mark the episode as processing; returns the id of an episode with the same audio, if any
    (this one is then a duplicate and must not be processed)."""
    return store_for(settings).start(claim.episode_id, claim.lease_token, sha256)


@task(name="complete-episode", **_db)
def complete_episode(settings: Settings, claim: Claim, result: dict[str, Any]) -> None:
    """Store the result; refused if the lease was lost meanwhile."""
    store_for(settings).complete(claim.episode_id, claim.lease_token, result)


@task(name="fail-episode", **_db)
def fail_episode(settings: Settings, claim: Claim, error: EpisodeError) -> EpisodeStatus:
    """Record the failure: permanent ones fail the episode, transient ones requeue it."""
    return store_for(settings).fail(claim.episode_id, claim.lease_token, error)


@task(name="release-episode", **_db)
def release_episode(settings: Settings, claim: Claim) -> None:
    """Give an unprocessed episode back to the queue."""
    store_for(settings).release(claim.episode_id, claim.lease_token)
