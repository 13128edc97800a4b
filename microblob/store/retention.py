"""Retention for small disks: `evict(store, keep_free=..., max_size=...)` frees the local bytes of the
oldest objects whose versions are confirmed at the sync destination, keeping every version's metadata.

What may go: a chunked file whose every referencing version (latest or history) is confirmed at the
destination exactly: the source's confirmation record (store/syncing.py, `microblob.sync_confirmed`)
names that object's life (`created_at`), and that version with that sha256, either as the confirmed
latest or among the history versions the destination held when it confirmed; and the destination,
asked just before each batch, still holds that version with its bytes (a record goes stale when
someone overwrites the object there without history). A version saved after its confirmation, a
record of another life, a record written before records named lives and history, a destination that
cannot be reached: all kept. Inline data (`storage: inline`, at most 15 MiB, in the object's own document) is never
evicted: it is small by design, and it would mean rewriting the document that keeps the metadata.

How: in one write transaction per batch of files (`_BATCH`), every referencing version gets
`evicted_at`/`evicted_to` (keeping `file_id`, `size`, `sha256`) and the file's document and chunks are
deleted, after the conditions are checked again inside that transaction. A kill at any point leaves
each file either whole with unmarked versions, or gone with marked ones. Only backends with
transactions evict (the embedded file, `memory://`); MongoDB and Mongita raise `UnsupportedOperation`.

Sizes: `keep_free` is the room for new data: the filesystem's free space plus the free pages inside
the LMDB file (which never shrinks: freed pages are reused before it grows); `max_size` bounds the
store's live data: the pages its tables hold (on `memory://`: its files' bytes).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .._exceptions import InvalidArgument, StorageError, UnsupportedOperation
from .._paths import check_path
from ..engine import codec as _codec
from .base import StoreBase
from .evicted_counts import note_evicted
from .records import EVICTED_AT, EVICTED_TO, SYNC_DESTINATIONS, _version_of
from .sizes import count_of, human_size
from .sync_records import _changed_since, _confirmations, _confirmed

if TYPE_CHECKING:  # pragma: no cover
    from .core import Store

__all__ = ["EvictReport", "evict", "parse_size"]

_BATCH = 64  # files evicted per write transaction: bounded transaction size and memory
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


@dataclasses.dataclass
class EvictReport:
    """What `evict` did: files and versions evicted, bytes freed, and how far the target still is
    (`still_needed`: bytes; 0 when it is met)."""

    destination: str | None
    evicted_files: int = 0
    evicted_versions: int = 0
    bytes_freed: int = 0
    still_needed: int = 0
    unreachable: str | None = None  # why the destination could not be asked (then nothing was evicted)

    @property
    def met(self) -> bool:
        return self.still_needed == 0

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "met": self.met}

    def summary(self) -> str:
        """One line, for logs and the CLI alike."""
        text = (f"evicted {count_of(self.evicted_versions, 'version')} ({count_of(self.evicted_files, 'file')}, "
                f"{human_size(self.bytes_freed)})")
        if self.destination:
            text += f", confirmed at {self.destination}"
        if self.unreachable:
            text += f"; nothing evicted: the destination cannot be reached to check ({self.unreachable})"
        elif not self.met:
            text += (f"; still {human_size(self.still_needed)} short of the target: nothing else may go (bytes "
                     "not confirmed at the destination yet, inline data, metadata)")
        return text


def parse_size(value: Any, label: str) -> int | None:
    """None, an int of bytes >= 0, or a str with a binary suffix ("2G", "500M", "64KiB")."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise InvalidArgument(f"{label} must be a size in bytes, not {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise InvalidArgument(f"{label} must be >= 0 bytes, not {value}")
        return value
    if isinstance(value, str):
        raw = value.strip().upper().removesuffix("IB").removesuffix("B")
        unit = raw[-1:] if raw[-1:] in _UNITS else ""
        digits = raw[: len(raw) - len(unit)].strip()
        if digits.isdigit() and digits.isascii():
            return int(digits) * _UNITS[unit]
    raise InvalidArgument(f"{label} must be a size in bytes (e.g. 1048576, 500M, 2G), not {value!r}")


def evict(store: Store, *, keep_free: int | str | None = None, max_size: int | str | None = None,
          destination: Store | str | os.PathLike[str] | None = None) -> EvictReport:
    """Evict the local bytes of the oldest confirmed objects until `keep_free` bytes are free for new
    data and the live data is at most `max_size` (either or both), or nothing more may go. The
    destination is the one the store syncs to (name it when there are several); given as a URI with
    credentials, it is remembered for reading the evicted bytes back. Returns an `EvictReport`."""
    if not isinstance(store, StoreBase):
        raise InvalidArgument(f"store must be a Store, not {type(store).__name__}")
    keep_free, max_size = parse_size(keep_free, "keep_free"), parse_size(max_size, "max_size")
    if keep_free is None and max_size is None:
        raise InvalidArgument("evict needs keep_free or max_size (or both)")
    if destination is not None and not isinstance(destination, (StoreBase, str, os.PathLike)):
        raise InvalidArgument(f"destination must be a Store, a URI or a path, not {type(destination).__name__}")
    if destination is not None and not isinstance(destination, StoreBase):
        check_path(destination, "destination")
    store.internals.check_open()
    if not store.backend.transactional:
        raise UnsupportedOperation(f"{store.uri}: eviction needs a backend with transactions (the embedded "
                                   "file or memory://), so marking and freeing are one step")
    if keep_free is not None and _engine(store) is None:
        raise UnsupportedOperation(f"{store.uri} keeps no file: use max_size, not keep_free")
    name = _destination(store, destination)
    report = EvictReport(name)
    report.still_needed = _needed(store, keep_free, max_size)
    if report.still_needed == 0 or name is None:
        return report
    try:
        store.read_through.destination(name)
    except Exception as exc:  # noqa: BLE001 - unreachable (a driver's, an OS's or microblob's error): none go
        report.unreachable = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return report
    try:
        _evict_all(store, name, keep_free, max_size, report)
    finally:
        if report.evicted_files:
            _release_pages(store, name)
    return report


def _evict_all(store: Store, name: str, keep_free: int | None, max_size: int | None, report: EvictReport) -> None:
    """Batches of the oldest evictable files until the target holds or none is left."""
    batch: list[Any] = []
    batch_bytes = 0
    for file_id, size in _candidates(store, name):
        batch.append(file_id)
        batch_bytes += size
        if len(batch) >= _BATCH or batch_bytes >= report.still_needed:  # no more than the target asks for
            _evict_batch(store, name, batch, report)
            batch, batch_bytes = [], 0
            report.still_needed = _needed(store, keep_free, max_size)
            if report.still_needed == 0:
                return
    if batch:
        _evict_batch(store, name, batch, report)
        report.still_needed = _needed(store, keep_free, max_size)


def _release_pages(store: Store, name: str) -> None:
    """One small commit after the last batch. LMDB hands out the pages a transaction freed only once a
    later one has committed: without this, the next save on a full disk could not use what the eviction
    just freed, and would fail. (If even this cannot commit, the disk has no page at all to spare; the
    eviction stands either way.)"""
    state = store.internals.backend.collection(SYNC_DESTINATIONS)
    try:
        state.update_one({"_id": "dest:" + name}, {"$set": {"last_evicted_at": _codec.utcnow()}})
    except StorageError:
        pass


def _destination(store: Store, destination: Any) -> str | None:
    if destination is not None:
        return store.read_through.remember(destination)
    names = [d["destination"] for d in store.internals.backend.collection(SYNC_DESTINATIONS).find({})]
    if len(names) > 1:
        raise InvalidArgument(f"{store.uri} syncs to several destinations ({', '.join(sorted(names))}): "
                              "name the one whose confirmations allow eviction")
    return names[0] if names else None


def _engine(store: Store) -> Any:
    """The store's LMDB engine, or None (memory://)."""
    engine = getattr(store.backend, "engine", None)
    return engine if callable(getattr(engine, "live_bytes", None)) else None


def _needed(store: Store, keep_free: int | None, max_size: int | None) -> int:
    """Bytes still to free for both targets."""
    engine = _engine(store)
    if engine is not None:
        live = engine.live_bytes()
    else:
        live = sum(int(d.get("length") or 0) for d in store.internals.file_docs.iter_documents(
            {}, projection={"length": 1}))
    need = 0
    if max_size is not None:
        need = max(need, live - max_size)
    if keep_free is not None and engine is not None:
        path = engine.path
        free = shutil.disk_usage(os.path.dirname(path) or ".").free + max(0, os.path.getsize(path) - live)
        need = max(need, keep_free - free)
    return max(0, need)


def _candidates(store: Store, name: str) -> Iterator[tuple[Any, int]]:
    """(file id, size) worth trying, the oldest objects' first: chunked, not yet evicted, every version of the
    object that references it confirmed (checked again, for every referencing version, when evicting)."""
    parts = store.internals
    state = _confirmed(store)
    fields = {"_id": 1, "object_id": 1, "version": 1, "sha256": 1, "size": 1, "created_at": 1, "file_id": 1,
              "storage": 1, EVICTED_TO: 1}
    for page in _changed_since(store, None):
        records = _confirmations(state, name, [d["_id"] for d in page])
        ids = [d["_id"] for d in page if d["_id"] in records]
        if not ids:
            continue
        versions: dict[str, list[dict[str, Any]]] = {i: [] for i in ids}
        for doc in parts.objects.find({"_id": {"$in": ids}}, projection=fields):
            versions[doc["_id"]].append(doc)
        for entry in parts.history.find({"object_id": {"$in": ids}}, projection=fields):
            if entry.get("object_id") in versions:
                versions[entry["object_id"]].append(entry)
        for object_id in ids:
            by_file: dict[Any, bool] = {}
            sizes: dict[Any, int] = {}
            for doc in versions[object_id]:
                file_id = doc.get("file_id")
                if doc.get("storage") != "chunked" or file_id is None or doc.get(EVICTED_TO):
                    continue
                try:
                    ok = is_confirmed(doc, records[object_id])
                    by_file[file_id] = by_file.get(file_id, True) and ok
                    sizes[file_id] = int(doc.get("size") or 0)
                except TypeError:  # an unhashable file_id: no file has it
                    continue
            yield from ((file_id, sizes[file_id]) for file_id, ok in by_file.items() if ok)


def is_confirmed(version: dict[str, Any], record: dict[str, Any] | None) -> bool:
    """Whether a confirmation record names exactly this version: the same life, version and sha256."""
    if record is None or record.get("created_at") is None or version.get("created_at") != record["created_at"]:
        return False
    sha256 = version.get("sha256")
    if not isinstance(sha256, str):
        return False
    number = _version_of(version)
    if record.get("version") == number and record.get("sha256") == sha256:
        return True
    held = record.get("history")
    return isinstance(held, dict) and held.get(str(number)) == sha256


def _refs(store: Store, file_id: Any) -> list[tuple[Any, dict[str, Any]]]:
    """Every version (collection, document without inline data) that references the file."""
    parts = store.internals
    refs = [(parts.objects, d) for d in parts.objects.find({"file_id": file_id}, projection={"data": 0})]
    return refs + [(parts.history, d) for d in parts.history.find({"file_id": file_id}, projection={"data": 0})]


def _key(doc: dict[str, Any]) -> tuple[Any, int, Any, Any]:
    return doc.get("object_id") or doc["_id"], _version_of(doc), doc.get("sha256"), doc.get("created_at")


def _held_at(remote: Store, keys: set[tuple[Any, int, Any, Any]]) -> set[tuple[Any, int, Any, Any]]:
    """Which of these (object, version, sha256, life) the destination holds now, with its bytes there
    (not evicted there in turn): a few `$in` reads, outside any write transaction of this store."""
    rparts = remote.internals
    ids = sorted({k[0] for k in keys if isinstance(k[0], str)})
    fields = {"_id": 1, "object_id": 1, "version": 1, "sha256": 1, "created_at": 1, "storage": 1, "file_id": 1,
              EVICTED_TO: 1}
    found = list(rparts.objects.find({"_id": {"$in": ids}}, projection=fields))
    found += rparts.history.find({"object_id": {"$in": ids}}, projection=fields)
    candidates = [d for d in found if _key(d) in keys and not d.get(EVICTED_TO)]
    chunked = [d["file_id"] for d in candidates if d.get("storage") == "chunked" and d.get("file_id") is not None]
    present = {d["_id"] for d in rparts.file_docs.find({"_id": {"$in": chunked}}, projection={"_id": 1})} \
        if chunked else set()
    return {_key(d) for d in candidates if d.get("storage") == "inline" or d.get("file_id") in present}


def _evict_batch(store: Store, name: str, file_ids: list[Any], report: EvictReport) -> None:
    """Mark and free, in one transaction, each file of `file_ids` that is still evictable there: every
    version referencing it confirmed in the records, and held at the destination when asked just now."""
    parts = store.internals
    state = _confirmed(store)
    now = _codec.utcnow()
    wanted = {_key(d) for file_id in file_ids for _, d in _refs(store, file_id)}
    held = _held_at(store.read_through.destination(name), wanted)

    def run() -> tuple[int, int, int]:
        files = versions = freed = 0
        for file_id in file_ids:
            doc = parts.file_docs.find_one({"_id": file_id}, projection={"length": 1})
            if doc is None or parts.leases.find_one({"_id": file_id}, projection={"_id": 1}) is not None:
                continue
            refs = _refs(store, file_id)
            if not refs:
                continue  # unreferenced: gc's to free
            owners = {d.get("object_id") or d["_id"] for _, d in refs}
            records = _confirmations(state, name, [o for o in owners if isinstance(o, str)])
            if not all(d.get("storage") == "chunked" and is_confirmed(d, records.get(d.get("object_id")))
                       and _key(d) in held for _, d in refs):
                continue
            for coll, d in refs:
                coll.update_one({"_id": d["_id"]}, {"$set": {EVICTED_AT: now, EVICTED_TO: name}})
            parts.file_docs.delete_one({"_id": file_id})
            parts.chunks.delete(file_id)
            files += 1
            versions += len(refs)
            freed += int(doc.get("length") or 0)
        note_evicted(parts.backend, name, files, versions, freed)
        return files, versions, freed

    files, versions, freed = parts.backend.atomic(run)
    report.evicted_files += files
    report.evicted_versions += versions
    report.bytes_freed += freed
