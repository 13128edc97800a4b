"""How much retention has evicted, per destination, kept as counters (`evicted:<tag>` in
`microblob.sync_counts`: files, versions, bytes) so `sync status` and the browse page show it next
to what is pending without walking the store.

Written in the same transaction as each change of what is evicted: an eviction batch adds
(store/retention.py); a delete, or a save that overwrites an evicted latest version without keeping
it, takes away the versions that vanish, and the bytes of each evicted file no version references
any more (store/core.py). Exact on the transactional backends, the only ones that evict.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .records import EVICTED_TO
from .sync_pending import SYNC_COUNTS
from .sync_records import _dest_tag

if TYPE_CHECKING:  # pragma: no cover
    from ..engine.backend import Backend


def _counter_id(name: str) -> str:
    return "evicted:" + _dest_tag(name)


def note_evicted(backend: Backend, name: str, files: int, versions: int, size: int) -> None:
    """An eviction batch to `name` freed `files` files (`size` bytes) of `versions` versions."""
    if files or versions:
        backend.collection(SYNC_COUNTS).update_one(
            {"_id": _counter_id(name)}, {"$inc": {"files": files, "versions": versions, "bytes": size},
                                         "$set": {"destination": name}}, upsert=True)


def note_dropped(backend: Backend, gone: Iterable[dict[str, Any]]) -> None:
    """Versions `gone` (documents with `file_id`, `size`, `evicted_to`) no longer exist: each evicted
    one is a version less, and each of their files that no remaining evicted version references is a
    file (and its bytes) less. Called after the versions were removed, in the same transaction."""
    per_dest: dict[str, list[dict[str, Any]]] = {}
    for doc in gone:
        name = doc.get(EVICTED_TO)
        if isinstance(name, str):
            per_dest.setdefault(name, []).append(doc)
    for name, docs in per_dest.items():
        sizes = {d.get("file_id"): int(d.get("size") or 0) for d in docs if d.get("file_id") is not None}
        left = _still_evicted(backend, set(sizes))
        freed = [f for f in sizes if f not in left]
        backend.collection(SYNC_COUNTS).update_one(
            {"_id": _counter_id(name)}, {"$inc": {"files": -len(freed), "versions": -len(docs),
                                                  "bytes": -sum(sizes[f] for f in freed)}}, upsert=True)


def _still_evicted(backend: Backend, files: set[Any]) -> set[Any]:
    """Which of `files` some version still marked evicted references (latest or history)."""
    if not files:
        return set()
    found: set[Any] = set()
    for name in ("objects", "object_history"):
        found.update(d.get("file_id") for d in backend.collection(name).find(
            {"file_id": {"$in": list(files)}, EVICTED_TO: {"$exists": True}}, projection={"file_id": 1}))
    return found


def evicted_totals(backend: Backend, name: str) -> tuple[int, int, int]:
    """(files, versions, bytes) evicted to `name` and still evicted: one lookup."""
    doc = backend.collection(SYNC_COUNTS).find_one({"_id": _counter_id(name)}) or {}
    return int(doc.get("files") or 0), int(doc.get("versions") or 0), int(doc.get("bytes") or 0)
