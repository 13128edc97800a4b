"""Order-preserving byte keys for index entries: byte order of the keys == MongoDB's order of the values.

An index entry is `index prefix + one component per indexed field + id key`. Each component is
self-delimiting (no component is a prefix of another), so the concatenation of several components sorts
like the tuple of their values, and an LMDB cursor walks an index in value order, forwards or backwards.

Components follow BSON's type order (null < numbers < strings < objects < arrays < binData < bool <
date), so a range inside one type bracket is one contiguous key range, as type-bracketed comparisons
need:
- null (and a missing field, which MongoDB matches like null): `0x10`;
- numbers, int and float in one order (1 == 1.0, NaN below every number and equal to NaN): `0x20` for
  NaN, else `0x21` + the double as 8 order-preserving bytes + 2 bytes for how far an int beyond 2**53
  lies from that double (so 2**60 and 2**60 + 1 stay apart, and 2**60 == float(2**60));
- strings: `0x30` + UTF-8 with 0x00 escaped as 0x00 0xff, ended by 0x00 0x00 (UTF-8 byte order is code
  point order, which is how both Python and MongoDB's simple collation compare);
- binData: `0x50` + 4-byte length + bytes (BSON compares length first);
- bool: `0x60` + 0 or 1; dates: `0x70` + microseconds since the epoch as 8 order-preserving bytes.
Anything else (a sub-document, a nested array, a value too long for an LMDB key) has no component: the
document is then filed under the ALWAYS marker and every lookup re-checks it, so an index never changes
a result, only its cost.
"""

from __future__ import annotations

import datetime as _dt
import math
import struct
from typing import Any

__all__ = [
    "ALWAYS",
    "COUNTER",
    "MAX_COMPONENT",
    "MULTI",
    "NULL",
    "bracket",
    "bracket_bounds",
    "encode",
    "successor",
]

ALWAYS = b"\x01"  # entry marker: this document's value cannot be keyed; it is a candidate for every lookup
MULTI = b"\x02"  # entry marker: this document has an array on an indexed path (several entries, no sort)
COUNTER = b"\x03"  # not an entry: how many documents are filed under a value prefix (kvdocs.py keeps them)
NULL = b"\x10"
_NAN = b"\x20"
_NUMBER = b"\x21"
_STRING = b"\x30"
_BINARY = b"\x50"
_BOOL = b"\x60"
_DATE = b"\x70"
MAX_COMPONENT = 128  # keeps two components, the prefix and a 160-byte id key under LMDB's 511-byte keys
_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)  # noqa: UP017 - importable on 3.10
_US = _dt.timedelta(microseconds=1)
_INT_RANGE = 2**64
_BRACKETS = {  # the [first, after-last) key range of each type bracket a range query can stay inside
    "number": (_NUMBER, b"\x22"),
    "string": (_STRING, b"\x31"),
    "date": (_DATE, b"\x71"),
}


def _ordered_double(d: float) -> bytes:
    if d == 0.0:
        d = 0.0  # -0.0 == 0.0
    (bits,) = struct.unpack(">Q", struct.pack(">d", d))
    bits = bits ^ 0xFFFFFFFFFFFFFFFF if bits >> 63 else bits | (1 << 63)
    return bits.to_bytes(8, "big")


def _number(value: int | float) -> bytes | None:
    if isinstance(value, float):
        if math.isnan(value):
            return _NAN
        return _NUMBER + _ordered_double(value) + b"\x80\x00"
    if not -_INT_RANGE < value < _INT_RANGE:
        return None
    d = float(value)
    diff = value - int(d) if math.isfinite(d) and abs(value) > 2**53 else 0
    return _NUMBER + _ordered_double(d) + (diff + 0x8000).to_bytes(2, "big")


def _string(value: str) -> bytes | None:
    try:
        raw = value.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return _STRING + raw.replace(b"\x00", b"\x00\xff") + b"\x00\x00"


def encode(value: Any) -> bytes | None:
    """The component of one scalar value, or None if it has none (then the document is ALWAYS)."""
    t = type(value)
    if t is str:
        out = _string(value)
    elif t is int or t is float:
        out = _number(value)
    elif value is None:
        return NULL
    elif t is bool:
        return _BOOL + (b"\x01" if value else b"\x00")
    elif isinstance(value, _dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=_dt.timezone.utc)  # noqa: UP017
        us = (value - _EPOCH) // _US
        out = _DATE + (us + (1 << 63)).to_bytes(8, "big") if -(1 << 63) <= us < (1 << 63) else None
    elif t is bytes:
        out = _BINARY + len(value).to_bytes(4, "big") + value
    elif isinstance(value, bool):
        return encode(bool(value))
    elif isinstance(value, int):
        out = _number(int(value))
    elif isinstance(value, float):
        out = _number(float(value))
    elif isinstance(value, str):
        out = _string(str.__str__(value))
    else:
        return None
    return out if out is not None and len(out) <= MAX_COMPONENT else None


def bracket(value: Any) -> str | None:
    """The type bracket a range operand compares within ("number", "string", "date"), or None when a
    range on it is left to the matcher (NaN, null, bools, binData and documents are rare in ranges)."""
    t = type(value)
    if t is bool:
        return None
    if t is int or t is float or (isinstance(value, (int, float)) and not isinstance(value, bool)):
        return None if isinstance(value, float) and math.isnan(value) else "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, _dt.datetime):
        return "date"
    return None


def bracket_bounds(name: str) -> tuple[bytes, bytes]:
    """[first, after-last) of a type bracket's components."""
    return _BRACKETS[name]


def successor(prefix: bytes) -> bytes | None:
    """The smallest key above every key that starts with `prefix` (None: there is none)."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])
