"""The embedded default: every table in ONE LMDB file (`subdir=False`), safe across threads and processes.

What this module takes care of, so nothing above it has to (facts measured: docs/ARCHITECTURE.md, "Engine facts"):
- one `lmdb.Environment` per file per process, shared by every Store on that file and re-opened after
  `fork()`;
- a map that starts small (32-bit devices cannot reserve a large one) and grows when a write needs room,
  re-running the write transaction after `MapFullError`, and adopting another process's growth after
  `MapResizedError`;
- growth only while no transaction of this process is open (a reader/writer lock around every txn);
- stale reader slots of killed processes cleared at open and every minute;
- pages touched through the map are dropped from this process's RSS every few MiB;
- glibc's trim threshold kept above a chunk batch (`_malloc.py`), so the page copies LMDB allocates for
  each commit are reused, not unmapped and faulted in again (about twice the throughput of 256 MiB saves).

`writemap` stays off: measured here it made 256 MiB saves ~10% faster but 1 MiB saves 2.5x slower
(msync of the whole map per commit), and LMDB forbids mixing it between processes.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import errno
import itertools
import mmap
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import lmdb

from .._exceptions import (
    IntegrityError,
    InvalidArgument,
    MicroblobError,
    StorageError,
    StoreClosed,
    StoreFull,
    StoreInUse,
)
from . import lmdb_compact
from .group_commit import GroupCommit, WriteRequest
from .kv import TABLES, KVTxn
from .malloc import tune_malloc
from .open_lock import OpenLock, compaction_gate

__all__ = ["LmdbEngine"]

T = TypeVar("T")

MiB = 1024 * 1024
INITIAL_MAP = 64 * MiB
MIN_MAP = 1 * MiB
# A 32-bit process has ~2-3 GiB of address space in all; LMDB must share it with everything else.
MAP_LIMIT = 1536 * MiB if sys.maxsize < 2**32 else 1 << 44
_READER_CHECK_EVERY = 60.0
_TRIM_EVERY = 32 * MiB
# Below this much to write, a full map is met by a retry: asking LMDB how full it is (info + stat under
# the resize lock) on every small save cost more than the rare retry.
_HEADROOM_CHECK_FROM = 1 * MiB
_DAMAGE = (lmdb.CorruptedError, lmdb.PageNotFoundError, lmdb.BadChecksumError, lmdb.InvalidError,
           lmdb.VersionMismatchError)
# LMDB writes pages with pwrite and reports a short write as EIO: with this little room left on the
# filesystem, an EIO is taken for what it almost surely is, a full disk.
_FULL_DISK_SLACK = 4 * MiB


def engine_error(path: str, exc: lmdb.Error, size_hint: int = 0) -> MicroblobError:
    """What an lmdb error means, as an error of microblob's tree: damage (IntegrityError), a full
    disk (StoreFull), or another failure of the engine (StorageError)."""
    if isinstance(exc, _DAMAGE):
        return IntegrityError(f"{path}: the store is damaged: {exc}")
    text = str(exc)
    if os.strerror(errno.ENOSPC) in text or os.strerror(errno.EDQUOT) in text:
        return StoreFull(f"{path}: the disk is full ({exc})")
    if os.strerror(errno.EIO) in text:
        free = _free_bytes(path)
        if free is not None and free < size_hint + _FULL_DISK_SLACK:
            return StoreFull(f"{path}: the disk is full ({free // 1024} KiB free; {exc})")
    if isinstance(exc, lmdb.ReadonlyError) or os.strerror(errno.EACCES) in text or os.strerror(errno.EROFS) in text:
        return StorageError(f"{path}: the store is read-only here ({exc})")
    return StorageError(f"{path}: {exc}")


_META_MAGIC = 0xBEEFC0DE  # LMDB's meta page magic, after the page header


def _other_word_size(path: str) -> int | None:
    """32 or 64 when `path` is an LMDB file of the other word size than this process's (the page header
    before the first meta page is 12 bytes on 32-bit machines, 16 on 64-bit ones), else None."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(32)
    except OSError:
        return None
    if len(head) < 20:
        return None
    at = {offset: int.from_bytes(head[offset : offset + 4], sys.byteorder) == _META_MAGIC for offset in (12, 16)}
    ours = 64 if sys.maxsize > 2**32 else 32
    if ours == 64 and at[12] and not at[16]:
        return 32
    if ours == 32 and at[16] and not at[12]:
        return 64
    return None


def _free_bytes(path: str) -> int | None:
    try:
        st = os.statvfs(os.path.dirname(path) or ".")
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


class _SharedExclusiveLock:
    """Many transactions at once, or one map resize alone. Re-entrant for holders of the shared side,
    and a waiting resize blocks new transactions so it cannot starve.

    The shared side runs on every read, so it takes no lock: a holder announces itself in `_holders`
    (one dict store, atomic under the GIL) and then looks at `_gate`; a resize closes the gate and then
    waits for `_holders` to empty. Each writes before it reads, so at least one of them sees the other:
    a reader that finds the gate closed withdraws and waits. (A Condition on every read and release cost
    ~6 us of a 1 KiB get.)"""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._holders: dict[int, int] = {}  # thread id -> depth of its shared holds
        self._gate = False  # True while a resize waits or runs
        self._shared_side = _SharedSide(self)

    def holds_shared(self) -> bool:
        return self._holders.get(threading.get_ident(), 0) > 0

    @property
    def holders(self) -> int:
        """Threads holding the shared side now (a transaction of this process is open in each)."""
        return len(self._holders)

    def shared(self) -> _SharedSide:
        """`with lock.shared():` holds the shared side (one object, no generator: it runs on every read)."""
        return self._shared_side

    def acquire_shared(self) -> None:
        me = threading.get_ident()
        holders = self._holders
        depth = holders.get(me, 0)
        holders[me] = depth + 1
        if depth or not self._gate:
            return
        with self._cond:  # a resize is waiting or running: step back until it is done
            del holders[me]
            self._cond.notify_all()
            while self._gate:
                self._cond.wait()
            holders[me] = 1  # the gate is open and we hold the condition: no resize can start unseen

    def release_shared(self) -> None:
        me = threading.get_ident()
        holders = self._holders
        depth = holders[me] - 1
        if depth:
            holders[me] = depth
            return
        del holders[me]
        if self._gate:
            with self._cond:
                self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        if self.holds_shared():
            raise RuntimeError("cannot resize the LMDB map from inside a transaction")
        with self._cond:
            while self._gate:  # one resize at a time
                self._cond.wait()
            self._gate = True
            try:
                while self._holders:
                    self._cond.wait()
            except BaseException:
                self._gate = False
                self._cond.notify_all()
                raise
        try:
            yield
        finally:
            with self._cond:
                self._gate = False
                self._cond.notify_all()


class _SharedSide:
    """The context manager `_SharedExclusiveLock.shared()` returns: stateless (depth is per thread), so one
    object serves every caller."""

    __slots__ = ("_lock",)

    def __init__(self, lock: _SharedExclusiveLock) -> None:
        self._lock = lock

    def __enter__(self) -> None:
        self._lock.acquire_shared()

    def __exit__(self, *exc_info: object) -> None:
        self._lock.release_shared()


class _ReadScope:
    """`with engine.read() as txn:`: a read transaction under the shared side of the resize lock, begun
    again after adopting another process's map growth. A class, not a generator: every read runs it."""

    __slots__ = ("_shared", "_path", "_txn")

    def __init__(self, shared: _Env, path: str) -> None:
        self._shared = shared
        self._path = path
        self._txn: lmdb.Transaction | None = None

    def __enter__(self) -> _Txn:
        shared = self._shared
        while True:
            shared.rw.acquire_shared()
            try:
                self._txn = shared.env.begin(write=False, buffers=True)
                return _Txn(self._txn, shared, readonly=True)
            except lmdb.MapResizedError:
                shared.rw.release_shared()
            except lmdb.Error as exc:
                shared.rw.release_shared()
                raise engine_error(self._path, exc) from None
            except BaseException:
                shared.rw.release_shared()
                raise
            shared.adopt_size()  # outside every transaction of ours: now the map may change size

    def __exit__(self, *exc_info: object) -> None:
        txn, self._txn = self._txn, None
        try:
            if txn is not None:
                txn.abort()
        finally:
            self._shared.rw.release_shared()


def _first_of_range(cursor: lmdb.Cursor, lo: bytes, hi: bytes | None, reverse: bool) -> bool:
    """Put `cursor` on the first key of a walk over [lo, hi), from the low end or (`reverse`) the high
    end; False when the range is empty at that end. The walks' loops stay inline (no generator layer)."""
    if not reverse:
        return bool(cursor.set_range(lo))
    if hi is None or not cursor.set_range(hi):
        return bool(cursor.last())
    return bool(cursor.prev())  # set_range found the first key >= hi: step below it


class _Txn:
    """KVTxn over an lmdb.Transaction and the table handles."""

    __slots__ = ("_txn", "_dbs", "_shared", "_readonly")

    def __init__(self, txn: lmdb.Transaction, shared: _Env, readonly: bool = False) -> None:
        self._txn = txn
        self._dbs = shared.dbs
        self._shared = shared
        self._readonly = readonly

    def get(self, table: str, key: bytes) -> bytes | None:
        value = self.view(table, key)
        return bytes(value) if value is not None else None

    def view(self, table: str, key: bytes) -> bytes | memoryview | None:
        try:
            value = self._txn.get(key, db=self._dbs[table])
        except lmdb.Error as exc:  # a damaged page: lmdb.CorruptedError and kin
            raise engine_error(self._shared.path, exc) from None
        if value is not None and table == "chunks":
            self._shared.note_bytes_touched(len(value))
        return value

    def put(self, table: str, key: bytes, value: bytes) -> None:
        self._txn.put(key, value, db=self._dbs[table])

    def delete(self, table: str, key: bytes) -> bool:
        return self._txn.delete(key, db=self._dbs[table])

    def scan(self, table: str, prefix: bytes = b"", *, values: bool = True) -> Iterator[tuple[bytes, bytes]]:
        try:
            yield from self._scan(table, prefix, values)
        except lmdb.Error as exc:
            raise engine_error(self._shared.path, exc) from None

    def _scan(self, table: str, prefix: bytes, values: bool) -> Iterator[tuple[bytes, bytes]]:
        with self._txn.cursor(db=self._dbs[table]) as cursor:
            if not cursor.set_range(prefix):
                return
            # Read transactions hand out buffers into the map; scans copy (they outlive the cursor).
            if values:
                for key, value in cursor.iternext(keys=True, values=True):
                    key = bytes(key)
                    if not key.startswith(prefix):
                        return
                    yield key, bytes(value)
            else:  # keys only: does not touch the overflow pages of large values
                for key in cursor.iternext(keys=True, values=False):
                    key = bytes(key)
                    if not key.startswith(prefix):
                        return
                    yield key, b""


    def range(
        self, table: str, lo: bytes, hi: bytes | None, *, reverse: bool = False
    ) -> Iterator[tuple[bytes, bytes]]:
        return self._walk(table, lo, hi, reverse, split=False)

    def index_walk(self, table: str, lo: bytes, hi: bytes | None, *, reverse: bool = False
                   ) -> Iterator[tuple[bytes, bytes]]:
        """(key[:-n], key[-n:]) of every key in [lo, hi) whose value's first byte is n, in key order or
        reversed: an index walk's (indexed values, id key) pairs in one loop, not a generator per layer."""
        return self._walk(table, lo, hi, reverse, split=True)

    def _walk(self, table: str, lo: bytes, hi: bytes | None, reverse: bool, split: bool
              ) -> Iterator[tuple[bytes, bytes]]:
        """The keys of [lo, hi) in order (or reversed) with their values copied, or (`split`) each key cut
        where its value's first byte says: one loop for both, returned as is by its callers."""
        with self._txn.cursor(db=self._dbs[table]) as cursor:
            if not _first_of_range(cursor, lo, hi, reverse):
                return
            steps = cursor.iterprev(keys=True, values=True) if reverse else cursor.iternext(keys=True, values=True)
            for key, value in steps:
                key = bytes(key)
                if (key < lo) if reverse else (hi is not None and key >= hi):
                    return
                if split:
                    cut = len(key) - value[0]
                    yield key[:cut], key[cut:]
                else:
                    yield key, bytes(value)

    def count_range(self, table: str, lo: bytes, hi: bytes | None, limit: int | None = None) -> int:
        if self._readonly:
            # Read transactions hand out memoryviews, which do not order: counting in a bytes-handing
            # sibling of the same snapshot (same txn id; LMDB allows several readers per thread) saves
            # a copy per key, about half the time.
            sibling = self._shared.env.begin(write=False, buffers=False)
            try:
                if sibling.id() == self._txn.id():
                    return _count_keys(sibling, self._dbs[table], lo, hi, limit, copy=False)
            finally:
                sibling.abort()
        return _count_keys(self._txn, self._dbs[table], lo, hi, limit, copy=self._readonly)

    def entries(self, table: str) -> int | None:
        return self._txn.stat(self._dbs[table])["entries"]


def _count_keys(txn: lmdb.Transaction, db: Any, lo: bytes, hi: bytes | None, limit: int | None, *,
                copy: bool) -> int:
    with txn.cursor(db=db) as cursor:
        if not cursor.set_range(lo):
            return 0
        if limit is not None and limit <= 4:  # a probe (is there a second document?): a plain loop
            n = 0
            while n < limit:
                key = cursor.key()
                if hi is not None and (bytes(key) if copy else key) >= hi:
                    break
                n += 1
                if not cursor.next():
                    break
            return n
        # Every step in C (map, takewhile, zip, deque): ~10x a Python loop over a million entries.
        keys: Iterator[Any] = cursor.iternext(keys=True, values=False)
        if copy:
            keys = map(bytes, keys)
        if hi is not None:
            keys = itertools.takewhile(hi.__gt__, keys)
        if limit is not None:
            keys = itertools.islice(keys, limit)
        counter = itertools.count()
        collections.deque(zip(keys, counter, strict=False), maxlen=0)
        return next(counter)


class _Env:
    """One open environment per (process, file), shared by every LmdbEngine on it."""

    def __init__(self, path: str, options: dict[str, Any]) -> None:
        self.path = path
        self.refs = 0
        self.rw = _SharedExclusiveLock()
        self.write_lock = threading.Lock()
        self.writer: int | None = None  # thread id holding write_lock, to refuse self-deadlock
        self.group = GroupCommit()  # this process's writers on the file share commits (group_commit.py)
        self.last_reader_check = 0.0
        self.touched_since_trim = 0
        # Each set_mapsize maps the file afresh, perhaps elsewhere (even at the same size): it bumps the
        # generation, and the mappings looked up at an older one are looked up again (note_bytes_touched).
        self.map_generation = 0
        self.mapped: tuple[int, list[tuple[int, int]]] = (-1, [])
        try:
            size = os.path.getsize(path)
        except OSError:
            size = 0
        map_size = options.pop("map_size", None) or min(MAP_LIMIT, max(INITIAL_MAP, _round_up(size + 64 * MiB)))
        # map_size is the initial size (the map grows): below a few pages the tables themselves do not fit
        # and open_db would raise a bare lmdb.MapFullError.
        map_size = max(map_size, MIN_MAP)
        tune_malloc()  # LMDB's per-commit page copies stay on the heap between batches (see _malloc.py)
        self.options = options
        self.readonly = False
        try:
            self.env = self._open(map_size)
        except lmdb.Error as exc:
            other = _other_word_size(path) if isinstance(exc, lmdb.InvalidError) else None
            if other is not None:
                raise StorageError(
                    f"cannot open {path}: it is an LMDB file written on a {other}-bit machine, and LMDB's file "
                    f"format depends on the word size (this Python is {64 if sys.maxsize > 2**32 else 32}-bit). "
                    f"The file is not damaged: on a {other}-bit machine, run `microblob export {path} FILE`, then "
                    "`microblob import FILE STORE` here (or `microblob copy` it from there to a MongoDB server)"
                ) from None
            if not _unwritable(path, exc):
                raise StorageError(f"cannot open {path}: {exc}") from None
            # A file we may not write (or on a read-only filesystem) is still readable: ls, get and
            # verify work; writes fail with "the store is read-only here".
            self.readonly = True
            self.options = {**options, **_read_only_options(path)}
            try:
                self.env = self._open(map_size)
            except lmdb.Error as exc2:
                raise StorageError(f"cannot open {path}: {exc2}") from None
        self.check_readers()

    def _open(self, map_size: int) -> lmdb.Environment:
        """Open the environment and its tables (self.dbs)."""
        env = lmdb.open(self.path, subdir=False, map_size=map_size, max_dbs=len(TABLES) + 2, **self.options)
        try:
            # A read-only environment can open only tables that exist: a file without one is not a store.
            create = not self.options.get("readonly", False)
            self.dbs = {name: env.open_db(name.encode(), create=create) for name in TABLES}
        except BaseException:
            env.close()  # left open, the path could not be opened again in this process
            raise
        return env

    def reopen(self, map_size: int) -> None:
        """Open the environment afresh at `map_size`: py-lmdb invalidates it when set_mapsize fails.
        The caller holds rw.exclusive, so no transaction of this process is open."""
        self.map_generation += 1
        with contextlib.suppress(lmdb.Error):
            self.env.close()
        self.env = self._open(map_size)

    def note_bytes_touched(self, n: int) -> None:
        """Reading through the map makes the file's pages resident in *this* process: streaming a
        1 GiB object would grow RSS by 1 GiB. Every few MiB, drop our mapping of them (they stay in
        the page cache; the next read maps them again)."""
        self.touched_since_trim += n
        if self.touched_since_trim >= _TRIM_EVERY:
            self.touched_since_trim = 0
            # Looked up once per mapping (reading /proc/self/maps each time cost large reads 17%), and again
            # after a remap: advising an address the file no longer occupies would drop whatever lives there.
            # Callers hold rw.shared, so no remap happens in between.
            if self.mapped[0] != self.map_generation:
                self.mapped = (self.map_generation, _mappings_of(self.path))
            _drop_resident_pages(self.mapped[1])

    def compact(self) -> tuple[int, int]:
        """Rewrite the file in place, rebuilt with full pages: (bytes before, bytes after). The caller holds
        LOCK_EX on `<path>.open`, so no other process or engine has the file open; this process's other
        threads wait (writers on write_lock from before the copy's snapshot, every transaction on rw from
        the close to the reopen) and then go on with the new file. Steps: docs/ARCHITECTURE.md, "Compaction"."""
        if self.writer == threading.get_ident() or self.rw.holds_shared():
            raise RuntimeError("compact() inside a transaction of this thread")
        before = os.path.getsize(self.path)
        lmdb_compact.remove_leftover(self.path)
        with self.write_lock:  # no commit of this process lands after the copy's snapshot
            self.writer = threading.get_ident()
            try:
                map_size = self.map_size_now()
                self._write_compacted_copy(map_size)
                with self.rw.exclusive():  # no transaction of this process is open until the reopen
                    self.env.close()
                    try:
                        with lmdb_compact.lmdb_lock_held(self.path):
                            os.replace(lmdb_compact.temp_path(self.path), self.path)
                            lmdb_compact.fsync_dir(self.path)
                    finally:
                        # The new file, or the old one if the swap was refused or failed before the rename.
                        lmdb_compact.remove_leftover(self.path)
                        self.map_generation += 1
                        try:
                            self.env = self._open(map_size)
                        except lmdb.Error as exc:
                            raise StorageError(f"{self.path}: cannot reopen after compacting: {exc}") from None
            finally:
                self.writer = None
        return before, os.path.getsize(self.path)

    def map_size_now(self) -> int:
        with self.rw.shared():
            return self.env.info()["map_size"]

    def _write_compacted_copy(self, map_size: int) -> None:
        """The current snapshot, rebuilt with full pages (or as LMDB's compacting copy where a rebuild
        cannot hold it: lmdb_compact.rebuild) into `<path>.compacting`, fsynced; nothing left behind if it
        fails. The caller holds write_lock."""
        tmp = lmdb_compact.temp_path(self.path)
        os.close(lmdb_compact.create_temp(self.path))
        try:
            with self.rw.shared():
                try:
                    if not lmdb_compact.rebuild(self.env, self.dbs, tmp, map_size):
                        lmdb_compact.remove_leftover(self.path)
                        fd = lmdb_compact.create_temp(self.path)
                        try:
                            self.env.copyfd(fd, compact=True)
                        finally:
                            os.close(fd)
                except lmdb.Error as exc:
                    raise engine_error(self.path, exc, os.path.getsize(self.path)) from None
            try:
                lmdb_compact.fsync_path(tmp)
            except OSError as exc:
                raise StorageError(f"{self.path}: cannot compact: fsync of the copy failed: {exc.strerror}") from None
        except BaseException:
            lmdb_compact.remove_leftover(self.path)
            raise

    def check_readers(self) -> None:
        """Free reader slots of processes that died (a killed reader pins old pages forever)."""
        self.last_reader_check = time.monotonic()
        try:
            self.env.reader_check()
        except lmdb.Error:
            pass

    def used_bytes(self) -> int:
        return (self.env.info()["last_pgno"] + 1) * self.env.stat()["psize"]

    def live_bytes(self) -> int:
        """Bytes of the pages the tables hold now (branch, leaf and overflow pages of every table and of
        the main one): the file never shrinks, and the pages between this and its size are free ones
        LMDB hands out again before it grows the file."""
        main = self.env.stat()
        pages = main["branch_pages"] + main["leaf_pages"] + main["overflow_pages"]
        with self.env.begin() as txn:
            for db in self.dbs.values():
                stat = txn.stat(db)
                pages += stat["branch_pages"] + stat["leaf_pages"] + stat["overflow_pages"]
        return pages * main["psize"]

    def headroom(self) -> int | None:
        """Bytes left in the map, or None if LMDB cannot say. info() and stat() read the meta pages
        through the map, which another thread's resize replaces: asked meanwhile, LMDB answers EINVAL.
        That answer once counted as 'no room', and each one doubled the map, up to 'the store is full'.
        So ask under the lock that keeps resizes out."""
        with self.rw.shared():
            try:
                return self.env.info()["map_size"] - self.used_bytes()
            except lmdb.Error:
                return None

    def grow(self, needed: int) -> None:
        with self.rw.exclusive():
            current = self.env.info()["map_size"]
            wanted = max(current * 2, self.used_bytes() + needed * 2 + 16 * MiB)
            new = min(MAP_LIMIT, _round_up(wanted))
            if new <= current:
                raise StoreFull(
                    f"{self.path}: the store is full ({current // MiB} MiB, the most this process can map)"
                )
            self._resize(new, current)

    def adopt_size(self) -> None:
        """Another process grew the map: take its size."""
        with self.rw.exclusive():
            self._resize(0, self.env.info()["map_size"])

    def _resize(self, new: int, current: int) -> None:
        """set_mapsize(new) (0: the size in the file). When the address space has no room for the new
        map (a 32-bit process, a `ulimit -v`), py-lmdb raises MemoryError and invalidates the environment:
        open it again at the size it had, so the store stays usable, and say why the write failed."""
        try:
            self.env.set_mapsize(new)
            self.map_generation += 1
            return
        except lmdb.MemoryError:
            pass
        try:
            self.reopen(current)
        except lmdb.Error as exc:
            raise StorageError(f"{self.path}: cannot reopen the store at {current // MiB} MiB: {exc}") from None
        wanted = f"{new // MiB} MiB" if new else "the size another process gave it"
        raise StoreFull(f"{self.path}: cannot grow the map to {wanted}: not enough contiguous address space")


def _unwritable(path: str, exc: lmdb.Error) -> bool:
    """The open failed because the file, its directory or the filesystem refuses writes."""
    if isinstance(exc, lmdb.ReadonlyError):
        return True
    text = str(exc)
    if os.strerror(errno.EACCES) not in text and os.strerror(errno.EROFS) not in text \
            and os.strerror(errno.EPERM) not in text:
        return False
    return os.path.exists(path) and os.access(path, os.R_OK)


def _read_only_options(path: str) -> dict[str, Any]:
    """readonly, and without the lock file when none can be made or opened for writing beside the store:
    then nothing records our readers, so a writer elsewhere could reuse pages we read (see README)."""
    lock = path + "-lock"
    usable = os.access(lock, os.R_OK | os.W_OK) if os.path.exists(lock) else os.access(
        os.path.dirname(path) or ".", os.W_OK)
    if usable and _statvfs_writable(path):
        return {"readonly": True}
    return {"readonly": True, "lock": False}


def _statvfs_writable(path: str) -> bool:
    try:
        return not os.statvfs(os.path.dirname(path) or ".").f_flag & os.ST_RDONLY
    except OSError:
        return False


def _libc_madvise() -> Callable[..., int] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


_MADVISE = _libc_madvise() if sys.platform.startswith("linux") else None


def _mappings_of(path: str) -> list[tuple[int, int]]:
    """The (start, length) of each of this process's mappings of `path` (Linux; elsewhere none). Valid
    until the map is resized: the caller looks them up again after that."""
    if _MADVISE is None:
        return []
    try:
        with open("/proc/self/maps", "rb") as maps:
            lines = maps.read().splitlines()
    except OSError:
        return []
    target = os.fsencode(path)
    found = []
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5] == target:
            start, end = (int(x, 16) for x in fields[0].split(b"-"))
            found.append((start, end - start))
    return found


def _drop_resident_pages(mapped: list[tuple[int, int]]) -> None:
    """MADV_DONTNEED over the given mappings of the file. Safe for a shared file mapping: the data stays
    in the file and page cache, only our page-table entries go."""
    if _MADVISE is None:
        return
    for start, length in mapped:
        _MADVISE(start, length, mmap.MADV_DONTNEED)


def _round_up(n: int) -> int:
    return (n + MiB - 1) // MiB * MiB


_ENVS: dict[tuple[int, str], _Env] = {}
_ENVS_LOCK = threading.Lock()


def _forget_inherited_envs() -> None:
    """In a forked child: close the parent's environments (never use them: docs/ARCHITECTURE.md, "Engine
    facts") so the child can open the file afresh; py-lmdb refuses a second open of a path still open."""
    global _ENVS_LOCK
    _ENVS_LOCK = threading.Lock()  # another thread may have held it at fork time
    for shared in list(_ENVS.values()):
        try:
            shared.env.close()
        except lmdb.Error:
            pass
    _ENVS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_inherited_envs)


MAX_READERS = 1 << 16  # each reader slot is a line of the -lock file: 65,536 make it 4 MiB


def _check_options(path: Any, map_size: Any, sync: Any, metasync: Any, max_readers: Any) -> None:
    """Refuse what py-lmdb would turn into a bare TypeError/OverflowError/ValueError/UnicodeEncodeError, or
    silently misread (sync="no" is truthy)."""
    if not isinstance(path, str):
        raise InvalidArgument(f"the LMDB path must be a str, not {type(path).__name__}")
    if "\x00" in path:
        raise InvalidArgument(f"the LMDB path {path!r} contains a NUL character")
    try:
        path.encode("utf-8")  # py-lmdb passes the path to LMDB as strict UTF-8
    except UnicodeEncodeError:
        raise InvalidArgument(f"the LMDB path {path!r} is not valid UTF-8 (lone surrogates)") from None
    if map_size is not None and (isinstance(map_size, bool) or not isinstance(map_size, int)
                                 or not 0 < map_size <= MAP_LIMIT):
        raise InvalidArgument(f"map_size must be an int in 1..{MAP_LIMIT} or None, not {map_size!r}")
    for name, flag in (("sync", sync), ("metasync", metasync)):
        if not isinstance(flag, bool):
            raise InvalidArgument(f"{name} must be True or False, not {flag!r}")
    if isinstance(max_readers, bool) or not isinstance(max_readers, int) or not 0 < max_readers <= MAX_READERS:
        raise InvalidArgument(f"max_readers must be an int in 1..{MAX_READERS}, not {max_readers!r}")


@dataclass(frozen=True)
class Space:
    """An LMDB file's limits, in bytes. `map_limit`: the most this process maps (1536 MiB on 32-bit, where
    the whole file must fit in about 3 GiB of address space); `map_size`: mapped now (it grows on demand);
    `used`: pages in use, freed ones included (LMDB reuses those); `room`: what more can be written, the
    smaller of the map's and the disk's room, a lower bound since freed pages are reused first."""

    map_limit: int
    map_size: int
    used: int
    file_size: int
    disk_free: int
    room: int


class LmdbEngine:
    """A KVEngine on one LMDB file. Cheap to create: engines on the same file share one environment."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        map_size: int | None = None,
        sync: bool = True,
        metasync: bool = True,
        max_readers: int = 126,
    ) -> None:
        path = os.fspath(path)
        _check_options(path, map_size, sync, metasync, max_readers)
        real = os.path.realpath(path)
        if os.path.isdir(real):
            raise StorageError(f"{real} is a directory; the embedded store is a single file")
        parent = os.path.dirname(real) or "."
        if not os.path.isdir(parent):
            raise StorageError(f"directory {parent} does not exist")
        self.path = real
        key = (os.getpid(), real)
        # Full durability (sync and metasync) is done as metasync=False plus an explicit sync after each
        # durable commit: the same two flushes for a save, but one for the chunk batches of a large
        # upload, whose loss in an OS crash would only leave orphan chunks (never corruption).
        self._sync_after_commit = sync and metasync
        options = {"sync": sync, "metasync": metasync and not sync, "max_readers": max_readers,
                   "map_size": map_size}
        # Before the environment, held until close: compaction waits for it, an open waits for compaction.
        self._open_lock = OpenLock(real)
        try:
            with _ENVS_LOCK:
                shared = _ENVS.get(key)
                if shared is None:
                    shared = _ENVS[key] = _Env(real, options)
                shared.refs += 1
        except BaseException:
            self._open_lock.release_if_created()
            self._open_lock.close()
            raise
        self._shared: _Env | None = shared
        self._pid = os.getpid()

    @property
    def closed(self) -> bool:
        return self._shared is None

    def live_bytes(self) -> int:
        """Bytes of the pages the tables hold now: the file's size less its free pages (see `_Env.live_bytes`)."""
        shared = self._env()
        with shared.rw.shared():
            try:
                return shared.live_bytes()
            except lmdb.Error as exc:
                raise engine_error(self.path, exc, 0) from None

    def space(self) -> Space:
        """Where the file stands against the most this process can map and the disk's free space."""
        shared = self._env()
        with shared.rw.shared():
            try:
                map_size = shared.env.info()["map_size"]
                used = shared.used_bytes()
            except lmdb.Error as exc:
                raise engine_error(self.path, exc, 0) from None
        file_size = os.path.getsize(self.path)
        disk_free = shutil.disk_usage(os.path.dirname(self.path)).free
        # The file grows into the disk's free space; pages between `used` and its end are already there.
        room = max(0, min(MAP_LIMIT - used, disk_free + max(0, file_size - used)))
        return Space(map_limit=MAP_LIMIT, map_size=map_size, used=used, file_size=file_size,
                     disk_free=disk_free, room=room)

    def _env(self) -> _Env:
        shared = self._shared
        if shared is None:
            raise StoreClosed("the store is closed")
        if self._pid != os.getpid():
            raise StorageError("this store was opened before fork(); connect again in the child process")
        return shared

    def read(self) -> _ReadScope:
        return _ReadScope(self._env(), self.path)

    def write(self, fn: Callable[[KVTxn], T], *, size_hint: int = 0, durable: bool = True) -> T:
        shared = self._env()
        if shared.readonly:
            raise StorageError(f"{self.path}: the store is read-only here (opened without write permission)")
        if shared.writer == threading.get_ident():
            raise RuntimeError("nested write transaction on one thread (LMDB would deadlock)")
        request = WriteRequest(fn, size_hint, durable and self._sync_after_commit)
        return shared.group.submit(request, lambda batch: self._commit_group(shared, batch))

    def _commit_group(self, shared: _Env, batch: list[WriteRequest[Any]]) -> Callable[[], None] | None:
        """Run `batch` in as few transactions as the map allows, sync once if any wants it, and only
        then settle each request: none learns it succeeded before its commit is on disk. What was
        committed is settled even if a later transaction of the group fails (say the store is full), so
        nothing committed is ever run twice.

        The sync is returned (`GroupCommit.submit` runs it once the next leader may start): LMDB's
        data pages of these commits are already flushed (sync without metasync), so the next group's
        transaction may run while their meta page is synced. It reuses no page the previous snapshot
        holds, so whichever meta page a crash leaves names a whole tree."""
        committed: list[tuple[WriteRequest[Any], Any]] = []
        handed_over = False
        with shared.write_lock:
            shared.writer = threading.get_ident()
            try:
                remaining = batch
                while remaining:
                    done, remaining, outcome, hint = self._one_transaction(shared, remaining)
                    committed.extend(done)
                    # Outside every transaction of ours: now the map may change size.
                    if outcome == "resized":
                        shared.adopt_size()
                    elif outcome == "full":
                        try:
                            shared.grow(max(remaining[0].size_hint, hint if len(remaining) == 1 else 0))
                        except StoreFull as exc:  # the map may grow no more: the writer that needed it
                            remaining[0].fail(exc)  # fails, the others of the group run on
                            remaining = remaining[1:]
                for request, _ in committed:
                    request.committed()
                handed_over = True
            finally:
                shared.writer = None
                if not handed_over:  # an error on the way: settle what committed before it propagates
                    self._settle(shared, committed)
        return lambda: self._settle(shared, committed)

    def _settle(self, shared: _Env, committed: list[tuple[WriteRequest[Any], Any]]) -> None:
        failed: MicroblobError | None = None
        if any(r.durable for r, _ in committed):
            try:
                with shared.rw.shared():  # a resize or a close waits for the sync
                    shared.env.sync(True)
            except lmdb.Error as exc:
                failed = engine_error(self.path, exc)
        for request, result in committed:
            if failed is not None and request.durable:
                request.fail(failed)
            else:
                request.succeed(result)

    def _one_transaction(
        self, shared: _Env, requests: list[WriteRequest[Any]]
    ) -> tuple[list[tuple[WriteRequest[Any], Any]], list[WriteRequest[Any]], str, int]:
        """One write transaction over `requests`: (committed with their results, still to run, "full"
        or "resized" if the map must change first (else "committed"), bytes the rest want). A request
        that fails on its own error is settled with it here; one that needs a bigger map ends the
        transaction there: the ones before it commit, and the rest run in the next one."""
        if time.monotonic() - shared.last_reader_check > _READER_CHECK_EVERY:
            shared.check_readers()
        hint = sum(r.size_hint for r in requests)
        if hint >= _HEADROOM_CHECK_FROM:
            headroom = shared.headroom()
            # Making room up front only saves a retry: if LMDB cannot tell, a full map will say so.
            if headroom is not None and headroom < hint * 5 // 4 + 4 * MiB:
                shared.grow(hint)
        single = len(requests) == 1
        ran: list[tuple[WriteRequest[Any], Any]] = []
        outcome = "committed"
        with shared.rw.shared():
            try:
                txn = shared.env.begin(write=True)
            except lmdb.MapResizedError:
                txn, outcome = None, "resized"
            except lmdb.Error as exc:
                for r in requests:
                    r.fail(engine_error(self.path, exc))
                return [], [], "committed", 0
            if txn is not None:
                try:
                    for request in requests:
                        # Alone, a request runs in the transaction itself; in a group, each in a nested
                        # one (~1.5 us), so a request that fails takes back only its own writes.
                        inner = txn if single else shared.env.begin(write=True, parent=txn)
                        try:
                            result = request.run(_Txn(inner, shared))
                            if inner is not txn:
                                inner.commit()
                        except (lmdb.MapFullError, lmdb.MapResizedError) as exc:
                            if inner is not txn:
                                inner.abort()
                            outcome = "full" if isinstance(exc, lmdb.MapFullError) else "resized"
                            break
                        except lmdb.Error as exc:
                            if inner is not txn:
                                inner.abort()
                            request.fail(engine_error(self.path, exc, request.size_hint))
                        except Exception as exc:
                            if inner is not txn:
                                inner.abort()
                            request.fail(exc)
                        else:
                            ran.append((request, result))
                    if single and (requests[0].done or outcome != "committed"):
                        txn.abort()  # its own error, or a map to grow: nothing of it may commit
                    else:
                        txn.commit()
                except (lmdb.MapFullError, lmdb.MapResizedError) as exc:  # at commit: nothing was written
                    outcome = "full" if isinstance(exc, lmdb.MapFullError) else "resized"
                    ran = []
                except lmdb.Error as exc:  # the transaction failed (and LMDB ended it): nothing committed
                    with contextlib.suppress(lmdb.Error):
                        txn.abort()
                    for r in requests:
                        if not r.done:
                            r.fail(engine_error(self.path, exc, r.size_hint))
                    return [], [], "committed", 0
                except BaseException:
                    txn.abort()
                    raise
        ran_ids = {id(r) for r, _ in ran}
        left = [r for r in requests if not r.done and id(r) not in ran_ids]
        return ran, left, outcome, (sum(r.size_hint for r in left) if left else hint)

    def last_txnid(self) -> int:
        """The id of the file's last committed write transaction: one more per commit, whoever made it."""
        shared = self._env()
        with shared.rw.shared():
            return shared.env.info()["last_txnid"]

    def queued_writes(self) -> int:
        """Writers of this process waiting for the commit in flight to finish (they share the next)."""
        return self._env().group.queued

    def map_size(self) -> int:
        shared = self._env()
        with shared.rw.shared():  # not while another thread resizes the map (see _Env.headroom)
            return shared.env.info()["map_size"]

    def copy_to(self, dest: str, *, compact: bool = True) -> None:
        """A consistent (and compacted) copy of the file, safe while others write: the way to back up."""
        shared = self._env()
        while True:
            # The copy reads through its own snapshot of the map: like any read, it must keep this
            # process's resizes out, and adopt another process's growth (MapResizedError) and retry.
            with shared.rw.shared():
                try:
                    shared.env.copy(dest, compact=compact)
                    return
                except lmdb.MapResizedError:
                    # LMDB creates `dest` exclusively (an existing one fails with EEXIST instead), so
                    # the file left behind is this attempt's: remove it for the next one.
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(dest)
                except lmdb.Error as exc:
                    raise StorageError(f"{self.path}: cannot copy to {dest}: {exc}") from None
            shared.adopt_size()

    def compact(self) -> tuple[int, int]:
        """Rewrite the file in place without its free pages, rebuilt with full ones; (bytes before, bytes
        after). StoreInUse, with nothing changed, while another process or another engine of this process
        has it open."""
        shared = self._env()
        if shared.readonly:
            raise StorageError(f"{self.path}: cannot compact: the store is read-only here (opened without "
                               "write permission); nothing was changed")
        if not self._open_lock.held:
            raise StorageError(f"{self.path}: cannot compact: no file lock could be taken on "
                               f"{self.path}.open (a read-only directory, or a filesystem without flock)")
        busy = StoreInUse(f"{self.path}: cannot compact: another process or another Store has the file open; "
                          "close them (a server, a second connect()) and try again. Nothing was changed")
        with compaction_gate(self.path):
            if shared.refs != 1 or not self._open_lock.try_exclusive():
                raise busy
            try:
                return shared.compact()
            finally:
                self._open_lock.share()

    def close(self) -> None:
        shared, self._shared = self._shared, None
        if shared is None or self._pid != os.getpid():
            return
        try:
            with _ENVS_LOCK:
                shared.refs -= 1
                if shared.refs == 0:
                    _ENVS.pop((self._pid, shared.path), None)
                    with shared.write_lock, shared.rw.exclusive():
                        shared.env.close()
        finally:
            self._open_lock.close()  # after the environment: a compaction must never see it still open
