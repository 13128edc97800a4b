"""Reading a version whose bytes retention evicted (store/retention.py): from the sync destination
that confirmed them, checked against the sha256 this store kept.

Each Store has one `ReadThrough`. It knows how to reach destinations by name (the URI without
credentials that `evicted_to` records; whoever configured the destination with its full URI, a
`SyncWorker` or `evict(..., destination=uri)`, tells it with `remember`), opens a destination on
first need and keeps it until the Store closes. The opener is `connect` itself, handed in by
`connect()` (this module cannot import it: `connect` imports the Store). A destination that cannot
be reached, or no longer holds those exact bytes, is `ObjectEvicted`, naming the object, version and
destination; nothing is guessed: the bytes handed out are the destination's file whose length and
sha256 are the version's, streamed (and hashed to the end) like a local file.
"""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, BinaryIO

from .._exceptions import MicroblobError, ObjectEvicted
from .records import EVICTED_TO, destination_name

if TYPE_CHECKING:  # pragma: no cover
    from .core import Store

__all__ = ["ReadThrough"]


class ReadThrough:
    """Where one Store's evicted bytes can be read from, and the destinations it opened for that."""

    def __init__(self) -> None:
        self.opener: Callable[[str], Store] | None = None  # set by connect(): opens a URI, never creates
        self._uris: dict[str, Any] = {}  # destination name -> its full URI (credentials kept) or a Store
        self._opened: dict[str, Store] = {}
        self._lock = threading.Lock()

    def remember(self, destination: Any) -> str:
        """Reach `destination` (a URI, a path or an open Store) by its name from now on; returns the name."""
        name = destination_name(destination)
        with self._lock:
            self._uris[name] = destination if not isinstance(destination, os.PathLike) else os.fspath(destination)
        return name

    def close(self) -> None:
        with self._lock:
            opened, self._opened = list(self._opened.values()), {}
        for store in opened:
            try:
                store.close()
            except Exception:  # noqa: BLE001 - closing a remote that went away must not fail our close
                pass

    def destination(self, name: str) -> Store:
        """The destination of that name, opened on first need (raises what opening it raises)."""
        with self._lock:
            known = self._uris.get(name, name)
            if not isinstance(known, (str, os.PathLike)):  # a Store handed in by the caller: theirs to close
                return known
            store = self._opened.get(name)
            if store is not None and not store.closed:
                return store
            if self.opener is None:
                raise ObjectEvicted("?", "?", name, "this store was not opened by microblob.connect, so it "
                                                    "cannot open its destination")
            store = self._opened[name] = self.opener(known)
            return store

    def open(self, meta: Mapping[str, Any]) -> BinaryIO:
        """A readable stream over an evicted version's bytes, read from its destination."""
        object_id, version, name = meta.get("object_id"), meta.get("version"), str(meta.get(EVICTED_TO))
        try:
            return _find(self.destination(name), meta)
        except ObjectEvicted as exc:
            raise ObjectEvicted(object_id, version, name, exc.reason) from None
        except Exception as exc:  # noqa: BLE001 - unreachable: a driver's, an OS's or microblob's own error
            reason = str(exc) if isinstance(exc, MicroblobError) else f"{type(exc).__name__}: {exc}"
            raise ObjectEvicted(object_id, version, name, reason.splitlines()[0] if reason else "unreachable") \
                from None


def _find(remote: Store, meta: Mapping[str, Any]) -> BinaryIO:
    """The destination's copy of the version: its file under the same id (what copy and sync keep), else
    the file of the same object version there; either only if its length and sha256 are the version's."""
    sha256, size, file_id = meta.get("sha256"), meta.get("size"), meta.get("file_id")
    if file_id is not None:
        doc = remote.internals.file_docs.find_one({"_id": file_id}, projection={"length": 1, "sha256": 1})
        if doc is not None and doc.get("sha256") == sha256 and doc.get("length") == size:
            return remote.files.open_download_stream(file_id)  # type: ignore[return-value]
    try:
        there = remote.get_blob_object(meta["object_id"], meta["version"])
    except KeyError:  # NotFound: deleted there, or never arrived
        there = None
    if there is None or there.sha256 != sha256 or there.size != size:
        raise ObjectEvicted(meta.get("object_id"), meta.get("version"), "", "the destination no longer holds "
                            "these bytes (no file or version there with this sha256)")
    if there.storage == "inline":
        return io.BytesIO(there.data)
    return remote.files.open_download_stream(there.file_id)  # type: ignore[return-value]
