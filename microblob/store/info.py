"""`store_info(store)`: what a store holds and, where it is a file, how much more it can hold.

A 32-bit process maps at most 1536 MiB of an LMDB file, so a store on a 32-bit Raspberry Pi stops there;
`microblob info` says where a store stands, and `microblob serve` caps uploads at what still fits.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from ..engine.lmdb_kv import Space
from .records import EVICTED_TO

if TYPE_CHECKING:
    from .core import Store

__all__ = ["DEFAULT_MAX_UPLOAD", "MIN_MAX_UPLOAD", "StoreInfo", "room", "space", "store_info", "upload_cap"]

DEFAULT_MAX_UPLOAD = 4 * 1024**3
MIN_MAX_UPLOAD = 1024**2


@dataclass(frozen=True)
class StoreInfo:
    """Counts of a store's documents and bytes, and its file's `Space` (None on MongoDB and in memory)."""

    uri: str
    objects: int
    history_versions: int
    workflows: int
    files: int
    file_bytes: int
    space: Space | None
    evicted_versions: int = 0  # versions whose bytes retention evicted to the sync destination

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def space(store: Store) -> Space | None:
    """The store's file limits, or None where the backend keeps no file of its own (MongoDB, memory)."""
    store.internals.check_open()
    get = getattr(store.internals.backend, "space", None)
    return get() if callable(get) else None


def room(store: Store) -> int | None:
    """Bytes that can still be written to `store`, or None where the store does not say."""
    found = space(store)
    return None if found is None else found.room


def upload_cap(found: Space | None) -> int:
    """4 GiB, or the room left where the store cannot hold that much more (a 32-bit store maps 1536 MiB at
    most): an upload the store has no room for would fail only after the whole body had arrived. Never
    below 1 MiB, so a nearly full store still takes small uploads (and says StoreFull if even they fail)."""
    if found is None or found.room >= DEFAULT_MAX_UPLOAD:
        return DEFAULT_MAX_UPLOAD
    return max(MIN_MAX_UPLOAD, found.room)


def store_info(store: Store) -> StoreInfo:
    """Counts from the stored counters; the file bytes summed over the files documents, streamed."""
    internals = store.internals
    internals.check_open()
    file_bytes = 0
    for doc in internals.file_docs.iter_documents({}, projection={"length": 1}):
        length = doc.get("length")
        file_bytes += length if isinstance(length, int) else 0
    return StoreInfo(
        uri=store.uri,
        objects=internals.objects.count_documents({}),
        history_versions=internals.history.count_documents({}),
        workflows=internals.workflows.count_documents({}),
        files=internals.file_docs.count_documents({}),
        file_bytes=file_bytes,
        space=space(store),
        evicted_versions=sum(1 for coll in (internals.objects, internals.history)
                             for _ in coll.iter_documents({EVICTED_TO: {"$exists": True}}, projection={"_id": 1})),
    )
