"""The archive stage for a set of claimed episodes: reuse a capture, or submit one and see it through.

`ArchiveStage.run(claims)` is plain Python (the Prefect flow, `ppcli archive` and
`ppcli process` all call it):

1. an enclosure's redirect chain is resolved locally (Save Page Now follows only 3 hops), and
   the URL it can reach is the one looked up and submitted;
2. existing captures are found through `CaptureFinder` (the store's memory, then one CDX query
   per podcast folder, within the lookup limit every run shares) and reused;
3. the rest are submitted as the shared limits allow; jobs are polled, and a job still pending
   after SPN_JOB_STALE_SECONDS is checked against CDX and reused or submitted again;
4. a capture is ready for the GPU workers only once CDX lists it (url, timestamp): before
   that, the Wayback Machine replays another capture or nothing.

Steps 3's polls and 4 live in `podcastpile.archive.followup`, mixed in here.

Who is to blame decides what happens (`podcastpile.archive.answers`): the episode (backoff,
attempt counted, or failed), its URL (per-URL daily cap: wait for midnight), its host (paused
>= 10 min), or the service (everyone waits, nobody is charged). No error from the Internet
Archive client escapes a run, and every claim is given back whatever happens.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy.exc import SQLAlchemyError

from podcastpile.archive.answers import snapshot_age
from podcastpile.archive.events import Event, describe_event
from podcastpile.archive.finder import CaptureFinder, LookupUnavailable
from podcastpile.archive.followup import KEYS_MISSING_RECHECK, KEYS_REFUSED_PAUSE, SAVE_429_PAUSE, FollowUp
from podcastpile.archive.limits import ArchiveLimits
from podcastpile.archive.outcomes import ArchiveSummary, Outcomes, backoff_seconds
from podcastpile.archive.wayback import CaptureError, KeysMissing, ServiceBusy, ServiceRefused, Throttled, WaybackClient
from podcastpile.errors import PermanentError
from podcastpile.archive.work import Work, submit_url
from podcastpile.net.redirects import RedirectChain
from podcastpile.store import LeaseLost
from podcastpile.store.archive import (
    ACCOUNT_DAILY_CAP,
    KEYS_MISSING,
    KEYS_REFUSED,
    LOOKUP_WAIT,
    LOOKUPS_THROTTLED,
    REPLAY_LAG,
    SAVES_THROTTLED,
    SERVICE_TROUBLE,
    ArchiveClaim,
    ArchiveQueue,
    Capture,
)
from podcastpile.store.archive_limits import next_utc_midnight
from podcastpile.store.known_captures import KnownCapture, KnownCaptures

log = logging.getLogger(__name__)
SERVICE_RETRY_SECONDS = 30.0  # 5xx or a dropped connection, no Retry-After
SERVICE_TROUBLE_PAUSE = timedelta(minutes=2)  # SPN's own trouble (sessions, browsers, workers)
LOOKUP_429_PAUSE = timedelta(seconds=60)  # IA firewalls clients that ignore 429s for a minute
# The longest a run waits in line for a lookup slot before deferring the episode instead.
LOOKUP_WAIT_SECONDS = 5.0


class ArchiveStage(FollowUp):
    """Runs the archive stage over claimed episodes; see the module docstring."""

    def __init__(
        self,
        queue: ArchiveQueue,
        client: WaybackClient,
        limits: ArchiveLimits,
        *,
        on_event: Event | None = None,
        sleep: Callable[[float], None] = time.sleep,
        resolve: Callable[[str], RedirectChain] | None = None,
    ) -> None:
        self.queue = queue
        self.client = client
        self.limits = limits
        self.sleep = sleep
        self.resolve = resolve
        self.out = Outcomes(queue, on_event)
        self.finder = CaptureFinder(client, KnownCaptures(queue.store))
        if client.lookup_gate is None:
            client.lookup_gate = self._take_lookup_slot
        self._deadline = time.monotonic()

    # --- the run --------------------------------------------------------------------------------

    def run(self, claims: list[ArchiveClaim], *, max_seconds: float = 600.0) -> ArchiveSummary:
        """Archive `claims` until each has an outcome or `max_seconds` pass; release the rest."""
        summary = self.out.summary = ArchiveSummary()
        lookups_before = self.client.lookups
        self._deadline = time.monotonic() + max_seconds
        work = Work()
        now = time.monotonic()
        for claim in claims:
            if claim.job_id:
                work.polling[claim.episode_id] = (claim, now)
            elif claim.capture is not None:
                work.listing[claim.episode_id] = (claim, now, 0)
            else:
                work.to_submit.append(claim)
        next_submit, next_renew = now, now + self.queue.lease.total_seconds() / 4
        try:  # whatever happens from here on, the claims are given back below
            self._guarded(work, work.to_submit[:], self._resolve_and_find, work)
            while (work.to_submit or work.polling or work.listing) and time.monotonic() < self._deadline:
                if work.to_submit and time.monotonic() >= next_submit:
                    next_submit = self._guarded(work, [work.to_submit[0]], self._submit_next, work) or time.monotonic()
                for claim in [claim for claim, due in work.polling.values() if due <= time.monotonic()]:
                    if self._polls_paused(work):
                        break  # a 429 (this poll's or another run's) stops the rest of the round too
                    if claim.episode_id not in work.polling:
                        continue  # given back by an earlier poll of this round (a 401 gives back every job)
                    self._guarded(work, [claim], self._poll, claim, work)
                due = self._listing_due(work)
                if due:
                    self._guarded(work, [claim for claim, _ in due], self._check_listed, due, work)
                if time.monotonic() >= next_renew:
                    self._renew(work)
                    next_renew = time.monotonic() + self.queue.lease.total_seconds() / 4
                wake = min(filter(None, [work.next_due(), next_submit if work.to_submit else None]),
                           default=time.monotonic())
                if wake >= self._deadline:
                    break  # nothing more to do in this run (a pause outlasts it): give the rest back now
                self.sleep(max(0.0, wake - time.monotonic()))
        finally:
            for claim in work.held():
                try:
                    self.queue.release(claim)
                    summary.add("released")
                except Exception as error:  # an unreleased lease simply expires
                    log.warning("could not release episode %s: %s", claim.episode_id, error)
            summary.lookups = self.client.lookups - lookups_before
        return summary

    def _guarded(self, work: Work, claims: list[ArchiveClaim], step: Callable[..., Any], *args: Any) -> Any:
        """Run one step; an error nobody planned for backs off the claims it was about (an
        attempt counted) instead of ending the run with every claim still leased."""
        try:
            return step(*args)
        except SQLAlchemyError:
            raise  # the store is away: nothing can be recorded, the run ends (claims expire)
        except Exception as error:
            for claim in claims:
                if claim in work.held():
                    work.drop(claim)
                    self.out.back_off(claim, error)
            return None

    # --- 1, 2: redirects and existing captures -----------------------------------------------

    def _resolve_and_find(self, work: Work) -> None:
        if self.resolve is not None:
            for claim in list(work.to_submit):
                self._resolve(claim, work)
        not_before = (self.queue.clock() - timedelta(days=self.limits.reuse_days)).strftime("%Y%m%d%H%M%S")
        for claim in work.to_submit:
            self.out.event(claim.episode_id, "looking-up", submit_url(claim))
        found = self.finder.find([submit_url(c) for c in work.to_submit], since=not_before)
        for claim in list(work.to_submit):
            answer = found.get(submit_url(claim))
            if answer is None:
                continue  # no capture: submit it
            work.to_submit.remove(claim)
            if isinstance(answer, Exception):
                self._lookup_failed(claim, answer, work)
            else:
                self.out.archived(claim, self._capture(answer), reused=True)

    def _resolve(self, claim: ArchiveClaim, work: Work) -> None:
        if claim.redirects or self.resolve is None:
            return
        try:
            chain = self.resolve(claim.url)
        except PermanentError as error:  # a loop, a private address: SPN could not capture it either
            work.to_submit.remove(claim)
            self.out.capture_failed(claim, CaptureError(error.code, error.reason), source="redirect chain")
            return
        except Exception as error:  # noqa: BLE001 - the origin is away now: submit as it is, SPN may reach it
            log.info("episode %s: redirects not resolved (%s)", claim.episode_id, error)
            return
        # recorded even without a hop, so no later run asks the origin again
        index = work.to_submit.index(claim)
        work.to_submit[index] = self.queue.redirected(claim, chain.to_json())

    def _lookup_failed(self, claim: ArchiveClaim, error: Exception, work: Work) -> None:
        """A lookup that failed defers the episode (no attempt), or ends it for a blocked site."""
        if isinstance(error, CaptureError):
            self.out.capture_failed(claim, error, source="Wayback Machine")
            return
        if isinstance(error, Throttled):
            self._pause(LOOKUPS_THROTTLED, LOOKUP_429_PAUSE, str(error))
        until = getattr(error, "until", None)
        if not isinstance(until, datetime):
            until = self.queue.clock() + timedelta(seconds=backoff_seconds(1) / 2)
        if isinstance(error, (LookupUnavailable, ServiceBusy)):
            self.out.recheck(claim, LOOKUP_WAIT, f"lookup deferred: {error}", until)
        else:
            self.out.back_off(claim, error)

    def _take_lookup_slot(self) -> None:
        """The client's gate: wait briefly for a slot in the shared lookup window; give up (the
        caller defers the episode) when the wait is long, so polls of other jobs are not held
        up, and at once during a lookup pause (after a 429)."""
        while True:
            reservation = self.queue.limits.reserve_lookup(per_minute=self.limits.lookups_per_minute)
            if reservation.granted:
                return
            ready_at = time.monotonic() + reservation.wait_seconds
            too_long = reservation.wait_seconds > max(LOOKUP_WAIT_SECONDS, self.limits.poll_seconds)
            if reservation.until is not None or too_long or ready_at > self._deadline:
                until = reservation.until or self.queue.clock() + timedelta(seconds=reservation.wait_seconds)
                raise LookupUnavailable(f"{reservation.reason} until {until:%H:%M:%S} UTC", until)
            self.sleep(reservation.wait_seconds)

    # --- 3: submissions and polls -------------------------------------------------------------

    def _submit_next(self, work: Work) -> float:
        """Submit the next episode if every limit allows; returns when to try again."""
        claim = work.to_submit[0]
        if not self.client.has_keys:
            # This run has no keys; a run elsewhere may have them, so nothing global is paused.
            self.out.defer_all(work.to_submit, KEYS_MISSING, self.queue.clock() + KEYS_MISSING_RECHECK)
            return time.monotonic()
        url = submit_url(claim)
        reservation = self.queue.limits.reserve_submission(
            claim.episode_id, per_minute=self.limits.per_minute, daily_bytes=self.limits.daily_bytes,
            host=urlsplit(url).netloc,
        )
        if not reservation.granted:
            if reservation.reason.startswith("host:"):
                work.to_submit.pop(0)
                self.out.defer(claim, reservation.reason, reservation.until)  # type: ignore[arg-type]
                return time.monotonic()
            if reservation.until is not None and reservation.wait_seconds > self.limits.poll_seconds * 12:
                # A long pause (a quota, refused keys, a 429): everything waiting defers to its end.
                self.out.defer_all(work.to_submit, reservation.reason, reservation.until)
            return time.monotonic() + min(reservation.wait_seconds, self.limits.poll_seconds * 4)
        try:
            user = self.client.user_status()
            if user is not None and user.daily_cap_reached:
                until = next_utc_midnight(self.queue.clock())
                self.queue.limits.pause(ACCOUNT_DAILY_CAP, until, f"{user.daily_captures} of {user.daily_captures_limit} captures today")
                self.out.defer_all(work.to_submit, ACCOUNT_DAILY_CAP, until)
                return time.monotonic()
            if user is not None and user.available <= 0:
                return time.monotonic() + self.limits.poll_seconds  # wait for a capture session to free up
            reuse = None if claim.episode_id in work.no_reuse else int(self.limits.reuse_days * 86400) or None
            answer = self.client.submit(url, reuse_seconds=reuse)
        except KeysMissing as error:
            log.warning("%s", error)
            self.out.defer_all(work.to_submit, KEYS_MISSING, self.queue.clock() + KEYS_MISSING_RECHECK)
            return time.monotonic()
        except ServiceRefused as error:
            # Wrong keys: every submission would be refused the same way. Pause them all (no
            # episode is to blame) and say why where people look (`ppcli stats`).
            until = self._pause(KEYS_REFUSED, KEYS_REFUSED_PAUSE, str(error))
            self.out.defer_all(work.to_submit, KEYS_REFUSED, until)
            return time.monotonic()
        except Throttled as error:
            self._pause(SAVES_THROTTLED, SAVE_429_PAUSE, str(error))
            self.out.event(claim.episode_id, "waiting", f"Save Page Now answered 429; submissions paused {SAVE_429_PAUSE}")
            return time.monotonic()
        except ServiceBusy as error:
            wait = error.retry_after if error.retry_after is not None else SERVICE_RETRY_SECONDS
            self._pause("retry-after", timedelta(seconds=wait), str(error))
            self.out.event(claim.episode_id, "waiting", f"service busy ({error}); retrying in {wait:.0f} s")
            return time.monotonic() + wait
        except CaptureError as error:
            work.to_submit.pop(0)
            self._refused_capture(claim, url, error, work)
            return time.monotonic()
        work.to_submit.pop(0)
        self.out.summary.submitted += 1
        if answer.job_id:
            submitted = self.out.record(claim, lambda: self.queue.submitted(claim, answer.job_id))  # type: ignore[arg-type]
            if submitted and answer.same_snapshot:  # maybe a job of the last hour that failed: see _poll
                work.same_jobs.add(claim.episode_id)
            if submitted:
                work.polling[claim.episode_id] = (submitted, time.monotonic() + self.limits.poll_seconds)
                self.out.event(claim.episode_id, "submitted", answer.job_id)
        else:
            self._same_snapshot(claim, url, answer.message, work)
        return time.monotonic()

    def _same_snapshot(self, claim: ArchiveClaim, url: str, message: str, work: Work) -> None:
        """"The same snapshot had been made ..." with no job: a capture exists; find and reuse it
        (through captured redirects to the audio). When CDX lists only captures without the
        audio (an error page, a redirect that leads nowhere), or lists nothing though the
        capture is older than SPN_JOB_STALE_SECONDS, submit once more without the reuse window
        (the service then answers with a job to poll); when it lists none yet (replay lag of a
        recent capture), look again later."""
        self.out.event(claim.episode_id, "looking-up", f"{url} ({message[:80]})")
        since = (self.queue.clock() - timedelta(days=self.limits.reuse_days)).strftime("%Y%m%d%H%M%S")
        answer = self.finder.find([url], since=since, fresh=True).get(url)
        age = snapshot_age(message)
        if isinstance(answer, KnownCapture):
            self.out.archived(claim, self._capture(answer), reused=True)
        elif isinstance(answer, Exception):
            self._lookup_failed(claim, answer, Work())
        elif claim.episode_id not in work.no_reuse and (
            self.finder.known.of(url, since=since) or age is None or age > self.limits.stale_seconds
        ):
            # only unusable captures, or one CDX should list by now: the service then answers
            # with a job (its own of the last hour, or a new capture) instead of a message
            work.no_reuse.add(claim.episode_id)
            work.to_submit.insert(0, claim)
        else:
            self.out.recheck(claim, REPLAY_LAG, "Save Page Now has a capture CDX does not list yet",
                             self.queue.clock() + timedelta(seconds=self.limits.recheck_seconds))

    def _refused_capture(self, claim: ArchiveClaim, url: str, error: CaptureError, work: Work) -> None:
        """A capture refused at submit, by who is to blame."""
        if error.kind == "service":
            self._pause(SERVICE_TROUBLE, SERVICE_TROUBLE_PAUSE, error.message)
            work.to_submit.insert(0, claim)  # not this episode's fault: it goes first after the pause
            self.out.event(claim.episode_id, "waiting", f"Save Page Now: {error.message} (no attempt counted)")
            return
        if error.kind == "account":
            until = self._pause(ACCOUNT_DAILY_CAP, next_utc_midnight(self.queue.clock()) - self.queue.clock(), error.message)
            self.out.defer_all([claim] + work.to_submit, ACCOUNT_DAILY_CAP, until)
            work.to_submit.clear()
            return
        if error.kind == "host":
            host = urlsplit(url).netloc
            until = self._pause(f"host:{host}", timedelta(seconds=self.limits.host_pause_seconds), error.message)
            for waiting in [claim] + [c for c in work.to_submit if urlsplit(submit_url(c)).netloc == host]:
                work.drop(waiting)
                self.out.defer(waiting, f"host:{host}", until)
            return
        if error.kind == "url-cap":
            today = self.queue.clock().strftime("%Y%m%d000000")
            answer = self.finder.find([url], since=today, fresh=True).get(url)
            if isinstance(answer, KnownCapture):
                self.out.archived(claim, self._capture(answer), reused=True)
                return
        self.out.capture_failed(claim, error)

    # --- helpers --------------------------------------------------------------------------------

    def _capture(self, found: KnownCapture) -> Capture:
        return Capture(found.timestamp, self.client.playback_url(found.timestamp, found.url), found.digest,
                       found.length, found.url)

    def _pause(self, reason: str, length: timedelta, detail: str) -> datetime:
        until = self.queue.clock() + length
        self.queue.limits.pause(reason, until, detail)
        return until

    def _renew(self, work: Work) -> None:
        for claim in work.held():
            try:
                self.queue.renew(claim)
            except LeaseLost:  # someone else has it now: stop working on it
                work.drop(claim)


__all__ = ["ArchiveLimits", "ArchiveStage", "ArchiveSummary", "describe_event", "submit_url"]
