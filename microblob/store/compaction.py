"""`store.compact()`: rewrite the store's file without its free pages, and say how much that gave back.

The engine does the work (the embedded file: `engine/lmdb_kv.py`, `engine/open_lock.py`,
`engine/lmdb_compact.py`; docs/ARCHITECTURE.md, "Compaction"); this module times it and reports.
"""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING

from .._exceptions import UnsupportedOperation

if TYPE_CHECKING:  # pragma: no cover
    from .core import Store

__all__ = ["CompactReport", "compact"]


@dataclasses.dataclass(frozen=True)
class CompactReport:
    """The file compacted and its size before and after, in bytes; `seconds` the compaction took."""

    path: str
    before_bytes: int
    after_bytes: int
    seconds: float

    @property
    def reclaimed_bytes(self) -> int:
        return self.before_bytes - self.after_bytes


def compact(store: Store) -> CompactReport:
    backend = store.internals.backend
    run = getattr(backend, "compact", None)
    if run is None:
        raise UnsupportedOperation(f"{store.uri}: this backend cannot compact; nothing was changed")
    began = time.monotonic()
    path, before, after = run()
    return CompactReport(path=path, before_bytes=before, after_bytes=after, seconds=time.monotonic() - began)
