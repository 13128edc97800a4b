"""Writing bytes to a file the user named (`get -o`, `BlobObject.save()`, `Blob.save()`).

A regular file, or a path that does not exist yet, is replaced atomically: the bytes go to a temp file
beside it, are fsync'd, and are renamed over it, so a reader sees the old file or the whole new one. The
new file has the mode a plain `open()` would give it (`0o666 & ~umask`); an existing file keeps its mode
(and, where allowed, its owner). Anything else that already exists at the path (a character device such as
/dev/null or /dev/full, a FIFO, a socket) is opened and written straight into: renaming over it would
replace the device or pipe with a regular file. A symlink is followed, so the file it names is replaced and
the link stays.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Iterator
from typing import BinaryIO

from ._exceptions import InvalidArgument
from ._paths import check_path

__all__ = ["output_file", "refuse_store"]

_TEMP_PREFIX = ".microblob-"


@contextlib.contextmanager
def output_file(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """A binary file whose bytes end up at `path` when the block succeeds (see the module docstring).

    On failure a replaced file is left as it was and the temp file removed; a device or FIFO has had
    whatever was written before the failure."""
    name = check_path(path)
    try:
        existing: os.stat_result | None = os.stat(name)
    except FileNotFoundError:
        existing = None
    if existing is not None and not stat.S_ISREG(existing.st_mode):
        if stat.S_ISDIR(existing.st_mode):
            raise IsADirectoryError(21, "Is a directory", name)
        # Opened by the name given, not a resolved one: /dev/stdout's target may be "pipe:[…]". O_TRUNC
        # means nothing to a device or FIFO; O_CREAT is left out so a path that went away since the stat
        # is an error, not a regular file written in place.
        with open(os.open(name, os.O_WRONLY | os.O_CLOEXEC), "wb") as out:
            yield out
        return
    target = os.path.realpath(name) if os.path.islink(name) else os.path.abspath(name)
    refuse_store(target)
    yield from _replace(target, existing)


_LMDB_MAGIC = b"\xde\xc0\xef\xbe"  # LMDB's meta page magic (0xBEEFC0DE), 16 bytes into its data file


def refuse_store(path: str) -> None:
    """Refuse to write over an embedded store (an LMDB data file) or its lock file: `get -o s.db` or
    `export s.db s.db` replaced the store with the bytes asked for, and every object in it was gone."""
    for candidate in [path] + ([path[: -len("-lock")]] if path.endswith("-lock") else []):
        if not os.path.isfile(candidate):  # a FIFO or a device: opening it to read could block
            continue
        try:
            with open(candidate, "rb") as fh:
                head = fh.read(20)
        except OSError:  # none there, or not readable: nothing this could destroy that we can tell
            continue
        if head[16:20] == _LMDB_MAGIC:
            raise InvalidArgument(f"{path} is {'the lock file of ' if candidate != path else ''}an embedded "
                                  "store: writing over it would destroy every object in it")


def _replace(target: str, existing: os.stat_result | None) -> Iterator[BinaryIO]:
    directory, name = os.path.split(target)
    tmp, fd = _create_temp(directory, name, existing)
    try:
        with open(fd, "wb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _create_temp(directory: str, name: str, existing: os.stat_result | None) -> tuple[str, int]:
    """A new temp file in `directory`, already carrying the final file's mode, before any byte is in it.

    A new file is created with 0o666 so the kernel applies the umask (and any default ACL), exactly as
    `open(path, "wb")` would: reading the umask with `os.umask()` would change it process-wide for a
    moment, racing other threads. A replacement starts at 0o600 and takes the old file's mode and owner."""
    for _ in range(100):
        tmp = os.path.join(directory, f"{_TEMP_PREFIX}{name}.{secrets.token_hex(6)}.part")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                         0o666 if existing is None else 0o600)
        except FileExistsError:
            continue
        if existing is not None:
            try:
                if (existing.st_uid, existing.st_gid) != (os.getuid(), os.getgid()):
                    with contextlib.suppress(PermissionError):  # only root (or the group's member) may
                        os.fchown(fd, existing.st_uid, existing.st_gid)
                os.fchmod(fd, stat.S_IMODE(existing.st_mode))
            except BaseException:
                os.close(fd)
                os.unlink(tmp)
                raise
        return tmp, fd
    raise FileExistsError(17, "no free temp file name", os.path.join(directory, _TEMP_PREFIX + name))
