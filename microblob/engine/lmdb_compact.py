"""The file steps of compacting an LMDB store in place (the engine, `lmdb_kv._Env.compact`, runs them).

The compacting copy goes to `<path>.compacting` in the same directory, is fsynced, and replaces the store
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

from .._exceptions import StorageError, StoreFull, StoreInUse

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

__all__ = ["create_temp", "fsync_dir", "lmdb_lock_held", "remove_leftover", "temp_path"]


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
