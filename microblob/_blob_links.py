"""Expiring download links for Blobs: `/blobs/{id}` → a Blob, held weakly, gone at its deadline.

The registry never keeps a Blob alive by itself (except uploads, which nothing else holds until an
action takes them): the invocation output holds its Blobs, so forgetting the invocation frees the bytes.
Expiry is driven by the scheduler's clock; an expired id answers 410 for a while, then 404.
"""

from __future__ import annotations

import datetime as _dt
import secrets
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any

from ._scheduler import Scheduler
from .blob import Blob

__all__ = ["BlobLinks", "Link"]


def iso_utc(ts: _dt.datetime) -> str:
    return ts.astimezone(_dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_id() -> str:
    """An unguessable id (128 random bits, URL-safe)."""
    return secrets.token_urlsafe(16)


@dataclass
class Link:
    """One download link. `blob()` is None once its Blob was released or collected."""

    id: str
    ref: weakref.ref[Blob]
    deadline: float  # monotonic
    expires_at: str  # the same instant, wall clock, for clients
    content_type: str
    size: int | None
    sha256: str
    kind: type[Blob]
    strong: Blob | None = field(default=None, repr=False)
    expired: bool = False

    def blob(self) -> Blob | None:
        return None if self.expired else self.ref()


class BlobLinks:
    """The id → Blob map behind `/blobs/{id}`."""

    def __init__(self, scheduler: Scheduler, tombstone_time: float = 3600.0, max_links: int = 100_000) -> None:
        self._scheduler = scheduler
        self._lock = threading.Lock()
        self._links: dict[str, Link] = {}
        self._by_blob: weakref.WeakKeyDictionary[Blob, Link] = weakref.WeakKeyDictionary()
        self.tombstone_time = tombstone_time
        self.max_links = max_links

    def register(self, blob: Blob, ttl: float, hold: bool = False) -> Link:
        """A link to `blob` valid for `ttl` seconds from now (an existing link is extended, not
        duplicated). `hold=True` keeps the Blob alive until then (uploads). Call off the event loop:
        it may hash the Blob."""
        sha, size = blob.sha256, blob.size
        now = self._scheduler.clock()
        deadline = now + ttl
        expires_at = iso_utc(_dt.datetime.now(_dt.timezone.utc) + _dt.timedelta(seconds=ttl))
        with self._lock:
            link = self._by_blob.get(blob)
            if link is not None and not link.expired:
                if deadline > link.deadline:
                    link.deadline, link.expires_at = deadline, expires_at
            else:
                link = Link(new_id(), weakref.ref(blob), deadline, expires_at, blob.content_type, size, sha,
                            type(blob))
                self._links[link.id] = link
                self._by_blob[blob] = link
                self._trim()
            if hold:
                link.strong = blob
        self._scheduler.call_at(deadline, lambda: self._expire(link.id))
        return link

    def _trim(self) -> None:
        # Bound the table: drop the oldest expired entries first, then the oldest of all.
        if len(self._links) <= self.max_links:
            return
        for key in [k for k, v in self._links.items() if v.expired][: len(self._links) - self.max_links]:
            del self._links[key]
        while len(self._links) > self.max_links:
            del self._links[next(iter(self._links))]

    def _expire(self, link_id: str) -> None:
        with self._lock:
            link = self._links.get(link_id)
            if link is None or link.expired or link.deadline > self._scheduler.clock():
                return  # gone, or extended since this timer was set
            link.expired, link.strong = True, None
            blob = link.ref()
            if blob is not None and self._by_blob.get(blob) is link:
                del self._by_blob[blob]
        self._scheduler.call_at(self._scheduler.clock() + self.tombstone_time, lambda: self._purge(link_id))

    def _purge(self, link_id: str) -> None:
        with self._lock:
            link = self._links.get(link_id)
            if link is not None and link.expired:
                del self._links[link_id]

    def get(self, link_id: str) -> Link | None:
        """The link (expired or not), or None if the id was never issued or is long gone."""
        with self._lock:
            link = self._links.get(link_id)
        if link is not None and not link.expired and link.deadline <= self._scheduler.clock():
            self._expire(link_id)  # the timer may be a moment late; the clock decides
        return link

    def drop_holds(self) -> None:
        with self._lock:
            for link in self._links.values():
                link.strong = None

    def __len__(self) -> int:
        return len(self._links)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            live = sum(1 for v in self._links.values() if v.blob() is not None)
            return {"links": len(self._links), "live": live}
