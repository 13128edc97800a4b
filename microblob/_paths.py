"""One check for every path a caller names (a store, a bundle, a file to read or to write, a sync
destination): what the OS would refuse with a bare ValueError (a NUL) or UnicodeEncodeError (a lone
surrogate the file system encoding cannot carry), and what is no path at all, become `InvalidArgument`
before anything is opened, created or recorded."""

from __future__ import annotations

import os
from typing import Any

from ._exceptions import InvalidArgument

__all__ = ["check_path"]


def check_path(value: Any, name: str = "path") -> str:
    """`value` as a str path (bytes and os.PathLike are accepted, as `open()` accepts them)."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, bytes):
        value = os.fsdecode(value)
    if not isinstance(value, str):
        raise InvalidArgument(f"{name} must be a str or os.PathLike, not {type(value).__name__}")
    if not value:
        raise InvalidArgument(f"{name} is empty")
    if "\x00" in value:
        raise InvalidArgument(f"{name} {value!r:.200} contains a NUL character")
    try:
        os.fsencode(value)
    except UnicodeEncodeError:
        raise InvalidArgument(f"{name} {value!r:.200} is not valid for the file system (lone surrogates)") from None
    return value
