"""Fresh ids for documents, objects, files and workflows: version-4 UUIDs in hex (128 bits, 32 digits).

Built from `os.urandom` directly, as `uuid.uuid4().hex` would be (the same bits, the version and variant
set), for a fifth of the time: every save makes two (its object's and its file's). And `uuid` (with the
`platform` module it loads, ~3 ms) stays out of `import microblob`.
"""

from __future__ import annotations

import os

__all__ = ["new_id"]


def new_id() -> str:
    """A random 32-hex-digit id (a version-4 UUID's hex form)."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # the RFC 4122 variant
    return raw.hex()
