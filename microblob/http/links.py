"""Expiring download links for Blobs: `/blobs/{id}` → a Blob, held weakly, gone at its deadline.

The registry never keeps a Blob alive by itself (except uploads, which nothing else holds until an
action takes them): the invocation output holds its Blobs, so forgetting the invocation frees the bytes.
Expiry is driven by the scheduler's clock; an expired id answers 410 for a while, then 404.

Everything is O(1) per call and bounded, so a server under sustained load keeps a steady size: one timer
per live link; a link whose Blob was collected (its invocation forgotten) becomes a tombstone at once
instead of waiting for its deadline; tombstones are kept in expiry order, at most `max_tombstones` of
them and for at most `tombstone_time`, and purged from the front (one sweep timer, no scan).
"""

from __future__ import annotations

import datetime as _dt
import secrets
import threading
import weakref
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from ..blob import Blob
from .scheduler import Scheduler, Timer

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
    timer: Timer | None = field(default=None, repr=False, compare=False)

    def blob(self) -> Blob | None:
        return None if self.expired else self.ref()


class BlobLinks:
    """The id → Blob map behind `/blobs/{id}`: live links, then tombstones (an expired id answers 410)."""

    def __init__(self, scheduler: Scheduler, tombstone_time: float = 3600.0, max_links: int = 100_000,
                 max_tombstones: int = 10_000) -> None:
        self._scheduler = scheduler
        self._lock = threading.Lock()
        self._live: dict[str, Link] = {}  # in creation order: the cap drops the oldest first
        self._tombstones: OrderedDict[str, tuple[Link, float]] = OrderedDict()  # id -> (link, purge time)
        self._by_blob: weakref.WeakKeyDictionary[Blob, Link] = weakref.WeakKeyDictionary()
        self._collected: deque[str] = deque()  # ids whose Blob was collected (weakref callbacks add them)
        self._sweep: Timer | None = None
        self.tombstone_time = tombstone_time
        self.max_links = max_links
        self.max_tombstones = max_tombstones

    def register(self, blob: Blob, ttl: float, hold: bool = False) -> Link:
        """A link to `blob` valid for `ttl` seconds from now (an existing link is extended, not
        duplicated). `hold=True` keeps the Blob alive until then (uploads). Call off the event loop:
        it may hash the Blob."""
        sha, size = blob.sha256, blob.size
        now = self._scheduler.clock()
        deadline = now + ttl
        expires_at = iso_utc(_dt.datetime.now(_dt.timezone.utc) + _dt.timedelta(seconds=ttl))
        with self._lock:
            self._drain_collected()
            link = self._by_blob.get(blob)
            if link is not None and not link.expired:
                if deadline > link.deadline:  # its timer, when it fires, sets itself again for the new deadline
                    link.deadline, link.expires_at = deadline, expires_at
            else:
                link_id = new_id()
                collected = self._collected
                ref = weakref.ref(blob, lambda _ref: collected.append(link_id))  # no reference to the link
                link = Link(link_id, ref, deadline, expires_at, blob.content_type, size, sha, type(blob))
                self._live[link_id] = link
                self._by_blob[blob] = link
                link.timer = self._scheduler.call_at(deadline, lambda: self._expire(link_id))
                while len(self._live) > self.max_links:
                    self._bury(next(iter(self._live.values())), now)
            if hold:
                link.strong = blob
        return link

    def _expire(self, link_id: str) -> None:
        with self._lock:
            self._drain_collected()
            link = self._live.get(link_id)
            if link is None:
                return  # already a tombstone
            now = self._scheduler.clock()
            if link.deadline > now:  # extended since its timer was set
                link.timer = self._scheduler.call_at(link.deadline, lambda: self._expire(link_id))
                return
            self._bury(link, now)

    def _bury(self, link: Link, now: float) -> None:
        """Make a live link a tombstone (call with the lock held)."""
        del self._live[link.id]
        if link.timer is not None:
            link.timer.cancel()
        link.expired, link.strong, link.timer = True, None, None
        blob = link.ref()
        if blob is not None and self._by_blob.get(blob) is link:
            del self._by_blob[blob]
        self._tombstones[link.id] = (link, min(now, link.deadline) + self.tombstone_time)  # timers run late
        self._purge(now)

    def _drain_collected(self) -> None:
        """Bury the live links whose Blob was collected (call with the lock held)."""
        now = None
        while self._collected:
            link = self._live.get(self._collected.popleft())
            if link is not None and link.ref() is None:
                now = self._scheduler.clock() if now is None else now
                self._bury(link, now)

    def _purge(self, now: float) -> None:
        """Forget the oldest tombstones past their time or over the count (call with the lock held)."""
        tombs = self._tombstones
        while tombs and (len(tombs) > self.max_tombstones or next(iter(tombs.values()))[1] <= now):
            tombs.popitem(last=False)
        if tombs and (self._sweep is None or not self._sweep.active):
            self._sweep = self._scheduler.call_at(next(iter(tombs.values()))[1], self._swept)

    def _swept(self) -> None:
        with self._lock:
            self._sweep = None
            self._drain_collected()
            self._purge(self._scheduler.clock())

    def get(self, link_id: str) -> Link | None:
        """The link (expired or not), or None if the id was never issued or is long gone."""
        with self._lock:
            self._drain_collected()
            link = self._live.get(link_id)
            if link is None:
                entry = self._tombstones.get(link_id)
                return None if entry is None else entry[0]
        if link.deadline <= self._scheduler.clock():
            self._expire(link_id)  # the timer may be a moment late; the clock decides
        return link

    def drop_holds(self) -> None:
        with self._lock:
            for link in self._live.values():
                link.strong = None

    def __len__(self) -> int:
        with self._lock:
            self._drain_collected()
            return len(self._live) + len(self._tombstones)

    def sizes(self) -> dict[str, int]:
        """How many links the table holds: live (until their deadline or their Blob's end), tombstones."""
        with self._lock:
            self._drain_collected()
            return {"live": len(self._live), "tombstones": len(self._tombstones)}

    def stats(self) -> dict[str, Any]:
        with self._lock:
            self._drain_collected()
            live = sum(1 for v in self._live.values() if v.blob() is not None)
            return {"links": len(self._live) + len(self._tombstones), "live": live}
