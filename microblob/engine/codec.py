"""Documents <-> msgpack bytes, with the value rules of BSON, so whatever the embedded store accepts
MongoDB accepts too (and `microblob copy` never fails half way on a document it cannot carry)."""

from __future__ import annotations

import datetime as _dt
from typing import Any

import msgpack

from .._exceptions import IntegrityError, InvalidDocument

__all__ = ["MAX_DEPTH", "MAX_DOCUMENT_SIZE", "check_document", "decode", "encode", "is_utf8", "utcnow"]

MAX_DOCUMENT_SIZE = 16 * 1024 * 1024  # MongoDB's BSON limit
MAX_DEPTH = 100  # MongoDB's nesting limit
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1


def utcnow() -> _dt.datetime:
    """Now, tz-aware UTC, truncated to milliseconds as BSON dates are (so every backend agrees)."""
    now = _dt.datetime.now(_dt.timezone.utc)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def check_document(doc: Any) -> None:
    """Raise InvalidDocument unless `doc` is a dict that every backend can store unchanged.

    The size limit is measured as BSON, not msgpack: an array of two million short strings is 4 MB as
    msgpack but 29 MB as BSON (each element carries its index as a key), and MongoDB refuses it. Every
    string is measured as UTF-8, so a lone surrogate (which neither BSON nor msgpack can encode) is
    refused here, on every backend, rather than by the encoder of one of them."""
    if not isinstance(doc, dict):
        raise InvalidDocument(f"a document must be a dict, not {type(doc).__name__}")
    size = _check(doc, 0, None)
    if size > MAX_DOCUMENT_SIZE:
        raise InvalidDocument(f"document is {size} bytes as BSON, over the {MAX_DOCUMENT_SIZE} byte limit")


def is_utf8(text: str) -> bool:
    """Whether `text` encodes as UTF-8 (no lone surrogates): what a name must be before msgpack, BSON or a
    key is asked to carry it."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _where(trail: Any) -> str:
    """The dotted path of a (parent trail, key) chain; built only for error messages."""
    parts = []
    while trail is not None:
        trail, key = trail
        parts.append(str(key))
    return ".".join(reversed(parts)) or "top level"


def _utf8_size(text: str, what: str, trail: Any) -> int:
    if text.isascii():
        return len(text)
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidDocument(f"{what} at {_where(trail)!r} is not valid Unicode (lone surrogates)") from None


def _scalar_size(value: Any, trail: Any) -> int:
    """BSON size of a scalar (without type byte and key), or -1 if `value` is not one."""
    kind = type(value)
    if kind is str:  # exact types first: this runs for every value of every document written
        return 5 + (len(value) if value.isascii() else _utf8_size(value, "a string", trail))
    if kind is float:
        return 8
    if kind is int:
        if _INT32_MIN <= value <= _INT32_MAX:
            return 4
        if _INT64_MIN <= value <= _INT64_MAX:
            return 8
        raise InvalidDocument(f"integer at {_where(trail)!r} does not fit in 64 bits")
    if value is None:
        return 0
    if kind is bool:
        return 1
    if kind is bytes:
        return 5 + len(value)  # int32 length, subtype, bytes
    if kind is _dt.datetime:
        return 8
    if kind is dict or kind is list or kind is tuple:
        return -1
    # Subclasses (str and int enums, ...): measured by the base type's methods, as the encoders read them
    # (an override of __len__ or __str__ changes nothing that is stored).
    if isinstance(value, str):
        return _scalar_size(str.__str__(value), trail)
    if isinstance(value, bool):
        return 1
    if isinstance(value, int):
        return _scalar_size(int.__int__(value), trail)
    if isinstance(value, float):
        return 8
    if isinstance(value, bytes):
        return 5 + bytes.__len__(value)
    if isinstance(value, _dt.datetime):
        return 8
    return -1


def _check(value: Any, depth: int, trail: Any) -> int:
    """Validate `value` and return its BSON size, without its type byte and key."""
    size = _scalar_size(value, trail)
    if size >= 0:
        return size
    if depth >= MAX_DEPTH:
        raise InvalidDocument(f"document nests deeper than {MAX_DEPTH} levels")
    size = 5  # int32 length and the closing NUL
    if isinstance(value, dict):
        for key, item in value.items():
            if type(key) is not str:
                if not isinstance(key, str):
                    raise InvalidDocument(f"keys must be str, not {type(key).__name__} ({key!r}) at {_where(trail)!r}")
                key = str.__str__(key)
            if "\x00" in key:
                raise InvalidDocument(f"key {key!r} contains a NUL character")
            item_size = _scalar_size(item, (trail, key))
            if item_size < 0:
                item_size = _check(item, depth + 1, (trail, key))
            size += 2 + (len(key) if key.isascii() else _utf8_size(key, "a key", trail)) + item_size
        return size
    if isinstance(value, (list, tuple)):
        digits, next_power = 1, 10  # array keys are "0", "1", ...: their length grows with the index
        for index, item in enumerate(value):
            if index == next_power:
                digits, next_power = digits + 1, next_power * 10
            item_size = _scalar_size(item, (trail, index))
            if item_size < 0:
                item_size = _check(item, depth + 1, (trail, index))
            size += 2 + digits + item_size
        return size
    raise InvalidDocument(f"cannot store a {type(value).__name__} at {_where(trail)!r}")


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
    """A stored document (or record) back from msgpack. Bytes that do not decode to a document were
    damaged on disk: IntegrityError, not msgpack's or the UTF-8 codec's own errors."""
    try:
        doc = msgpack.unpackb(raw, raw=False, timestamp=3, strict_map_key=True)
    except (ValueError, TypeError, OverflowError, msgpack.UnpackException) as exc:  # UnicodeDecodeError too
        raise IntegrityError(f"the store is damaged: a stored document does not decode ({exc})") from None
    if not isinstance(doc, dict):
        raise IntegrityError(f"the store is damaged: a stored document decodes to {type(doc).__name__}")
    return doc
