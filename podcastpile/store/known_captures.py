"""Captures CDX has listed, kept in the store so a lookup is never spent twice.

Lookups are the archive stage's real bound (IA allows about 30 a minute per address, for
every run together), so one CDX query over a podcast's folder (`matchType=prefix`) answers
every episode under it, and what it returned is remembered here for every run on every
machine. A prefix lookup is remembered too: while it is fresh, an episode under that folder
with no remembered capture has none (if the query's answer was complete), and no request
goes out.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from podcastpile.store.episodes import EpisodeStore
from podcastpile.store.tables import archive_known_captures as _known
from podcastpile.store.tables import archive_prefix_lookups as _prefixes


_LISTING = "listing:"  # the key prefix of listing checks, apart from folder lookups


def url_key(url: str) -> str:
    """The key a URL is stored under (SHA-1 hex: URLs are too long for a portable index)."""
    return hashlib.sha1(url.encode("utf-8", "surrogateescape")).hexdigest()


@dataclass(frozen=True)
class KnownCapture:
    """One CDX row: a capture of `url` at `timestamp`."""

    url: str
    timestamp: str  # 14 digits
    statuscode: str | None  # "200", "302", ...; None for a revisit record ("-")
    digest: str | None  # base32 SHA-1 of the body as archived; None when CDX gave none usable
    length: int | None  # the compressed WARC record size


class KnownCaptures:
    """The remembered CDX answers over an `EpisodeStore`'s database."""

    def __init__(self, store: EpisodeStore) -> None:
        self.store = store

    def remember(self, captures: Iterable[KnownCapture]) -> None:
        """Keep `captures` (ones already known are left as they are)."""
        now = self.store.clock()
        rows = [
            dict(url_key=url_key(c.url), url=c.url, timestamp=c.timestamp, statuscode=c.statuscode,
                 digest=c.digest, length=c.length, learned_at=now)
            for c in captures
        ]
        if not rows:
            return
        with self.store.engine.begin() as connection:
            insert = postgresql_insert if connection.dialect.name == "postgresql" else sqlite_insert
            for start in range(0, len(rows), 500):
                connection.execute(insert(_known).on_conflict_do_nothing(), rows[start:start + 500])

    def of(self, url: str, *, since: str = "") -> list[KnownCapture]:
        """Remembered captures of `url` at or after `since` (a 14-digit timestamp), oldest first."""
        with self.store.engine.connect() as connection:
            rows = connection.execute(
                select(_known.c.url, _known.c.timestamp, _known.c.statuscode, _known.c.digest, _known.c.length)
                .where(_known.c.url_key == url_key(url), _known.c.timestamp >= since)
                .order_by(_known.c.timestamp)
            ).all()
        return [KnownCapture(*row) for row in rows if row.url == url]

    def prefix_covers(self, prefix: str, *, since: str, max_age: timedelta) -> bool:
        """Whether a complete prefix lookup of `prefix`, from `since` or earlier, was made within
        `max_age`: then a URL under it with no remembered capture since `since` has none."""
        with self.store.engine.connect() as connection:
            row = connection.execute(
                select(_prefixes.c.looked_up_at, _prefixes.c.since, _prefixes.c.complete)
                .where(_prefixes.c.prefix_key == url_key(prefix))
            ).first()
        if row is None or not row.complete or row.since > since:
            return False
        return row.looked_up_at >= self.store.clock() - max_age

    def remember_prefix(self, prefix: str, *, since: str, complete: bool, at: datetime | None = None) -> None:
        """Record that CDX answered a prefix query over `prefix` from `since`."""
        values = dict(prefix_key=url_key(prefix), prefix=prefix, looked_up_at=at or self.store.clock(),
                      since=since, complete=complete)
        with self.store.engine.begin() as connection:
            insert = postgresql_insert if connection.dialect.name == "postgresql" else sqlite_insert
            statement = insert(_prefixes).values(**values)
            connection.execute(statement.on_conflict_do_update(
                index_elements=[_prefixes.c.prefix_key],
                set_={key: statement.excluded[key] for key in ("looked_up_at", "since", "complete")},
            ))

    def listing_checked(self, folder: str, *, since: str, after: datetime, within: timedelta) -> bool:
        """Whether some run asked CDX about `folder` from `since` or earlier, after `after` and
        within `within`: a capture made before `after` and not in what it remembered is not
        listed yet, and asking again now would spend a lookup to learn the same."""
        with self.store.engine.connect() as connection:
            row = connection.execute(
                select(_prefixes.c.looked_up_at, _prefixes.c.since)
                .where(_prefixes.c.prefix_key == url_key(_LISTING + folder))
            ).first()
        if row is None or row.since > since:
            return False
        return row.looked_up_at >= max(after, self.store.clock() - within)

    def reserve_listing_check(self, folder: str, *, since: str, interval: timedelta) -> float:
        """Take the right to ask CDX about `folder`'s fresh captures now, if no run asked (or
        took it) within `interval`: 0.0 when taken, else the seconds until it is free. Atomic
        across runs, so runs whose captures fall due together send one query, not one each."""
        now = self.store.clock()
        key = url_key(_LISTING + folder)
        with self.store.engine.begin() as connection:
            insert = postgresql_insert if connection.dialect.name == "postgresql" else sqlite_insert
            # RETURNING says whether this statement wrote the row (rowcount is not reliable for
            # an INSERT ... ON CONFLICT DO NOTHING on every driver)
            added = connection.execute(insert(_prefixes).values(
                prefix_key=key, prefix=_LISTING + folder, looked_up_at=now, since=since, complete=False,
            ).on_conflict_do_nothing().returning(_prefixes.c.prefix_key)).first()
            if added is not None:
                return 0.0
            taken = connection.execute(
                update(_prefixes).where(_prefixes.c.prefix_key == key, _prefixes.c.looked_up_at <= now - interval)
                .values(looked_up_at=now, since=since).returning(_prefixes.c.prefix_key)
            ).first()
            if taken is not None:
                return 0.0
            last = connection.execute(select(_prefixes.c.looked_up_at).where(_prefixes.c.prefix_key == key)).scalar()
        # another run's clock read may be a moment after ours: never more than the interval
        return max(0.01, min(interval, (last or now) + interval - now).total_seconds())

    def remember_listing_check(self, folder: str, *, since: str) -> None:
        """Record that CDX was asked which captures of `folder` since `since` it lists."""
        self.remember_prefix(_LISTING + folder, since=since, complete=False)
