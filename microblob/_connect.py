"""`connect(uri)`: from a URI (or nothing) to a Store on the right backend (DESIGN.md §3.1)."""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import unquote, urlsplit

from ._exceptions import InvalidArgument
from .store import Store

__all__ = ["DEFAULT_PATH", "connect", "default_uri"]

DEFAULT_PATH = "microblob.db"
_LMDB_OPTIONS = {"map_size", "sync", "metasync", "max_readers"}
_STORE_OPTIONS = {"chunk_size"}


def default_uri() -> str:
    """`$MICROBLOB_URI`, else `./microblob.db`: what every entry point uses when given no URI."""
    return os.environ.get("MICROBLOB_URI") or DEFAULT_PATH


def connect(uri: str | os.PathLike[str] | None = None, **options: Any) -> Store:
    """Open a store.

    - nothing: `$MICROBLOB_URI`, else the file `./microblob.db`
    - `path/to/file.db`, `lmdb:///abs/path.db`: the embedded default, one LMDB file
    - `memory://`: in this process only, gone on close (each call makes a new, empty store)
    - `mongita:///abs/dir`, `mongodb://host/db`: see DESIGN.md §3.1

    Options: `chunk_size` for new files; for LMDB also `map_size` (initial), `sync`, `metasync`,
    `max_readers`.
    """
    if uri is None:
        uri = default_uri()
    if isinstance(uri, os.PathLike):
        uri = os.fspath(uri)
    if not isinstance(uri, str):
        raise InvalidArgument(f"uri must be a str or os.PathLike, not {type(uri).__name__}")
    if not uri:
        raise InvalidArgument("uri must not be empty")
    store_options = {k: v for k, v in options.items() if k in _STORE_OPTIONS}
    engine_options = {k: v for k, v in options.items() if k not in _STORE_OPTIONS}
    scheme = urlsplit(uri).scheme.lower() if "://" in uri else ""
    if scheme == "memory":
        _refuse_options(engine_options, set(), uri)
        from ._kv import MemoryEngine
        from ._kvdocs import KVBackend

        return Store(KVBackend(MemoryEngine(), "memory://"), **store_options)
    if scheme in ("", "lmdb", "file"):
        path = unquote(urlsplit(uri).path) if scheme else uri
        if not path:
            raise InvalidArgument(f"no file path in {uri!r}")
        _refuse_options(engine_options, _LMDB_OPTIONS, uri)
        from ._kvdocs import KVBackend
        from ._lmdb import LmdbEngine

        engine = LmdbEngine(path, **engine_options)
        try:
            return Store(KVBackend(engine, engine.path), **store_options)
        except BaseException:
            engine.close()
            raise
    raise InvalidArgument(f"unknown store URI scheme {scheme!r} in {uri!r} (use a file path, lmdb://, memory://)")


def _refuse_options(options: dict[str, Any], allowed: set[str], uri: str) -> None:
    unknown = set(options) - allowed
    if unknown:
        raise InvalidArgument(f"unknown option(s) {', '.join(sorted(unknown))} for {uri!r}")
