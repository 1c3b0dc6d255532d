"""The archive stage for a set of claimed episodes: reuse a capture, or submit one and poll it.

`ArchiveStage.run(claims)` is plain Python (the Prefect flow, `ppcli archive` and
`ppcli process` all call it):

1. episodes with a stored job id resume polling it (a restarted run never submits twice);
2. the others look for an existing capture no older than ARCHIVE_REUSE_DAYS and reuse it;
3. the rest are submitted one at a time as the shared limits allow (the store's per-minute
   window, today's bytes, pauses, and the account's `available` captures), and every
   submitted job is polled every SPN_POLL_SECONDS until it succeeds or fails.

Outcomes are recorded in the store as they happen. When the run's time is up, episodes not
finished are released: their job ids stay, so the next run picks them up where this one was.
No error from the Internet Archive client escapes a run: a site the Wayback Machine blocks
fails that episode (`archive-blocked`), refused or missing keys defer the episodes that need
a new capture (no attempt counted), and anything unplanned gives that one episode back.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from podcastpile.archive.wayback import (
    ACCOUNT_QUOTAS,
    CaptureError,
    JobForgotten,
    KeysMissing,
    ServiceBusy,
    ServiceRefused,
    WaybackClient,
)
from podcastpile.store import LeaseLost
from podcastpile.store.archive import (
    KEYS_MISSING,
    KEYS_REFUSED,
    PAUSE_TEXT,
    ArchiveClaim,
    ArchiveQueue,
    Capture,
    next_utc_midnight,
    pause_text,
)
from podcastpile.net.urls import mask_secrets

log = logging.getLogger(__name__)
Event = Callable[[int, str, str], None]  # episode id, what happened, detail
LOOKUP_THREADS = 8
BACKOFF_BASE_SECONDS = 60.0
BACKOFF_MAX_SECONDS = 6 * 3600.0
SERVICE_RETRY_SECONDS = 30.0  # when a busy service gives no Retry-After
# Keys are fixed by a person, not by waiting: both are longer than `ppcli process`'s 15 min
# wait, so it stops and lists the episodes with the reason instead of polling a refusal.
KEYS_REFUSED_PAUSE = timedelta(minutes=30)
KEYS_MISSING_RECHECK = timedelta(hours=1)


@dataclass(frozen=True)
class ArchiveLimits:
    """The settings the stage obeys."""

    per_minute: float = 7.0
    daily_bytes: int = 5_000_000_000
    reuse_days: float = 3650.0
    poll_seconds: float = 5.0

    @classmethod
    def from_settings(cls, settings: Any) -> "ArchiveLimits":
        return cls(
            per_minute=settings.spn_captures_per_minute, daily_bytes=settings.spn_daily_bytes,
            reuse_days=settings.archive_reuse_days, poll_seconds=settings.spn_poll_seconds,
        )


@dataclass
class ArchiveSummary:
    """What one run did, by outcome (reused, captured, deferred, retry, failed, live, released)."""

    counts: dict[str, int] = field(default_factory=dict)
    submitted: int = 0

    def add(self, outcome: str) -> None:
        self.counts[outcome] = self.counts.get(outcome, 0) + 1


# How each event reads in logs (and in `ppcli process` / `ppcli archive` output).
EVENT_TEXT = {
    "looking-up": "looking up an existing capture of {}",
    "reused": "reused an existing capture: {}",
    "submitted": "submitted to Save Page Now (job {})",
    "pending": "capture pending for {} s",
    "archived": "archived: {}",
    "deferred": "deferred: {}",
    "retry": "will retry: {}",
    "resubmit": "will resubmit: {}",
    "failed": "archiving failed: {}",
    "live": "no archived copy ({}); the original URL will be used",
    "waiting": "waiting: {}",
}


def describe_event(event: str, detail: str) -> str:
    """One readable line for a stage event; URLs in it have their passwords hidden (it is logged)."""
    return mask_secrets(EVENT_TEXT.get(event, event + " {}").format(detail))


def backoff_seconds(attempt: int) -> float:
    """Exponential backoff with jitter for the `attempt`-th transient failure (1, 2, ...)."""
    delay = min(BACKOFF_MAX_SECONDS, BACKOFF_BASE_SECONDS * 2 ** max(0, attempt - 1))
    return delay * random.uniform(0.75, 1.25)


class ArchiveStage:
    """Runs the archive stage over claimed episodes; see the module docstring."""

    def __init__(
        self,
        queue: ArchiveQueue,
        client: WaybackClient,
        limits: ArchiveLimits,
        *,
        on_event: Event | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.queue = queue
        self.client = client
        self.limits = limits
        self._on_event = on_event
        self.sleep = sleep

    def on_event(self, episode_id: int, event: str, detail: str) -> None:
        """Report an event to the caller and to the log (`podcastpile.archive.stage`)."""
        if self._on_event is not None:
            self._on_event(episode_id, event, detail)
        log.log(logging.DEBUG if event == "pending" else logging.INFO,
                "episode %d: %s", episode_id, describe_event(event, detail))

    def run(self, claims: list[ArchiveClaim], *, max_seconds: float = 600.0) -> ArchiveSummary:
        """Archive `claims` until each has an outcome or `max_seconds` pass; release the rest."""
        summary = ArchiveSummary()
        deadline = time.monotonic() + max_seconds
        polling: dict[int, tuple[ArchiveClaim, float]] = {
            c.episode_id: (c, time.monotonic()) for c in claims if c.job_id
        }
        to_submit = [c for c in claims if not c.job_id]
        next_submit = time.monotonic()
        next_renew = time.monotonic() + self.queue.lease.total_seconds() / 4
        try:  # from the first lookup on: whatever happens, the claims are given back below
            self._reuse_existing(to_submit, summary)
            while (to_submit or polling) and time.monotonic() < deadline:
                now = time.monotonic()
                if to_submit and now >= next_submit:
                    claim = to_submit[0]
                    try:
                        next_submit = self._submit_next(to_submit, polling, summary)
                    except SQLAlchemyError:
                        raise  # the store is away: nothing can be recorded, the run ends
                    except Exception as error:
                        self._back_off(claim, to_submit, polling, summary, error)
                        next_submit = time.monotonic()
                for episode_id, (claim, due) in list(polling.items()):
                    if due <= time.monotonic():
                        try:
                            self._poll(claim, polling, summary)
                        except SQLAlchemyError:
                            raise
                        except Exception as error:
                            self._back_off(claim, to_submit, polling, summary, error)
                if time.monotonic() >= next_renew:
                    self._renew([c for c in to_submit] + [c for c, _ in polling.values()], to_submit, polling)
                    next_renew = time.monotonic() + self.queue.lease.total_seconds() / 4
                wake = min([due for _, due in polling.values()] + ([next_submit] if to_submit else []), default=now)
                self.sleep(max(0.0, min(wake, deadline) - time.monotonic()))
        finally:
            for claim in to_submit + [c for c, _ in polling.values()]:
                try:
                    self.queue.release(claim)
                    summary.add("released")
                except Exception as error:  # an unreleased lease simply expires
                    log.warning("could not release episode %s: %s", claim.episode_id, error)
        return summary

    # --- steps ----------------------------------------------------------------------------------

    def _reuse_existing(self, to_submit: list[ArchiveClaim], summary: ArchiveSummary) -> None:
        """Record existing captures young enough to reuse. Claims with an outcome leave
        `to_submit` as they get it (so an error midway still leaves the rest to be released);
        what stays needs a new capture."""
        not_before = self.queue.clock() - timedelta(days=self.limits.reuse_days)
        for claim in to_submit:
            self.on_event(claim.episode_id, "looking-up", claim.url)

        def lookup(claim: ArchiveClaim) -> tuple[ArchiveClaim, Capture | Exception | None]:
            try:
                return claim, self.client.find_capture(claim.url, not_before=not_before)
            except ServiceBusy as error:
                log.info("lookup of episode %s failed (%s); submitting instead", claim.episode_id, error)
                return claim, None
            except Exception as error:  # a blocked site, or anything unplanned: this episode only
                return claim, error

        with ThreadPoolExecutor(max_workers=LOOKUP_THREADS, thread_name_prefix="archive-lookup") as pool:
            for claim, found in pool.map(lookup, list(to_submit)):
                if found is None:
                    continue
                if isinstance(found, CaptureError):
                    to_submit.remove(claim)
                    self._capture_failed(claim, found, summary, source="Wayback Machine")
                elif isinstance(found, Exception):
                    self._back_off(claim, to_submit, {}, summary, found)
                else:
                    to_submit.remove(claim)
                    capture = found
                    if self._record(claim, lambda: self.queue.archived(claim, capture, reused=True)):
                        summary.add("reused")
                        self.on_event(claim.episode_id, "reused", capture.url)

    def _back_off(
        self, claim: ArchiveClaim, to_submit: list[ArchiveClaim],
        polling: dict[int, tuple[ArchiveClaim, float]], summary: ArchiveSummary, error: Exception,
    ) -> None:
        """An unplanned error about one episode: back it off as a transient failure (an attempt
        counted, so one that fails the same way every time ends after ARCHIVE_MAX_ATTEMPTS
        instead of being claimed again by every run) and go on with the others, rather than let
        it end the run with every claim still leased."""
        log.warning("episode %s: unexpected %s from the archive client: %s",
                    claim.episode_id, type(error).__name__, error, exc_info=error)
        if claim in to_submit:
            to_submit.remove(claim)
        polling.pop(claim.episode_id, None)
        reason = mask_secrets(f"archive client error ({type(error).__name__}: {error})")
        delay = backoff_seconds(claim.attempts + 1)
        status = self._record(claim, lambda: self.queue.retry_later(claim, "archive-client-error", reason, delay))
        if status:
            outcome = "failed" if str(status) == "failed" else "retry"
            summary.add(outcome)
            self.on_event(claim.episode_id, outcome, reason)

    def _defer_all(self, to_submit: list[ArchiveClaim], code: str, until: Any, summary: ArchiveSummary) -> None:
        """Defer every episode waiting to submit until `until` (no attempt counted)."""
        for waiting in list(to_submit):
            if self._record(waiting, lambda w=waiting: self.queue.defer(w, code, pause_text(code), until)):
                summary.add("deferred")
                when = f"until {until:%Y-%m-%d %H:%M} UTC"
                detail = f"{PAUSE_TEXT[code]} ({when})" if code in PAUSE_TEXT else f"{code} {when}"
                self.on_event(waiting.episode_id, "deferred", detail)
        to_submit.clear()

    def _submit_next(
        self, to_submit: list[ArchiveClaim], polling: dict[int, tuple[ArchiveClaim, float]],
        summary: ArchiveSummary,
    ) -> float:
        """Submit the next episode if every limit allows; returns when to try again."""
        claim = to_submit[0]
        reservation = self.queue.reserve_submission(
            claim.episode_id, per_minute=self.limits.per_minute, daily_bytes=self.limits.daily_bytes
        )
        if not reservation.granted:
            if reservation.until is not None and reservation.reason != "retry-after":
                # A daily quota is used up (or the keys were refused): everything waiting
                # defers to the pause's end, nothing fails.
                self._defer_all(to_submit, reservation.reason, reservation.until, summary)
            return time.monotonic() + min(reservation.wait_seconds, self.limits.poll_seconds * 4)
        try:
            user = self.client.user_status()
            if user is not None and user.available <= 0:
                return time.monotonic() + self.limits.poll_seconds  # the slot is spent; wait for a free capture
            job_id = self.client.submit(claim.url, reuse_seconds=int(self.limits.reuse_days * 86400) or None)
        except KeysMissing as error:
            # This run has no keys; a run elsewhere may have them, so nothing global is paused.
            log.warning("%s", error)
            self._defer_all(to_submit, KEYS_MISSING, self.queue.clock() + KEYS_MISSING_RECHECK, summary)
            return time.monotonic()
        except ServiceRefused as error:
            # Wrong keys: every submission would be refused the same way. Pause them all (no
            # episode is to blame) and say why where people look (`ppcli stats`).
            until = self.queue.clock() + KEYS_REFUSED_PAUSE
            self.queue.pause(KEYS_REFUSED, until, str(error))
            self._defer_all(to_submit, KEYS_REFUSED, until, summary)
            return time.monotonic()
        except ServiceBusy as error:
            wait = error.retry_after if error.retry_after is not None else SERVICE_RETRY_SECONDS
            self.queue.pause("retry-after", self.queue.clock() + timedelta(seconds=wait), str(error))
            self.on_event(claim.episode_id, "waiting", f"service busy ({error}); retrying in {wait:.0f} s")
            return time.monotonic() + wait
        except CaptureError as error:
            to_submit.pop(0)
            self._capture_failed(claim, error, summary)
            return time.monotonic()
        to_submit.pop(0)
        summary.submitted += 1
        submitted = self._record(claim, lambda: self.queue.submitted(claim, job_id))
        if submitted:
            polling[claim.episode_id] = (submitted, time.monotonic() + self.limits.poll_seconds)
            self.on_event(claim.episode_id, "submitted", job_id)
        return time.monotonic()

    def _poll(
        self, claim: ArchiveClaim, polling: dict[int, tuple[ArchiveClaim, float]], summary: ArchiveSummary
    ) -> None:
        assert claim.job_id is not None
        try:
            status = self.client.job_status(claim.job_id)
        except ServiceBusy as error:
            wait = error.retry_after if error.retry_after is not None else self.limits.poll_seconds * 2
            polling[claim.episode_id] = (claim, time.monotonic() + wait)
            return
        except JobForgotten as error:
            # Resubmit rather than lose the episode; the attempt limit bounds the loop.
            del polling[claim.episode_id]
            reason = str(error)
            if self._record(claim, lambda: self.queue.retry_later(claim, "job-forgotten", reason, 0.0)):
                summary.add("resubmit")
                self.on_event(claim.episode_id, "resubmit", reason)
            return
        if status.status == "pending":
            polling[claim.episode_id] = (claim, time.monotonic() + self.limits.poll_seconds)
            waited = (self.queue.clock() - claim.submitted_at).total_seconds() if claim.submitted_at else 0.0
            self.on_event(claim.episode_id, "pending", f"{waited:.0f}")
            return
        del polling[claim.episode_id]
        if status.status == "error" and status.error is not None:
            self._capture_failed(claim, status.error, summary)
            return
        if not status.timestamp:
            self._capture_failed(claim, CaptureError("no-timestamp", "success without a timestamp"), summary)
            return
        try:
            capture = self.client.capture_details(status.original_url or claim.url, status.timestamp)
        except CaptureError as error:  # CDX blocks the site it just captured
            self._capture_failed(claim, error, summary, source="Wayback Machine")
            return
        if self._record(claim, lambda: self.queue.archived(claim, capture, reused=False)):
            summary.add("captured")
            self.on_event(claim.episode_id, "archived", capture.url)

    def _capture_failed(
        self, claim: ArchiveClaim, error: CaptureError, summary: ArchiveSummary, *, source: str = "Save Page Now",
    ) -> None:
        """Record a failed capture by its class: quota defers, transient backs off, permanent ends."""
        reason = f"{source}: {error.message}"
        if error.kind == "quota":
            until = next_utc_midnight(self.queue.clock())
            if error.code in ACCOUNT_QUOTAS:  # the account's quota: nobody should submit until the reset
                self.queue.pause(error.code, until, reason)
            if self._record(claim, lambda: self.queue.defer(claim, error.code, reason, until)):
                summary.add("deferred")
                self.on_event(claim.episode_id, "deferred", f"{error.code} until {until:%Y-%m-%d %H:%M} UTC")
        elif error.kind == "permanent":
            status = self._record(claim, lambda: self.queue.give_up(claim, error.code, reason))
            if status:
                summary.add("live" if status == "pending" else "failed")
                self.on_event(claim.episode_id, "live" if status == "pending" else "failed", f"{error.code}: {error.message}")
        else:
            delay = backoff_seconds(claim.attempts + 1)
            status = self._record(claim, lambda: self.queue.retry_later(claim, error.code, reason, delay))
            if status:
                outcome = {"pending": "live", "failed": "failed"}.get(str(status), "retry")
                summary.add(outcome)
                self.on_event(claim.episode_id, outcome, f"{error.code}: {error.message}")

    def _renew(
        self, claims: list[ArchiveClaim], to_submit: list[ArchiveClaim],
        polling: dict[int, tuple[ArchiveClaim, float]],
    ) -> None:
        for claim in claims:
            try:
                self.queue.renew(claim)
            except LeaseLost:  # someone else has it now: stop working on it
                if claim in to_submit:
                    to_submit.remove(claim)
                polling.pop(claim.episode_id, None)

    def _record(self, claim: ArchiveClaim, write: Callable[[], Any]) -> Any:
        """Run a store write for `claim`; a lost lease means another run owns the episode now."""
        try:
            result = write()
        except LeaseLost as error:
            log.warning("%s; outcome dropped", error)
            return None
        return True if result is None else result
