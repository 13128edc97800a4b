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
import types
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, BinaryIO, ClassVar, TypeVar

from ._blob_sources import (
    CHUNK_SIZE,
    Progress,
    _BytesSource,
    _FileSource,
    _hash_file,
    _ProgressReader,
    _Source,
    object_source,
)
from ._exceptions import InvalidArgument, InvalidInput
from ._media_types import check_content_type
from ._outfile import output_file
from ._paths import check_path

if TYPE_CHECKING:
    import httpx
    from pydantic_core import core_schema
    from typing_extensions import Self  # typing.Self is 3.11+; only type checkers read this

__all__ = ["CHUNK_SIZE", "GENERIC_CONTENT_TYPE", "Blob", "Progress", "RemoteBlob", "blob_class_for", "remote_blob"]

B = TypeVar("B", bound="Blob")
GENERIC_CONTENT_TYPE = "application/octet-stream"
"""The type of bytes nobody described: a Blob's, a stored object's and an upload's default."""
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


def _one_type(content_type: str | None, media_type: str | None) -> str | None:
    """`content_type` or its LabThings spelling `media_type`; both given must agree."""
    if media_type is None:
        return content_type
    if content_type is not None and content_type != media_type:
        raise InvalidArgument(f"content_type={content_type!r} and media_type={media_type!r} disagree: give one")
    return media_type


class _MediaTypeAlias:
    """`media_type` reads and writes `content_type`, on the class and on instances (LabThings' spelling)."""

    def __get__(self, obj: Blob | None, owner: type[Blob]) -> str:
        return (obj if obj is not None else owner).content_type

    def __set__(self, obj: Blob, value: str) -> None:
        obj.content_type = value


class Blob:
    """Binary data with a MIME type; in memory, in a file, at a URL or in a store, used the same way.

    Make one with `from_bytes`, `from_file`, `from_url` or `from_object`; read it with `data`,
    `open()` or `save()`. A Blob returned by an action is served as a download link; passing it to
    another action (locally or through a client) passes the same bytes, not a copy.
    """

    content_type: ClassVar[str] = GENERIC_CONTENT_TYPE
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
        if not (content_type is None or (isinstance(content_type, str) and "*" in content_type)):
            check_content_type(content_type)  # a wildcard ("image/*") becomes the generic type below
        if content_type is None:
            content_type = cls_type
        elif not (cls_type == GENERIC_CONTENT_TYPE or _matches(content_type, cls_type)):
            raise InvalidArgument(f"{type(self).__name__} holds {cls_type!r}, not {content_type!r}")
        if "*" in content_type:
            content_type = GENERIC_CONTENT_TYPE
        self.content_type = content_type  # type: ignore[misc]

    @classmethod
    def from_bytes(
        cls, data: bytes | bytearray | memoryview, content_type: str | None = None, *, media_type: str | None = None
    ) -> Self:
        """Wrap bytes already in memory. Nothing is copied: `data` gives back the same object.
        (`media_type=` is LabThings' name for `content_type`, here and in the other constructors.)"""
        return cls._with_source(_BytesSource(data), _one_type(content_type, media_type))

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike[str],
        content_type: str | None = None,
        *,
        delete: bool = False,
        sha256: str | None = None,
        on_delete: Callable[[], Any] | None = None,
        media_type: str | None = None,
    ) -> Self:
        """Refer to a file on disk; it is read only when asked. `delete=True` removes the file once no
        Blob uses it (for temporary files an action creates), then calls `on_delete()` (a server gives
        the upload's room back). `sha256`, when the caller hashed the bytes as it wrote them (a server
        receiving an upload), saves reading the file again."""
        if not isinstance(delete, bool):  # delete="False" is truthy: it would remove the caller's file
            raise InvalidArgument(f"delete must be True or False, not {delete!r:.100}")
        if on_delete is not None and not (delete and callable(on_delete)):
            raise InvalidArgument("on_delete= is a callable, and only with delete=True")
        content_type = _one_type(content_type, media_type)
        source = _FileSource(path)
        source.sha256 = sha256
        blob = cls._with_source(source, content_type)
        if delete:  # only once the Blob exists: a refused one leaves the file to the caller
            source.own(on_delete)
        return blob

    @classmethod
    def from_url(
        cls,
        url: str,
        client: httpx.Client | None = None,
        content_type: str | None = None,
        *,
        size: int | None = None,
        sha256: str | None = None,
        media_type: str | None = None,
    ) -> Self:
        """Refer to bytes at a URL; nothing downloads until `data`, `open()` or `save()`.

        Given `sha256`, downloads are verified against it. `client` may carry auth headers."""
        return remote_blob(cls, url, client=client, content_type=_one_type(content_type, media_type), size=size,
                           sha256=sha256)

    @classmethod
    def from_object(cls, store: Any, object_id: str, version: int | None = None) -> Self:
        """Wrap a stored object (the version current now, unless one is given); bytes load lazily."""
        if not callable(getattr(store, "get_blob_object", None)):
            raise InvalidArgument(f"store must be a Store, not {type(store).__name__}")
        source, content_type = object_source(store, object_id, version)
        kind: type[B] = blob_class_for(content_type) if cls is Blob else cls  # type: ignore[assignment]
        return kind._with_source(source, content_type)

    def as_type(self, cls: type[B]) -> B:
        """This Blob's bytes viewed as another Blob subclass (shared, not copied)."""
        if not (isinstance(cls, type) and issubclass(cls, Blob)):
            raise InvalidArgument(f"as_type takes a Blob class, not {cls!r:.100}")
        if isinstance(self, cls):
            return self
        other = cls._with_source(self._source, None if self.content_type == GENERIC_CONTENT_TYPE else self.content_type)
        other._sha, other._data = self._sha, self._data
        return other

    # -- access ---------------------------------------------------------------------------------

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> Any:
        """A Blob is a pydantic type: a field of a BaseModel, dataclass or TypedDict may be one (a link
        in JSON, resolved by the server that validates it)."""
        return blob_core_schema(cls)

    @classmethod
    def __get_pydantic_json_schema__(cls, schema: Any, handler: Any) -> dict[str, Any]:
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
            st = src.stat()
            stamp = (st.st_size, st.st_mtime_ns)
            if src._stamp != stamp or src._sha is None:
                src._sha, src._stamp = _hash_file(src), stamp
            return src._sha
        h = hashlib.sha256()
        with src.open() as f:
            while chunk := f.read(CHUNK_SIZE):
                h.update(chunk)
        return h.hexdigest()

    @property
    def known_sha256(self) -> str | None:
        """The sha256 when it costs nothing (computed already, or recorded with the bytes), else None:
        what a server can put in an ETag or a link without reading a large payload."""
        return self._sha or self._source.sha256

    @property
    def in_memory(self) -> bytes | bytearray | memoryview | None:
        """The bytes when this Blob wraps bytes held in memory (the same object, no copy), else None: a
        server sends slices of them directly instead of reading through a file object."""
        src = self._source
        return src.data if isinstance(src, _BytesSource) else None

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

    @property
    def content(self) -> bytes | bytearray | memoryview:
        """`data` under LabThings' name, so a Thing written for LabThings reads its Blobs unchanged."""
        return self.data

    def open(self, progress: Progress | None = None) -> BinaryIO:
        """A binary file object over the bytes; reads stream (files and remote data are never loaded whole)."""
        if progress is not None and not callable(progress):
            raise InvalidArgument("progress must be callable(bytes_done, bytes_total)")
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
        path = check_path(path)
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


class RemoteBlob(Blob, register=False):
    """Mixin for Blobs whose bytes are at a URL: a remote `JPEGBlob` is a `RemoteBlob` *and* a `JPEGBlob`.

    Nothing downloads until `data` (once), `open()` or `save()` (streamed, sha256-checked)."""

    expires_at: str | None = None

    @property
    def downloads(self) -> int:
        """How many times the bytes were fetched from the server."""
        return self._source.downloads  # type: ignore[attr-defined]

    def open(self, progress: Progress | None = None) -> BinaryIO:
        if self._data is not None:
            return super().open(progress)
        return self._source.open_with_progress(progress)  # type: ignore[attr-defined]


_remote_classes: dict[type[Blob], type[Blob]] = {}


def _remote_class(cls: type[B]) -> type[B]:
    if issubclass(cls, RemoteBlob):
        return cls
    rc = _remote_classes.get(cls)
    if rc is None:
        rc = types.new_class(f"Remote{cls.__name__}", (RemoteBlob, cls), {"register": False})
        rc.__module__ = __name__
        _remote_classes[cls] = rc
    return rc  # type: ignore[return-value]


def remote_blob(
    cls: type[B],
    url: str,
    *,
    client: httpx.Client | None = None,
    content_type: str | None = None,
    size: int | None = None,
    sha256: str | None = None,
    expires_at: str | None = None,
) -> B:
    """A lazy Blob of class `cls` (made remote) for the bytes at `url`."""
    from ._blob_url import url_source  # httpx loads only when a Blob first needs a URL

    blob = _remote_class(cls)._with_source(url_source(url, client, size, sha256), content_type)
    blob.expires_at = expires_at  # type: ignore[attr-defined]
    return blob


# -- Blob as a pydantic type: pydantic_core loads only when pydantic asks for a Blob's schema --------------


def blob_schema(cls: type[Blob]) -> dict[str, Any]:
    """The JSON form of a Blob link (what servers send and accept), valid as a TD data schema."""
    string = {"type": "string"}
    schema: dict[str, Any] = {
        "type": "object",
        "title": cls.__name__,
        "description": f"A link to binary data ({cls.content_type}); download it with GET on url/href.",
        "properties": {
            "url": {"type": "string", "format": "uri-reference"},
            "href": {"type": "string", "format": "uri-reference"},
            "content_type": dict(string),
            "media_type": dict(string),
            "rel": dict(string),
            "size": {"type": "integer", "minimum": 0},
            "sha256": dict(string),
            # A TD data schema's "type" is one string: "may be null" is a oneOf of two schemas.
            "expires_at": {"oneOf": [{"type": "string", "format": "date-time"}, {"type": "null"}]},
        },
        "anyOf": [{"required": ["url"]}, {"required": ["href"]}],
        "contentMediaType": cls.content_type,
    }
    if "*" not in cls.content_type and cls.content_type != Blob.content_type:
        schema["properties"]["content_type"]["const"] = cls.content_type
    return schema


def blob_core_schema(cls: type[Blob]) -> core_schema.CoreSchema:
    """A pydantic core schema for a Blob subclass: a Blob instance, or a link (``{"url"|"href": ...}`` or
    a URL string) that the validation context's ``resolve_blob`` turns into one of the server's Blobs."""
    from pydantic_core import core_schema

    def validate(value: Any, info: core_schema.ValidationInfo) -> Blob:
        return _to_blob(value, cls, info.context)

    return core_schema.with_info_plain_validator_function(
        validate,
        serialization=core_schema.plain_serializer_function_ser_schema(_blob_to_json, when_used="json"),
    )


def _blob_to_json(blob: Blob) -> dict[str, Any]:
    """Outside a server a Blob dumps as what is known without reading it (a server sends a link)."""
    return {"url": blob.url, "href": blob.url, "content_type": blob.content_type, "media_type": blob.content_type}


def _to_blob(value: Any, cls: type[Blob], context: Any) -> Blob:
    from pydantic_core import PydanticCustomError

    if isinstance(value, Blob):
        blob = value
    else:
        url = value if isinstance(value, str) else None
        if isinstance(value, dict):
            url = value.get("url") or value.get("href")
        if not isinstance(url, str) or not url:
            raise PydanticCustomError("blob_link", "expected a Blob link: an object with a 'url' (or 'href') string")
        resolve = context.get("resolve_blob") if isinstance(context, Mapping) else None
        if resolve is None:
            raise PydanticCustomError("blob_link", "Blob links are not accepted here")
        try:
            blob = resolve(url, cls, "")
        except InvalidInput as e:
            raise PydanticCustomError("blob_link", "{detail}", {"detail": str(e)}) from None
    if isinstance(blob, cls):
        return blob
    generic = Blob.content_type
    if cls.content_type == generic or blob.content_type == generic or _matches(blob.content_type, cls.content_type):
        return blob.as_type(cls)
    raise PydanticCustomError(
        "blob_type", "expected {want} data, got {got}", {"want": cls.content_type, "got": blob.content_type}
    )
