"""The object model over any backend: objects and their versions, the chunked file store,
workflows, maintenance (verify, gc), copy between stores, and `connect`.

May import: the base, the Blob value (`microblob.blob`) and `microblob.engine`. See docs/ARCHITECTURE.md.

`microblob.store` is also the old import path of the module that is now
`microblob.store.core`: its public names are re-exported here."""

from .core import HISTORY_FIELDS, INLINE_LIMIT, Store

__all__ = ["HISTORY_FIELDS", "INLINE_LIMIT", "Store"]
