"""The settings the archive stage obeys, in one value (from `Settings`, or set by tests and benchmarks)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ArchiveLimits:
    """The settings the stage obeys."""

    per_minute: float = 7.0
    daily_bytes: int = 5_000_000_000
    reuse_days: float = 3650.0
    poll_seconds: float = 5.0
    lookups_per_minute: float = 24.0
    stale_seconds: float = 1800.0
    host_pause_seconds: float = 600.0
    recheck_seconds: float = 120.0  # a capture CDX does not list yet is looked for again after this
    # The first CDX check for a fresh capture, then 3x longer each time: IA lists a capture
    # seconds to minutes after the job succeeds (its own client first looks after 9 s).
    # From the settings: two status polls (10 s by default).
    listed_after_seconds: float = 10.0
    # One CDX check of a host answers for every capture waiting on it, so checks of one host
    # are at least this far apart (every run together): at IA's pace of new captures (7 a
    # minute), a check for each would spend most of the lookups. The default: 9 first-check
    # delays (90 s: a capture is ready up to that much later, ~10 captures share a check).
    listing_interval_seconds: float | None = None

    @property
    def listing_interval(self) -> float:
        """Seconds between two CDX checks of one host for fresh captures."""
        if self.listing_interval_seconds is not None:
            return self.listing_interval_seconds
        return 9 * self.listed_after_seconds

    @classmethod
    def from_settings(cls, settings: Any) -> "ArchiveLimits":
        return cls(
            per_minute=settings.spn_captures_per_minute, daily_bytes=settings.spn_daily_bytes,
            reuse_days=settings.archive_reuse_days, poll_seconds=settings.spn_poll_seconds,
            lookups_per_minute=settings.cdx_requests_per_minute, stale_seconds=settings.spn_job_stale_seconds,
            listed_after_seconds=2 * settings.spn_poll_seconds,
        )
