"""`verify()` and `gc()`: proof that what the store holds is intact, and reclaiming what nothing uses.

gc reads in an order that makes it safe beside live writers: the candidates first, the references
after, and each deletion re-checks its condition inside an atomic scope. A file that was being written
while gc ran is either referenced, published, or still under a live lease by the time gc looks.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import socket
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from . import _codec
from ._exceptions import InvalidArgument
from ._flowcept_layout import FLOWCEPT_LAYOUT, as_microblob
from .files import lease_is_live

if TYPE_CHECKING:  # pragma: no cover
    from .store import Store

__all__ = ["GcReport", "VerifyReport", "gc", "verify"]

# A lease from another host cannot be checked; after this long it is presumed dead.
FOREIGN_LEASE_TIMEOUT = _dt.timedelta(hours=24)


@dataclasses.dataclass
class VerifyReport:
    """`checked`: versions whose bytes were re-hashed; `damaged`: (object_id, version, reason)."""

    checked: int = 0
    damaged: list[tuple[str, int, str]] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.damaged


@dataclasses.dataclass
class GcReport:
    """What gc freed: whole files no version references, and chunks no file owns."""

    freed_files: int = 0
    freed_bytes: int = 0
    freed_orphan_chunks: int = 0
    freed_history_entries: int = 0  # left by writes interrupted on a non-transactional backend


def _versions(store: Store) -> Iterator[tuple[Any, dict[str, Any]]]:
    """Every stored version (latest and history) and its collection, one document at a time to keep
    memory flat."""
    for coll in (store._objects, store._history):
        for doc_id in [d["_id"] for d in coll.find({}, projection={"_id": 1})]:
            doc = coll.find_one({"_id": doc_id})
            if doc is not None:
                yield coll, doc


# What identifies one stored version and its bytes: if any differs now, a writer replaced it.
_IDENTITY = ("version", "prev_version", "created_at", "storage", "file_id", "size", "sha256")


def _identity(doc: dict[str, Any]) -> dict[str, Any]:
    return {field: doc.get(field) for field in _IDENTITY}


def _still_stored(coll: Any, doc_id: Any, identity: dict[str, Any]) -> bool:
    """Whether a version verify read is still stored as it was. verify reads one document at a time while
    others may write: a version replaced without history or deleted meanwhile frees its bytes (and a
    delete takes its history along), so a failed check of a version that is no longer there is a writer's
    doing, not damage."""
    now = coll.find_one({"_id": doc_id}, projection={"data": 0})
    return now is not None and _identity(as_microblob(now)) == identity


def _hash_file(store: Store, file_id: Any) -> tuple[int, str] | str:
    """(length, sha256) of a file's chunks as stored, or the reason it cannot be read."""
    try:
        stream = store.files.open_download_stream(file_id)
    except KeyError:
        return f"file {file_id!r} is missing"
    except InvalidArgument:  # an operator document or an array where an id belongs: no file has it
        return f"file_id {file_id!r} is not a file id"
    digest = hashlib.sha256()
    length = 0
    try:
        with stream:
            for chunk in stream.chunks():
                digest.update(chunk)
                length += len(chunk)
    except Exception as exc:  # IntegrityError from a missing or short chunk
        return str(exc)
    if stream.sha256 and stream.sha256 != digest.hexdigest():
        return f"file {file_id!r} does not match its own sha256"
    return length, digest.hexdigest()


def verify(store: Store) -> VerifyReport:
    report = VerifyReport()
    hashed: dict[Any, tuple[int, str] | str] = {}
    versions_seen: dict[str, set[int]] = {}
    prev_refs: list[tuple[Any, dict[str, Any], str, int, int]] = []
    for coll, raw in _versions(store):
        doc = as_microblob(raw)  # a Flowcept-written document is checked in microblob's terms
        object_id = doc.get("object_id") or doc["_id"]
        version = doc.get("version") if isinstance(doc.get("version"), int) else 0
        versions_seen.setdefault(object_id, set()).add(version)
        if isinstance(doc.get("prev_version"), int):
            prev_refs.append((coll, doc, object_id, version, doc["prev_version"]))
        report.checked += 1
        problem = _check_version(store, doc, hashed)
        if problem is not None and _still_stored(coll, doc["_id"], _identity(doc)):
            report.damaged.append((object_id, version, problem))
    for coll, doc, object_id, version, prev in prev_refs:
        if prev in versions_seen.get(object_id, ()):
            continue
        # Not seen, maybe only because a writer changed the object between verify's reads: damage only
        # if the version naming it is still stored as read and `prev` still cannot be read.
        if _still_stored(coll, doc["_id"], _identity(doc)) and not _readable(store, object_id, prev):
            report.damaged.append((object_id, version, f"prev_version {prev} cannot be read"))
    return report


def _check_version(store: Store, doc: dict[str, Any], hashed: dict[Any, tuple[int, str] | str]) -> str | None:
    """What is wrong with one version's bytes, or None."""
    flowcept = doc.get("layout") == FLOWCEPT_LAYOUT
    if doc.get("storage") == "inline" or "data" in doc:
        data = doc.get("data")
        if flowcept and data is not None and not isinstance(data, bytes):
            return None  # Flowcept keeps a non-bytes payload as a BSON value: no bytes to hash
        if not isinstance(data, bytes):
            return "inline data is missing"
        result: tuple[int, str] | str = (len(data), hashlib.sha256(data).hexdigest())
    else:
        file_id = doc.get("file_id")
        if file_id is None:
            return "no file_id and no inline data"
        if file_id not in hashed:
            hashed[file_id] = _hash_file(store, file_id)
        result = hashed[file_id]
    if isinstance(result, str):
        return result
    # Flowcept records size and hash only when its payload was bytes: check what it recorded.
    if result[0] != doc.get("size") and not (flowcept and doc.get("size") is None):
        return f"size is {result[0]}, recorded {doc.get('size')}"
    if result[1] != doc.get("sha256") and not (flowcept and doc.get("sha256") is None):
        return "sha256 does not match the bytes"
    return None


def _readable(store: Store, object_id: str, version: int) -> bool:
    from ._exceptions import NotFound

    try:
        store.get_blob_object(object_id, version)
    except NotFound:
        return False
    return True


def _lease_is_live(lease: dict[str, Any]) -> bool:
    """A lease of this host is live while its process runs; another host's, for a day."""
    owner = str(lease.get("owner", ""))
    if owner.rsplit(":", 2)[0] == socket.gethostname():
        return lease_is_live(owner)
    started = lease.get("started_at")
    return not isinstance(started, _dt.datetime) or _codec.utcnow() - started < FOREIGN_LEASE_TIMEOUT


def gc(store: Store) -> GcReport:
    report = GcReport()
    backend = store._backend
    files_coll = store.files._files
    pending = store.files._pending
    chunks = backend.chunks

    # 0. History entries no version of the object can lead to, all left by writes interrupted between
    #    their steps on a backend without transactions (MongoDB):
    #    - entries whose object is gone, or of an earlier life of its id: a delete_object interrupted
    #      after deleting the object (it deletes the object first, then its history);
    #    - entries of a version below the latest that no version names as prev_version: a versioned save
    #      killed between its archive and its swap, then a non-versioned update overwrote that version.
    #    Their bytes are freed by step 1.
    from .store import _same_life, _version_of

    leased = {d["_id"] for d in pending.find({}) if _lease_is_live(d)}  # e.g. a copy still running
    by_object: dict[Any, list[dict[str, Any]]] = {}
    for entry in store._history.find({}, projection={"object_id": 1, "created_at": 1, "file_id": 1, "version": 1}):
        by_object.setdefault(entry.get("object_id"), []).append(entry)
    for object_id, entries in by_object.items():
        current = store._objects.find_one({"_id": object_id}, projection={"created_at": 1, "version": 1,
                                                                           "prev_version": 1})
        life = current.get("created_at") if current is not None else None
        named: set[Any] = set()
        if current is not None:
            # Read after the latest: a version that a later write archives is in this read, and one
            # written later cannot name a version below the latest we saw, so nothing named is missed.
            named = {current.get("prev_version")} | {
                e.get("prev_version")
                for e in store._history.find({"object_id": object_id}, projection={"created_at": 1, "prev_version": 1})
                if _same_life(e, life)
            }
        for entry in entries:
            if entry.get("file_id") is not None and entry["file_id"] in leased:
                continue
            if current is None or not _same_life(entry, life):
                stale = True
            else:
                version = _version_of(entry)
                stale = version < _version_of(current) and version not in named
            if stale and store._history.delete_one({"_id": entry["_id"], "created_at": entry.get("created_at")}):
                report.freed_history_entries += 1

    # 1. Files that belong to objects but that no version references any more.
    candidates = [d["_id"] for d in files_coll.find({"metadata.microblob_object_id": {"$exists": True}},
                                                    projection={"_id": 1})]
    live_leases = {d["_id"] for d in pending.find({}) if _lease_is_live(d)}
    for file_id in candidates:
        if file_id in live_leases:
            continue

        def drop_unreferenced(file_id: Any = file_id) -> int | None:
            if store._objects.find_one({"file_id": file_id}, projection={"_id": 1}) is not None:
                return None
            if store._history.find_one({"file_id": file_id}, projection={"_id": 1}) is not None:
                return None
            doc = files_coll.find_one({"_id": file_id}, projection={"length": 1})
            if doc is None:
                return None
            files_coll.delete_one({"_id": file_id})
            return int(doc.get("length") or 0)

        length = backend.atomic(drop_unreferenced)
        if length is not None:
            chunks.delete(file_id)
            report.freed_files += 1
            report.freed_bytes += length

    # 2. Chunks with no files document and no live lease: an upload that was interrupted.
    chunk_owners = list(chunks.file_ids())
    leases = {d["_id"]: d for d in pending.find({})}
    for file_id in chunk_owners:
        lease = leases.get(file_id)
        if lease is not None and _lease_is_live(lease):
            continue

        def drop_orphan(file_id: Any = file_id) -> bool:
            if files_coll.find_one({"_id": file_id}, projection={"_id": 1}) is not None:
                return False
            current = pending.find_one({"_id": file_id})
            if current is not None and _lease_is_live(current):
                return False
            pending.delete_one({"_id": file_id})
            return True

        if backend.atomic(drop_orphan):
            freed = _orphan_size(chunks, file_id)
            report.freed_orphan_chunks += chunks.delete(file_id)
            report.freed_bytes += freed

    # 3. Dead leases whose upload left no chunks behind.
    for file_id, lease in leases.items():
        if not _lease_is_live(lease) and file_id not in chunk_owners:
            pending.delete_one({"_id": file_id})
    return report


def _orphan_size(chunks: Any, file_id: Any) -> int:
    total = 0
    for n in range(chunks.count(file_id)):
        data = chunks.get(file_id, n)
        if data is not None:
            total += len(data)
    return total
