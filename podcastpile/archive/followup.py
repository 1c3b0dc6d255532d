"""Seeing a submission through: polling its Save Page Now job, then waiting for CDX to list
the capture (steps 3 and 4 of `podcastpile.archive.stage`).

`FollowUp` is mixed into `ArchiveStage`; it uses the stage's client, queue, limits, finder and
outcomes, and its pauses. Kept apart so each module holds one concept: the stage decides what
to submit, this sees each job to a capture the Wayback Machine replays.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import TYPE_CHECKING

from podcastpile.archive.answers import usable_digest
from podcastpile.archive.finder import NotAskedYet
from podcastpile.archive.wayback import CaptureError, JobForgotten, KeysMissing, ServiceBusy, ServiceRefused, Throttled
from podcastpile.archive.work import Work, submit_url
from podcastpile.archive import cdx
from podcastpile.store.archive import (
    KEYS_MISSING,
    KEYS_REFUSED,
    REPLAY_LAG,
    SAME_JOB_FAILED,
    SAVES_THROTTLED,
    ArchiveClaim,
    Capture,
)
from podcastpile.store.known_captures import KnownCapture

if TYPE_CHECKING:
    from podcastpile.archive.stage import ArchiveStage

    _Base = ArchiveStage
else:
    _Base = object

SAVE_429_PAUSE = timedelta(minutes=5)  # "Try waiting for 5 minutes"
# Keys are fixed by a person, not by waiting: both are longer than `ppcli process`'s 15 min
# wait, so it stops and lists the episodes with the reason instead of polling a refusal.
KEYS_REFUSED_PAUSE = timedelta(minutes=30)
KEYS_MISSING_RECHECK = timedelta(hours=1)
# Save Page Now answers a URL's submissions with the same job for about an hour [S8]: a job
# that failed is handed back until then, so submitting again sooner changes nothing.
SAME_JOB_SECONDS = 3600.0
# Looks for a fresh capture in CDX within the run before giving it back for a later run.
LISTING_CHECKS = 4
# A job's submission time is recorded once Save Page Now has answered (and the store has
# written it): the capture it started can carry an earlier second. A stale job's capture is
# looked for from this long before that record (the submission's time out and a slow store
# write), so it is found and not made again (CI: a loaded run resubmitted a made capture).
SUBMISSION_SLACK = timedelta(minutes=2)


class FollowUp(_Base):
    """Job polls and CDX listing checks for `ArchiveStage` (see the module docstring)."""

    # --- 3: jobs ----------------------------------------------------------------------------------

    def _poll(self, claim: ArchiveClaim, work: Work) -> None:
        assert claim.job_id is not None
        try:
            status = self.client.job_status(claim.job_id)
        except Throttled as error:
            self._pause(SAVES_THROTTLED, SAVE_429_PAUSE, str(error))
            self._polls_paused(work)
            return
        except ServiceBusy as error:
            wait = error.retry_after if error.retry_after is not None else self.limits.poll_seconds * 4
            work.polling[claim.episode_id] = (claim, time.monotonic() + wait)
            return
        except JobForgotten as error:
            del work.polling[claim.episode_id]
            self.out.resubmit(claim, "job-forgotten", str(error))
            return
        except ServiceRefused as error:  # a 401: keys, not this job; every poll would hear the same
            self._polls_refused(error, work)
            return
        if status.status == "pending":
            waited = (self.queue.clock() - claim.submitted_at).total_seconds() if claim.submitted_at else 0.0
            if waited > self.limits.stale_seconds:
                del work.polling[claim.episode_id]
                self._stale(claim)
                return
            work.polling[claim.episode_id] = (claim, time.monotonic() + self.limits.poll_seconds)
            self.out.event(claim.episode_id, "pending", f"{waited:.0f}")
            return
        del work.polling[claim.episode_id]
        if status.status == "error" and status.error is not None:
            if claim.episode_id in work.same_jobs and status.error.kind in ("service", "transient"):
                self._same_job_failed(claim, status.error)
                return
            self._refused_capture(claim, submit_url(claim), status.error, work)
            return
        if not status.timestamp:
            self.out.capture_failed(claim, CaptureError("no-timestamp", "success without a timestamp"))
            return
        # The audio is the last URL the capture fetched (after any redirect hops).
        original = next((r for r in reversed(status.resources) if r.startswith(("http://", "https://"))), None)
        original = original or status.original_url or submit_url(claim)
        capture = Capture(status.timestamp, self.client.playback_url(status.timestamp, original), original=original)
        captured = self.out.record(claim, lambda: self.queue.captured(claim, capture))
        if captured:
            self.out.event(claim.episode_id, "captured", capture.url)
            work.listing[claim.episode_id] = (captured, time.monotonic() + self.limits.listed_after_seconds, 0)

    def _polls_refused(self, error: ServiceRefused, work: Work) -> None:
        """A 401 on a job's status: the keys are missing or refused. Every job waits with its id
        kept (the capture may well succeed), no attempt counted, for as long as a submission
        would wait for the same reason."""
        if isinstance(error, KeysMissing):
            code, until = KEYS_MISSING, self.queue.clock() + KEYS_MISSING_RECHECK
        else:
            code, until = KEYS_REFUSED, self._pause(KEYS_REFUSED, KEYS_REFUSED_PAUSE, str(error))
        for claim, _ in list(work.polling.values()):
            del work.polling[claim.episode_id]
            self.out.recheck(claim, code, f"job status refused: {error}", until)

    def _same_job_failed(self, claim: ArchiveClaim, error: CaptureError) -> None:
        """Save Page Now answered a submission with a job of this URL that had already failed
        (on its side, or for a reason that may pass). The failure was dealt with when it was
        fresh; pausing every submission again, or counting another attempt, would only hear the
        same job again: this episode alone waits until the job expires, no attempt counted."""
        until = self.queue.clock() + timedelta(seconds=SAME_JOB_SECONDS)
        self.out.event(claim.episode_id, "waiting", f"the same failed job again ({error.code}: {error.message[:80]})")
        self.out.defer(claim, SAME_JOB_FAILED, until)

    def _polls_paused(self, work: Work) -> bool:
        """Whether status polls must wait (a 429 from /save*, maybe met by another run): then
        every job here is looked at again when the pause ends (no request inside it)."""
        until = self.queue.limits.paused_until(SAVES_THROTTLED)
        if until is None:
            return False
        later = time.monotonic() + (until - self.queue.clock()).total_seconds()
        for episode_id, (claim, due) in list(work.polling.items()):
            work.polling[episode_id] = (claim, max(due, later))
        return True

    def _stale(self, claim: ArchiveClaim) -> None:
        """A job pending past SPN_JOB_STALE_SECONDS (IA forgets jobs after about an hour and then
        answers `pending` for ever): reuse a capture made since the submission, or resubmit."""
        url = submit_url(claim)
        since = ((claim.submitted_at or self.queue.clock()) - SUBMISSION_SLACK).strftime("%Y%m%d%H%M%S")
        answer = self.finder.find([url], since=since, fresh=True).get(url)
        if isinstance(answer, KnownCapture):
            self.out.archived(claim, self._capture(answer), reused=False)
        elif isinstance(answer, Exception):
            self._lookup_failed(claim, answer, Work())
        else:
            self.out.resubmit(claim, "spn-job-stale", f"job {claim.job_id} pending for over {self.limits.stale_seconds:.0f} s")

    # --- 4: listed before ready -----------------------------------------------------------------

    def _listing_due(self, work: Work) -> list[tuple[ArchiveClaim, int]]:
        """Captures due for a CDX check, with every other capture waiting on the same hosts:
        one query per host answers them all, so checking those too costs nothing."""
        now = time.monotonic()
        hosts = {self._host(claim) for claim, at, _ in work.listing.values() if at <= now}
        return [(claim, checks) for claim, _, checks in work.listing.values() if self._host(claim) in hosts]

    @staticmethod
    def _host(claim: ArchiveClaim) -> str:
        capture = claim.capture
        return cdx.host_of((capture.original if capture else None) or submit_url(claim))

    def _check_listed(self, due: list[tuple[ArchiveClaim, int]], work: Work) -> None:
        """Ready only once CDX lists the exact capture with a digest to check the download
        against; until then look again, then give it back."""
        def original(claim: ArchiveClaim) -> str:
            return (claim.capture.original if claim.capture else None) or submit_url(claim)

        answers = self.finder.listed(((original(c), c.capture.timestamp) for c, _ in due if c.capture),
                                     recheck=timedelta(seconds=self.limits.listed_after_seconds),
                                     interval=timedelta(seconds=self.limits.listing_interval))
        for claim, checks in due:
            capture = claim.capture
            assert capture is not None
            row = answers.get((original(claim), capture.timestamp))
            if isinstance(row, NotAskedYet):  # another run asks about its host now, or just did
                work.listing[claim.episode_id] = (claim, time.monotonic() + row.seconds, checks)
                continue
            if isinstance(row, CaptureError):
                del work.listing[claim.episode_id]
                self.out.capture_failed(claim, row, source="Wayback Machine")
                continue
            if isinstance(row, Exception):  # no lookup now: look again later, it says nothing of the capture
                del work.listing[claim.episode_id]
                self._lookup_failed(claim, row, work)
                continue
            if row is not None and usable_digest(row.digest):
                del work.listing[claim.episode_id]
                listed = Capture(capture.timestamp, capture.url, row.digest, row.length, original(claim))
                self.out.archived(claim, listed, reused=False)
                continue
            self._not_listed_yet(claim, checks, work)

    def _not_listed_yet(self, claim: ArchiveClaim, checks: int, work: Work) -> None:
        capture = claim.capture
        assert capture is not None
        waited = (self.queue.clock() - claim.submitted_at).total_seconds() if claim.submitted_at else 0.0
        if waited > self.limits.stale_seconds:
            # listed neither within the stale limit: the capture is not coming (or has no digest)
            del work.listing[claim.episode_id]
            self.out.resubmit(claim, "archive-replay-lag", f"capture {capture.timestamp} not listed after {waited:.0f} s")
        elif checks + 1 >= LISTING_CHECKS:
            del work.listing[claim.episode_id]
            until = min(self.queue.clock() + timedelta(seconds=self.limits.recheck_seconds),
                        claim.submitted_at + timedelta(seconds=self.limits.stale_seconds + 1)
                        if claim.submitted_at else self.queue.clock() + timedelta(seconds=self.limits.recheck_seconds))
            self.out.recheck(claim, REPLAY_LAG, f"capture {capture.timestamp} not listed by CDX yet", until)
        else:
            delay = self.limits.listed_after_seconds * 3 ** (checks + 1)
            if claim.submitted_at is not None:  # no later than the stale limit: then it is resubmitted
                left = self.limits.stale_seconds + 1 - (self.queue.clock() - claim.submitted_at).total_seconds()
                delay = max(self.limits.listed_after_seconds, min(delay, left))
            work.listing[claim.episode_id] = (claim, time.monotonic() + delay, checks + 1)
