"""Documents <-> msgpack bytes, with the value rules of BSON, so whatever the embedded store accepts
MongoDB accepts too (and `microblob copy` never fails half way on a document it cannot carry)."""

from __future__ import annotations

import datetime as _dt
import math
from typing import Any

import msgpack

from ._exceptions import InvalidDocument

__all__ = ["MAX_DEPTH", "MAX_DOCUMENT_SIZE", "check_document", "decode", "encode", "utcnow"]

MAX_DOCUMENT_SIZE = 16 * 1024 * 1024  # MongoDB's BSON limit
MAX_DEPTH = 100  # MongoDB's nesting limit
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_SCALARS = (str, bool, float, bytes, type(None))


def utcnow() -> _dt.datetime:
    """Now, tz-aware UTC, truncated to milliseconds as BSON dates are (so every backend agrees)."""
    now = _dt.datetime.now(_dt.timezone.utc)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def check_document(doc: Any) -> None:
    """Raise InvalidDocument unless `doc` is a dict that every backend can store unchanged."""
    if not isinstance(doc, dict):
        raise InvalidDocument(f"a document must be a dict, not {type(doc).__name__}")
    _check(doc, 0, "")


def _check(value: Any, depth: int, path: str) -> None:
    if isinstance(value, _SCALARS):
        return
    if isinstance(value, int):
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise InvalidDocument(f"integer at {path or 'top level'!r} does not fit in 64 bits")
        return
    if depth >= MAX_DEPTH:
        raise InvalidDocument(f"document nests deeper than {MAX_DEPTH} levels")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidDocument(f"keys must be str, not {type(key).__name__} ({key!r}) at {path!r}")
            if "\x00" in key:
                raise InvalidDocument(f"key {key!r} contains a NUL character")
            _check(item, depth + 1, f"{path}.{key}" if path else key)
        return
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _check(item, depth + 1, f"{path}.{index}")
        return
    if isinstance(value, _dt.datetime):
        return
    raise InvalidDocument(f"cannot store a {type(value).__name__} at {path or 'top level'!r}")


def _default(value: Any) -> Any:
    if isinstance(value, _dt.datetime):  # only naive ones reach here: read them as UTC, as pymongo does
        return value.replace(tzinfo=_dt.timezone.utc)
    raise InvalidDocument(f"cannot store a {type(value).__name__}")


def encode(doc: dict[str, Any], *, checked: bool = False) -> bytes:
    """msgpack bytes of a document; validates it first unless the caller already did."""
    if not checked:
        check_document(doc)
    try:
        raw = msgpack.packb(doc, default=_default, datetime=True, use_bin_type=True)
    except (OverflowError, ValueError, TypeError) as exc:
        raise InvalidDocument(str(exc)) from None
    if len(raw) > MAX_DOCUMENT_SIZE:
        raise InvalidDocument(f"document is {len(raw)} bytes, over the {MAX_DOCUMENT_SIZE} byte limit")
    return raw


def decode(raw: bytes | memoryview) -> Any:
    return msgpack.unpackb(raw, raw=False, timestamp=3, strict_map_key=True)


def is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)
