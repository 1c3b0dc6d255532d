"""Downloads from the Wayback Machine within IA's limits, across the fleet.

IA firewalls an address whose client ignores 429s (a minute, then an hour, doubling), and
that cuts off everything behind the address: lookups, submissions and every GPU worker's
downloads. Playback (`/web/<ts>id_/...`) answers 429 under the same policy as lookups. So:

- a 429 on a download pauses lookups and downloads for everyone sharing the store for a
  minute (IA sends no Retry-After; its own advice is to back off), recorded as a `lookup:`
  pause that the archive stage honours too;
- a download from the archive first waits out any lookup pause, whoever met the 429.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

from sqlalchemy.exc import SQLAlchemyError

from podcastpile.store.archive import PLAYBACK_THROTTLED
from podcastpile.store.archive_limits import SharedLimits

log = logging.getLogger(__name__)
PLAYBACK_429_PAUSE = timedelta(seconds=60)
# A wait never longer than this, whatever the store says (a pause set by a clock far ahead).
MAX_WAIT_SECONDS = 15 * 60.0


class PlaybackThrottle:
    """The shared pause between downloads from the archive (see the module docstring)."""

    def __init__(self, limits: SharedLimits, *, pause: timedelta = PLAYBACK_429_PAUSE) -> None:
        self.limits = limits
        self.pause = pause

    def wait(self, stop: threading.Event | None = None) -> float:
        """Wait while lookups and downloads are paused (or until `stop` is set); returns the
        seconds waited. A store that cannot be asked is no reason to wait."""
        waited = 0.0
        event = stop or threading.Event()
        while not event.is_set():
            try:
                until = self.limits.lookups_paused_until()
            except SQLAlchemyError as error:
                log.warning("could not read the archive's pauses (%s): downloading anyway", error)
                return waited
            if until is None:
                return waited
            seconds = min((until - self.limits.store.clock()).total_seconds(), MAX_WAIT_SECONDS - waited)
            if seconds <= 0:
                return waited
            log.info("the Wayback Machine answered 429: waiting %.0f s before downloading", seconds)
            event.wait(seconds)
            waited += seconds
        return waited

    def throttled(self, detail: str) -> None:
        """A download met a 429: pause lookups and downloads for everyone."""
        try:
            self.limits.pause(PLAYBACK_THROTTLED, self.limits.store.clock() + self.pause, detail[:500])
        except SQLAlchemyError as error:  # this process still backs off through its retries
            log.warning("could not record the Wayback Machine's 429 (%s)", error)
