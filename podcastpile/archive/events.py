"""The archive stage's events, as one readable line each (logs, `ppcli process`, `ppcli archive`)."""

from __future__ import annotations

from collections.abc import Callable

from podcastpile.net.urls import mask_secrets

Event = Callable[[int, str, str], None]  # episode id, what happened, detail

EVENT_TEXT = {
    "looking-up": "looking up an existing capture of {}",
    "reused": "reused an existing capture: {}",
    "submitted": "submitted to Save Page Now (job {})",
    "pending": "capture pending for {} s",
    "captured": "captured, waiting for the Wayback Machine to list it: {}",
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
