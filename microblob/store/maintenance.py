"""`verify()` and `gc()`: proof that what the store holds is intact, and reclaiming what nothing uses.

gc reads in an order that makes it safe beside live writers: the candidates first, the references
after, and each deletion re-checks its condition inside an atomic scope. A file that was being written
while gc ran is either referenced, published, or still under a live lease by the time gc looks.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as _dt
import hashlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from .._exceptions import InvalidArgument, InvalidQuery
from ..engine import codec as _codec
from .files import hostname, lease_is_live
from .flowcept_layout import FLOWCEPT_LAYOUT, as_microblob
from .records import EVICTED_TO

if TYPE_CHECKING:  # pragma: no cover
    from .core import Store

__all__ = ["GcReport", "VerifyReport", "gc", "verify"]

_BATCH = 500  # documents per read snapshot in the batch jobs
_RECENT_FILES = 1024  # file hashes verify remembers
_FREE_BATCH = 256  # files freed per transaction by gc

# A lease from another host cannot be checked; after this long it is presumed dead.
FOREIGN_LEASE_TIMEOUT = _dt.timedelta(hours=24)


@dataclasses.dataclass
class VerifyReport:
    """`checked`: versions whose bytes were re-hashed; `evicted`: versions whose bytes retention evicted
    to the sync destination (their records are checked, their bytes are not here to hash);
    `damaged`: (object_id, version, reason)."""

    checked: int = 0
    damaged: list[tuple[str, int, str]] = dataclasses.field(default_factory=list)
    evicted: int = 0

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
    """Every stored version (latest and history) and its collection, streamed in batches: memory stays
    flat however many versions there are."""
    parts = store.internals
    for coll in (parts.objects, parts.history):
        for doc in coll.iter_documents(batch=_BATCH):
            yield coll, doc


class _Recent(collections.OrderedDict):
    """The last `size` results by key: versions that share a file (a metadata update keeps the bytes)
    usually come close together, so each file is hashed about once without a table of every file."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def remember(self, key: Any, value: Any) -> Any:
        self[key] = value
        self.move_to_end(key)
        if len(self) > self.size:
            self.popitem(last=False)
        return value


# What identifies one stored version and its bytes: if any differs now, a writer replaced it.
_IDENTITY = ("version", "prev_version", "created_at", "storage", "file_id", "size", "sha256", EVICTED_TO)


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


def verify(store: Store, progress: Callable[[int], None] | None = None) -> VerifyReport:
    """Re-hash every version, one at a time (memory flat at any store size). `progress(n)` is called
    after each version checked."""
    report = VerifyReport()
    hashed = _Recent(_RECENT_FILES)
    for coll, raw in _versions(store):
        doc = as_microblob(raw)  # a Flowcept-written document is checked in microblob's terms
        object_id = doc.get("object_id") or doc["_id"]
        version = doc.get("version") if isinstance(doc.get("version"), int) else 0
        if doc.get(EVICTED_TO) is not None:
            report.evicted += 1
            problem = _check_evicted(store, doc)
        else:
            report.checked += 1
            problem = _check_version(store, doc, hashed)
        if problem is None and isinstance(doc.get("prev_version"), int) and not _readable(
                store, object_id, doc["prev_version"]):
            problem = f"prev_version {doc['prev_version']} cannot be read"
        # A check that failed on a version no longer stored as read is a writer's doing, not damage.
        if problem is not None and _still_stored(coll, doc["_id"], _identity(doc)):
            report.damaged.append((object_id, version, problem))
        if progress is not None:
            progress(1)
    return report


def _check_evicted(store: Store, doc: dict[str, Any]) -> str | None:
    """What is wrong with an evicted version's record: it must still say what the bytes are (size and
    sha256, for the read from the destination to be checked) and where they went."""
    if not isinstance(doc.get(EVICTED_TO), str) or not doc[EVICTED_TO]:
        return f"evicted, but {EVICTED_TO} names no destination"
    if not isinstance(doc.get("sha256"), str) or not isinstance(doc.get("size"), int):
        return "evicted, but its size or sha256 is not recorded"
    if doc.get("storage") != "chunked":
        return f"evicted, but stored as {doc.get('storage')!r}"
    return None


def _check_version(store: Store, doc: dict[str, Any], hashed: _Recent) -> str | None:
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
        try:
            result = hashed[file_id] if file_id in hashed else hashed.remember(file_id, _hash_file(store, file_id))
        except TypeError:  # an unhashable file_id (a list, a document): no file has it
            result = f"file_id {file_id!r:.100} is not a file id"
    if isinstance(result, str):
        return result
    # Flowcept records size and hash only when its payload was bytes: check what it recorded.
    if result[0] != doc.get("size") and not (flowcept and doc.get("size") is None):
        return f"size is {result[0]}, recorded {doc.get('size')}"
    if result[1] != doc.get("sha256") and not (flowcept and doc.get("sha256") is None):
        return "sha256 does not match the bytes"
    return None


def _readable(store: Store, object_id: str, version: int) -> bool:
    from .._exceptions import NotFound

    try:
        store.get_blob_object(object_id, version)
    except NotFound:
        return False
    return True


def _lease_is_live(lease: dict[str, Any]) -> bool:
    """A lease of this host is live while its process runs; another host's, for a day."""
    owner = str(lease.get("owner", ""))
    if owner.rsplit(":", 2)[0] == hostname():
        return lease_is_live(owner)
    started = lease.get("started_at")
    return not isinstance(started, _dt.datetime) or _codec.utcnow() - started < FOREIGN_LEASE_TIMEOUT


def gc(store: Store, progress: Callable[[int], None] | None = None) -> GcReport:
    """Free what no version references, in bounded memory: every pass streams its collection, checks
    each candidate with index lookups outside any write, and frees the ones that pass in transactions of
    a few hundred, re-checking each inside (a live writer may have referenced it since). `progress(n)`
    is called as files are looked at."""
    parts = store.internals
    report = GcReport()
    # Upload leases, read once: the uploads in flight or interrupted (few). A lease taken later belongs to
    # a file each pass looks up again before freeing it.
    leases = {d["_id"]: d for d in parts.leases.find({})}
    live = {file_id for file_id, lease in leases.items() if _lease_is_live(lease)}
    if not parts.backend.transactional:
        _drop_stale_history(store, report, live)
    _drop_unreferenced_files(store, report, live, progress)
    _drop_orphan_chunks(store, report, leases)
    return report


def _drop_stale_history(store: Store, report: GcReport, leased: set[Any]) -> None:
    """History entries no version of the object can lead to, all left by writes interrupted between
    their steps on a backend without transactions (MongoDB; with transactions every write is whole):
    - entries whose object is gone, or of an earlier life of its id: a delete_object interrupted after
      deleting the object (it deletes the object first, then its history);
    - entries of a version below the latest that no version names as prev_version: a versioned save
      killed between its archive and its swap, then a non-versioned update overwrote that version.
    Their bytes are freed by the next pass."""
    parts = store.internals
    from .records import _same_life, _version_of

    known: _Recent = _Recent(256)  # object_id -> (its latest, the versions its life names)

    def lineage(object_id: Any) -> tuple[dict[str, Any] | None, set[Any]]:
        # Read the latest before the history: a version a later write archives is in this read, and one
        # written later cannot name a version below the latest read, so nothing named is missed.
        try:
            current = parts.objects.find_one({"_id": object_id}, projection={"created_at": 1, "version": 1,
                                                                               "prev_version": 1})
        except (InvalidArgument, InvalidQuery):  # a value no _id can be: no object has it
            return None, set()
        if current is None:
            return None, set()
        life = current.get("created_at")
        named = {current.get("prev_version")} | {
            e.get("prev_version")
            for e in parts.history.find({"object_id": object_id}, projection={"created_at": 1, "prev_version": 1})
            if _same_life(e, life)
        }
        return current, named

    def stale(entry: dict[str, Any], current: dict[str, Any] | None, named: set[Any]) -> bool:
        if current is None or not _same_life(entry, current.get("created_at")):
            return True
        version = _version_of(entry)
        return version < _version_of(current) and version not in named

    fields = {"object_id": 1, "created_at": 1, "file_id": 1, "version": 1}
    for entry in parts.history.iter_documents(projection=fields, batch=_BATCH):
        if entry.get("file_id") is not None and entry["file_id"] in leased:
            continue
        object_id = entry.get("object_id")
        try:
            hash(object_id)
        except TypeError:  # an unhashable object_id (an array, a document): no object has it
            current, named = None, set()
        else:
            cached = known.get(object_id)
            current, named = cached if cached is not None else known.remember(object_id, lineage(object_id))
            if stale(entry, current, named):  # decide on a fresh read, not on the cache
                current, named = known.remember(object_id, lineage(object_id))
        if stale(entry, current, named) and parts.history.delete_one(
                {"_id": entry["_id"], "created_at": entry.get("created_at")}):
            report.freed_history_entries += 1


def _leased(pending: Any, file_id: Any) -> bool:
    lease = pending.find_one({"_id": file_id})
    return lease is not None and _lease_is_live(lease)


def _drop_unreferenced_files(store: Store, report: GcReport, live_leases: set[Any],
                             progress: Callable[[int], None] | None) -> None:
    """Files that belong to objects but that no version references any more."""
    parts = store.internals
    backend = parts.backend
    files_coll = parts.file_docs
    pending = parts.leases
    candidates: list[Any] = []

    def free(batch: list[Any]) -> None:
        def drop() -> list[tuple[Any, int]]:
            freed = []
            for file_id in batch:
                if store.internals.referenced(file_id) or _leased(pending, file_id):  # a writer took it meanwhile
                    continue
                doc = files_coll.find_one({"_id": file_id}, projection={"length": 1})
                if doc is None:
                    continue
                files_coll.delete_one({"_id": file_id})
                if backend.transactional:  # the chunks in the same transaction
                    backend.chunks.delete(file_id)
                freed.append((file_id, int(doc.get("length") or 0)))
            return freed

        for file_id, length in backend.atomic(drop):
            if not backend.transactional:  # after its files document, as a delete of one file does
                backend.chunks.delete(file_id)
            report.freed_files += 1
            report.freed_bytes += length

    # Every files document is looked at (and counted for `progress`: its total is the files count);
    # only those of objects are candidates, files a user stored through the bucket are theirs.
    for doc in files_coll.iter_documents(projection={"_id": 1, "metadata.microblob_object_id": 1}, batch=_BATCH):
        file_id = doc["_id"]
        if progress is not None:
            progress(1)
        metadata = doc.get("metadata")
        if not isinstance(metadata, dict) or "microblob_object_id" not in metadata:
            continue
        # The stream may reach files published after it began: their upload's lease is looked up now.
        if file_id in live_leases or store.internals.referenced(file_id) or _leased(pending, file_id):
            continue
        candidates.append(file_id)
        if len(candidates) >= _FREE_BATCH:
            free(candidates)
            candidates = []
    if candidates:
        free(candidates)


def _drop_orphan_chunks(store: Store, report: GcReport, leases: dict[Any, dict[str, Any]]) -> None:
    """Chunks with no files document and no live lease (an upload that was interrupted), then dead
    leases whose upload left no chunks behind."""
    parts = store.internals
    backend = parts.backend
    files_coll = parts.file_docs
    pending = parts.leases
    chunks = backend.chunks
    with_chunks: set[Any] = set()
    for file_id in chunks.file_ids():
        lease = leases.get(file_id)
        if lease is not None:
            with_chunks.add(file_id)
            if _lease_is_live(lease):
                continue
        if files_coll.find_one({"_id": file_id}, projection={"_id": 1}) is not None:
            continue  # the common case, answered without a write

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
    for file_id, lease in leases.items():
        if not _lease_is_live(lease) and file_id not in with_chunks:
            pending.delete_one({"_id": file_id})


def _orphan_size(chunks: Any, file_id: Any) -> int:
    total = 0
    for n in range(chunks.count(file_id)):
        data = chunks.get(file_id, n)
        if data is not None:
            total += len(data)
    return total
