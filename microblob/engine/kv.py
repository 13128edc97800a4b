"""The key-value engine interface under the embedded backends, and its in-memory implementation.

The embedded backends (LMDB file, memory) share one document layer (`_kvdocs.py`); all they provide is
this: four named tables of sorted byte keys, read snapshots, and write transactions that either commit
whole or leave nothing behind. Keeping the interface this small is what lets every store test run on
both engines and mean the same thing.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol, TypeVar

from .._exceptions import StoreClosed

__all__ = ["TABLES", "KVEngine", "KVTxn", "MemoryEngine"]

T = TypeVar("T")

# docs: collection prefix + id key -> msgpack document; index: index prefix + entry -> b"";
# chunks: file key + 4-byte chunk number -> raw bytes; meta: small engine-wide records.
TABLES = ("docs", "index", "chunks", "meta")


class KVTxn(Protocol):
    """A view of the tables inside one transaction (read-only or read-write)."""

    def get(self, table: str, key: bytes) -> bytes | None: ...

    def view(self, table: str, key: bytes) -> bytes | memoryview | None:
        """Like get, without a copy where the engine can: valid only until the transaction ends."""
        ...

    def put(self, table: str, key: bytes, value: bytes) -> None: ...

    def delete(self, table: str, key: bytes) -> bool: ...

    def scan(self, table: str, prefix: bytes = b"", *, values: bool = True) -> Iterator[tuple[bytes, bytes]]:
        """Keys (and values, unless `values=False`: then b"") starting with `prefix`, in key order."""
        ...

    def range(
        self, table: str, lo: bytes, hi: bytes | None, *, reverse: bool = False
    ) -> Iterator[tuple[bytes, bytes]]:
        """(key, value) for lo <= key < hi (hi None: to the end), ascending or descending, streamed:
        an index walk that stops after a page reads only that page."""
        ...

    def count_range(self, table: str, lo: bytes, hi: bytes | None, limit: int | None = None) -> int:
        """How many keys lie in lo <= key < hi (at most `limit`), without handing each to Python where
        the engine can."""
        ...

    def entries(self, table: str) -> int | None:
        """How many keys the whole table holds, if the engine knows without counting (else None)."""
        ...


class KVEngine(Protocol):
    """Read snapshots and retryable write transactions over `TABLES`."""

    def read(self) -> AbstractContextManager[KVTxn]: ...

    def write(self, fn: Callable[[KVTxn], T], *, size_hint: int = 0, durable: bool = True) -> T:
        """Run `fn` in a write transaction and commit. `fn` may run more than once (the LMDB engine
        re-runs it after growing its map), so it must have no side effects outside the transaction.
        `size_hint` is roughly how many bytes it writes, so the engine can make room up front.
        `durable=False` lets a commit that nothing references yet (a chunk batch) skip one flush."""
        ...

    def close(self) -> None: ...

    @property
    def closed(self) -> bool: ...


class _MemoryTable:
    """A dict plus a sorted key list, so prefix scans are ordered like LMDB's."""

    __slots__ = ("items", "keys")

    def __init__(self) -> None:
        self.items: dict[bytes, bytes] = {}
        self.keys: list[bytes] = []

    def put(self, key: bytes, value: bytes) -> bytes | None:
        old = self.items.get(key)
        if old is None:
            bisect.insort(self.keys, key)
        self.items[key] = value
        return old

    def delete(self, key: bytes) -> bytes | None:
        old = self.items.pop(key, None)
        if old is not None:
            del self.keys[bisect.bisect_left(self.keys, key)]
        return old


class _MemoryTxn:
    """Writes apply in place and are undone on abort; the engine lock keeps other threads out meanwhile."""

    def __init__(self, tables: dict[str, _MemoryTable], writable: bool) -> None:
        self._tables = tables
        self._undo: list[tuple[str, bytes, bytes | None]] | None = [] if writable else None

    def get(self, table: str, key: bytes) -> bytes | None:
        return self._tables[table].items.get(key)

    view = get  # stored values are immutable bytes already

    def put(self, table: str, key: bytes, value: bytes) -> None:
        assert self._undo is not None, "write in a read transaction"
        old = self._tables[table].put(bytes(key), bytes(value))
        self._undo.append((table, key, old))

    def delete(self, table: str, key: bytes) -> bool:
        assert self._undo is not None, "write in a read transaction"
        old = self._tables[table].delete(key)
        if old is not None:
            self._undo.append((table, key, old))
        return old is not None

    def scan(self, table: str, prefix: bytes = b"", *, values: bool = True) -> Iterator[tuple[bytes, bytes]]:
        t = self._tables[table]
        # Snapshot the matching keys first: the caller may delete while iterating.
        start = bisect.bisect_left(t.keys, prefix)
        stop = start
        while stop < len(t.keys) and t.keys[stop].startswith(prefix):
            stop += 1
        for key in t.keys[start:stop]:
            value = t.items.get(key)
            if value is not None:
                yield key, (value if values else b"")

    def range(
        self, table: str, lo: bytes, hi: bytes | None, *, reverse: bool = False
    ) -> Iterator[tuple[bytes, bytes]]:
        # In batches, each found again by bisection: the caller may write between two items.
        t = self._tables[table]
        batch = 64
        if not reverse:
            start = bisect.bisect_left(t.keys, lo)
            while True:
                keys = t.keys[start : start + batch]
                if not keys:
                    return
                for key in keys:
                    if hi is not None and key >= hi:
                        return
                    value = t.items.get(key)
                    if value is not None:
                        yield key, value
                start = bisect.bisect_right(t.keys, keys[-1])
        else:
            stop = len(t.keys) if hi is None else bisect.bisect_left(t.keys, hi)
            while True:
                keys = t.keys[max(0, stop - batch) : stop]
                if not keys:
                    return
                for key in reversed(keys):
                    if key < lo:
                        return
                    value = t.items.get(key)
                    if value is not None:
                        yield key, value
                stop = bisect.bisect_left(t.keys, keys[0])

    def count_range(self, table: str, lo: bytes, hi: bytes | None, limit: int | None = None) -> int:
        keys = self._tables[table].keys
        stop = len(keys) if hi is None else bisect.bisect_left(keys, hi)
        n = max(0, stop - bisect.bisect_left(keys, lo))
        return n if limit is None else min(n, limit)

    def entries(self, table: str) -> int | None:
        return len(self._tables[table].keys)

    def rollback(self) -> None:
        assert self._undo is not None
        for table, key, old in reversed(self._undo):
            if old is None:
                self._tables[table].delete(key)
            else:
                self._tables[table].put(key, old)
        self._undo.clear()


class MemoryEngine:
    """`memory://`: the tables live in this process and vanish on close. For tests and scratch work."""

    def __init__(self) -> None:
        self._tables = {name: _MemoryTable() for name in TABLES}
        self._lock = threading.RLock()
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def _check(self) -> None:
        if self._closed:
            raise StoreClosed("the store is closed")

    @contextmanager
    def read(self) -> Iterator[KVTxn]:
        with self._lock:
            self._check()
            yield _MemoryTxn(self._tables, writable=False)

    def write(self, fn: Callable[[KVTxn], T], *, size_hint: int = 0, durable: bool = True) -> T:
        with self._lock:
            self._check()
            txn = _MemoryTxn(self._tables, writable=True)
            try:
                return fn(txn)
            except BaseException:
                txn.rollback()
                raise

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._tables = {name: _MemoryTable() for name in TABLES}
