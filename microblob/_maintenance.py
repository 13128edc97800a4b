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
    freed_history_entries: int = 0  # left by a delete_object interrupted on a non-transactional backend


def _versions(store: Store) -> Iterator[dict[str, Any]]:
    """Every stored version (latest and history), one document at a time to keep memory flat."""
    for coll in (store._objects, store._history):
        for doc_id in [d["_id"] for d in coll.find({}, projection={"_id": 1})]:
            doc = coll.find_one({"_id": doc_id})
            if doc is not None:
                yield doc


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
    prev_refs: list[tuple[str, int, int]] = []
    for doc in _versions(store):
        object_id = doc.get("object_id") or doc["_id"]
        version = doc.get("version") if isinstance(doc.get("version"), int) else 0
        versions_seen.setdefault(object_id, set()).add(version)
        if isinstance(doc.get("prev_version"), int):
            prev_refs.append((object_id, version, doc["prev_version"]))
        report.checked += 1
        if doc.get("storage") == "inline" or "data" in doc:
            data = doc.get("data")
            if not isinstance(data, bytes):
                report.damaged.append((object_id, version, "inline data is missing"))
                continue
            result: tuple[int, str] | str = (len(data), hashlib.sha256(data).hexdigest())
        else:
            file_id = doc.get("file_id")
            if file_id is None:
                report.damaged.append((object_id, version, "no file_id and no inline data"))
                continue
            if file_id not in hashed:
                hashed[file_id] = _hash_file(store, file_id)
            result = hashed[file_id]
        if isinstance(result, str):
            report.damaged.append((object_id, version, result))
        elif result[0] != doc.get("size"):
            report.damaged.append((object_id, version, f"size is {result[0]}, recorded {doc.get('size')}"))
        elif result[1] != doc.get("sha256"):
            report.damaged.append((object_id, version, "sha256 does not match the bytes"))
    for object_id, version, prev in prev_refs:
        if prev not in versions_seen.get(object_id, ()):
            report.damaged.append((object_id, version, f"prev_version {prev} cannot be read"))
    return report


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

    # 0. History entries whose object is gone, or that belong to an earlier life of its id: what a
    #    delete_object interrupted between its steps leaves on a backend without transactions (MongoDB
    #    deletes the object first, then its history). Their bytes are freed by step 1.
    from .store import _same_life

    gone = object()
    lives: dict[Any, Any] = {}
    leased = {d["_id"] for d in pending.find({}) if _lease_is_live(d)}  # e.g. a copy still running
    for entry in store._history.find({}, projection={"object_id": 1, "created_at": 1, "file_id": 1}):
        object_id = entry.get("object_id")
        if entry.get("file_id") is not None and entry["file_id"] in leased:
            continue
        if object_id not in lives:
            current = store._objects.find_one({"_id": object_id}, projection={"created_at": 1})
            lives[object_id] = gone if current is None else current.get("created_at")
        life = lives[object_id]
        stale = life is gone or not _same_life(entry, life)
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
