"""Pages of ``GET /objects/``: a bounded page size, an opaque `next` cursor, and a body streamed document
by document.

A listing answers at most `max_page_size` objects (``limit=0`` or a larger limit gets that many) and, when
more match, a ``Link: <...cursor=...>; rel="next"`` header naming the next page. The page's ids are found
first (one query, projected to `_id`, so the filter and its `$regex` budget run before any byte is
sent); then documents are read a few at a time and written out one by one, so a page of objects with
huge metadata never becomes one giant string. The cursor is an offset bound to the filter and sort it
was made for (another filter's cursor is a 400); a sort gets `_id` as its last key so pages never share
or skip a document of an unchanging store. A listing is not a snapshot: an object updated between two
pages can move across the cursor (seen twice, or not at all, as with ``skip``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from .._exceptions import InvalidArgument
from ..engine.query import normalize_sort
from ..store.validate import loads_json

__all__ = ["FETCH_BATCH", "check_page_size", "page_body", "query_digest", "read_cursor", "tiebroken", "write_cursor"]

FETCH_BATCH = 4  # documents decoded at a time while a page streams (objects may carry MiBs of metadata)


class BadCursor(InvalidArgument):
    """A cursor that this server did not make for this filter and sort."""


def check_page_size(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidArgument(f"max_page_size must be an int >= 1, not {value!r}")
    return value


def query_digest(flt: Any, sort: Any) -> str:
    """Names the listing a cursor belongs to (key order kept: it matters to MongoDB filters)."""
    text = json.dumps([flt, sort], default=str, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def write_cursor(offset: int, digest: str) -> str:
    raw = json.dumps({"o": offset, "q": digest}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def read_cursor(token: str, digest: str) -> int:
    """The offset a cursor stands for; BadCursor if it is not one of ours for this filter and sort."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        value = loads_json(raw)  # a ValueError, not a RecursionError, for "[" * 1100
    except (binascii.Error, ValueError):
        raise BadCursor(f"cursor {token[:60]!r} is not a cursor of this server") from None
    offset = value.get("o") if isinstance(value, dict) else None
    if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset < 2**63:
        raise BadCursor(f"cursor {token[:60]!r} is not a cursor of this server")
    if value.get("q") != digest:
        raise BadCursor("this cursor belongs to another filter or sort: follow the next link as given")
    return offset


def tiebroken(sort: Any) -> list[tuple[str, int]] | None:
    """The sort with `_id` last, so documents that tie keep one order from page to page; None: none."""
    spec = normalize_sort(sort)
    if not spec:
        return None  # the backend's natural order (the embedded ones: by _id)
    if all(path != "_id" for path, _ in spec):
        spec.append(("_id", 1))
    return spec


async def page_body(ids: list[Any], fetch: Callable[[list[Any]], Any],
                    render: Callable[[Any], bytes]) -> AsyncIterator[bytes]:
    """A JSON array of the documents with these ids, in this order, read `FETCH_BATCH` at a time by the
    awaitable `fetch(ids) -> documents`; one removed meanwhile is left out."""
    yield b"["
    first = True
    for start in range(0, len(ids), FETCH_BATCH):
        batch = ids[start : start + FETCH_BATCH]
        docs = await fetch(batch)
        try:
            by_id = {doc["_id"]: doc for doc in docs}
            ordered = [by_id[i] for i in batch if i in by_id]
        except TypeError:  # an unhashable _id: the backend's order
            ordered = list(docs)
        del docs
        for doc in ordered:
            yield render(doc) if first else b"," + render(doc)
            first = False
        del ordered
    yield b"]"
