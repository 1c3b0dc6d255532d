"""Getting episodes back from holders that stopped: expired leases, dead runs and processes,
and batches that give their claims back unstarted.

An episode a dead holder was working on counts the attempt (the claim already did) and fails
once attempts are used up, so an episode that kills every worker cannot block the queue. An
episode given back before it was started does not count the attempt.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, String, case, cast, func, literal, update

from podcastpile.store.clock import Clock
from podcastpile.store.records import Claim
from podcastpile.store.tables import LEASED, EpisodeStatus
from podcastpile.store.tables import episodes as _episodes


class LeaseRecovery:
    """Lease-recovery methods of `EpisodeStore`: each is one short write on the queue engine."""

    queue_engine: Engine
    clock: Clock
    max_attempts: int

    def release_claims(self, claims: list[Claim]) -> int:
        """Give back several claims in one statement (a stopping batch); returns how many.

        Only episodes the claims still hold change; their attempt is not counted.
        """
        now = self.clock()
        released = 0
        with self.queue_engine.begin() as connection:
            for token in {claim.lease_token for claim in claims}:
                ids = [claim.episode_id for claim in claims if claim.lease_token == token]
                released += connection.execute(
                    update(_episodes)
                    .where(_episodes.c.id.in_(ids), _episodes.c.lease_token == token,
                           _episodes.c.status.in_(LEASED))
                    .values(status=EpisodeStatus.pending, lease_token=None, leased_until=None,
                            attempts=_episodes.c.attempts - 1, updated_at=now)
                ).rowcount
        return released

    def give_back_abandoned(
        self, held: Mapping[int, str], reason: str = "run-crashed", blamed: Collection[int] | None = None,
    ) -> tuple[int, int]:
        """Give back episodes (id → lease token) whose process died holding them; returns
        (released, requeued).

        Used by the claim guard (`podcastpile.claimguard`) once the batch process that claimed
        them is gone. Episodes not started yet (`assigned`) go back as a release does: they cannot
        have caused the death, so their attempt is not counted. An episode in progress
        (`processing`) goes back as a crashed run's does (`requeue_run`): its attempt counts and
        it fails once attempts are used up, so an episode that kills its process every time
        (out of memory, a decoder crash) cannot block the queue. `blamed`, when given, names
        the episodes in progress the death is counted against (the one in its model steps);
        the others in progress (scored beside it) go back uncounted, as not-started ones do.
        Only episodes still held under those lease tokens change.
        """
        now = self.clock()
        released = requeued = 0
        with self.queue_engine.begin() as connection:
            for token in set(held.values()):
                still_held = (
                    _episodes.c.id.in_([episode for episode, t in held.items() if t == token])
                    & (_episodes.c.lease_token == token)
                )
                uncounted = _episodes.c.status == EpisodeStatus.assigned.value
                counted = _episodes.c.status == EpisodeStatus.processing.value
                if blamed is not None:
                    innocent = counted & _episodes.c.id.not_in(list(blamed))
                    uncounted, counted = uncounted | innocent, counted & _episodes.c.id.in_(list(blamed))
                released += connection.execute(
                    update(_episodes)
                    .where(still_held, uncounted)
                    .values(status=EpisodeStatus.pending, lease_token=None, leased_until=None,
                            attempts=_episodes.c.attempts - 1, updated_at=now)
                ).rowcount
                requeued += connection.execute(
                    update(_episodes)
                    .where(still_held, counted)
                    .values(**self._requeue_values(now, reason, "the batch process holding it died"))
                ).rowcount
        return released, requeued

    def requeue_expired(self) -> int:
        """Return expired leases to the queue, or fail them once attempts are used up.

        Returns how many leases were expired.
        """
        now = self.clock()
        exhausted = _episodes.c.attempts >= self.max_attempts
        statement = (
            update(_episodes)
            .where(_episodes.c.status.in_(LEASED), _episodes.c.leased_until < now)
            .values(
                status=case(
                    (exhausted, EpisodeStatus.failed.value), else_=EpisodeStatus.pending.value
                ),
                error_code="lease-expired",
                error=(
                    literal("lease of worker ")
                    + func.coalesce(_episodes.c.worker_id, "?")
                    + " expired (attempt "
                    + cast(_episodes.c.attempts, String)
                    + f" of {self.max_attempts})"
                ),
                lease_token=None,
                leased_until=None,
                updated_at=now,
            )
        )
        with self.queue_engine.begin() as connection:
            return connection.execute(statement).rowcount

    def requeue_run(self, run_id: str, reason: str = "run-crashed") -> int:
        """Return the episodes a dead run held to the queue now (or fail those out of attempts).

        The claim already counted the attempt, as for an expired lease. Returns how many.
        """
        statement = (
            update(_episodes)
            .where(_episodes.c.claimed_by_run == run_id, _episodes.c.status.in_(LEASED))
            .values(**self._requeue_values(self.clock(), reason, f"the run {run_id} holding it died"))
        )
        with self.queue_engine.begin() as connection:
            return connection.execute(statement).rowcount

    def _requeue_values(self, now: datetime, reason: str, why: str) -> dict[str, Any]:
        """Column values that return a dead holder's episode to the queue, attempt counted
        (`failed` once attempts are used up), with `why` and the attempt in its error."""
        exhausted = _episodes.c.attempts >= self.max_attempts
        return dict(
            status=case((exhausted, EpisodeStatus.failed.value), else_=EpisodeStatus.pending.value),
            error_code=reason[:64],
            error=literal(f"{why} (attempt ") + cast(_episodes.c.attempts, String) + f" of {self.max_attempts})",
            lease_token=None,
            leased_until=None,
            updated_at=now,
        )
