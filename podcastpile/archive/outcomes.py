"""Recording the archive stage's outcomes in the store, and telling the caller about them.

Each outcome is one store write fenced by the claim's lease (a run that lost an episode
records nothing for it) and one event. The classes of failure (see
`podcastpile.archive.answers`) map to the store's outcomes here: permanent and blocked end the
episode (or, in prefer mode, send it to its live URL), transient backs off with an attempt
counted, a per-URL cap waits for midnight, pauses defer with no attempt counted.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from podcastpile.archive.events import Event, describe_event
from podcastpile.archive.wayback import CaptureError
from podcastpile.net.urls import mask_secrets
from podcastpile.store import LeaseLost
from podcastpile.store.archive import PAUSE_TEXT, ArchiveClaim, ArchiveQueue, Capture, pause_text
from podcastpile.store.archive_limits import next_utc_midnight

log = logging.getLogger("podcastpile.archive.stage")
BACKOFF_BASE_SECONDS = 60.0
BACKOFF_MAX_SECONDS = 6 * 3600.0


@dataclass
class ArchiveSummary:
    """What one run did, by outcome (reused, captured, deferred, retry, failed, live, released)."""

    counts: dict[str, int] = field(default_factory=dict)
    submitted: int = 0
    lookups: int = 0

    def add(self, outcome: str) -> None:
        self.counts[outcome] = self.counts.get(outcome, 0) + 1


def backoff_seconds(attempt: int) -> float:
    """Exponential backoff with jitter for the `attempt`-th transient failure (1, 2, ...)."""
    delay = min(BACKOFF_MAX_SECONDS, BACKOFF_BASE_SECONDS * 2 ** max(0, attempt - 1))
    return delay * random.uniform(0.75, 1.25)


class Outcomes:
    """The stage's outcomes for its claims; `summary` counts them for the run."""

    def __init__(self, queue: ArchiveQueue, on_event: Event | None) -> None:
        self.queue = queue
        self._on_event = on_event
        self.summary = ArchiveSummary()

    def event(self, episode_id: int, event: str, detail: str) -> None:
        """Report an event to the caller and to the log (`podcastpile.archive.stage`)."""
        if self._on_event is not None:
            self._on_event(episode_id, event, detail)
        log.log(logging.DEBUG if event == "pending" else logging.INFO,
                "episode %d: %s", episode_id, describe_event(event, detail))

    def record(self, claim: ArchiveClaim, write: Callable[[], Any]) -> Any:
        """Run a store write for `claim`; a lost lease means another run owns the episode now."""
        try:
            result = write()
        except LeaseLost as error:
            log.warning("%s; outcome dropped", error)
            return None
        return True if result is None else result

    def archived(self, claim: ArchiveClaim, capture: Capture, *, reused: bool) -> None:
        """The episode has a listed capture: ready for the GPU workers."""
        if self.record(claim, lambda: self.queue.archived(claim, capture, reused=reused)):
            self.summary.add("reused" if reused else "captured")
            self.event(claim.episode_id, "reused" if reused else "archived", capture.url)

    def capture_failed(self, claim: ArchiveClaim, error: CaptureError, *, source: str = "Save Page Now") -> None:
        """A capture failed for this episode: permanent ends it, a per-URL cap waits for
        midnight, anything else backs off (an attempt counted)."""
        reason = f"{source}: {error.message}"
        if error.kind in ("permanent", "blocked"):
            code = "archive-blocked" if error.kind == "blocked" else error.code
            status = self.record(claim, lambda: self.queue.give_up(claim, code, reason))
            if status:
                outcome = "live" if status == "pending" else "failed"
                self.summary.add(outcome)
                self.event(claim.episode_id, outcome, f"{code}: {error.message}")
        elif error.kind == "url-cap":
            until = next_utc_midnight(self.queue.clock())
            if self.record(claim, lambda: self.queue.defer(claim, error.code, reason, until)):
                self.summary.add("deferred")
                self.event(claim.episode_id, "deferred", f"{error.code} until {until:%Y-%m-%d %H:%M} UTC")
        else:
            self._retry(claim, error.code, reason)

    def back_off(self, claim: ArchiveClaim, error: Exception) -> None:
        """An unplanned error about one episode: a counted, backed-off retry (so one that fails
        the same way every time ends after ARCHIVE_MAX_ATTEMPTS)."""
        log.warning("episode %s: unexpected %s from the archive client: %s",
                    claim.episode_id, type(error).__name__, error, exc_info=error)
        self._retry(claim, "archive-client-error", mask_secrets(f"archive client error ({type(error).__name__}: {error})"))

    def resubmit(self, claim: ArchiveClaim, code: str, reason: str) -> None:
        """Submit the episode again (an attempt counted, no backoff)."""
        status = self.record(claim, lambda: self.queue.retry_later(claim, code, reason, 0.0))
        if status:
            outcome = {"pending": "live", "failed": "failed"}.get(str(status), "resubmit")
            self.summary.add(outcome)
            self.event(claim.episode_id, outcome, reason)

    def defer(self, claim: ArchiveClaim, code: str, until: datetime) -> None:
        """Wait until `until` for a pause or quota that is no episode's fault (no attempt counted)."""
        if self.record(claim, lambda: self.queue.defer(claim, code, pause_text(code), until)):
            self.summary.add("deferred")
            when = f"until {until:%Y-%m-%d %H:%M} UTC"
            text = PAUSE_TEXT.get(code) or (pause_text(code) if code.startswith("host:") else code)
            self.event(claim.episode_id, "deferred", f"{text} ({when})")

    def defer_all(self, claims: list[ArchiveClaim], code: str, until: datetime) -> None:
        """Defer every claim in `claims` (and empty it)."""
        for claim in list(claims):
            self.defer(claim, code, until)
        claims.clear()

    def recheck(self, claim: ArchiveClaim, code: str, reason: str, until: datetime) -> None:
        """Give the episode back as it is, to be looked at again at `until` (no attempt counted)."""
        if self.record(claim, lambda: self.queue.recheck_later(claim, code, reason, until)):
            self.summary.add("waiting")
            self.event(claim.episode_id, "waiting", f"{reason} (until {until:%H:%M:%S} UTC)")

    def _retry(self, claim: ArchiveClaim, code: str, reason: str) -> None:
        delay = backoff_seconds(claim.attempts + 1)
        status = self.record(claim, lambda: self.queue.retry_later(claim, code, reason, delay))
        if status:
            outcome = {"pending": "live", "failed": "failed"}.get(str(status), "retry")
            self.summary.add(outcome)
            self.event(claim.episode_id, outcome, f"{code}: {reason}")
