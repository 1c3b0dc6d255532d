"""One archive run's episodes, by what each waits for, and the URL each is archived under."""

from __future__ import annotations

from dataclasses import dataclass, field

from podcastpile.net.redirects import RedirectChain
from podcastpile.store.archive import ArchiveClaim

SPN_MAX_REDIRECTS = 3  # Save Page Now follows this many redirects, then fails the capture


def submit_url(claim: ArchiveClaim) -> str:
    """The URL to look up and submit: the episode's, or along its redirect chain the first one
    from which Save Page Now's 3 hops reach the audio."""
    if not claim.redirects:
        return claim.url
    chain = RedirectChain.from_json(claim.redirects)
    return chain.urls[max(0, len(chain.urls) - 1 - SPN_MAX_REDIRECTS)]


@dataclass
class Work:
    """The run's episodes by what they wait for: a submission, a job to poll, or a fresh capture
    to see listed by CDX (with when each is next looked at, and how often it was checked)."""

    to_submit: list[ArchiveClaim] = field(default_factory=list)
    polling: dict[int, tuple[ArchiveClaim, float]] = field(default_factory=dict)
    listing: dict[int, tuple[ArchiveClaim, float, int]] = field(default_factory=dict)
    no_reuse: set[int] = field(default_factory=set)  # submit without if_not_archived_within
    same_jobs: set[int] = field(default_factory=set)  # jobs a "same snapshot" answer named

    def held(self) -> list[ArchiveClaim]:
        return self.to_submit + [c for c, _ in self.polling.values()] + [c for c, _, _ in self.listing.values()]

    def drop(self, claim: ArchiveClaim) -> None:
        if claim in self.to_submit:
            self.to_submit.remove(claim)
        self.polling.pop(claim.episode_id, None)
        self.listing.pop(claim.episode_id, None)

    def next_due(self) -> float | None:
        dues = [due for _, due in self.polling.values()] + [due for _, due, _ in self.listing.values()]
        return min(dues, default=None)
