"""The file steps of compacting an LMDB store in place (the engine, `lmdb_kv._Env.compact`, runs them).

The new file is *rebuilt*: every table read in key order from one snapshot and appended (`MDB_APPEND`)
into a fresh environment, so its pages are full. LMDB's own compacting copy (`copyfd(compact=True)`) only
drops free pages and keeps every live page as it is: after deleting 3 objects in 4, pages stay a quarter
to half full, and measured (bench/bench_compact.py, 10k objects) the rebuilt file is 2.4x smaller (6.6 vs
15.8 MiB) for about 10x the time (0.2 s). The compacting copy remains the fallback when the file holds
tables other than microblob's, or the address space has no room to map a second environment.

The new file goes to `<path>.compacting` in the same directory, is fsynced, and replaces the store
with one `os.replace`, then the directory is fsynced. A kill at any moment leaves the old file or the new
one, each complete; a leftover `.compacting` file is only ever written by a compaction, never opened as a
store, and the next compaction removes it.

The old `-lock` file describes the old file (its transaction id is far above the copy's 1). LMDB's first
opener of a lock file nobody holds re-initialises it from the data file (`mdb_env_share_locks` takes the
meta page's txnid), so after a crash the next open is right. Beyond that, the swap holds LMDB's own
exclusive lock on byte 0 of the lock file, which also refuses compaction while a process outside
microblob's `.open` protocol (an older microblob, `mdb_stat`) has the file open, and empties the old lock
file before unlinking it: an LMDB opener that was already waiting on it then fails loudly instead of
pairing the stale transaction id with the new file.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from typing import Any

import lmdb

from .._exceptions import StorageError, StoreFull, StoreInUse

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

__all__ = ["REBUILD_BATCH_BYTES", "create_temp", "fsync_dir", "lmdb_lock_held", "rebuild", "remove_leftover",
           "temp_path"]

# Bytes appended per write transaction of the rebuild: its dirty pages stay in memory until the commit.
REBUILD_BATCH_BYTES = 16 * 1024 * 1024
_REBUILD_BATCH_ITEMS = 100_000


def temp_path(path: str) -> str:
    return path + ".compacting"


def remove_leftover(path: str) -> bool:
    """Remove a compacting copy a killed compaction left (the caller holds the compaction gate)."""
    try:
        os.unlink(temp_path(path))
        return True
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise StorageError(f"{path}: cannot remove the leftover {temp_path(path)}: {exc.strerror}") from None


def create_temp(path: str) -> int:
    """A new, empty `<path>.compacting` with the store file's permissions, opened for writing."""
    tmp = temp_path(path)
    try:
        mode = os.stat(path).st_mode & 0o7777
        return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StoreFull(f"{path}: cannot compact: the disk is full ({exc.strerror})") from None
        if exc.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
            raise StorageError(f"{path}: cannot compact: the directory is read-only here ({exc.strerror}); "
                               "nothing was changed") from None
        raise StorageError(f"{path}: cannot compact: cannot create {tmp}: {exc.strerror}") from None


def rebuild(source: lmdb.Environment, tables: dict[str, Any], dest: str, map_size: int) -> bool:
    """Append every table of `source` (`tables`: name -> open handle; one read snapshot) into a new
    environment at `dest` (an empty file), in key order, `REBUILD_BATCH_BYTES` per commit, and sync it.
    False, with `dest` left for the caller to remove, when a rebuild cannot hold the file: the main table
    names tables other than `tables` (only LMDB's compacting copy keeps them all), or there is no room to
    map `dest`."""
    with source.begin(buffers=False) as txn:
        present = set(txn.cursor().iternext(keys=True, values=False))
    if not present <= {name.encode() for name in tables}:
        return False
    try:
        target = lmdb.open(dest, subdir=False, map_size=map_size, max_dbs=len(tables) + 2, lock=False,
                           sync=False, metasync=False)
    except lmdb.MemoryError:
        return False
    try:
        with source.begin(buffers=True) as txn:
            for name, src_db in tables.items():
                if name.encode() not in present:
                    continue
                dst_db = target.open_db(name.encode())
                with txn.cursor(db=src_db) as cursor:
                    if cursor.first():
                        for batch in _batches(cursor.iternext(keys=True, values=True)):
                            _append(target, dst_db, batch)
        target.sync(True)
    finally:
        target.close()
    return True


def _batches(items: Iterator[tuple[Any, Any]]) -> Iterator[list[tuple[Any, Any]]]:
    while True:
        batch: list[tuple[Any, Any]] = []
        size = 0
        for key, value in items:
            batch.append((key, value))
            size += len(key) + len(value)
            if size >= REBUILD_BATCH_BYTES or len(batch) >= _REBUILD_BATCH_ITEMS:
                break
        if not batch:
            return
        yield batch


def _append(target: lmdb.Environment, db: Any, batch: list[tuple[Any, Any]]) -> None:
    """One commit of `batch` at the end of the table; the map doubles if it is full (no txn is open then)."""
    while True:
        try:
            with target.begin(write=True) as txn:
                _, added = txn.cursor(db=db).putmulti(batch, append=True)
                if added != len(batch):  # append refuses a key out of order: never drop it silently
                    raise StorageError(f"{target.path()}: the rebuild appended {added} of {len(batch)} entries")
            return
        except lmdb.MapFullError:
            target.set_mapsize(target.info()["map_size"] * 2)


def fsync_dir(path: str) -> None:
    """Make the rename durable: fsync the directory that holds `path`."""
    try:
        fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise StorageError(f"{path}: compacted, but the directory could not be synced: {exc.strerror}") from None


@contextlib.contextmanager
def lmdb_lock_held(path: str) -> Iterator[None]:
    """LMDB's exclusive lock (fcntl, byte 0 of `<path>-lock`) while the file is swapped, with this process's
    own environment closed. StoreInUse if another process holds the file open without `.open`. On success,
    the old lock file is emptied and removed before the lock is released (module doc)."""
    lock = path + "-lock"
    if fcntl is None:  # pragma: no cover - not POSIX
        yield
        return
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        yield  # no lock file: nobody has ever attached with one
        return
    except OSError as exc:
        raise StorageError(f"{path}: cannot compact: cannot open {lock}: {exc.strerror}") from None
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 0)
        except OSError:
            raise StoreInUse(f"{path}: cannot compact: another process has the file open outside microblob's "
                             "open lock (an older microblob or an LMDB tool); close it and try again. Nothing "
                             "was changed") from None
        yield
        os.ftruncate(fd, 0)
        os.unlink(lock)
    finally:
        os.close(fd)  # releases LMDB's lock (and any other fcntl lock of ours on it: none is left)
