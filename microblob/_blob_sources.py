"""Where a Blob's bytes live: in memory, in a file, in a stored object (and, in `_remote`, at a URL).

Below `blob.py` so that every kind of source, the URL one included, can be written without importing the
Blob class: the value layer has no import cycle (docs/ARCHITECTURE.md, "Layers").
"""

from __future__ import annotations

import hashlib
import io
import os
import weakref
from collections.abc import Callable
from typing import Any, BinaryIO

from ._exceptions import BlobError, InvalidArgument
from ._paths import check_path

__all__ = ["CHUNK_SIZE", "Progress", "object_source"]

CHUNK_SIZE = 1 << 20
"""Bytes read or sent at a time: large enough for throughput, small enough to keep memory flat."""

Progress = Callable[[int, "int | None"], None]
"""A progress callback: called with (bytes done, total bytes or None) as a transfer advances."""


class _Source:
    """Where a Blob's bytes live. Shared (not copied) by Blobs that view the same bytes as another type."""

    size: int | None = None
    sha256: str | None = None  # known without reading the bytes

    def open(self) -> BinaryIO:
        raise NotImplementedError

    def read_all(self) -> bytes | bytearray | memoryview:
        with self.open() as f:
            return f.read()


class _BufferReader(io.RawIOBase):
    """A seekable reader over a bytearray/memoryview that copies only the slices asked for."""

    def __init__(self, data: bytearray | memoryview) -> None:
        self._mv = memoryview(data).cast("B")
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        chunk = self._mv[self._pos : self._pos + len(b)]
        n = len(chunk)
        b[:n] = chunk
        self._pos += n
        return n

    def read(self, size: int = -1) -> bytes:
        end = len(self._mv) if size is None or size < 0 else min(len(self._mv), self._pos + size)
        out = bytes(self._mv[self._pos : end])
        self._pos = max(self._pos, end)
        return out

    def readall(self) -> bytes:
        return self.read(-1)

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: len(self._mv)}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos


class _BytesSource(_Source):
    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise InvalidArgument(f"Blob.from_bytes needs bytes, bytearray or memoryview, not {type(data).__name__}")
        self.data = data
        self.size = data.nbytes if isinstance(data, memoryview) else len(data)

    def open(self) -> BinaryIO:
        if isinstance(self.data, bytes):
            return io.BytesIO(self.data)  # CPython shares the bytes object until it is written to
        return _BufferReader(self.data)  # type: ignore[return-value]

    def read_all(self) -> bytes | bytearray | memoryview:
        return self.data


class _FileSource(_Source):
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = check_path(path)
        if not os.path.isfile(self.path):
            what = "a directory, not a file" if os.path.isdir(self.path) else "no such file"
            raise BlobError(f"{what}: {self.path!r}")
        self._stamp: tuple[int, int] | None = None
        self._sha: str | None = None

    def own(self, on_delete: Callable[[], Any] | None = None) -> None:
        """The file belongs to this source from now on: removed when no Blob uses it any more, then
        `on_delete()`."""
        weakref.finalize(self, _unlink_quietly, self.path, on_delete)

    @property
    def size(self) -> int:  # type: ignore[override]
        return self.stat().st_size

    def stat(self) -> os.stat_result:
        try:
            return os.stat(self.path)
        except FileNotFoundError:
            raise self._gone() from None

    def open(self) -> BinaryIO:
        try:
            return open(self.path, "rb")
        except FileNotFoundError:
            raise self._gone() from None

    def _gone(self) -> BlobError:
        """The file was removed (or renamed) after the Blob was made: the Blob cannot be read."""
        return BlobError(f"the file {self.path!r} of this Blob is gone")


def _unlink_quietly(path: str, then: Callable[[], Any] | None = None) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
    if then is not None:
        then()


class _ProgressReader(io.RawIOBase):
    """Wraps a reader to report progress as it is read."""

    def __init__(self, inner: BinaryIO, progress: Progress, total: int | None) -> None:
        self._inner, self._progress, self._total, self._done = inner, progress, total, 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        data = self._inner.read(len(b))
        n = len(data)
        b[:n] = data
        self._count(n)
        return n

    def read(self, size: int = -1) -> bytes:
        data = self._inner.read(size)
        self._count(len(data))
        return data

    def _count(self, n: int) -> None:
        if n:
            self._done += n
            self._progress(self._done, self._total)

    def close(self) -> None:
        self._inner.close()
        super().close()


def _hash_file(source: _FileSource) -> str:
    h = hashlib.sha256()
    with source.open() as f:
        while chunk := f.read(CHUNK_SIZE):
            h.update(chunk)
    return h.hexdigest()


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
