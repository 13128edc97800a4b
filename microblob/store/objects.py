"""`BlobObject`: one version of a stored object, as a record with attribute and mapping access.

The metadata is loaded eagerly (it is small); the bytes are not: `data` reads them on first access,
`open()` streams them, `save(path)` copies them to a file without holding them in memory.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, BinaryIO

from .._exceptions import FileNotFound, IntegrityError, InvalidArgument
from .._outfile import output_file
from .._paths import check_path
from .files import check_sha256
from .flowcept_layout import as_microblob

if TYPE_CHECKING:  # pragma: no cover
    from .core import Store

__all__ = ["FIELDS", "BlobObject", "save_stream_atomically"]

# `data` of a file up to this size is read in one go (FilesBucket.read_small); larger ones through a
# stream, which hashes big pieces on a worker thread.
_SMALL = 1024 * 1024
# A chunked version up to this size has its bytes read with its document, in the same snapshot
# (`Store.get_blob_object`), and hashed only when `data` is asked for: one read transaction per get of
# a small object. Small enough that a get for the metadata alone pays a copy of a few pages.
PREFETCH = 16 * 1024

FIELDS = (
    "object_id",
    "workflow_id",
    "task_id",
    "type",
    "custom_metadata",
    "tags",
    "version",
    "prev_version",
    "content_type",
    "size",
    "sha256",
    "storage",
    "file_id",
    "created_at",
    "updated_at",
    "evicted_at",
    "evicted_to",
)
_NO_FIELDS = dict.fromkeys(FIELDS)


def _fields(doc: dict[str, Any]) -> dict[str, Any]:
    """{field: doc.get(field) for field in FIELDS}, in FIELDS order, built in C for a document whose only
    other keys are `_id` and `data` (every microblob document): a listing builds one per row."""
    meta = _NO_FIELDS.copy()
    meta.update(doc)
    meta.pop("_id", None)
    meta.pop("data", None)
    if len(meta) != len(FIELDS):  # other keys (a Flowcept document's, a future field's): leave them out
        return {field: doc.get(field) for field in FIELDS}
    return meta


class BlobObject(Mapping[str, Any]):
    """One version of an object: `obj.version`, `obj["workflow_id"]`, `dict(obj)` (metadata only),
    and the bytes through `data`, `open()`, `save(path)`."""

    __slots__ = ("_store", "_meta", "_inline", "_data", "_fetched")

    def __init__(self, store: Store, doc: Mapping[str, Any]) -> None:
        self._store = store
        doc = as_microblob(doc)  # Flowcept's layout (grid_fs_file_id, object_type, ...) reads the same
        self._meta = _fields(doc)
        if self._meta["version"] is None:  # written before versioning existed: reads as version 0
            self._meta["version"] = 0
        inline = doc.get("data")
        self._inline: bytes | None = bytes(inline) if isinstance(inline, (bytes, bytearray, memoryview)) else None
        self._data: bytes | None = None
        self._fetched: tuple[bytes, Any] | None = None  # (bytes, their file's sha256), not yet hashed

    def prefetch(self) -> None:
        """Read a small chunked version's bytes now, in the caller's snapshot, without hashing them. Any
        problem (a missing or damaged file) is left for `data` to raise, as if nothing was read here."""
        m = self._meta
        size = m["size"]
        if m["storage"] != "chunked" or self._inline is not None or m["evicted_to"] or m["file_id"] is None \
                or type(size) is not int or size > PREFETCH:
            return
        sha = m["sha256"]
        if size and type(sha) is str:  # the object's own sha256 vouches for its one chunk
            try:
                data = self._store.files.read_single_chunk(m["file_id"], size)
            except InvalidArgument:  # a file id no key can hold (a damaged document): the long way says so
                data = None
            if data is not None:
                self._fetched = (data, sha)
                return
        try:
            self._fetched = self._store.files.read_small_unhashed(m["file_id"], PREFETCH)
        except (FileNotFound, IntegrityError):
            self._fetched = None

    def __getattr__(self, name: str) -> Any:
        if name == "object_type":  # Flowcept's name for `type`
            name = "type"
        try:
            return object.__getattribute__(self, "_meta")[name]
        except KeyError:
            raise AttributeError(f"BlobObject has no attribute {name!r}") from None

    def __getitem__(self, key: str) -> Any:
        if key == "data":
            return self.data
        if key == "object_type":
            key = "type"
        return self._meta[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._meta)

    def __len__(self) -> int:
        return len(self._meta)

    def __repr__(self) -> str:
        m = self._meta
        return (
            f"BlobObject(object_id={m['object_id']!r}, version={m['version']}, type={m['type']!r}, "
            f"size={m['size']}, storage={m['storage']!r})"
        )

    @property
    def data(self) -> bytes:
        """The bytes, read once and kept. Use `open()` or `save()` for large objects."""
        if self._data is None:
            if self._fetched is not None:
                data, sha = self._fetched
                check_sha256(self._meta["file_id"], data, sha)
                self._data, self._fetched = data, None
            elif self._meta["storage"] == "inline" or self._inline is not None:
                self._data = self._load_inline()
            elif not self._meta["evicted_to"] and (small := self._read_small()) is not None:
                self._data = small
            else:
                with self.open() as stream:
                    self._data = stream.read()
        return self._data

    def open(self) -> BinaryIO:
        """A seekable binary file object over the bytes, streaming chunk by chunk."""
        if self._data is not None:
            return io.BytesIO(self._data)
        if self._meta["storage"] == "inline" or self._inline is not None:
            return io.BytesIO(self._load_inline())
        if self._meta["evicted_to"]:
            return self._store.read_through.open(self._meta)
        try:
            return self._store.files.open_download_stream(self._meta["file_id"])  # type: ignore[return-value]
        except FileNotFound:
            if self._evicted_since():
                return self._store.read_through.open(self._meta)
            raise

    def _read_small(self) -> bytes | None:
        try:
            return self._store.files.read_small(self._meta["file_id"], _SMALL)
        except FileNotFound:
            if self._evicted_since():
                return None  # read through open()
            raise

    def _evicted_since(self) -> bool:
        """Whether retention evicted this version after it was read (then its marks are taken in)."""
        found = self._store.internals.version_doc(self._meta["object_id"], self._meta["version"])
        if found is None or not found.get("evicted_to") or found.get("sha256") != self._meta["sha256"]:
            return False
        self._meta["evicted_at"], self._meta["evicted_to"] = found.get("evicted_at"), found["evicted_to"]
        return True

    def _load_inline(self) -> bytes:
        """Queries leave inline bytes out of the documents they return; fetch them on first use."""
        if self._inline is None:
            self._inline = self._store.internals.inline_data(self._meta["object_id"], self._meta["version"])
            if self._inline is None:
                raise IntegrityError(f"object {self.object_id!r} v{self.version}: inline data is missing")
        expected = self._meta["sha256"]
        if isinstance(expected, str) and hashlib.sha256(self._inline).hexdigest() != expected:
            raise IntegrityError(f"object {self.object_id!r} v{self.version}: inline data does not match its sha256")
        return self._inline

    def save(self, path: str | os.PathLike[str]) -> int:
        """Write the bytes to `path`: atomically (temp file, then rename) over a regular file or a new path,
        straight into a device or FIFO; see `microblob._outfile`."""
        with self.open() as stream:
            return save_stream_atomically(stream, path)

    def as_blob(self) -> Any:
        """This version as a `Blob` (lazy: nothing is read until the Blob is)."""
        from ..blob import Blob

        return Blob.from_object(self._store, self._meta["object_id"], self._meta["version"])

    def to_dict(self) -> dict[str, Any]:
        return dict(self._meta)


def save_stream_atomically(stream: Any, path: str | os.PathLike[str], chunk_size: int = 1024 * 1024) -> int:
    """Copy a readable stream to `path` through `output_file`: a regular file is replaced atomically
    (readers see the old file or the whole new one) keeping its mode; a device or FIFO is written into."""
    path = check_path(path)
    written = 0
    with output_file(path) as out:
        pieces = stream.chunks() if hasattr(stream, "chunks") else iter(lambda: stream.read(chunk_size), b"")
        for piece in pieces:
            out.write(piece)
            written += len(piece)
    return written
