"""`StoreInternals`: what the store's own helpers use of a `Store`, named in one place.

Maintenance (`verify`, `gc`), `copy`, workflows and `BlobObject` work on the store's collections and its
file bucket directly; that is their job. They reach them through `store.internals` instead of private
attributes, so the coupling is one visible interface (docs/ARCHITECTURE.md, "Layers") and this module is
the only place to change when the Store's insides move. Not public API: user code has `Store`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .records import _history_id, _same_life, _version_of

if TYPE_CHECKING:
    from ..engine.backend import Backend, ChunkStore, Collection
    from .core import Store
    from .files import FilesBucket

__all__ = ["StoreInternals"]


class StoreInternals:
    """A view of one Store's collections, chunks and upload leases, and the few operations that keep them
    consistent (freeing a file once nothing references it, recording a workflow, taking a lease)."""

    __slots__ = ("_store",)

    def __init__(self, store: Store) -> None:
        self._store = store

    @property
    def backend(self) -> Backend:
        return self._store._backend

    @property
    def objects(self) -> Collection:
        """`objects`: the latest version of each object."""
        return self._store._objects

    @property
    def history(self) -> Collection:
        """`object_history`: every replaced version, `_id` = `object_id:version`."""
        return self._store._history

    @property
    def workflows(self) -> Collection:
        return self._store._workflows

    @property
    def files(self) -> FilesBucket:
        return self._store.files

    @property
    def file_docs(self) -> Collection:
        """`fs.files`: one GridFS files document per stored file."""
        return self._store.files._files

    @property
    def leases(self) -> Collection:
        """`fs.pending`: a lease per upload in progress, which keeps `gc()` off its chunks."""
        return self._store.files._pending

    @property
    def chunks(self) -> ChunkStore:
        return self._store.files._chunks

    def check_open(self) -> None:
        """StoreClosed if the store was closed."""
        self._store._check_open()

    def referenced(self, file_id: Any) -> bool:
        """Whether any version, latest or history, references the file (two index lookups)."""
        return self._store._referenced(file_id)

    def release_file(self, file_id: Any) -> None:
        """Free a file's bytes if no version (latest or history) references it any more."""
        self._store._release_file(file_id)

    def record_workflow(self, workflow_id: str, changes: dict[str, Any]) -> None:
        self._store._record_workflow(workflow_id, changes)

    def inline_data(self, object_id: str, version: int) -> bytes | None:
        """The bytes of a version stored inline in its document, else None."""
        return self._store._inline_data(object_id, version)

    def version_doc(self, object_id: str, version: int) -> dict[str, Any] | None:
        """One version's document (the latest, or its history entry of the same life), without inline data."""
        current = self.objects.find_one({"_id": object_id}, projection={"data": 0})
        if current is None:
            return None
        if _version_of(current) == version:
            return current
        entry = self.history.find_one({"_id": _history_id(object_id, version)}, projection={"data": 0})
        return entry if entry is not None and _same_life(entry, current.get("created_at")) else None

    def take_lease(self, file_id: Any) -> None:
        """Lease `file_id` for this process while its chunks are written (see `leases`)."""
        self._store.files._take_lease(file_id)

    def put_chunks(self, file_id: Any, first: int, chunks: list[bytes | memoryview]) -> None:
        """Write chunks `first`, `first + 1`, ... of a file (one commit per batch where the backend can)."""
        self._store.files._put_chunks(file_id, first, chunks)
