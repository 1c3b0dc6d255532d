"""Failures an episode can meet, classified so callers know whether to retry.

Every failure carries a short `code` (grouped in `ppcli stats`) and a one-line `reason`
(stored on the episode). Permanent failures are never retried; transient ones are retried
with backoff until the episode's attempts run out.
"""

from __future__ import annotations


class EpisodeError(Exception):
    """A failure tied to one episode. `code` is a short slug such as `http-404` or `not-audio`."""

    permanent: bool = False

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.code}: {self.reason}"


class PermanentError(EpisodeError):
    """Retrying cannot help: the URL is gone, the bytes are not audio, the file is too big."""

    permanent = True


class TransientError(EpisodeError):
    """May work later: timeouts, 429, 5xx, resets, short reads."""

    permanent = False


class Stopped(Exception):
    """The caller stopped the work (its batch is stopping): not a failure of the episode, and
    nothing to record; the batch gives the episode back to the queue."""


def as_episode_error(error: BaseException) -> EpisodeError:
    """Classify any exception raised while processing an episode.

    Known failures keep their class. A timeout is transient (the next attempt may be on a
    faster or less busy worker). Anything else is unexpected (a bug, out of GPU memory): it is
    treated as transient so the episode is retried, and the attempt limit stops it looping.
    """
    if isinstance(error, EpisodeError):
        return error
    if isinstance(error, TimeoutError):
        return TransientError("timeout", f"episode exceeded its time budget: {error}".rstrip(": "))
    first_line = (str(error).strip().splitlines() or [""])[0][:300]
    return TransientError("internal", f"{type(error).__name__}: {first_line}".rstrip(": "))
