"""`connect(uri)`: from a URI (or nothing) to a Store on the right backend (docs/ARCHITECTURE.md, "Connecting")."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any
from urllib.parse import SplitResult, parse_qsl, unquote, urlsplit

from .._exceptions import InvalidArgument, StoreNotFound

if TYPE_CHECKING:
    from .core import Store

__all__ = ["DEFAULT_PATH", "connect", "default_uri"]

DEFAULT_PATH = "microblob.db"
_LMDB_OPTIONS = {"map_size", "sync", "metasync", "max_readers"}
_STORE_OPTIONS = {"chunk_size"}


def default_uri() -> str:
    """`$MICROBLOB_URI`, else `./microblob.db`: what every entry point uses when given no URI."""
    return os.environ.get("MICROBLOB_URI") or DEFAULT_PATH


def connect(uri: str | os.PathLike[str] | None = None, *, create: bool = True, **options: Any) -> Store:
    """Open a store.

    - nothing: `$MICROBLOB_URI`, else the file `./microblob.db`
    - `path/to/file.db`, `lmdb:///abs/path.db`: the embedded default, one LMDB file
    - `memory://`: in this process only, gone on close (each call makes a new, empty store)
    - `mongodb://host/db` (or `mongodb+srv://`): MongoDB through pymongo (`pip install
      'microblob[mongodb]'`), bytes in the GridFS layout; see `_mongodb.py`
    - `mongita:///abs/dir` (`?db=name`, default `microblob`): documents in Mongita, bytes in
      `dir/chunks.db`; one process only, not crash-safe; see `_mongita.py`

    `create=False` opens only a store that exists (a file or Mongita directory), raising
    `StoreNotFound` otherwise: what read-only tools want, so a mistyped path is an error, not an empty
    store. (A MongoDB database has no "exists": it is opened either way.)

    Options: `chunk_size` for new files; for LMDB also `map_size` (initial), `sync`, `metasync`,
    `max_readers`.
    """
    store = _connect(uri, create, options)
    store.read_through.opener = _open_destination
    store.opener = _open_sync_destination
    return store


def _open_sync_destination(uri: str | os.PathLike[str]) -> Store:
    """A store this one syncs to: created if it is a new file, as `copy` does."""
    return connect(uri, create=True)


def _open_destination(uri: str) -> Store:
    """A sync destination opened to read evicted bytes back: it must exist (never created by a read)."""
    return connect(uri, create=False)


def _connect(uri: str | os.PathLike[str] | None, create: bool, options: dict[str, Any]) -> Store:
    if uri is None:
        uri = default_uri()
    if isinstance(uri, os.PathLike):
        try:
            uri = os.fsdecode(uri)  # an os.PathLike may give bytes: it is still a path
        except TypeError as exc:  # a __fspath__ that returns neither str nor bytes
            raise InvalidArgument(f"uri: {exc}") from None
    if not isinstance(uri, str):
        raise InvalidArgument(f"uri must be a str or os.PathLike, not {type(uri).__name__}")
    if not uri:
        raise InvalidArgument("uri must not be empty")
    if not isinstance(create, bool):
        raise InvalidArgument(f"create must be a bool, not {type(create).__name__}")
    from .core import Store  # here, not at import: `default_uri` (every CLI start) needs none of it
    from .files import MAX_CHUNK_SIZE
    from .validate import check_chunk_size

    store_options = {k: v for k, v in options.items() if k in _STORE_OPTIONS}
    engine_options = {k: v for k, v in options.items() if k not in _STORE_OPTIONS}
    if "chunk_size" in store_options:  # before any backend opens (and creates) its file or connects
        check_chunk_size(store_options["chunk_size"], MAX_CHUNK_SIZE)
    try:
        parts = urlsplit(uri)
    except ValueError as exc:  # e.g. an unclosed IPv6 bracket: "lmdb://[::1"
        raise InvalidArgument(f"malformed URI {uri!r}: {exc}") from None
    scheme = parts.scheme.lower() if "://" in uri else ""
    if "://" in uri and not scheme:
        raise InvalidArgument(f"no scheme in {uri!r} (use a file path, lmdb://, memory://, mongita://, mongodb://)")
    if scheme == "memory":
        if not create:
            raise StoreNotFound(uri)  # every memory:// store is a new one
        _refuse_options(engine_options, set(), uri)
        from ..engine.kv import MemoryEngine
        from ..engine.kvdocs import KVBackend

        return Store(KVBackend(MemoryEngine(), "memory://"), **store_options)
    if scheme in ("", "lmdb", "file"):
        path = _file_path(parts, uri) if scheme else uri
        _refuse_options(engine_options, _LMDB_OPTIONS, uri)
        if not create and not os.path.exists(path):  # a directory or a non-LMDB file: the engine says why
            raise StoreNotFound(path)
        from ..engine.kvdocs import KVBackend
        from ..engine.lmdb_kv import LmdbEngine

        engine = LmdbEngine(path, **engine_options)
        try:
            return Store(KVBackend(engine, engine.path), **store_options)
        except BaseException:
            engine.close()
            raise
    if scheme in ("mongodb", "mongodb+srv"):
        _refuse_options(engine_options, set(), uri)
        from ..engine.mongodb_backend import MongoBackend

        backend = MongoBackend(uri)
        try:
            return Store(backend, **store_options)
        except BaseException:
            backend.close()
            raise
    if scheme == "mongita":
        _refuse_options(engine_options, set(), uri)
        from ..engine.mongita_backend import MongitaBackend

        directory = unquote(parts.netloc + parts.path)
        if not directory:
            raise InvalidArgument(f"no directory in {uri!r} (use mongita:///abs/dir)")
        database = dict(parse_qsl(parts.query)).get("db", "microblob")
        if not create and not os.path.isdir(directory):
            raise StoreNotFound(directory)
        mongita = MongitaBackend(directory, database=database)
        try:
            return Store(mongita, **store_options)
        except BaseException:
            mongita.close()
            raise
    raise InvalidArgument(
        f"unknown store URI scheme {scheme!r} in {uri!r} (use a file path, lmdb://, memory://, mongita://, mongodb://)"
    )


def _file_path(parts: SplitResult, uri: str) -> str:
    """The local path of an lmdb:// or file:// URI. A host other than localhost is refused, not dropped:
    dropped, lmdb://dir/x.db would open /x.db. Percent-escapes must decode to UTF-8: replacing bad ones by
    U+FFFD would open a file of another name."""
    if parts.netloc not in ("", "localhost"):
        raise InvalidArgument(
            f"{uri!r} names host {parts.netloc!r}: the embedded store is a local file (lmdb:///abs/path.db, "
            "with three slashes, or a plain path)"
        )
    try:
        path = unquote(parts.path, errors="strict")
    except UnicodeDecodeError:
        raise InvalidArgument(f"{uri!r}: its percent-escapes are not UTF-8") from None
    if not path:
        raise InvalidArgument(f"no file path in {uri!r}")
    return path


def _refuse_options(options: dict[str, Any], allowed: set[str], uri: str) -> None:
    unknown = set(options) - allowed
    if unknown:
        raise InvalidArgument(f"unknown option(s) {', '.join(sorted(unknown))} for {uri!r}")
