"""Keep a worker's leases alive while it works through a batch.

A batch claims several episodes at once; the last ones may wait longer than one lease for
their turn. A `LeaseKeeper` renews every lease it holds from a background thread, so an
episode is requeued only when its worker is really gone (crashed, lost), not merely busy.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from types import TracebackType

from podcastpile.store import Claim, EpisodeStore, LeaseLost

log = logging.getLogger(__name__)


class LeaseKeeper:
    """Renews the leases of `claims` every `interval` seconds until they are dropped or it stops.

    Use as a context manager. `drop(episode_id)` once an episode is completed, failed or
    released. `lost` holds the ids whose lease was taken away (expired and re-claimed).
    """

    def __init__(self, store: EpisodeStore, claims: Iterable[Claim], interval: float) -> None:
        self.store = store
        self.interval = interval
        self.lost: set[int] = set()
        self._held = {claim.episode_id: claim.lease_token for claim in claims}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lease-keeper", daemon=True)

    def __enter__(self) -> "LeaseKeeper":
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def drop(self, episode_id: int) -> None:
        """Stop renewing `episode_id` (its work is finished one way or another)."""
        with self._lock:
            self._held.pop(episode_id, None)

    def renew_all(self) -> None:
        """Renew every held lease now; a lease that is gone is moved to `lost`."""
        with self._lock:
            held = list(self._held.items())
        for episode_id, token in held:
            try:
                self.store.renew(episode_id, token)
            except LeaseLost as error:
                with self._lock:
                    if self._held.pop(episode_id, None) != token:
                        continue  # finished and dropped while this renewal ran: nothing was lost
                    self.lost.add(episode_id)
                log.warning("lease lost: %s", error)
            except Exception as error:  # a database hiccup must not kill the keeper
                log.warning("renewing the lease on episode %s failed: %s", episode_id, error)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.renew_all()
