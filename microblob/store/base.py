"""What every Store is, for the modules the Store's core reaches (`Store.sync_to` -> sync -> copy,
retention) to recognise one without importing the core, which imports them in turn: `isinstance(x,
StoreBase)`. Nothing else lives here."""

from __future__ import annotations

__all__ = ["StoreBase"]


class StoreBase:
    """The base class of `microblob.Store` (store/core.py); it adds no behaviour."""

    __slots__ = ()
