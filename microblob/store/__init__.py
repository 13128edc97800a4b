"""The object model over any backend: objects and their versions, the chunked file store,
workflows, maintenance (verify, gc), copy between stores, and `connect`.

May import: the base, the Blob value (`microblob.blob`) and `microblob.engine`. See docs/ARCHITECTURE.md.

`microblob.store` is also the old import path of the module that is now
`microblob.store.core`: its public names are re-exported here."""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .core import HISTORY_FIELDS, INLINE_LIMIT, Store

__all__ = ["HISTORY_FIELDS", "INLINE_LIMIT", "Store"]


def __getattr__(name: str) -> Any:
    """`Store` and its constants on first use: importing a submodule (`microblob.store.connect`, which
    every CLI start needs) does not load the whole object model."""
    if name not in __all__:
        raise AttributeError(f"module 'microblob.store' has no attribute {name!r}")
    from . import core

    return getattr(core, name)
