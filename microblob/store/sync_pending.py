"""What each sync destination still lacks, kept up to date as objects change, so `sync status` answers
in the same time for 10 objects pending or 100,000 (a person waits for it; the walk it replaces read
every pending object).

The records (`microblob.sync_pending`): one entry per (destination, object) that is not confirmed
there at its current version (`pend:<tag>:<object id>`: version, sha256, life, size, and `since`,
when that version was saved), and one counter per destination (`count:<tag>`: objects, bytes). A
save, a copy into this store, a delete and a confirmation each update them in the SAME write
transaction as the change itself, so on the transactional backends (the embedded file, memory://) a
kill -9 at any point leaves them exact: both committed or neither. The oldest pending object is the
first entry of the (dest, since) index: one lookup. On MongoDB and Mongita there is no such
transaction: a crash between an object's write and its entry's can leave the counts off by that
object, and each full round (hourly under a SyncWorker) counts them again from scratch.

A destination starts being counted when it is first recorded (`start`, in one transaction with the
walk that counts what is pending then); one recorded before counting existed is counted by its next
round or status. Every destination of a store is counted independently: each has its own entries and
counter. Whether an object is pending is `_is_confirmed` of its confirmation record, the same test
the brute-force walk (`unconfirmed_pages`) applies.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .records import SYNC_CONFIRMED, SYNC_DESTINATIONS
from .sync_records import _changed_since, _confirmation_id, _confirmations, _confirmed, _dest_tag, _is_confirmed

if TYPE_CHECKING:  # pragma: no cover
    from ..engine.backend import Backend
    from .core import Store

SYNC_PENDING = "microblob.sync_pending"
# The counters, apart from the entries: a collection with no index, so bumping one writes one document
# and no index entries.
SYNC_COUNTS = "microblob.sync_counts"
COUNTED = "counted"  # set on a destination's record once its entries and counter are kept


def _pending(backend: Backend) -> Any:
    return backend.collection(SYNC_PENDING)


def _entry_id(tag: str, object_id: str) -> str:
    return f"pend:{tag}:{object_id}"


def _counted(backend: Backend) -> list[str]:
    """The destinations whose pending records are kept (read inside the writer's transaction, so a
    destination recorded by another process meanwhile is seen). A bare scan of the few records: with no
    filter or projection to compile it costs a store with no destination about 3 us per save."""
    docs = backend.collection(SYNC_DESTINATIONS).iter_documents()
    return [d["destination"] for d in docs if d.get(COUNTED) and isinstance(d.get("destination"), str)]


def _counts(backend: Backend) -> Any:
    return backend.collection(SYNC_COUNTS)


def _count_id(tag: str) -> str:
    """The `_id` of a destination's counter in SYNC_COUNTS."""
    return "count:" + tag


def _bump(counts: Any, tag: str, objects: int, size: int) -> None:
    """Add to a destination's counter (read and replaced by `_id`: about half the CPU of an `$inc`
    update, which compiles its operators on every call; the caller's transaction makes it atomic)."""
    if objects or size:
        cid = _count_id(tag)
        counter = counts.find_one({"_id": cid}) or {"_id": cid, "objects": 0, "bytes": 0}
        counter["objects"] = int(counter.get("objects") or 0) + objects
        counter["bytes"] = int(counter.get("bytes") or 0) + size
        counts.replace_one({"_id": cid}, counter, upsert=True)


def note_change(backend: Backend, object_id: str, doc: dict[str, Any] | None, *, new_version: bool = False) -> None:
    """An object's latest version is now `doc` (None: deleted): update each counted destination's
    entry and counter. Called inside the transaction that wrote the change. `new_version`: `doc` is a
    version this store never held before (a save: the next number of its life), so no confirmation
    can name it and none is looked up."""
    names = _counted(backend)
    if not names:
        return
    pending, confirmed = _pending(backend), backend.collection(SYNC_CONFIRMED)
    for name in names:
        tag = _dest_tag(name)
        pid = _entry_id(tag, object_id)
        mine = pending.find_one({"_id": pid}, projection={"size": 1})
        if doc is None or (not new_version and _is_confirmed(
                confirmed.find_one({"_id": _confirmation_id(name, object_id)}), doc)):
            if mine is not None:
                pending.delete_one({"_id": pid})
                _bump(_counts(backend), tag, -1, -int(mine.get("size") or 0))
            continue
        entry = _entry(tag, doc)
        if mine is None:
            pending.insert_one(entry)
            _bump(_counts(backend), tag, 1, entry["size"])
        else:
            pending.replace_one({"_id": pid}, entry)
            _bump(_counts(backend), tag, 0, entry["size"] - int(mine.get("size") or 0))


def note_confirmed(backend: Backend, name: str, record: dict[str, Any]) -> None:
    """A confirmation record was written: the object is no longer pending there if the record names
    its current version (a save since keeps it pending). Inside the transaction that wrote it."""
    tag = _dest_tag(name)
    pending = _pending(backend)
    pid = _entry_id(tag, record["object_id"])
    mine = pending.find_one({"_id": pid})
    if mine is not None and _is_confirmed(record, mine):
        pending.delete_one({"_id": pid})
        _bump(_counts(backend), tag, -1, -int(mine.get("size") or 0))


def _entry(tag: str, doc: dict[str, Any]) -> dict[str, Any]:
    return {"_id": _entry_id(tag, doc["_id"]), "dest": tag, "object_id": doc["_id"], "version": doc.get("version"),
            "sha256": doc.get("sha256"), "created_at": doc.get("created_at"), "size": int(doc.get("size") or 0),
            "since": doc.get("updated_at")}


def unconfirmed_pages(src: Store, name: str, *, unless_history: bool = False) -> Iterator[list[dict[str, Any]]]:
    """Pages of every object not confirmed at `name` at its current version, found the slow way: a walk
    of the whole store against the confirmation records, without the destination. `unless_history`:
    also those whose record does not yet name their life and history (written before retention read
    them: a round writes it again, and their versions become evictable)."""
    confirmed = _confirmed(src)
    for page in _changed_since(src, None):
        known = _confirmations(confirmed, name, [d["_id"] for d in page])
        left = [d for d in page if not _is_confirmed(known.get(d["_id"]), d)
                or (unless_history and "history" not in known[d["_id"]])]
        if left:
            yield left


def walk_pending(src: Store, name: str) -> list[dict[str, Any]]:
    """The pending objects found the slow way (`unconfirmed_pages`), as one list."""
    return [doc for page in unconfirmed_pages(src, name) for doc in page]


def start(src: Store, name: str) -> None:
    """Count what is pending at `name` now and keep counting from here: one transaction (on the
    transactional backends) that writes every entry and the counter and marks the record counted."""
    backend = src.internals.backend
    pending = _pending(backend)
    pending.create_index([("dest", 1), ("since", 1)])
    tag = _dest_tag(name)

    def count() -> None:
        pending.delete_many({"dest": tag})
        objects = size = 0
        for page in unconfirmed_pages(src, name):
            for doc in page:
                entry = _entry(tag, doc)
                pending.insert_one(entry)
                objects, size = objects + 1, size + entry["size"]
        cid = _count_id(tag)
        _counts(backend).replace_one({"_id": cid}, {"_id": cid, "objects": objects, "bytes": size}, upsert=True)
        backend.collection(SYNC_DESTINATIONS).update_one(
            {"_id": "dest:" + name}, {"$set": {"destination": name, COUNTED: True}}, upsert=True)

    backend.atomic(count)


def pending_totals(src: Store, name: str) -> tuple[int, int, _dt.datetime | None]:
    """(objects, bytes, oldest `updated_at`) pending at a counted destination: two lookups."""
    pending = _pending(src.internals.backend)
    tag = _dest_tag(name)
    counter = _counts(src.internals.backend).find_one({"_id": _count_id(tag)}) or {}
    first = pending.find({"dest": tag}, projection={"since": 1}, sort=[("since", 1)], limit=1)
    return int(counter.get("objects") or 0), int(counter.get("bytes") or 0), first[0]["since"] if first else None
