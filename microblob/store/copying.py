"""`copy(src, dst)`: objects, their whole history, workflows and bytes from one store to another.

The Raspberry Pi's file to the institute's MongoDB, an offline laptop's week of data to the lab, or a
Mongita directory onto the embedded default. What makes it safe to run again and again:

- Idempotent: every version is compared by `version`, life (`created_at`) and `sha256` first; a
  second run copies nothing and its report says so.
- Only missing bytes travel: a file whose `_id` the destination holds with the same `sha256` and length
  is not read at all. Bytes stream chunk by chunk in batches of at most a few MiB (constant memory),
  are re-hashed on the way, and a mismatch with the source's `sha256` stops that object.
- Resumable: per object, bytes go first (under a lease in `fs.pending`, like any upload), then the
  history entries, then the latest document last, so an interrupted run leaves nothing visible that is
  partial, and the next run picks up where it stopped.
- Exact: `version`, `prev_version`, `created_at`, `updated_at`, history entries and files documents
  (`uploadDate` included) arrive as they are at the source.
- Additive and one-way: objects deleted at the source are not deleted at the destination. An object
  that has moved on independently at the destination (a different life of the id, a newer version, or
  the same version with other bytes) is left alone and reported in `CopyReport.problems`.

File ids: GridFSBucket (and mongofiles) give files ObjectId ids, which the embedded and Mongita stores
cannot hold; copying such a file to them stores it under the ObjectId's 24-hex-digit string (and
rewrites `file_id` in the versions that reference it). Into MongoDB, ids are kept as they are.
"""

from __future__ import annotations

import datetime as _dt
import os
from typing import TYPE_CHECKING, Any

from .._exceptions import InvalidArgument
from .base import StoreBase
from .copier import CopyReport, Progress, _Copier

if TYPE_CHECKING:  # pragma: no cover
    from .core import Store


__all__ = ["CopyReport", "copy"]


def copy(
    src: Store | str | os.PathLike[str],
    dst: Store | str | os.PathLike[str],
    since: _dt.datetime | None = None,
    progress: Progress | None = None,
) -> CopyReport:
    """Copy objects (every version of their history), workflows and files from `src` to `dst`.

    `src`/`dst`: Stores, or URIs/paths for `microblob.connect` (opened and closed here). `since`: only
    objects updated at or after this time (naive datetimes are UTC), and files uploaded since then.
    `progress(bytes_done, bytes_total)`: called as bytes are copied (and once at the start), e.g. to
    drive a progress bar; `bytes_total` is what the destination lacks. Returns a `CopyReport`.
    Idempotent and resumable: see the module documentation of `microblob.store.copying`.
    """
    if since is not None:
        if not isinstance(since, _dt.datetime):
            raise InvalidArgument(f"since must be a datetime or None, not {type(since).__name__}")
        if since.tzinfo is None:
            since = since.replace(tzinfo=_dt.timezone.utc)
    if progress is not None and not callable(progress):
        raise InvalidArgument("progress must be callable(bytes_done, bytes_total)")
    source, close_source = _open(src, "src", create=False)  # a mistyped source must not become an empty store
    try:
        target, close_target = _open(dst, "dst", create=True)
        try:
            same_uri = source.uri == target.uri and not source.uri.startswith("memory:")
            if source is target or source.backend is target.backend or same_uri:
                raise InvalidArgument(f"source and destination are the same store ({source.uri})")
            return _Copier(source, target, since, progress).run()
        finally:
            if close_target:
                target.close()
    finally:
        if close_source:
            source.close()


def _open(store: Any, name: str, *, create: bool) -> tuple[Store, bool]:
    if isinstance(store, StoreBase):
        store.internals.check_open()
        return store, False
    if isinstance(store, (str, os.PathLike)):
        from .connect import connect

        return connect(store, create=create), True
    raise InvalidArgument(f"{name} must be a Store, a URI or a path, not {type(store).__name__}")
