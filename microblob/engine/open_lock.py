"""Who has an LMDB store file open, across processes and across Stores of one process: `<path>.open`.

LMDB's compacting copy starts the new file at transaction 1. An environment still open on the old file,
or one that attaches during the swap and trusts the old `-lock` file's (higher) transaction id, would read
the wrong meta page: data vanishes. So compaction needs the file to itself, and knowing that takes a lock
that covers every opener, including a second Store in the same process.

POSIX `fcntl` locks cannot say that: they belong to the process, and closing *any* descriptor of the file
drops all of them. BSD `flock` locks belong to the open file description, so two Stores in one process
conflict like two processes do. Every LmdbEngine takes `LOCK_SH` on the sidecar `<path>.open` before it
opens the environment and holds it until close; compaction takes `LOCK_EX`. The sidecar is never renamed
or removed (a lock on a replaced inode would protect nothing).

Linux drops a `LOCK_SH` when a conversion to `LOCK_EX | LOCK_NB` fails (measured: another descriptor then
gets `LOCK_EX`), so two compactions attempted at once could each see the other's shared lock vanish.
Compactors therefore first take `LOCK_EX | LOCK_NB` on a second sidecar, `<path>.compact-lock`
(`compaction_gate`): only its holder ever asks for `LOCK_EX` on `<path>.open`, so after a failed
conversion it takes `LOCK_SH` back at once, with nobody able to slip in between.

A store in a directory we may not write, whose sidecar does not exist, is opened without the lock (it is
read-only to us; see README, "Guarantees").
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
import time
from collections.abc import Iterator

from .._exceptions import StorageError, StoreInUse

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no flock, no compaction
    fcntl = None  # type: ignore[assignment]

__all__ = ["OPEN_WAIT", "OpenLock", "compaction_gate", "open_lock_path"]

log = logging.getLogger("microblob.store")

# How long an open waits for another process's compaction before giving up (StoreInUse). Compaction
# copies the live data once: minutes only for stores of hundreds of GB.
OPEN_WAIT = 600.0
_POLL = 0.05

# Descriptors of this process's open locks: a forked child closes its copies (see _close_inherited). Kept
# as a dict so the fork hook needs no lock of ours (another thread may hold one at fork time).
_HELD: dict[int, None] = {}
_HELD_LOCK = threading.Lock()


def open_lock_path(path: str) -> str:
    return path + ".open"


def _unsupported(exc: OSError) -> bool:
    """flock refused for what the filesystem is, not for a holder (some network filesystems)."""
    return exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL)


class OpenLock:
    """`LOCK_SH` on `<path>.open` for as long as one LmdbEngine has `path` open. Taking it waits (up to
    `wait` seconds, then StoreInUse) while a compaction holds `LOCK_EX`."""

    def __init__(self, path: str, *, wait: float = OPEN_WAIT) -> None:
        self.path = path
        self.fd: int | None = None
        self.created = False
        if fcntl is None:
            return
        fd = self._open_sidecar(open_lock_path(path))
        if fd is None:
            return
        try:
            if not self._take_shared(fd, wait):
                os.close(fd)
                return
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        with _HELD_LOCK:
            _HELD[fd] = None

    @property
    def held(self) -> bool:
        return self.fd is not None

    def _open_sidecar(self, sidecar: str) -> int | None:
        flags = os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
        try:
            fd = os.open(sidecar, os.O_RDWR | os.O_CREAT | os.O_EXCL | flags, 0o666)
            self.created = True
            return fd
        except FileExistsError:
            pass
        except OSError:
            # A directory we may not write: an existing sidecar still locks (flock needs no write access).
            pass
        for mode in (os.O_RDWR, os.O_RDONLY):
            try:
                return os.open(sidecar, mode | flags)
            except OSError:
                continue
        return None

    def _take_shared(self, fd: int, wait: float) -> bool:
        """True once LOCK_SH is held; False when the filesystem has no flock."""
        assert fcntl is not None
        deadline = time.monotonic() + wait
        said = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                if said:
                    log.info("%s: the compaction finished; opening", self.path)
                return True
            except BlockingIOError:
                pass
            except OSError as exc:
                if _unsupported(exc):
                    return False
                raise StorageError(f"{self.path}: cannot lock {open_lock_path(self.path)}: {exc}") from None
            if not said:
                log.info("%s is being compacted (by another process or Store): waiting for it, at most %g s",
                         self.path, wait)
                said = True
            if time.monotonic() >= deadline:
                raise StoreInUse(f"{self.path} is still being compacted after {wait:g} s (by another process "
                                 "or Store); open it again when the compaction has finished")
            time.sleep(_POLL)

    def try_exclusive(self) -> bool:
        """Convert to LOCK_EX if no other opener holds the file; False (still holding LOCK_SH) otherwise.
        Only under `compaction_gate`, which keeps the dropped-then-retaken LOCK_SH safe (module doc)."""
        assert fcntl is not None and self.fd is not None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            fcntl.flock(self.fd, fcntl.LOCK_SH)  # only a gate holder takes LOCK_EX: this cannot wait
            return False

    def share(self) -> None:
        """Back from LOCK_EX to LOCK_SH."""
        assert fcntl is not None and self.fd is not None
        fcntl.flock(self.fd, fcntl.LOCK_SH)

    def release_if_created(self) -> None:
        """After the open failed (the path is no store): remove the sidecar if this call created it and
        nobody else holds it, so a failed open leaves nothing behind."""
        fd = self.fd
        if fd is None or not self.created or fcntl is None:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fcntl.flock(fd, fcntl.LOCK_SH)
            return
        with contextlib.suppress(OSError):
            os.unlink(open_lock_path(self.path))

    def close(self) -> None:
        fd, self.fd = self.fd, None
        if fd is None:
            return
        with _HELD_LOCK:
            _HELD.pop(fd, None)
        os.close(fd)  # releases the lock (the open file description's last descriptor in this process)


@contextlib.contextmanager
def compaction_gate(path: str) -> Iterator[None]:
    """`LOCK_EX | LOCK_NB` on `<path>.compact-lock` for one compaction; StoreInUse if another runs."""
    if fcntl is None:  # pragma: no cover - not POSIX
        raise StorageError(f"{path}: compaction needs flock(), which this platform lacks")
    gate = path + ".compact-lock"
    try:
        fd = os.open(gate, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0), 0o666)
    except OSError as exc:
        raise StorageError(f"{path}: cannot compact: cannot create {gate}: {exc.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreInUse(f"{path}: cannot compact: another process or Store is compacting it; "
                             "nothing was changed") from None
        except OSError as exc:
            raise StorageError(f"{path}: cannot compact: no file locks here ({exc.strerror})") from None
        yield
    finally:
        os.close(fd)


def _close_inherited() -> None:
    """In a forked child: close the parent's lock descriptors without unlocking (LOCK_UN would release
    the parent's lock, which the child's copy shares), so the child holds nothing of its parent's."""
    global _HELD_LOCK
    _HELD_LOCK = threading.Lock()
    for fd in list(_HELD):
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_inherited)
