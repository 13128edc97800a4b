"""The one small interface the store talks to (docs/ARCHITECTURE.md, "Layers").

A backend offers named collections with the pymongo subset the store needs, a chunk store for file
bytes, and an atomic scope. Everything above this line — objects, versions, files, workflows, copy — is
written once against these protocols, and the whole store test suite runs against every backend.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol, TypeVar, Union

from .._exceptions import IntegrityError, InvalidArgument, InvalidDocument, InvalidQuery

__all__ = [
    "DEFAULT_BATCH_BYTES", "Backend", "ChunkStore", "Collection", "Filter", "Projection", "Sort", "check_window",
    "as_document", "check_write", "checked_chunk",
]

T = TypeVar("T")
Filter = Mapping[str, Any]
Projection = Union[Mapping[str, Any], Sequence[str], None]  # noqa: UP007 - a runtime alias on 3.10
Sort = Union[str, Sequence[tuple[str, int]], Mapping[str, int], None]  # noqa: UP007

# Bytes of file chunks committed per backend transaction on large uploads (`FilesBucket`'s batch). Defined
# here, with the interface the engines implement, because the LMDB engine's allocator tuning (`_malloc`) is
# sized from it and the engine layer must not import the files layer above it. Measured on LMDB, 256 MiB
# saves interleaved in one run with _malloc's trim threshold at twice the batch: 4 MiB batches 1,330-1,370
# MB/s, 16 MiB 820-850 MB/s; and a smaller batch holds less memory (the batch, and LMDB's copy of it until
# the commit).
DEFAULT_BATCH_BYTES = 4 * 1024 * 1024


class Collection(Protocol):
    """Documents with an `_id`; filters, projections and sorts in MongoDB's language."""

    name: str

    def insert_one(self, doc: Mapping[str, Any]) -> Any:
        """Store a copy of `doc`; return its `_id`. DuplicateKey if the `_id` exists."""
        ...

    def find_one(
        self, filter: Filter | None = None, projection: Projection = None, sort: Sort = None
    ) -> dict | None: ...

    def find(
        self,
        filter: Filter | None = None,
        projection: Projection = None,
        sort: Sort = None,
        skip: int = 0,
        limit: int = 0,
    ) -> list[dict]: ...

    def iter_documents(self, filter: Filter | None = None, projection: Projection = None,
                       batch: int = 1000) -> Iterator[dict]:
        """Every match, streamed (no list of the whole collection), for batch jobs; not one snapshot."""
        ...

    def replace_one(self, filter: Filter, doc: Mapping[str, Any], upsert: bool = False) -> int:
        """Replace the first match; return how many matched (0 or 1). A compare-and-swap when the filter
        names the old version."""
        ...

    def update_one(self, filter: Filter, update: Mapping[str, Any], upsert: bool = False) -> int: ...

    def delete_one(self, filter: Filter) -> int: ...

    def delete_many(self, filter: Filter) -> int: ...

    def count_documents(self, filter: Filter | None = None) -> int: ...

    def create_index(self, keys: Sequence[tuple[str, int]], unique: bool = False, name: str | None = None) -> str:
        """Create an index (or find the same one); InvalidArgument for a bad path, or a name or keys
        that clash with an existing index."""
        ...

    def list_indexes(self) -> list[dict[str, Any]]:
        """[{"name", "key": [(field, direction)], "unique"}], without the implied `_id` index."""
        ...

    def drop_index(self, name: str) -> None:
        """InvalidArgument if there is no index of that name."""
        ...

    def explain(self, filter: Filter | None = None, sort: Sort = None, skip: int = 0, limit: int = 0) -> dict:
        """{"plan", "index", "sort", "reason", ...}: how a find with these arguments is answered."""
        ...


class ChunkStore(Protocol):
    """File bytes as numbered chunks, `(file_id, n) -> bytes`."""

    def put(self, file_id: Any, n: int, data: bytes | memoryview) -> None: ...

    def get(self, file_id: Any, n: int) -> bytes | None: ...

    def count(self, file_id: Any) -> int: ...

    def delete(self, file_id: Any) -> int:
        """Remove every chunk of the file; return how many there were."""
        ...

    def file_ids(self) -> Iterator[Any]:
        """Every file id that has at least one chunk (so gc can find chunks no file document owns)."""
        ...

    # Optional: `put_many(file_id, first, chunks)` (one commit per batch) and
    # `read_joined(file_id, [(n, start, stop, expected_len), ...]) -> bytes` (one copy, one read scope).


def checked_chunk(file_id: Any, n: int, data: Any, expected: int) -> Any:
    """`data` if it is chunk n of the file at its expected length; IntegrityError otherwise."""
    if data is None:
        raise IntegrityError(f"file {file_id!r}: chunk {n} is missing")
    if len(data) != expected:
        raise IntegrityError(f"file {file_id!r}: chunk {n} has {len(data)} bytes, expected {expected}")
    return data


def as_document(doc: Any) -> dict[str, Any]:
    """A document to write, as a dict of its own, on every backend: InvalidDocument for what is not a mapping
    (`dict(5)` is a bare TypeError, and `dict([("a", 1)])` a document nobody wrote)."""
    if not isinstance(doc, Mapping):
        raise InvalidDocument(f"a document must be a mapping, not {type(doc).__name__}")
    return dict(doc)


def check_write(filter: Any, upsert: Any = False) -> None:
    """A write's filter and `upsert`, checked once for every backend: the filter is a mapping (None would
    match every document: `{}` says so on purpose, as pymongo demands), and `upsert` a bool ("no" is truthy:
    it would insert)."""
    if not isinstance(filter, Mapping):
        raise InvalidQuery(f"a write's filter must be a mapping ({{}} for every document), not {type(filter).__name__}")
    if not isinstance(upsert, bool):
        raise InvalidArgument(f"upsert must be True or False, not {upsert!r:.100}")


def check_window(skip: Any, limit: Any) -> tuple[int, int]:
    """`find`'s skip and limit, checked once for every backend so all refuse the same values alike: ints in
    MongoDB's int64 range, 0..2**63-1 (beyond sys.maxsize `itertools.islice` raises a bare ValueError)."""
    for name, value in (("skip", skip), ("limit", limit)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
            raise InvalidArgument(f"{name} must be an int in 0..2**63-1, not {value!r}")
    return skip, limit


class Backend(Protocol):
    uri: str
    # True when atomic() is a real transaction (LMDB, memory). When False (MongoDB without a replica
    # set), the store orders its writes so that a crash between them never shows a partial object.
    transactional: bool

    def collection(self, name: str) -> Collection: ...

    @property
    def chunks(self) -> ChunkStore: ...

    def atomic(self, fn: Callable[[], T], *, size_hint: int = 0) -> T:
        """Run `fn` with all its writes in one atomic unit. `fn` may be re-run, so it must be free of
        side effects outside the backend. `size_hint`: roughly how many bytes it writes."""
        ...

    def snapshot(self) -> AbstractContextManager[None]:
        """Reads of this thread inside the block see one consistent state where the backend can give
        one cheaply (an LMDB read transaction); elsewhere a plain block."""
        ...

    def close(self) -> None: ...

    @property
    def closed(self) -> bool: ...
