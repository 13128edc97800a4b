"""A Blob's bytes kept in a store object (one pinned version), read only when asked."""

from __future__ import annotations

from typing import Any, BinaryIO

from .blob import _Source

__all__ = ["object_source"]


class _ObjectSource(_Source):
    def __init__(self, store: Any, object_id: str, version: int, size: int | None, sha256: str | None) -> None:
        self.store = store
        self.object_id = object_id
        self.version = version
        self.size = size
        self.sha256 = sha256

    def open(self) -> BinaryIO:
        return self.store.get_blob_object(self.object_id, self.version).open()

    def read_all(self) -> bytes:
        return self.store.get_blob_object(self.object_id, self.version).data


def object_source(store: Any, object_id: str, version: int | None) -> tuple[_ObjectSource, str | None]:
    """The source for `object_id` at `version` (the current one if None: pinned now, so the Blob keeps
    meaning the same bytes after later updates), and the content type of its record."""
    record = store.get_blob_object(object_id, version)
    source = _ObjectSource(store, object_id, record.version, record.size, record.sha256)
    return source, record.content_type
