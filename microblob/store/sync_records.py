"""The records a source keeps about what its sync destinations hold (`microblob.sync_confirmed`), and
the walk of its objects oldest first: what sync (store/syncing.py) writes and retention
(store/retention.py) reads, so neither imports the other's machinery."""

from __future__ import annotations

import datetime as _dt
import hashlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .records import SYNC_CONFIRMED, _same_life

if TYPE_CHECKING:  # pragma: no cover
    from .core import Store

_PAGE = 500  # objects examined per read while confirming or counting what is pending


def _confirmed(src: Store) -> Any:
    """One document per (destination, object) confirmed there, and per tombstone done there."""
    return src.internals.backend.collection(SYNC_CONFIRMED)


def _changed_since(src: Store, since: _dt.datetime | None) -> Iterator[list[dict[str, Any]]]:
    """Pages of (object_id, version, sha256, size, updated_at) of the objects updated at or after
    `since`, oldest first, walked along the updated_at index a page at a time (ties by id)."""
    objects = src.internals.objects
    fields = {"_id": 1, "version": 1, "sha256": 1, "size": 1, "updated_at": 1, "created_at": 1}
    low, seen_at_low = since, 0  # the page's start, and how many objects stamped exactly `low` are done
    while True:
        flt = {"updated_at": {"$gte": low}} if low is not None else {}
        page = objects.find(flt, projection=fields, sort=[("updated_at", 1), ("_id", 1)], skip=seen_at_low,
                            limit=_PAGE)
        if not page:
            return
        yield page
        if len(page) < _PAGE:
            return
        last = page[-1]["updated_at"]
        ties = sum(1 for d in page if d["updated_at"] == last)
        seen_at_low = seen_at_low + ties if last == low else ties
        low = last


def _dest_tag(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()[:24]


def _confirmations(state: Any, name: str, ids: list[str]) -> dict[str, dict[str, Any]]:
    return {d["object_id"]: d for d in state.find({"_id": {"$in": [_confirmation_id(name, i) for i in ids]}})}


def _is_confirmed(mine: dict[str, Any] | None, doc: dict[str, Any]) -> bool:
    """Whether a confirmation record (or a pending entry) names `doc`'s version: the same version,
    sha256 and life (an id deleted and saved again starts a new life, at version 0 again)."""
    return (mine is not None and mine.get("version") == doc.get("version") and mine.get("sha256") == doc.get("sha256")
            and _same_life(mine, doc.get("created_at")))


def _confirmation_id(name: str, object_id: str) -> str:
    """One confirmation per (destination, object): the destination's name hashed to a fixed width, so
    no object id can make two pairs collide (and no backend sees an odd character in an id)."""
    return f"obj:{_dest_tag(name)}:{object_id}"
