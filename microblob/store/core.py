"""`Store`: the object API (docs/ARCHITECTURE.md, "Objects and versions", "Data flow of a save") over any backend.

Every write of an object is one compare-and-swap on its `version`: inside the backend's atomic scope
(one LMDB transaction) it cannot lose, and on backends without transactions it is retried. Bytes are
written before the document that references them and freed only after the last reference is gone, so
a crash at any point leaves the old object or the new one, never a mix.
"""

from __future__ import annotations

import hashlib
import io
import mimetypes
import os
import random
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from .._exceptions import (
    DuplicateKey,
    InvalidArgument,
    InvalidQuery,
    NotFound,
    ObjectNotFound,
    StoreClosed,
    StoreFull,
    VersionNotFound,
    WriteConflict,
)
from ..blob import GENERIC_CONTENT_TYPE as _DEFAULT_CONTENT_TYPE
from ..engine import codec as _codec
from ..engine.backend import Backend, Filter, Projection, Sort
from ..engine.ids import new_id
from . import compaction as _compaction
from . import maintenance as _maintenance
from .base import StoreBase
from .compaction import CompactReport
from .evicted import ReadThrough
from .evicted_counts import note_dropped, note_evicted
from .files import DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE, FilesBucket, check_readable, copy_into
from .flowcept_layout import alias_type, as_microblob, is_flowcept_doc
from .internals import StoreInternals
from .maintenance import GcReport, VerifyReport
from .objects import BlobObject
from .records import (
    EVICTED_AT,
    EVICTED_TO,
    SYNC_DESTINATIONS,
    TOMBSTONE_LIVES,
    TOMBSTONES,
    _history_id,
    _same_life,
    _version_of,
    tombstone_lives,
)
from .sync_pending import note_change
from .validate import (
    check_bool,
    check_chunk_size,
    check_content_type,
    check_id,
    check_metadata,
    check_optional_str,
    check_tags,
    check_version,
)
from .workflows import current_workflow_id

if TYPE_CHECKING:  # pragma: no cover
    from .syncing import SyncWorker

__all__ = ["HISTORY_FIELDS", "INLINE_LIMIT", "Store"]

INLINE_LIMIT = 15 * 1024 * 1024  # inline bytes must fit in one (16 MiB) document
HISTORY_FIELDS = (
    "object_id",
    "version",
    "prev_version",
    "created_at",
    "updated_at",
    "task_id",
    "workflow_id",
    "type",
    "custom_metadata",
    "tags",
    "content_type",
    "size",
    "sha256",
    "storage",
    "evicted_at",
    "evicted_to",
)
# A metadata-only version keeps its predecessor's bytes, evicted ones included (they stay where they are).
_PAYLOAD_FIELDS = ("storage", "data", "file_id", "size", "sha256", EVICTED_AT, EVICTED_TO)
_INHERITED = ("workflow_id", "task_id", "type", "custom_metadata", "tags", "content_type")
_QUERYABLE = ("objects", "object_history", "workflows", "fs.files")
_CAS_ATTEMPTS = 200


class _Source:
    """What `save_or_update_object` accepts, opened as one readable stream (closed if we opened it)."""

    def __init__(self, obj: Any) -> None:
        self.content_type: str | None = None
        self._owned: Any = None
        self.bytes: bytes | memoryview | None = None
        self.stream: Any = None
        blob_type = _blob_type()
        if isinstance(obj, (bytes, bytearray, memoryview)):
            # What is stored is the buffer: a bytes subclass's own __bytes__ or __len__ would make the
            # inline copy differ from the chunked one.
            self.bytes = obj if type(obj) is bytes else memoryview(obj)
        elif blob_type is not None and isinstance(obj, blob_type):
            self.content_type = obj.content_type
            self.stream = self._owned = obj.open()
        elif isinstance(obj, os.PathLike):
            try:
                path = os.fspath(obj)
                self.stream = self._owned = open(path, "rb")  # noqa: SIM115 - closed in close()
            except TypeError as exc:  # a __fspath__ that returns neither str nor bytes
                raise InvalidArgument(f"object: {exc}") from None
            except (OSError, ValueError) as exc:  # missing, a directory, a NUL or a lone surrogate in the name
                raise InvalidArgument(f"cannot read {path!r}: {getattr(exc, 'strerror', None) or exc}") from None
            # A file's name says what it holds (scan.png): worth more than application/octet-stream.
            self.content_type = mimetypes.guess_type(os.fsdecode(path), strict=False)[0]
        elif isinstance(obj, str):
            raise InvalidArgument("a str is ambiguous: pass bytes, or a pathlib.Path to save a file's contents")
        elif isinstance(obj, io.TextIOBase):
            raise InvalidArgument("a text file object cannot be saved: open the file in binary mode ('rb')")
        elif callable(getattr(obj, "read", None)):
            check_readable(obj)
            self.stream = obj
        else:
            raise InvalidArgument(
                f"object must be bytes, a binary file object, an os.PathLike or a Blob, not {type(obj).__name__}"
            )

    def read_all(self, limit: int) -> bytes:
        if self.bytes is not None:
            data = bytes(self.bytes)
        else:
            buffer = io.BytesIO()
            copy_into(_Limited(self.stream, limit), buffer)
            data = buffer.getvalue()
        if len(data) > limit:
            raise InvalidArgument(
                f"{len(data)} bytes is too large to store inline (limit {limit}); use save_data_in_collection=False"
            )
        return data

    def close(self) -> None:
        if self._owned is not None:
            self._owned.close()


class _Limited:
    """Reads at most limit+1 bytes from a stream, so an oversized inline payload is refused early."""

    def __init__(self, stream: Any, limit: int) -> None:
        self._stream = stream
        self._left = limit + 1

    def read(self, n: int = -1) -> bytes:
        if self._left <= 0:
            return b""
        piece = self._stream.read(min(n if n >= 0 else self._left, self._left))
        if piece and not isinstance(piece, (bytes, bytearray, memoryview)):  # len() would raise TypeError
            raise InvalidArgument(f"source.read() must return bytes, not {type(piece).__name__}")
        self._left -= len(piece or b"")
        return piece


def _blob_type() -> type | None:
    try:
        from ..blob import Blob
    except ImportError:  # pragma: no cover - the HTTP half is optional at import time
        return None
    return Blob


class Store(StoreBase):
    """Objects with provenance and versions over one backend. Use `microblob.connect()` to make one.

    Safe to share between threads; on the embedded default, several processes may open the same file.
    """

    def __init__(self, backend: Backend, *, chunk_size: int | None = None) -> None:
        self._backend = backend
        if chunk_size is None:  # each backend knows its sweet spot (LMDB: 1 MiB; GridFS: 255 KiB)
            chunk_size = getattr(backend, "chunk_size", DEFAULT_CHUNK_SIZE)
        self.chunk_size = check_chunk_size(chunk_size, MAX_CHUNK_SIZE)
        self.files = FilesBucket(backend)
        self.read_through = ReadThrough()  # where evicted bytes are read from (store/evicted.py)
        # Retention's way to make room when a save finds the disk full: called with the bytes wanted,
        # returns the bytes it freed (a SyncWorker with keep_free/max_size sets it; store/retention.py).
        self.on_full: Callable[[int], int] | None = None
        # How sync opens a destination given as a URI: `connect` itself, handed in by `connect()` (the
        # sync layer cannot import it, since `connect` imports this module). None: sync to Stores only.
        self.opener: Callable[[str | os.PathLike[str]], Store] | None = None
        self._objects = backend.collection("objects")
        self._history = backend.collection("object_history")
        self._workflows = backend.collection("workflows")
        # updated_at and created_at are walked in order by the newest-first list and by sorts on them;
        # object_id finds a Flowcept-written document (its _id is an ObjectId) before a new object is
        # created under that id: without the index every new object's save scanned the collection; with
        # it, the usual answer (none) is two key probes on the embedded backends.
        for field in ("workflow_id", "task_id", "type", "file_id", "updated_at", "created_at", "object_id"):
            self._objects.create_index([(field, 1)])
        self._history.create_index([("object_id", 1), ("version", 1)])
        self._history.create_index([("file_id", 1)])
        self._history.create_index([("workflow_id", 1)])
        self._workflows.create_index([("name", 1)])

    # --- lifecycle ----------------------------------------------------------------------------------

    @property
    def uri(self) -> str:
        return self._backend.uri

    @property
    def internals(self) -> StoreInternals:
        """The interface the store's own helpers (maintenance, copy, workflows) use; not for user code."""
        return StoreInternals(self)

    @property
    def backend(self) -> Backend:
        return self._backend

    @property
    def closed(self) -> bool:
        return self._backend.closed

    def close(self) -> None:
        self.read_through.close()
        self._backend.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<microblob.Store {self.uri!r}{' closed' if self.closed else ''}>"

    def _check_open(self) -> None:
        if self._backend.closed:
            raise StoreClosed("the store is closed")

    # --- saving -------------------------------------------------------------------------------------

    def save_or_update_object(
        self,
        object: Any,
        object_id: str | None = None,
        workflow_id: str | None = None,
        task_id: str | None = None,
        type: str | None = None,
        custom_metadata: Mapping[str, Any] | None = None,
        save_data_in_collection: bool = False,
        control_version: bool = False,
        content_type: str | None = None,
        tags: list[str] | None = None,
        *,
        object_type: str | None = None,
    ) -> str:
        """Save new bytes as version 0 of a new object, or as the next version of `object_id`.

        Fields left as None keep their previous value on an update; `workflow_id` defaults to the
        current `Workflow`. With `control_version=True` the replaced version stays readable from the
        history; without it, its bytes are freed (unless an older version still shares them).
        """
        return self.save_object(
            object, object_id, workflow_id, task_id, type, custom_metadata, save_data_in_collection,
            control_version, content_type, tags, object_type=object_type,
        ).object_id

    def save_object(
        self,
        object: Any,
        object_id: str | None = None,
        workflow_id: str | None = None,
        task_id: str | None = None,
        type: str | None = None,
        custom_metadata: Mapping[str, Any] | None = None,
        save_data_in_collection: bool = False,
        control_version: bool = False,
        content_type: str | None = None,
        tags: list[str] | None = None,
        *,
        object_type: str | None = None,
    ) -> BlobObject:
        """`save_or_update_object`, returning the `BlobObject` of the version this call wrote (its
        metadata; bytes are read on demand). With other writers about, reading the latest back after
        a save may find someone else's newer version: this says which version *you* made.

        With retention on (`on_full`, set by a `SyncWorker` with `keep_free`/`max_size`), a save that
        finds the disk full makes room by evicting confirmed bytes and is tried once more, if its data
        can be read again from the start: bytes, a path, a Blob, or a seekable file object (rewound to
        where this save began). A stream that cannot be rewound fails with `StoreFull` (room is made
        all the same, so saving it again from its start can succeed); nothing of it is kept."""
        rewind = _rewinder(object)

        def attempt() -> BlobObject:
            return self._save_object(object, object_id, workflow_id, task_id, type, custom_metadata,
                                     save_data_in_collection, control_version, content_type, tags, object_type)

        try:
            return attempt()
        except StoreFull as exc:
            on_full = self.on_full
            if on_full is None:
                raise
            rewound = rewind is not None and rewind()  # back where this save began: its size is from here
            freed = on_full(_payload_size(object) if rewound else 0)
            if rewind is None:
                raise StoreFull(f"{exc}; the data came from a stream that cannot be rewound, so it was not "
                                f"tried again{' (retention freed room: save it again from its start)' if freed else ''}"
                                ) from exc
            if not freed or not rewound:
                raise
            try:
                return attempt()
            except StoreFull:
                raise exc from None

    def _save_object(self, object: Any, object_id: str | None, workflow_id: str | None, task_id: str | None,
                     type: str | None, custom_metadata: Mapping[str, Any] | None, save_data_in_collection: bool,
                     control_version: bool, content_type: str | None, tags: list[str] | None,
                     object_type: str | None) -> BlobObject:
        self._check_open()
        fresh = object_id is None  # an id made here names no document yet (128 random bits)
        object_id = new_id() if object_id is None else check_id(object_id)
        fields = self._metadata_fields(workflow_id, task_id, _type_alias(type, object_type), custom_metadata, tags)
        fields["content_type"] = check_content_type(content_type)
        check_bool(save_data_in_collection, "save_data_in_collection")
        check_bool(control_version, "control_version")
        source = _Source(object)
        try:
            if fields["content_type"] is None:  # a Blob's own type is checked like an argument
                fields["content_type"] = check_content_type(source.content_type)
            if save_data_in_collection:
                data = source.read_all(INLINE_LIMIT)
                payload = {"storage": "inline", "data": data, "size": len(data),
                           "sha256": hashlib.sha256(data).hexdigest()}
                doc, release = self._backend.atomic(
                    lambda: self._commit(object_id, fields, payload, control_version, fresh), size_hint=len(data)
                )
            else:
                doc, release = self._save_chunked(object_id, fields, source, control_version, fresh)
        finally:
            source.close()
        if release is not None:
            self._release_file(release)
        return BlobObject(self, doc)

    def _save_chunked(
        self, object_id: str, fields: dict[str, Any], source: _Source, control_version: bool, fresh: bool = False
    ) -> tuple[dict, Any]:
        upload = self.files.open_upload_stream(
            object_id, metadata={"microblob_object_id": object_id}, chunk_size=self.chunk_size
        )
        if not self._backend.transactional:
            # Without one transaction for file + object, the lease keeps gc() off the new file until
            # the object document that references it is written.
            upload._flush_batch()
        try:
            copy_into(source.bytes if source.bytes is not None else source.stream, upload)
        except BaseException:
            upload.abort()
            raise

        def commit(file_doc: dict[str, Any]) -> tuple[dict, Any]:
            payload = {"storage": "chunked", "file_id": file_doc["_id"], "size": file_doc["length"],
                       "sha256": file_doc["sha256"]}
            return self._commit(object_id, fields, payload, control_version, fresh)

        return upload.finish(then=commit)

    def update_object_metadata(
        self,
        object_id: str,
        custom_metadata: Mapping[str, Any] | None = None,
        tags: list[str] | None = None,
        type: str | None = None,
        task_id: str | None = None,
        workflow_id: str | None = None,
        control_version: bool = True,
        *,
        object_type: str | None = None,
        content_type: str | None = None,
    ) -> str:
        """A new version that changes metadata only; its bytes are shared with the previous version."""
        self._check_open()
        check_id(object_id)
        fields = self._metadata_fields(workflow_id, task_id, _type_alias(type, object_type), custom_metadata, tags)
        fields["content_type"] = check_content_type(content_type)
        check_bool(control_version, "control_version")
        doc, _ = self._backend.atomic(lambda: self._commit(object_id, fields, None, control_version))
        return doc["object_id"]

    def _metadata_fields(
        self, workflow_id: Any, task_id: Any, type: Any, custom_metadata: Any, tags: Any
    ) -> dict[str, Any]:
        workflow_id = check_optional_str(workflow_id, "workflow_id")
        return {
            "workflow_id": workflow_id if workflow_id is not None else current_workflow_id(),
            "task_id": check_optional_str(task_id, "task_id"),
            "type": check_optional_str(type, "type"),
            "custom_metadata": check_metadata(custom_metadata),
            "tags": check_tags(tags),
        }

    def _commit(
        self, object_id: str, fields: dict[str, Any], payload: dict[str, Any] | None, control_version: bool,
        fresh: bool = False,
    ) -> tuple[dict, Any]:
        """Write the next version: a compare-and-swap on `version`, retried if another writer won.
        Returns the new document and the file id the replaced version no longer needs (or None).
        `fresh`: the id was just made here, so no document can have it: the first attempt skips the two
        lookups (the insert still refuses a duplicate, and the next attempt then looks)."""
        for attempt in range(_CAS_ATTEMPTS):
            now = _codec.utcnow()
            current = None if fresh else self._objects.find_one({"_id": object_id})
            if current is None:
                if not fresh and self._objects.find_one({"object_id": object_id}, projection={"_id": 1}) is not None:
                    raise InvalidArgument(
                        f"object {object_id!r} is a document Flowcept's own DAO wrote: microblob reads it but "
                        "writes no versions over it (save under a new object_id)")
                if payload is None:
                    raise ObjectNotFound(object_id)
                doc = {"_id": object_id, "object_id": object_id, **_defaults(fields), **payload,
                       "version": 0, "prev_version": None, "created_at": now, "updated_at": now}
                try:
                    self._objects.insert_one(doc)
                except DuplicateKey:  # another writer created it first (non-transactional backends)
                    fresh = False
                    continue
                note_change(self._backend, object_id, doc, new_version=True)
                return doc, None
            base = _version_of(current)
            # created_at names this life of the id: it is kept by every version, and a history entry
            # of another life (a delete interrupted on a non-transactional backend) is not this object's.
            created = current.get("created_at") or now
            archived = self._archive(current, base, now, created) if control_version else False
            doc = {"_id": object_id, "object_id": object_id}
            for field in _INHERITED:
                doc[field] = fields[field] if fields.get(field) is not None else current.get(field)
            if doc["content_type"] is None:
                doc["content_type"] = _DEFAULT_CONTENT_TYPE
            kept = payload if payload is not None else {k: current[k] for k in _PAYLOAD_FIELDS if k in current}
            doc.update(kept)
            doc.update({
                "version": base + 1,
                "prev_version": base if control_version else current.get("prev_version"),
                "created_at": created,
                "updated_at": now,
            })
            # The compare-and-swap: the same version of the same life, or another writer won.
            swap = {"_id": object_id, "version": current.get("version"), "created_at": current.get("created_at")}
            if self._objects.replace_one(swap, doc):
                note_change(self._backend, object_id, doc, new_version=True)
                if doc.get(EVICTED_TO):  # a metadata-only version of evicted bytes: one more evicted version
                    note_evicted(self._backend, doc[EVICTED_TO], 0, 1, 0)
                if not control_version and current.get(EVICTED_TO):  # an evicted version overwritten
                    note_dropped(self._backend, [current])
                if not control_version and not self._backend.transactional:
                    # Without transactions a versioned save killed between its archive and its swap
                    # leaves an entry for `base`; this non-versioned update overwrote `base`, so that
                    # entry must not stay in the history (nor keep base's bytes alive). Transactional
                    # backends commit an archive with its swap: no such entry can exist there.
                    self._history.delete_one({"_id": _history_id(object_id, base), "created_at": created})
                old_file = current.get("file_id")
                release = None
                if not control_version and old_file is not None and old_file != doc.get("file_id"):
                    release = old_file
                return doc, release
            if archived:
                self._drop_unneeded_archive(object_id, base, created)
            time.sleep(random.uniform(0, 0.002 * min(attempt + 1, 50)))
        raise WriteConflict(f"object {object_id!r}: gave up after {_CAS_ATTEMPTS} concurrent updates won")

    def _archive(self, current: dict[str, Any], version: int, now: Any, created: Any) -> bool:
        """Append the version being replaced to the history (once: its `_id` names the version).
        Returns True if this call wrote the entry."""
        hid = _history_id(current["_id"], version)
        entry = dict(current)
        entry.update({"_id": hid, "object_id": current["_id"], "version": version, "archived_at": now,
                      "created_at": created})
        existing = self._history.find_one({"_id": hid}, projection={"created_at": 1})
        if existing is not None:
            if _same_life(existing, created):
                return False
            # Left by an earlier life of this id whose delete was interrupted: not ours, replace it.
            return bool(self._history.replace_one({"_id": hid, "created_at": existing.get("created_at")}, entry))
        try:
            self._history.insert_one(entry)
        except DuplicateKey:
            return False
        return True

    def _drop_unneeded_archive(self, object_id: str, version: int, created: Any) -> None:
        """After a lost compare-and-swap (non-transactional backends): the entry we archived for
        `version` stays only if the writer that won kept versions (some document now names it as its
        prev_version); a non-versioned winner overwrote that version, so it must not appear in the
        history (its bytes may already be freed)."""
        life = {"created_at": created}
        if self._objects.find_one({"_id": object_id, "prev_version": version, **life}, projection={"_id": 1}):
            return
        if self._history.find_one({"object_id": object_id, "prev_version": version, **life}, projection={"_id": 1}):
            return
        self._history.delete_one({"_id": _history_id(object_id, version), **life})

    def _release_file(self, file_id: Any) -> None:
        """Free a file's bytes if no version (latest or history) references it any more."""
        if self._backend.transactional:
            self._backend.atomic(lambda: self._free_if_unreferenced(file_id))
            return

        def unreferenced() -> bool:
            return not self._referenced(file_id) and self.files._files.delete_one({"_id": file_id}) == 1

        if self._backend.atomic(unreferenced):
            self.files._chunks.delete(file_id)

    def _referenced(self, file_id: Any) -> bool:
        return (self._objects.find_one({"file_id": file_id}, projection={"_id": 1}) is not None
                or self._history.find_one({"file_id": file_id}, projection={"_id": 1}) is not None)

    def _still_referenced(self, files: set[Any]) -> set[Any]:
        """Which of `files` some version still references: one $in lookup per collection and thousand
        files (an object with a thousand versions is freed with a handful of index walks, not 2,000)."""
        found: set[Any] = set()
        ids = list(files)
        for start in range(0, len(ids), 1000):
            batch = ids[start : start + 1000]
            for coll in (self._objects, self._history):
                found.update(d.get("file_id")
                             for d in coll.find({"file_id": {"$in": batch}}, projection={"file_id": 1}))
        return found

    def _free_if_unreferenced(self, file_id: Any) -> None:
        """In the caller's transaction: the files document and the chunks go together."""
        if not self._referenced(file_id) and self.files._files.delete_one({"_id": file_id}) == 1:
            self.files._chunks.delete(file_id)

    # --- reading ------------------------------------------------------------------------------------

    def get_blob_object(self, object_id: str, version: int | None = None) -> BlobObject:
        """The latest version, or exactly `version` (from the latest or the history)."""
        self._check_open()
        check_id(object_id)
        check_version(version)
        with self._backend.snapshot():  # the object and its history entry from one read
            current = self._current(object_id)
            if current is None:
                raise ObjectNotFound(object_id)
            if version is None or _version_of(current) == version:
                found = BlobObject(self, current)
            else:
                entry = self._history.find_one({"_id": _history_id(object_id, version)})
                if entry is None and is_flowcept_doc(current):  # its DAO keys history by ObjectId
                    entry = self._history.find_one({"object_id": object_id, "version": version})
                if entry is None or not _same_life(entry, current.get("created_at")):
                    raise VersionNotFound(object_id, version)
                found = BlobObject(self, entry)
            if self._backend.transactional:  # in the snapshot: a small object's bytes cost no other read
                found.prefetch()
        return found

    def _current(self, object_id: str, projection: Projection = None) -> dict[str, Any] | None:
        """The latest version's document: microblob's (keyed by the id), else one Flowcept's DAO wrote
        (an ObjectId `_id` and an `object_id` field)."""
        doc = self._objects.find_one({"_id": object_id}, projection=projection)
        if doc is None:
            doc = self._objects.find_one({"object_id": object_id}, projection=projection)
        return doc

    def _inline_data(self, object_id: str, version: int) -> bytes | None:
        doc = self.get_blob_object(object_id, version)
        return doc._inline

    def get_object_history(self, object_id: str) -> list[dict[str, Any]]:
        """Metadata of every stored version, the current one included, newest first; no bytes."""
        self._check_open()
        check_id(object_id)
        current = self._current(object_id, projection={"data": 0})
        if current is None:
            return []
        current = as_microblob(current)
        entries = {_version_of(current): current}
        for entry in self._history.find({"object_id": object_id}, projection={"data": 0}):
            if _same_life(entry, current.get("created_at")):
                entries.setdefault(_version_of(entry), as_microblob(entry))
        return [
            {field: (_version_of(e) if field == "version" else e.get(field)) for field in HISTORY_FIELDS}
            for _, e in sorted(entries.items(), key=lambda item: item[0], reverse=True)
        ]

    def blob_object_query(
        self, filter: Filter | None = None, *, sort: Sort = None, limit: int = 0, skip: int = 0
    ) -> list[BlobObject]:
        """Latest versions matching a MongoDB filter; bytes load lazily."""
        self._check_open()
        docs = self._objects.find(alias_type(_check_filter(filter)), projection={"data": 0}, sort=sort, skip=skip,
                                  limit=limit)
        return [BlobObject(self, doc) for doc in docs]

    def query(
        self,
        filter: Filter | None = None,
        collection: str = "objects",
        projection: Projection = None,
        sort: Sort = None,
        limit: int = 0,
        skip: int = 0,
    ) -> list[dict[str, Any]]:
        """Plain documents from `objects`, `object_history`, `workflows` or `fs.files`."""
        self._check_open()
        if collection not in _QUERYABLE:
            raise InvalidArgument(f"collection must be one of {', '.join(_QUERYABLE)}; not {collection!r}")
        coll = self._backend.collection(collection)
        filter = _check_filter(filter)
        if collection in ("objects", "object_history"):  # `type` and Flowcept's `object_type` are one field
            filter = alias_type(filter)
        return coll.find(filter, projection=projection, sort=sort, skip=skip, limit=limit)

    def get_blob_fingerprint(self, object_id: str, version: int | None = None) -> dict[str, Any]:
        obj = self.get_blob_object(object_id, version)
        return {"object_id": obj.object_id, "version": obj.version, "size": obj.size, "sha256": obj.sha256,
                "storage": obj.storage}

    def blob_objects_equal(
        self, a: str, b: str, version_a: int | None = None, version_b: int | None = None
    ) -> bool:
        """Same bytes? Compared by sha256, without reading either payload."""
        # Every argument first: a bad `b` must not hide behind ObjectNotFound for `a`.
        check_id(a, "a")
        check_id(b, "b")
        check_version(version_a, "version_a")
        check_version(version_b, "version_b")
        return self.get_blob_fingerprint(a, version_a)["sha256"] == self.get_blob_fingerprint(b, version_b)["sha256"]

    def count_objects(self, filter: Filter | None = None) -> int:
        self._check_open()
        return self._objects.count_documents(alias_type(_check_filter(filter)))

    # --- indexes ------------------------------------------------------------------------------------

    def _queryable(self, collection: Any) -> Any:
        if collection not in _QUERYABLE:
            raise InvalidArgument(f"collection must be one of {', '.join(_QUERYABLE)}; not {collection!r}")
        return self._backend.collection(collection)

    def create_index(
        self, keys: Any, *, name: str | None = None, unique: bool = False, collection: str = "objects"
    ) -> str:
        """An index on a field path ("custom_metadata.exposure_ms"), or a compound one ([("type", 1),
        ("size", -1)]), kept in the store so every process uses it; built over the existing documents.
        Returns its name. Queries, sorts and counts use it from then on (see `explain`)."""
        self._check_open()
        return self._queryable(collection).create_index(keys, unique=unique, name=name)

    def list_indexes(self, collection: str = "objects") -> list[dict[str, Any]]:
        """[{"name", "key": [(field, direction), ...], "unique"}, ...]; the `_id` index is implied."""
        self._check_open()
        return self._queryable(collection).list_indexes()

    def drop_index(self, name: str, collection: str = "objects") -> None:
        """Remove an index by name (InvalidArgument if there is none). The store's own indexes come back
        at the next open."""
        self._check_open()
        self._queryable(collection).drop_index(name)

    def explain(
        self, filter: Filter | None = None, *, sort: Sort = None, skip: int = 0, limit: int = 0,
        collection: str = "objects",
    ) -> dict[str, Any]:
        """Which index `query(filter, sort=..., skip=..., limit=...)` would use and why ("plan": IXSCAN,
        COLLSCAN or IDHACK; "index"; "sort": "index order" or "in memory"; "reason"), and how a count
        of the filter is answered ("count")."""
        self._check_open()
        return self._queryable(collection).explain(_check_filter(filter), sort=sort, skip=skip, limit=limit)

    # --- deleting -----------------------------------------------------------------------------------

    def delete_object(self, object_id: str) -> None:
        """Remove the object, its whole history and the bytes of every version: on a transactional
        backend in one transaction (one fsync however many versions), else the documents first and then
        each file, so an interruption leaves only bytes that gc frees."""
        self._check_open()
        check_id(object_id)
        transactional = self._backend.transactional

        destinations, tombstones = self._backend.collection(SYNC_DESTINATIONS), self._backend.collection(TOMBSTONES)

        def delete() -> set[Any]:
            current = self._objects.find_one({"_id": object_id}, projection={
                "file_id": 1, "created_at": 1, "version": 1, "size": 1, EVICTED_TO: 1})
            if current is None:
                raise ObjectNotFound(object_id)
            files = {current.get("file_id")}
            evicted = [current] if current.get(EVICTED_TO) else []
            for entry in self._history.find({"object_id": object_id},
                                            projection={"file_id": 1, "size": 1, EVICTED_TO: 1}):
                files.add(entry.get("file_id"))
                if entry.get(EVICTED_TO):
                    evicted.append(entry)
            self._objects.delete_one({"_id": object_id})
            self._history.delete_many({"object_id": object_id})
            note_change(self._backend, object_id, None)
            if evicted:
                note_dropped(self._backend, evicted)
            if destinations.find_one({}, projection={"_id": 1}) is not None:
                # This store syncs somewhere: write the deletion down, so `sync(..., propagate_deletes=True)`
                # can repeat it there. After the documents: an interruption in between (without
                # transactions) loses the tombstone, never the object while a tombstone says it is gone.
                # One tombstone per id names its last life; `lives` keeps the earlier ones too (deleted, saved
                # and deleted again between two rounds, a destination may still hold any of them).
                earlier = tombstones.find_one({"_id": object_id},
                                              projection={"lives": 1, "created_at": 1, "version": 1})
                lives = tombstone_lives(earlier) + [[current.get("created_at"), current.get("version")]]
                tombstones.replace_one({"_id": object_id}, {
                    "_id": object_id, "version": current.get("version"), "created_at": current.get("created_at"),
                    "deleted_at": _codec.utcnow(), "lives": lives[-TOMBSTONE_LIVES:]}, upsert=True)
            files.discard(None)
            if transactional:
                doomed = list(files - self._still_referenced(files))
                for start in range(0, len(doomed), 1000):
                    self.files._files.delete_many({"_id": {"$in": doomed[start : start + 1000]}})
                for file_id in doomed:
                    self.files._chunks.delete(file_id)
                return set()
            return files

        for file_id in self._backend.atomic(delete):
            self._release_file(file_id)

    # --- workflows ----------------------------------------------------------------------------------

    def _record_workflow(self, workflow_id: str, changes: dict[str, Any]) -> None:
        def record() -> None:
            if self._workflows.update_one({"_id": workflow_id}, {"$set": changes}) == 0:
                try:
                    self._workflows.insert_one({"_id": workflow_id, "workflow_id": workflow_id, **changes})
                except DuplicateKey:  # another writer recorded it first (non-transactional backends)
                    self._workflows.update_one({"_id": workflow_id}, {"$set": changes})

        self._backend.atomic(record)

    def get_workflow(self, workflow_id: str) -> dict[str, Any]:
        self._check_open()
        check_id(workflow_id, "workflow_id")
        doc = self._workflows.find_one({"_id": workflow_id})
        if doc is None:
            raise NotFound(f"workflow {workflow_id!r} not found")
        return doc

    # --- maintenance --------------------------------------------------------------------------------

    def sync_to(self, dst: Store | str | os.PathLike[str], **options: Any) -> SyncWorker:
        """Push this store to `dst` in the background from now on: a started `SyncWorker(self, dst,
        **options)` (interval, max_backoff, propagate_deletes, reconcile_every, on_round, keep_free,
        max_size); `stop()` it, or use it as a context manager. One round now, in this thread, is
        `microblob.sync(store, dst)`."""
        import inspect

        from .syncing import SyncWorker

        known = [name for name in inspect.signature(SyncWorker).parameters if name not in ("src", "dst")]
        unknown = sorted(set(options) - set(known))
        if unknown:  # named here: SyncWorker's own TypeError would name a class the caller never called
            raise InvalidArgument(f"sync_to has no option {', '.join(map(repr, unknown))} "
                                  f"(it takes {', '.join(known)})")
        return SyncWorker(self, dst, **options).start()

    def verify(self, progress: Callable[[int], None] | None = None) -> VerifyReport:
        """Re-hash every version's bytes and check every reference. See `VerifyReport`. `progress(n)`
        is called as versions are checked (for a progress bar: `count_versions()` is the total)."""
        self._check_open()
        return _maintenance.verify(self, _check_progress(progress))

    def gc(self, progress: Callable[[int], None] | None = None) -> GcReport:
        """Free files no version references and chunks no file owns (what interrupted writes leave).
        `progress(n)` is called as object files are looked at."""
        self._check_open()
        return _maintenance.gc(self, _check_progress(progress))

    def compact(self) -> CompactReport:
        """Rewrite the store's file in place without its free pages (the file never shrinks otherwise)
        and report the sizes before and after. On the embedded file: refused with `StoreInUse`, nothing
        changed, while another process or another Store has it open; other threads of this Store wait
        meanwhile; a kill at any moment leaves the old file or the new one, each whole. Mongita compacts
        its `chunks.db`; `memory://` and MongoDB raise `UnsupportedOperation`."""
        self._check_open()
        return _compaction.compact(self)

    def count_versions(self) -> int:
        """Every stored version, latest and history: what `verify()` checks."""
        self._check_open()
        return self._objects.count_documents({}) + self._history.count_documents({})

    # --- Flowcept-compatible aliases ----------------------------------------------------------------

    def insert_or_update_object(self, object: Any, **kwargs: Any) -> str:
        return self.save_or_update_object(object, **kwargs)

    def save_or_update_ml_model(self, object: Any, **kwargs: Any) -> str:
        return self.save_or_update_object(object, **_typed(kwargs, "ml_model"))

    insert_or_update_ml_model = save_or_update_ml_model

    def get_ml_model(self, object_id: str, version: int | None = None) -> BlobObject:
        return self.get_blob_object(object_id, version)

    def ml_model_query(self, filter: Filter | None = None, **kwargs: Any) -> list[BlobObject]:
        return self.blob_object_query(_and_type(filter, "ml_model"), **kwargs)

    def save_or_update_dataset(self, object: Any, **kwargs: Any) -> str:
        return self.save_or_update_object(object, **_typed(kwargs, "dataset"))

    insert_or_update_dataset = save_or_update_dataset

    def get_dataset(self, object_id: str, version: int | None = None) -> BlobObject:
        return self.get_blob_object(object_id, version)

    def dataset_query(self, filter: Filter | None = None, **kwargs: Any) -> list[BlobObject]:
        return self.blob_object_query(_and_type(filter, "dataset"), **kwargs)

    def save_or_update_torch_model(self, model: Any, object_id: str | None = None, **kwargs: Any) -> str:
        """`microblob.torch.save_or_update_torch_model` on this store (imports torch only when called)."""
        from .torch_models import save_or_update_torch_model

        return save_or_update_torch_model(model, object_id, store=self, **kwargs)

    def load_torch_model(self, model: Any, object_id: str, version: int | None = None, **kwargs: Any) -> dict:
        """`microblob.torch.load_torch_model` on this store: load weights into `model`, return the metadata."""
        from .torch_models import load_torch_model

        return load_torch_model(model, object_id, version, store=self, **kwargs)


def _rewinder(obj: Any) -> Callable[[], bool] | None:
    """How to read `obj` again from where a save starts reading it (returns whether it could), or None:
    bytes, paths and Blobs are read afresh; a file object only if it can seek back to here."""
    blob_type = _blob_type()
    if isinstance(obj, (bytes, bytearray, memoryview, os.PathLike)) or (blob_type is not None
                                                                       and isinstance(obj, blob_type)):
        return lambda: True
    try:
        if not callable(getattr(obj, "seek", None)) or not obj.seekable():
            return None
        start = obj.tell()
    except (OSError, ValueError, AttributeError, TypeError):  # closed, or a seekable() that lies
        return None

    def rewind() -> bool:
        try:
            obj.seek(start)
        except (OSError, ValueError):
            return False
        return True

    return rewind


def _payload_size(obj: Any) -> int:
    """The bytes a save of `obj` writes, for making room (a file's size; 0 if it cannot be told)."""
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return memoryview(obj).nbytes
    try:
        return os.path.getsize(obj)
    except (OSError, TypeError, ValueError):
        pass
    try:  # a seekable file object: what is left of it
        if callable(getattr(obj, "seek", None)) and obj.seekable():
            here = obj.tell()
            end = obj.seek(0, os.SEEK_END)
            obj.seek(here)
            return max(0, end - here)
    except (OSError, ValueError, AttributeError, TypeError):
        pass
    size = getattr(obj, "size", None)  # a Blob that knows its length
    return size if isinstance(size, int) and not isinstance(size, bool) else 0


def _defaults(fields: dict[str, Any]) -> dict[str, Any]:
    doc = dict(fields)
    doc["content_type"] = doc.get("content_type") or _DEFAULT_CONTENT_TYPE
    doc["custom_metadata"] = doc.get("custom_metadata") or {}
    doc["tags"] = doc.get("tags") or []
    return doc


def _type_alias(type: Any, object_type: Any) -> Any:
    """Flowcept >= 1.0.1 calls it `object_type`; accept either, refuse a contradiction."""
    # Checked before they are compared: `!=` between two arbitrary objects (cyclic ones) can recurse forever.
    type = check_optional_str(type, "type")
    object_type = check_optional_str(object_type, "object_type")
    if object_type is None:
        return type
    if type is not None and type != object_type:
        raise InvalidArgument(f"type={type!r} and object_type={object_type!r} disagree")
    return object_type


def _typed(kwargs: dict[str, Any], kind: str) -> dict[str, Any]:
    # None means "not given", as for every other argument (callers forward type=None).
    if kwargs.get("type") not in (None, kind) or kwargs.get("object_type") not in (None, kind):
        raise InvalidArgument(f"this helper saves type {kind!r}")
    kwargs = {k: v for k, v in kwargs.items() if k not in ("type", "object_type")}
    return {**kwargs, "type": kind}


def _and_type(filter: Filter | None, kind: str) -> dict[str, Any]:
    filter = _check_filter(filter)
    # The typed queries are Flowcept's API: name the kind as Flowcept does, so documents its DAO wrote
    # (no `type`) match too. A plain `type` condition in a user's filter stays index-answerable.
    return alias_type({"$and": [filter, {"object_type": kind}]} if filter else {"object_type": kind})


def _check_filter(filter: Any) -> Any:
    if filter is not None and not isinstance(filter, Mapping):
        raise InvalidQuery(f"a filter must be a dict, not {type(filter).__name__}")
    return filter


def _check_progress(progress: Any) -> Callable[[int], None] | None:
    if progress is not None and not callable(progress):
        raise InvalidArgument(f"progress must be a callable taking a count, or None, not {type(progress).__name__}")
    return progress
