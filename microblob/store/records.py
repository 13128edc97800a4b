"""Version records: how a history entry names its version and its object's life. Used by
the store, maintenance and copy alike, so it sits below all three."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# What a store keeps about its sync destinations (store/syncing.py): one document per destination, one
# per object confirmed there, and a tombstone per object deleted while it has any destination (a
# deletion can travel only if it was written down). Three collections, so each is read without the
# others: the confirmations grow with the store, the destinations and tombstones stay small.
SYNC_DESTINATIONS = "microblob.sync"
SYNC_CONFIRMED = "microblob.sync_confirmed"
TOMBSTONES = "microblob.tombstones"


def _version_of(doc: Mapping[str, Any]) -> int:
    """A document written before versioning existed has no version: it is version 0."""
    version = doc.get("version")
    return version if isinstance(version, int) and not isinstance(version, bool) else 0


def _history_id(object_id: str, version: int) -> str:
    return f"{object_id}:{version}"


def _same_life(entry: Mapping[str, Any], created_at: Any) -> bool:
    """Whether a history entry belongs to the object created at `created_at` (entries written before
    lives were told apart may lack the field: they count as the current life's)."""
    mine = entry.get("created_at")
    return mine is None or created_at is None or mine == created_at
