"""Argument checks shared by the public functions: each raises InvalidArgument naming the argument,
before anything is written, so bad input never leaves a partial state behind."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from .._exceptions import InvalidArgument, InvalidDocument
from .._media_types import check_content_type
from ..engine import codec as _codec

__all__ = [
    "MAX_ID_LENGTH",
    "check_bool",
    "check_chunk_size",
    "check_content_type",
    "check_id",
    "check_metadata",
    "check_optional_str",
    "check_tags",
    "check_version",
    "loads_json",
    "loads_plain_json",
]

MAX_ID_LENGTH = 512


def check_id(value: Any, name: str = "object_id") -> str:
    """Ids are non-empty str of printable-safe text: they end up in URLs, file names and LMDB keys."""
    if not isinstance(value, str):
        raise InvalidArgument(f"{name} must be a str, not {type(value).__name__}")
    if not value:
        raise InvalidArgument(f"{name} must not be empty")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidArgument(f"{name} is {len(value)} characters long; the limit is {MAX_ID_LENGTH}")
    if "\x00" in value or "/" in value or value in (".", ".."):
        raise InvalidArgument(f"{name} {value!r} contains '/', NUL or is a dot path")
    return _check_unicode(value, name)


def _check_unicode(value: str, name: str) -> str:
    """`value` if it encodes to UTF-8 (lone surrogates do not, and no backend could store them)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgument(f"{name} {value!r} is not valid Unicode (lone surrogates)") from None
    return value


def check_optional_str(value: Any, name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidArgument(f"{name} must be a str or None, not {type(value).__name__}")
    if len(value) > 4096:
        raise InvalidArgument(f"{name} is longer than 4096 characters")
    return _check_unicode(value, name)


def check_bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidArgument(f"{name} must be True or False, not {value!r}")
    return value


def check_version(value: Any, name: str = "version") -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"{name} must be an int or None, not {type(value).__name__}")
    if value < 0:
        raise InvalidArgument(f"{name} must be >= 0, not {value}")
    return value


def check_metadata(value: Any, name: str = "custom_metadata") -> dict[str, Any] | None:
    """Metadata is stored literally: `$`-keys and dotted keys are data, never operators."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise InvalidArgument(f"{name} must be a dict or None, not {type(value).__name__}")
    value = dict(value)
    try:
        _codec.check_document(value)
    except InvalidDocument as exc:
        raise InvalidArgument(f"{name}: {exc}") from None
    return value


def check_tags(value: Any) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple, set, frozenset)):
        raise InvalidArgument(f"tags must be a list of str, not {type(value).__name__}")
    tags = list(value)
    for tag in tags:
        check_optional_str(tag, "each tag")
        if tag is None:
            raise InvalidArgument("tags must not contain None")
    return tags


def check_chunk_size(value: Any, limit: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= limit:
        raise InvalidArgument(f"chunk_size must be an int in 1..{limit}, not {value!r}")
    return value


def loads_json(raw: str | bytes, **hooks: Any) -> Any:
    """`json.loads` (with its `hooks`) that raises ValueError for every text it cannot read: for JSON nested
    deeper than Python's recursion limit (`"[" * 100_000`) `json.loads` raises RecursionError, which
    callers that catch ValueError (the server's store routes, the CLI) would let through."""
    try:
        return json.loads(raw, **hooks)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def loads_plain_json(raw: str | bytes) -> Any:
    """`loads_json` refusing NaN and Infinity (and numbers like 1e999 that read as infinity), which are not
    JSON (RFC 8259) though Python's json takes them: stored, in metadata or an invocation's input, they would
    be answered as what no strict parser reads (and JSONResponse refuses them: every later GET would fail).
    For what a person or a client sends: the server's request bodies, the CLI's JSON arguments."""
    return loads_json(raw, parse_constant=_no_constant, parse_float=_finite_float)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 parses as inf: the same trouble as a literal Infinity
        raise ValueError(f"{text} is out of range for a float")
    return value
