"""What the episode store takes and hands out: episodes to add, claims, summaries, and its errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from podcastpile.net.urls import normalize_url, url_hash
from podcastpile.store.languages import normalize_language


class LeaseLost(RuntimeError):
    """The caller no longer holds the episode's lease (expired, or given to another worker)."""


class UnknownEpisode(LookupError):
    """No episode has that id."""


@dataclass(frozen=True)
class NewEpisode:
    """An episode to add. `line` is where it came from in an import file, for error reports.

    Built directly, it is checked when added. `NewEpisode.checked` checks it now (a command
    that must refuse bad input before writing anything); the store then takes it as it is, and
    `key` finds it again, so a URL is normalized once on its way in.
    """

    url: str
    language: str | None = None
    podcast_id: str | None = None
    line: int | None = None
    key: str | None = None  # url_hash of the normalized URL, once checked

    @classmethod
    def checked(
        cls, url: str, language: str | None = None, podcast_id: str | None = None, line: int | None = None,
    ) -> NewEpisode:
        """The episode with its URL normalized and its fields validated.

        Raises `InvalidURL` or `ValueError` with a one-line reason.
        """
        url = normalize_url(url)
        language = normalize_language(language)
        podcast_id = podcast_id.strip() if podcast_id else None
        if podcast_id and len(podcast_id) > 64:
            raise ValueError("podcast_id longer than 64 characters")
        return cls(url, language, podcast_id, line, key=url_hash(url))

    def check(self) -> NewEpisode:
        """This episode, checked (itself when it already is)."""
        return self if self.key else NewEpisode.checked(self.url, self.language, self.podcast_id, self.line)


@dataclass(frozen=True)
class Rejected:
    """An input that was not added, and why."""

    line: int | None
    url: str
    reason: str


@dataclass
class AddSummary:
    """What `EpisodeStore.add` did."""

    added: int = 0
    present: int = 0  # already in the store (or repeated in the input)
    rejected: list[Rejected] = field(default_factory=list)

    def merge(self, other: AddSummary) -> None:
        """Add `other`'s counts and rejections to these (one summary for a chunked import)."""
        self.added += other.added
        self.present += other.present
        self.rejected.extend(other.rejected)


@dataclass(frozen=True)
class Claim:
    """An episode handed to a worker, with the lease the worker must present later."""

    episode_id: int
    url: str
    archive_url: str | None
    language: str | None
    podcast_id: str | None
    lease_token: str
    leased_until: datetime
    attempts: int
    archive_digest: str | None = None  # CDX digest of the archived bytes, when known
    archive_only: bool = False  # ARCHIVE_MODE=required: the original URL is never downloaded

    @property
    def download_url(self) -> str | None:
        """Where to fetch the audio; the one place that decides it.

        The archived copy when there is one. Otherwise the original URL, unless only archived
        copies may be downloaded: then None, whatever state the episode got into (an operator's
        `--live`, a mode changed after it was added). Episodes of ARCHIVE_MODE=prefer are ready
        without a copy only once archiving failed for good, and then the original is allowed.
        """
        if self.archive_url:
            return self.archive_url
        return None if self.archive_only else self.url


@dataclass(frozen=True)
class Stats:
    """Counts for `ppcli stats`."""

    by_status: dict[str, int]
    expired_leases: int
    audio_hours_done: float
    failures_by_reason: dict[str, int]

    @property
    def total(self) -> int:
        """Episodes in the store, whatever their status."""
        return sum(self.by_status.values())
