"""`Blob`: bytes plus a MIME type, the value that travels between Things, servers, clients and the store.

A Blob does not care where its bytes live (memory, a file, a URL, a stored object): the same `data`,
`open()` and `save()` work on all of them, so action code runs unchanged in a server and in a client.
Subclasses name a content type (`class JPEGBlob(Blob): content_type = "image/jpeg"`); they are
registered by it, so a client can hand back a `JPEGBlob` for a link that says `image/jpeg`.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, BinaryIO, ClassVar, TypeVar

from ._exceptions import BlobError, InvalidArgument
from ._outfile import output_file

if TYPE_CHECKING:
    import httpx
    from typing_extensions import Self  # typing.Self is 3.11+; only type checkers read this

__all__ = ["CHUNK_SIZE", "Blob", "Progress", "blob_class_for"]

CHUNK_SIZE = 1 << 20
"""Bytes read or sent at a time: large enough for throughput, small enough to keep memory flat."""

Progress = Callable[[int, "int | None"], None]
"""A progress callback: called with (bytes done, total bytes or None) as a transfer advances."""

B = TypeVar("B", bound="Blob")
_GENERIC = "application/octet-stream"
_registry: dict[str, type[Blob]] = {}


def _bare(content_type: str) -> str:
    """The MIME type without parameters, lower case (``"Image/JPEG; q=1"`` → ``"image/jpeg"``)."""
    return content_type.split(";", 1)[0].strip().lower()


def _matches(content_type: str, pattern: str) -> bool:
    main, _, sub = _bare(content_type).partition("/")
    pmain, _, psub = _bare(pattern).partition("/")
    return (pmain in ("*", main)) and (psub in ("*", sub))


def blob_class_for(content_type: str | None) -> type[Blob]:
    """The registered Blob subclass for a content type, else `Blob`. The first class defined for a type
    keeps it: importing another module later never changes what a client hands back."""
    if content_type:
        return _registry.get(_bare(content_type), Blob)
    return Blob


class _MediaTypeAlias:
    """`media_type` reads and writes `content_type`, on the class and on instances (LabThings' spelling)."""

    def __get__(self, obj: Blob | None, owner: type[Blob]) -> str:
        return (obj if obj is not None else owner).content_type

    def __set__(self, obj: Blob, value: str) -> None:
        obj.content_type = value


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
    def __init__(self, path: str | os.PathLike[str], delete: bool = False) -> None:
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise BlobError(f"no such file: {self.path!r}")
        if delete:  # the file belongs to this source: remove it when no Blob uses it any more
            weakref.finalize(self, _unlink_quietly, self.path)
        self._stamp: tuple[int, int] | None = None
        self._sha: str | None = None

    @property
    def size(self) -> int:  # type: ignore[override]
        return os.stat(self.path).st_size

    def open(self) -> BinaryIO:
        return open(self.path, "rb")


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


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


class Blob:
    """Binary data with a MIME type; in memory, in a file, at a URL or in a store, used the same way.

    Make one with `from_bytes`, `from_file`, `from_url` or `from_object`; read it with `data`,
    `open()` or `save()`. A Blob returned by an action is served as a download link; passing it to
    another action (locally or through a client) passes the same bytes, not a copy.
    """

    content_type: ClassVar[str] = _GENERIC
    media_type: ClassVar[str] = _MediaTypeAlias()  # type: ignore[assignment]

    def __init_subclass__(cls, register: bool = True, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = cls.__dict__
        if "media_type" in own and not isinstance(own["media_type"], _MediaTypeAlias):
            if "content_type" not in own:
                cls.content_type = own["media_type"]
            cls.media_type = _MediaTypeAlias()  # type: ignore[assignment]
        if register and "content_type" in own and "*" not in cls.content_type:
            _registry.setdefault(_bare(cls.content_type), cls)

    def __init__(
        self, data: bytes | bytearray | memoryview | None = None, content_type: str | None = None
    ) -> None:
        """`Blob(data)` is `Blob.from_bytes(data)`; the other constructors are classmethods."""
        self._source: _Source = _BytesSource(b"" if data is None else data)
        self._set_type(content_type)
        self._sha: str | None = None
        self._data: bytes | bytearray | memoryview | None = None
        self._lock = threading.Lock()

    # -- constructors ---------------------------------------------------------------------------

    @classmethod
    def _with_source(cls, source: _Source, content_type: str | None) -> Self:
        blob = cls.__new__(cls)
        blob._source = source
        blob._set_type(content_type)
        blob._sha = source.sha256
        blob._data = None
        blob._lock = threading.Lock()
        return blob

    def _set_type(self, content_type: str | None) -> None:
        cls_type = type(self).content_type
        if content_type is None:
            content_type = cls_type
        elif not (cls_type == _GENERIC or _matches(content_type, cls_type)):
            raise InvalidArgument(f"{type(self).__name__} holds {cls_type!r}, not {content_type!r}")
        if "*" in content_type:
            content_type = _GENERIC
        self.content_type = content_type  # type: ignore[misc]

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview, content_type: str | None = None) -> Self:
        """Wrap bytes already in memory. Nothing is copied: `data` gives back the same object."""
        return cls._with_source(_BytesSource(data), content_type)

    @classmethod
    def from_file(
        cls, path: str | os.PathLike[str], content_type: str | None = None, *, delete: bool = False
    ) -> Self:
        """Refer to a file on disk; it is read only when asked. `delete=True` removes the file once no
        Blob uses it (for temporary files an action creates)."""
        return cls._with_source(_FileSource(path, delete=delete), content_type)

    @classmethod
    def from_url(
        cls,
        url: str,
        client: httpx.Client | None = None,
        content_type: str | None = None,
        *,
        size: int | None = None,
        sha256: str | None = None,
    ) -> Self:
        """Refer to bytes at a URL; nothing downloads until `data`, `open()` or `save()`.

        Given `sha256`, downloads are verified against it. `client` may carry auth headers."""
        from ._remote import remote_blob

        return remote_blob(cls, url, client=client, content_type=content_type, size=size, sha256=sha256)

    @classmethod
    def from_object(cls, store: Any, object_id: str, version: int | None = None) -> Self:
        """Wrap a stored object (the version current now, unless one is given); bytes load lazily."""
        from ._store_source import object_source

        source, content_type = object_source(store, object_id, version)
        kind: type[B] = blob_class_for(content_type) if cls is Blob else cls  # type: ignore[assignment]
        return kind._with_source(source, content_type)

    def as_type(self, cls: type[B]) -> B:
        """This Blob's bytes viewed as another Blob subclass (shared, not copied)."""
        if isinstance(self, cls):
            return self
        other = cls._with_source(self._source, None if self.content_type == _GENERIC else self.content_type)
        other._sha, other._data = self._sha, self._data
        return other

    # -- access ---------------------------------------------------------------------------------

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> Any:
        """A Blob is a pydantic type: a field of a BaseModel, dataclass or TypedDict may be one (a link
        in JSON, resolved by the server that validates it)."""
        from ._schema import blob_core_schema

        return blob_core_schema(cls)

    @classmethod
    def __get_pydantic_json_schema__(cls, schema: Any, handler: Any) -> dict[str, Any]:
        from ._schema import blob_schema

        return blob_schema(cls)

    @property
    def size(self) -> int | None:
        """Length in bytes, where known without reading (always, except for some remote blobs)."""
        return self._source.size

    @property
    def sha256(self) -> str:
        """Hex sha256 of the bytes; computed once (streaming, bounded memory) and then remembered."""
        if self._sha is None:
            with self._lock:
                if self._sha is None:
                    self._sha = self._compute_sha256()
        return self._sha

    def _compute_sha256(self) -> str:
        src = self._source
        if isinstance(src, _BytesSource):
            return hashlib.sha256(src.data).hexdigest()
        if isinstance(src, _FileSource):
            st = os.stat(src.path)
            stamp = (st.st_size, st.st_mtime_ns)
            if src._stamp != stamp or src._sha is None:
                src._sha, src._stamp = _hash_file(src.path), stamp
            return src._sha
        h = hashlib.sha256()
        with src.open() as f:
            while chunk := f.read(CHUNK_SIZE):
                h.update(chunk)
        return h.hexdigest()

    @property
    def sha256_known(self) -> bool:
        """True when `sha256` costs nothing (already computed or recorded)."""
        return self._sha is not None

    @property
    def url(self) -> str | None:
        """The URL of a remote Blob, else None."""
        return getattr(self._source, "url", None)

    @property
    def data(self) -> bytes | bytearray | memoryview:
        """All the bytes. In-memory blobs return their original object; others read (or download) once."""
        src = self._source
        if isinstance(src, _BytesSource):
            return src.data
        if self._data is None:
            with self._lock:
                if self._data is None:
                    self._data = src.read_all()
        return self._data

    def open(self, progress: Progress | None = None) -> BinaryIO:
        """A binary file object over the bytes; reads stream (files and remote data are never loaded whole)."""
        if self._data is not None and not isinstance(self._source, _BytesSource):
            f: BinaryIO = _BytesSource(self._data).open()
        else:
            f = self._source.open()
        if progress is not None:
            return io.BufferedReader(_ProgressReader(f, progress, self.size), CHUNK_SIZE)  # type: ignore[return-value]
        return f

    def save(self, path: str | os.PathLike[str], progress: Progress | None = None) -> None:
        """Write the bytes to `path`, streaming: atomically (temp file, then rename) over a regular file or a
        new path, keeping an existing file's mode; straight into a device or FIFO (see `_outfile`)."""
        path = os.fspath(path)
        save = getattr(self._source, "save", None)
        if save is not None and self._data is None:
            save(path, progress)  # remote: streams and verifies
            return
        with output_file(path) as out, self.open(progress) as f:
            while chunk := f.read(CHUNK_SIZE):
                out.write(chunk)

    def __repr__(self) -> str:
        where = type(self._source).__name__.strip("_").replace("Source", "").lower()
        return f"<{type(self).__name__} {self.content_type} size={self.size} in {where}>"


def _hash_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_SIZE):
            h.update(chunk)
    return h.hexdigest()


