"""Finding captures with as few lookups as possible, within the lookup limit every run shares.

IA allows about 30 Wayback lookups a minute per address (CDX_REQUESTS_PER_MINUTE, 24 by
default, for every run on every machine together), so lookups, not submissions, bound the
stage at scale. `CaptureFinder` spends them well:

- what CDX listed before (for any run) is remembered in the store (`KnownCaptures`) and
  answers first;
- one CDX query over an episode's folder (`matchType=prefix`) answers every episode of that
  podcast, and while it is fresh an episode under it with no remembered capture has none;
- URLs at a host's root (no folder to share) are looked up one by one.
- a URL CDX lists only as a redirect (an enclosure's tracking prefix) is followed through the
  captured redirects' replayed Locations to the audio's capture, a lookup per hop.

Every request first takes a slot from the store's lookup window (`gate`); a 429 pauses
lookups for everyone. A lookup that cannot run now raises `LookupUnavailable`: the caller
defers the episode, it never submits instead.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy.exc import SQLAlchemyError

from podcastpile.archive import cdx
from podcastpile.archive.wayback import Throttled, WaybackClient
from podcastpile.store.known_captures import KnownCapture, KnownCaptures

# How long a folder query answers for URLs under it: captures made since by others are
# missed (a submission then hears "the same snapshot had been made" and finds them).
PREFIX_FRESH = timedelta(hours=6)
# Redirects followed through captured 3xx rows: Save Page Now's own 3 hops, and one more.
MAX_REDIRECT_HOPS = 4



@dataclass(frozen=True)
class NotAskedYet:
    """A listing check not made now: its host was asked (or is being asked) by another run
    within the interval; ask again in `seconds`, when what that run learned is in the store."""

    seconds: float


Found = KnownCapture | None | Exception
Listed = Found | NotAskedYet


class LookupUnavailable(Exception):
    """No lookup can be made now (the shared window is full past the run's time, or lookups are
    paused after a 429). `until` is when to try again."""

    def __init__(self, message: str, until: object = None) -> None:
        super().__init__(message)
        self.until = until


def _moment(timestamp: str) -> datetime:
    """A 14-digit Wayback timestamp as a (naive, UTC) datetime, like the store's clock."""
    return datetime.strptime(timestamp, "%Y%m%d%H%M%S")


def _has_folder(url: str) -> bool:
    """Whether the URL sits in a folder of its own (`/show/ep1.mp3`), not at a host's root,
    whose prefix query would list the whole host."""
    return urlsplit(url).path.strip("/").count("/") >= 1


class CaptureFinder:
    """Looks up captures through the store's memory, then CDX (see the module docstring)."""

    def __init__(self, client: WaybackClient, known: KnownCaptures, *, prefix_fresh: timedelta = PREFIX_FRESH) -> None:
        self.client = client
        self.known = known
        self.prefix_fresh = prefix_fresh
        self._stopped: Exception | None = None

    def find(self, urls: Iterable[str], *, since: str, fresh: bool = False) -> dict[str, Found]:
        """The best capture of each URL at or after `since` (14 digits): a `KnownCapture`, None
        when CDX has none, or the exception its lookup raised (blocked site, throttled, ...).

        `fresh`: the service says a capture exists that the store may not know of: ask CDX
        about each URL itself, whatever was remembered of its folder.
        """
        answers: dict[str, Found] = {}
        folders: dict[str, list[str]] = defaultdict(list)
        self._stopped: Exception | None = None
        for url in dict.fromkeys(urls):
            remembered = cdx.best_capture(self.known.of(url, since=since), since=since)
            if remembered is not None:
                answers[url] = remembered
            elif _has_folder(url) and not fresh:
                folder = cdx.folder_of(url)
                if self.known.prefix_covers(folder, since=since, max_age=self.prefix_fresh):
                    answers[url] = None
                else:
                    folders[folder].append(url)
            else:
                answers[url] = self._exact(url, since)
        for folder, members in folders.items():
            answers.update(self._by_folder(folder, members, since))
        for url, answer in answers.items():
            if answer is None and self._redirects(url, since):
                answers[url] = self._follow(url, since)
        return answers

    def listed(self, captures: Iterable[tuple[str, str]], *, recheck: timedelta = timedelta(0),
               interval: timedelta = timedelta(0)) -> dict[tuple[str, str], Listed]:
        """For each (url, timestamp), the CDX row of exactly that capture once CDX lists it, else
        None (the Wayback Machine replays a fresh capture only then; before, it redirects
        elsewhere), or the exception its lookup raised. Captures on one host share one query:
        every capture of the host since the oldest of them (few rows, since it is recent), and a
        host another run asked about within `recheck` (after these captures were made) is not
        asked about again: they were not listed then. A host is asked at most once per
        `interval` by all runs together (the store's reservation): the captures of a host asked
        more recently get `NotAskedYet`."""
        answers: dict[tuple[str, str], Listed] = {}
        folders: dict[str, list[tuple[str, str]]] = defaultdict(list)
        self._stopped = None
        for url, timestamp in dict.fromkeys(captures):
            exact = [c for c in self.known.of(url, since=timestamp) if c.timestamp == timestamp]
            if exact:
                answers[(url, timestamp)] = exact[0]
            else:
                folders[cdx.host_of(url)].append((url, timestamp))
        for folder, members in folders.items():
            since = min(timestamp for _, timestamp in members)
            newest = _moment(max(timestamp for _, timestamp in members))
            if recheck and self.known.listing_checked(folder, since=since, after=newest, within=recheck):
                answers.update({member: None for member in members})
                continue
            if interval:
                wait = self.known.reserve_listing_check(folder, since=since, interval=interval)
                if wait:
                    answers.update({member: NotAskedYet(wait) for member in members})
                    continue
            try:
                rows, _ = self._captures(folder, prefix=True, since=since)
            except SQLAlchemyError:
                raise  # the store (the lookup window) is away: no episode is to blame
            except Exception as error:  # noqa: BLE001 - the caller decides per capture
                answers.update({member: error for member in members})
                continue
            self.known.remember(rows)
            self.known.remember_listing_check(folder, since=since)
            listed = {(c.url, c.timestamp): c for c in rows}
            answers.update({member: listed.get(member) for member in members})
        return answers

    def _redirects(self, url: str, since: str) -> list[KnownCapture]:
        return [c for c in self.known.of(url, since=since) if (c.statuscode or "").startswith("3")]

    def _follow(self, url: str, since: str) -> Found:
        """The capture of the audio a captured redirect of `url` led to, hop by hop (Save Page
        Now captures every hop it follows, and CDX lists a redirecting URL's capture as a 3xx
        row only): the newest redirect's replayed Location names the next hop and its capture.
        None when a hop leads nowhere (not captured, or no Location)."""
        current, hop_since = url, since
        for _ in range(MAX_REDIRECT_HOPS):
            redirects = self._redirects(current, hop_since)
            if not redirects:
                return None
            newest = max(redirects, key=lambda c: c.timestamp)
            try:
                target = self.client.redirect_target(newest.timestamp, current)
            except SQLAlchemyError:
                raise
            except Exception as error:  # noqa: BLE001 - the caller decides, as for any lookup
                return error
            if target is None:
                return None
            # SPN stamps each hop as it fetches it: the next one is at or just after this one
            hop_since, current = min(target[0], newest.timestamp), target[1]
            rows = [c for c in self.known.of(current, since=hop_since) if c.timestamp >= hop_since]
            if not rows:
                found = self._exact(current, hop_since)
                if isinstance(found, Exception):
                    return found
            body = cdx.best_capture(self.known.of(current, since=hop_since), since=hop_since)
            if body is not None:
                return body
        return None

    def _captures(self, url: str, **query: Any) -> tuple[list[KnownCapture], bool]:
        """One CDX request, unless lookups stopped in this call: after a 429, or with no slot
        left, the rest get the same answer without a request (IA firewalls clients that keep
        asking through 429s)."""
        if self._stopped is not None:
            raise self._stopped
        try:
            return self.client.captures(url, **query)
        except (Throttled, LookupUnavailable) as error:
            self._stopped = error
            raise

    def _exact(self, url: str, since: str) -> Found:
        try:
            rows, _ = self._captures(url, since=since)
        except SQLAlchemyError:
            raise  # the store (the lookup window) is away: no episode is to blame
        except Exception as error:  # noqa: BLE001 - the caller decides per URL
            return error
        self.known.remember(rows)
        return cdx.best_capture([c for c in rows if c.url == url], since=since)

    def _by_folder(self, folder: str, members: list[str], since: str) -> dict[str, Found]:
        if self.known.prefix_covers(folder, since=since, max_age=self.prefix_fresh):
            # another run asked meanwhile (runs start together): its answer is in the store
            return {url: cdx.best_capture(self.known.of(url, since=since), since=since) for url in members}
        try:
            rows, complete = self._captures(folder, prefix=True, since=since)
        except SQLAlchemyError:
            raise  # the store (the lookup window) is away: no episode is to blame
        except Exception as error:  # noqa: BLE001 - every URL of the folder shares the outcome
            return {url: error for url in members}
        self.known.remember(rows)
        self.known.remember_prefix(folder, since=since, complete=complete)
        by_url: dict[str, list[KnownCapture]] = defaultdict(list)
        for row in rows:
            by_url[row.url].append(row)
        answers: dict[str, Found] = {}
        for url in members:
            best = cdx.best_capture(by_url.get(url, ()), since=since)
            answers[url] = best if best is not None or complete else self._exact(url, since)
        return answers
