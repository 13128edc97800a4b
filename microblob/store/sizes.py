"""Sizes as people read them (`1.5 MiB`) and counts with their noun (`1 file`, `2 files`): one spelling
for every report the store layer writes and the CLI prints."""

from __future__ import annotations

from typing import Any

__all__ = ["count_of", "human_size"]


def count_of(n: int, noun: str, plural: str | None = None) -> str:
    """`1 file`, `2 files`."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def human_size(n: Any) -> str:
    """Bytes in binary units (`512 B`, `1.5 MiB`); `-` for what is not a number of bytes."""
    if not isinstance(n, int) or isinstance(n, bool):
        return "-"
    if n < 1024:
        return f"{n} B"
    size = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        size /= 1024
        if size < 1024 or unit == "TiB":
            return f"{size:.1f} {unit}"
    raise AssertionError("unreachable")
