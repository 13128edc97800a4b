"""Flowcept's own MongoDB layout of object documents, next to microblob's.

Flowcept 1.0.3 writes `objects` / `object_history` documents with `object_type`, `grid_fs_file_id` (a
GridFS file), `data` (bytes kept in the document), `data_sha256`, `object_size_bytes` and epoch-float
timestamps, under a MongoDB ObjectId `_id`. microblob reads them as its own (`as_microblob`), a filter
on either `type` or `object_type` matches both layouts (`alias_type`), and the Flowcept facade shows
microblob's documents in Flowcept's field names (`as_flowcept`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..blob import GENERIC_CONTENT_TYPE
from ..engine.query import check_depth

__all__ = ["FLOWCEPT_LAYOUT", "alias_type", "as_flowcept", "as_microblob", "is_flowcept_doc"]

FLOWCEPT_LAYOUT = "flowcept"
"""The value of the `layout` key `as_microblob` adds (never stored) to a document it translated."""

_MARKERS = ("grid_fs_file_id", "object_type", "data_sha256", "object_size_bytes")
# Fields of Flowcept's own layout beside microblob's (what `microblob ls --sort` also accepts).
FLOWCEPT_FIELDS = (*_MARKERS, "storage_type")
_LOGICAL = ("$and", "$or", "$nor")


def is_flowcept_doc(doc: Mapping[str, Any]) -> bool:
    """Written by Flowcept's DAO: its field names, none of microblob's (`storage` is in every one of those)."""
    return "storage" not in doc and any(k in doc for k in _MARKERS)


def as_microblob(doc: Mapping[str, Any]) -> dict[str, Any]:
    """A document in microblob's field names (microblob's own documents come back unchanged)."""
    if not is_flowcept_doc(doc):
        return doc if isinstance(doc, dict) else dict(doc)
    out = dict(doc)
    out.setdefault("type", doc.get("object_type"))
    # By the file id, not by `data`: a projection may have left the bytes out.
    if "grid_fs_file_id" in doc:
        out["storage"] = "chunked"
        out["file_id"] = doc.get("grid_fs_file_id")
        out["size"] = doc.get("object_size_bytes")
    else:
        out["storage"] = "inline"
        out["size"] = doc.get("object_size_bytes")  # as recorded (a document read without its bytes agrees)
    out["sha256"] = doc.get("data_sha256") if doc.get("data_hash_algo", "sha256") == "sha256" else None
    out.setdefault("content_type", GENERIC_CONTENT_TYPE)
    out["custom_metadata"] = doc.get("custom_metadata") or {}
    out["tags"] = doc.get("tags") or []
    out["layout"] = FLOWCEPT_LAYOUT
    return out


def as_flowcept(doc: Mapping[str, Any]) -> dict[str, Any]:
    """A microblob document with Flowcept's field names added (microblob's stay): what Flowcept code
    reads from `Flowcept.db.query(collection="objects")`."""
    out = dict(doc)
    out.pop("layout", None)
    if is_flowcept_doc(doc):
        return out
    out["object_type"] = doc.get("type")
    if doc.get("storage") == "chunked" and "file_id" in doc:
        out["grid_fs_file_id"] = doc["file_id"]
    if doc.get("sha256") is not None:
        out["data_sha256"] = doc["sha256"]
        out["data_hash_algo"] = "sha256"
    if doc.get("size") is not None:
        out["object_size_bytes"] = doc["size"]
    return out


def alias_type(filter: Any) -> Any:
    """A filter in which a condition on Flowcept's `object_type` holds for the object's type in either
    layout: on `object_type` where a document has that field, else on `type`. Negations ($ne, $exists:
    false) stay right, since each document is tested on one field only. A condition on `type` stays as
    it is, so the planner can answer it from the `type` index."""
    if not isinstance(filter, Mapping):
        return filter
    check_depth(filter, "a filter")  # before recursing: a 10,000-level or cyclic filter is an InvalidQuery
    return _alias(filter)


def _alias(filter: Any) -> Any:
    if not isinstance(filter, Mapping):
        return filter
    plain: dict[str, Any] = {}
    typed: list[Any] = []
    for key, value in filter.items():
        if key in _LOGICAL and isinstance(value, list):
            plain[key] = [_alias(v) for v in value]
        elif key == "object_type":  # Flowcept's spelling: either layout's field (its DAO's or microblob's)
            typed.append(value)
        else:
            plain[key] = value
    if not typed:
        return plain
    terms = [
        {"$or": [
            {"$and": [{"object_type": {"$exists": True}}, {"object_type": cond}]},
            {"$and": [{"object_type": {"$exists": False}}, {"type": cond}]},
        ]}
        for cond in typed
    ]
    if plain:
        terms.insert(0, plain)
    return terms[0] if len(terms) == 1 else {"$and": terms}
