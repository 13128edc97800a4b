"""Fresh ids for documents, objects, files and workflows: `uuid.uuid4().hex` (128 bits, 32 hex digits).

One place, so `uuid` (and the `platform` module it loads, ~3 ms) is imported by the first write, not
by `import microblob`.
"""

from __future__ import annotations

__all__ = ["new_id"]


def new_id() -> str:
    """A random 32-hex-digit id (a version-4 UUID's hex form)."""
    import uuid

    return uuid.uuid4().hex
