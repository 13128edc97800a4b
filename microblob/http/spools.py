"""Upload spools: the temporary files a server streams request bodies into, and the clean-up of the
ones a killed server left behind.

A spool's name says who owns it: ``microblob-upload-<pid>.<start>-<random>``, where `start` is the
process's start time (from /proc), so a pid the system has since given to another process does not
keep a dead server's spools alive. At start-up a server removes the spools whose owner is gone; the
spools of every live process (another server sharing TMPDIR, say) are left alone, open or not (an
upload becomes a Blob that still lives in its spool file after the upload finished). Spools named the
older way, without an owner, are removed once untouched for a day.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import time
from typing import IO, Any

__all__ = ["PREFIX", "clean_stale_spools", "open_spool"]

PREFIX = "microblob-upload-"
_OWNED = re.compile(re.escape(PREFIX) + r"(\d+)\.(\d*)-")
LEGACY_AGE = 24 * 3600.0

log = logging.getLogger("microblob.server")


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return None


def _owner_tag() -> str:
    return f"{os.getpid()}.{_start_time(os.getpid()) or ''}"


def open_spool(directory: str | None) -> IO[bytes]:
    """A new spool file in `directory` (TMPDIR if None), named for this process; the caller closes
    and removes it."""
    return tempfile.NamedTemporaryFile(  # noqa: SIM115 - the caller closes it
        dir=directory, prefix=f"{PREFIX}{_owner_tag()}-", delete=False)


def _owner_alive(pid: int, start: str) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another user
    except OverflowError:
        return False
    now = _start_time(pid)
    return not start or now is None or now == start


def _stale(name: str, path: str, now: float) -> bool:
    match = _OWNED.match(name)
    if match is not None:
        return not _owner_alive(int(match.group(1)), match.group(2))
    try:
        return now - os.stat(path).st_mtime > LEGACY_AGE
    except OSError:
        return False


def clean_stale_spools(directory: str | None = None) -> list[str]:
    """Remove the spools in `directory` (TMPDIR if None) whose owner is gone; return their paths."""
    where = directory or tempfile.gettempdir()
    removed: list[str] = []
    try:
        entries: Any = os.scandir(where)
    except OSError:
        return removed
    now = time.time()
    with entries:
        for entry in entries:
            if not entry.name.startswith(PREFIX):
                continue
            try:
                if not entry.is_file(follow_symlinks=False) or not _stale(entry.name, entry.path, now):
                    continue
                os.unlink(entry.path)
            except OSError:
                continue  # not ours to remove (another user's), or gone meanwhile
            removed.append(entry.path)
    if removed:
        log.info("removed %d upload spool(s) left by servers that are gone, in %s", len(removed), where)
    return removed
