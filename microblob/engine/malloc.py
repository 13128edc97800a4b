"""glibc's allocator, set once per process for streaming large payloads (the store and the server call it).

Two defaults of glibc cost microblob most of its large-object throughput and memory bound, measured here:

- The trim threshold. LMDB allocates a private copy of every page a write transaction touches and frees
  them all at commit: 4 MiB per chunk batch of a large save (`_backend.DEFAULT_BATCH_BYTES`). Below that
  (glibc's dynamic threshold, or 2.25 MiB), the heap hands those pages back to the OS
  at each commit and page-faults them in again for the next batch: 256 MiB saves ran at 565 MB/s, and at
  1,030-1,370 MB/s with the threshold at two batches (interleaved, one run). Each thread's heap may keep
  that much free memory, so it is no higher: at 32 MiB, 20 server threads streaming downloads held 170 MiB.
- The mmap threshold. glibc raises it to the size of the first large block freed; from then on such blocks
  come from heaps that rarely shrink, so 1,000 expired 1 MiB in-memory Blobs left a server 700-850 MiB
  larger for good. Fixed just above the 1 MiB streaming buffers (blob.CHUNK_SIZE), bigger blocks get their
  own mapping and go back to the OS when freed; the buffers that streaming allocates by the thousand stay
  on the heap (mapping each one took reads of 256 MiB in 1 MiB pieces 4x as long).

Process-wide, so left alone wherever the environment already chose (MALLOC_MMAP_THRESHOLD_,
MALLOC_TRIM_THRESHOLD_ or a malloc GLIBC_TUNABLES); a no-op on anything but glibc.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading

from .backend import DEFAULT_BATCH_BYTES

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "tune_malloc"]

MiB = 1024 * 1024
MMAP_THRESHOLD = MiB + 128 * 1024  # just above blob.CHUNK_SIZE (1 MiB)
TRIM_THRESHOLD = 2 * DEFAULT_BATCH_BYTES  # 8 MiB: a commit's page copies stay on the heap for the next batch
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3

_lock = threading.Lock()
_tuned: bool | None = None  # None: not tried yet; then whether the settings were applied


def tune_malloc() -> bool:
    """Apply the settings once per process; True if they are in effect (here, by us)."""
    global _tuned
    with _lock:
        if _tuned is None:
            _tuned = _apply()
        return _tuned


def _chosen_by_environment() -> bool:
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return True
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    return "mmap_threshold" in tunables or "trim_threshold" in tunables


def _apply() -> bool:
    if not sys.platform.startswith("linux") or _chosen_by_environment():
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - glibc only (musl has no mallopt thresholds)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # Fixing the mmap threshold turns glibc's dynamic rule off for both, so the trim threshold is set too.
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
