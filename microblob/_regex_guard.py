"""Refuse `$regex` patterns from HTTP clients that could stall the server.

Python's `re` backtracks and never releases the GIL while matching, so one pattern such as
``^(a+)+$`` against a 40-character id freezes every thread of the server, its event loop included,
for hours. MongoDB bounds such queries with a time limit; `re` has none. So a filter that arrives
over HTTP may only use patterns without the shapes that backtrack exponentially: no quantifier or
alternation inside a repeated group, no backreferences, a bounded number of unbounded repeats and
a bounded length. The Python API is not restricted: code that calls `query` trusts its own filters.
"""

from __future__ import annotations

import re
from typing import Any

try:  # the parser behind `re`: `re._parser` since 3.11, where importing `sre_parse` warns
    import re._parser as _parser  # type: ignore[import-not-found]
    from re import _constants as _c  # type: ignore[attr-defined]
except ImportError:  # Python 3.10
    import sre_constants as _c  # type: ignore[no-redef]
    import sre_parse as _parser  # type: ignore[no-redef]

from ._exceptions import InvalidQuery

__all__ = ["MAX_PATTERN_LENGTH", "MAX_UNBOUNDED_REPEATS", "check_untrusted_filter"]

MAX_PATTERN_LENGTH = 256
MAX_UNBOUNDED_REPEATS = 4  # `.*a.*b.*c.*` is polynomial: keep the degree small
_REPEATS = {_c.MAX_REPEAT, _c.MIN_REPEAT} | ({_c.POSSESSIVE_REPEAT} if hasattr(_c, "POSSESSIVE_REPEAT") else set())
_BACKREFS = {_c.GROUPREF, _c.GROUPREF_EXISTS} | ({_c.GROUPREF_IGNORE} if hasattr(_c, "GROUPREF_IGNORE") else set())


def check_untrusted_filter(flt: Any) -> None:
    """Raise `InvalidQuery` if a filter from an untrusted client holds a `$regex` that may backtrack."""
    _walk_filter(flt, 0)


def _walk_filter(node: Any, depth: int) -> None:
    if depth > 200:  # parse_json refuses deeper JSON already; this only bounds the walk
        raise InvalidQuery("filter nested too deeply")
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$regex" and isinstance(value, str):
                _check_pattern(value)
            else:
                _walk_filter(value, depth + 1)
    elif isinstance(node, list):
        for item in node:
            _walk_filter(item, depth + 1)


def _check_pattern(pattern: str) -> None:
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise InvalidQuery(f"$regex over HTTP is limited to {MAX_PATTERN_LENGTH} characters")
    try:
        tree = _parser.parse(pattern)
    except re.error:
        return  # not a regex at all: the matcher refuses it with its own message
    unbounded = _walk_pattern(list(tree), repeated=False)
    if unbounded > MAX_UNBOUNDED_REPEATS:
        raise InvalidQuery(f"$regex {pattern!r} has {unbounded} unbounded repeats; over HTTP at most "
                           f"{MAX_UNBOUNDED_REPEATS} are allowed (they can make matching very slow)")


def _walk_pattern(items: list[tuple[Any, Any]], *, repeated: bool) -> int:
    """Count unbounded repeats; refuse the shapes that backtrack exponentially."""
    count = 0
    for op, arg in items:
        if op in _BACKREFS:
            raise InvalidQuery("$regex backreferences are not allowed over HTTP (they can make matching very slow)")
        if op in _REPEATS:
            _low, high, sub = arg
            if repeated and high > 1:
                raise InvalidQuery("$regex with a quantifier inside a repeated group (like (a+)+) is not "
                                   "allowed over HTTP: it can make matching take exponential time")
            count += high == _c.MAXREPEAT
            count += _walk_pattern(list(sub), repeated=repeated or high > 1)
        elif op is _c.BRANCH:
            if repeated:
                raise InvalidQuery("$regex with alternatives inside a repeated group (like (a|ab)*) is not "
                                   "allowed over HTTP: it can make matching take exponential time")
            for branch in arg[1]:
                count += _walk_pattern(list(branch), repeated=repeated)
        elif op is _c.SUBPATTERN:
            count += _walk_pattern(list(arg[-1]), repeated=repeated)
        elif op in (_c.ASSERT, _c.ASSERT_NOT):
            count += _walk_pattern(list(arg[1]), repeated=repeated)
        elif hasattr(_c, "ATOMIC_GROUP") and op is _c.ATOMIC_GROUP:
            count += _walk_pattern(list(arg), repeated=repeated)
    return count
