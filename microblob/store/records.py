"""Version records: how a history entry names its version and its object's life. Used by
the store, maintenance and copy alike, so it sits below all three."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from .._paths import check_path

# What a store keeps about its sync destinations (store/syncing.py): one document per destination, one
# per object confirmed there, and a tombstone per object deleted while it has any destination (a
# deletion can travel only if it was written down). Three collections, so each is read without the
# others: the confirmations grow with the store, the destinations and tombstones stay small.
SYNC_DESTINATIONS = "microblob.sync"
SYNC_CONFIRMED = "microblob.sync_confirmed"
TOMBSTONES = "microblob.tombstones"
TOMBSTONE_LIVES = 64  # deleted lives of one id its tombstone remembers (a sync round runs every few seconds)

# A version whose bytes retention evicted (store/retention.py) keeps `file_id`, `size` and `sha256` and
# gains these two: when, and to which destination (its name: the URI without credentials). Its files
# document and chunks are gone from this store; readers fetch the bytes from that destination.
EVICTED_AT = "evicted_at"
EVICTED_TO = "evicted_to"


def destination_name(dst: Any) -> str:
    """How a destination is named in the source's records: its URI without credentials (a Store's
    `uri`, a URI, or a path made absolute)."""
    uri = dst.uri if hasattr(dst, "uri") and not isinstance(dst, (str, os.PathLike)) else check_path(dst, "destination")
    if "://" not in uri:
        uri = os.path.realpath(uri)
    scheme, sep, rest = uri.partition("://")
    if sep and "@" in rest.split("/", 1)[0]:
        rest = rest.split("@", 1)[1]  # user:password@host -> host
    return f"{scheme}{sep}{rest}"


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


def tombstone_lives(tomb: Mapping[str, Any] | None) -> list[list[Any]]:
    """The [created_at, last version] of each life of an id its tombstone names, oldest first: the last
    one deleted, and (`lives`) the earlier ones deleted since, which a destination may still hold. A
    tombstone written before `lives` existed names its one life."""
    if tomb is None:
        return []
    lives = tomb.get("lives")
    if isinstance(lives, list):
        return [list(life) for life in lives if isinstance(life, (list, tuple)) and len(life) == 2]
    return [[tomb.get("created_at"), tomb.get("version")]]
