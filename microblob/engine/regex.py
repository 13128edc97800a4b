"""`$regex` matching with a time budget per query.

Python's `re` backtracks without bound and holds the GIL while it does: one pattern like ``a.*a.*a.*b``
over a 1,000-character field froze every thread of a server for a minute, and no list of "bad shapes"
can be complete (any nesting of unbounded repeats is polynomial). The maintained `regex` package stops a
match after `timeout=` seconds and releases the GIL while it matches a str, so a query runs its regexes
through it: every regex of one compiled filter draws on one budget of matching time (the sum over all
documents, not per call), and a query that spends it raises `QueryTimeout`. `regex`'s default
(VERSION0) syntax is `re`'s, and like PCRE (MongoDB's engine) it also knows ``\\p{...}``, atomic groups
and possessive quantifiers.

No timeout covers compiling, and `regex` unrolls counted repeats when it compiles (``((a{100}){100}){100}``
took 0.4 s and 290 MiB, one level more never finished), so a pattern whose unrolled size passes
`MAX_EXPANSION` is refused up front by a cheap scan of its text.

The budget is a context variable read when a filter is compiled: `regex_budget(seconds)` sets it for a
block (the HTTP server sets a tighter one around each store call). Outside any block a query gets
`DEFAULT_BUDGET`; ``regex_budget(None)`` removes the limit.
"""

from __future__ import annotations

import contextvars
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from .._exceptions import InvalidArgument, QueryTimeout

__all__ = [
    "DEFAULT_BUDGET",
    "MAX_EXPANSION",
    "Budget",
    "check_budget",
    "compile_pattern",
    "error",
    "expansion",
    "flat_quantifiers",
    "filter_budget",
    "regex_budget",
]

DEFAULT_BUDGET = 10.0  # seconds of matching per query: far above any useful regex query, below "hung"
MAX_EXPANSION = 10_000  # atoms of an unrolled pattern (`regex` spends ~500 bytes on each)


class error(ValueError):  # noqa: N801 - named like `re.error`, which it stands beside
    """What compile_pattern raises for a pattern it refuses (too large, or `regex` cannot compile it)."""


_COUNT = re.compile(r"\{(\d*),?(\d*)\}")
# `timeout=` costs a clock() system call per match (1.5-8 us, more than most matches), so a pattern
# without groups, alternation or backreferences, whose worst case over a text is below _FAST_STEPS
# (length x text length ** (quantifiers + 1)), runs on `re` without one, its time still counted.
_FAST_STEPS = 20_000
_NOT_FLAT = frozenset("(|")
_NOT_FLAT_ESCAPES = frozenset("0123456789gkpPX")

_limit: contextvars.ContextVar[float | None] = contextvars.ContextVar("microblob_regex_budget",
                                                                      default=DEFAULT_BUDGET)
_compiling: contextvars.ContextVar[Budget | None] = contextvars.ContextVar("microblob_regex_compiling",
                                                                          default=None)

# `re` flags by name: `regex` names them alike (ASCII has another value there)
_RE_FLAGS = ("IGNORECASE", "MULTILINE", "DOTALL", "VERBOSE", "ASCII")


def check_budget(seconds: Any) -> float | None:
    """`seconds` as a budget (None: no limit); InvalidArgument unless a number > 0."""
    if seconds is None:
        return None
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0 \
            or seconds == float("inf"):
        raise InvalidArgument(f"a regex budget is a number of seconds > 0 (or None: no limit), not {seconds!r}")
    return float(seconds)


@contextmanager
def regex_budget(seconds: float | None) -> Iterator[None]:
    """Within this block (this thread or task), each query may spend at most `seconds` matching `$regex`
    over all its documents, else it raises `QueryTimeout`; None: no limit."""
    token = _limit.set(check_budget(seconds))
    try:
        yield
    finally:
        _limit.reset(token)


class Budget:
    """Matching time left to one query; shared by every regex of its filter."""

    __slots__ = ("left", "limit")

    def __init__(self, limit: float | None) -> None:
        self.limit = limit
        self.left = limit

    def search(self, pattern: Any, text: str) -> bool:
        left = self.left
        if left is None:
            return pattern.search(text) is not None
        if left <= 0:
            raise QueryTimeout(pattern.pattern, self.limit or 0.0)
        start = time.monotonic()
        try:
            return pattern.search(text, timeout=left) is not None
        except TimeoutError:
            self.left = 0.0
            raise QueryTimeout(pattern.pattern, self.limit or 0.0) from None
        finally:
            if self.left:
                self.left -= time.monotonic() - start


@contextmanager
def filter_budget() -> Iterator[Budget]:
    """The budget of the filter being compiled: one per outermost compile, so nested parts share it."""
    current = _compiling.get()
    if current is not None:
        yield current
        return
    budget = Budget(_limit.get())
    token = _compiling.set(budget)
    try:
        yield budget
    finally:
        _compiling.reset(token)


def expansion(source: str) -> int:
    """An upper bound of the atoms `regex` compiles `source` into, nested counted repeats multiplied out;
    stops counting past `MAX_EXPANSION`. Conservative: braces in comments or classes count too."""
    totals = [0]  # atoms so far in each open group
    last = 0  # atoms of the previous item, which a quantifier repeats
    i, n = 0, len(source)
    while i < n and totals[0] <= MAX_EXPANSION:
        char = source[i]
        item = 1
        if char == "\\":
            i += 2
        elif char == "[":
            j = i + 1
            j += j < n and source[j] == "^"
            j += j < n and source[j] == "]"
            while j < n and source[j] != "]":
                j += 2 if source[j] == "\\" else 1
            i = j + 1
        elif char == "(":
            totals.append(0)
            last = 0
            i += 1
            continue
        elif char == ")":
            item = max(totals.pop(), 1) if len(totals) > 1 else 1
            i += 1
        elif char == "{" and (m := _COUNT.match(source, i)) and (m[1] or m[2]):
            digits = m[2] or m[1]
            count = max(int(digits), 1) if len(digits) < 10 else MAX_EXPANSION + 1
            totals[-1] += last * (count - 1)
            last *= count
            i = m.end()
            continue
        else:
            i += 1
        totals[-1] += item
        last = item
        if len(totals) > 1 and totals[-1] > MAX_EXPANSION:
            return totals[-1]
    return sum(totals)


def flat_quantifiers(source: str) -> tuple[int, int] | None:
    """(quantifiers, alternatives) of a pattern of single atoms and unquantified, unnested groups:
    backtracking is then at most alternatives x text length ** (quantifiers + 1) steps per start.
    None for anything else (quantified or nested groups, backreferences, conditionals)."""
    count, alternatives, branches = 0, 1, 1
    depth = 0
    i, n = 0, len(source)
    while i < n:
        char = source[i]
        if char == "\\":
            if i + 1 < n and source[i + 1] in _NOT_FLAT_ESCAPES:
                return None
            i += 2
            continue
        if char == "[":
            j = i + 1
            j += j < n and source[j] == "^"
            j += j < n and source[j] == "]"
            while j < n and source[j] != "]":
                j += 2 if source[j] == "\\" else 1
            i = j + 1
            continue
        if char == "(":
            if depth or (source.startswith("(?", i) and not source.startswith("(?:", i)):
                return None
            depth, branches = 1, 1
            i += 3 if source.startswith("(?:", i) else 1
            continue
        if char == ")":
            if not depth or (i + 1 < n and source[i + 1] in "*+?{"):
                return None
            depth = 0
            alternatives *= branches
        elif char == "|":
            if depth:
                branches += 1
            else:
                alternatives += 1  # top level: the branches are tried one after the other
        elif char in "*+?{":
            if depth:
                return None
            count += 1
        i += 1
    return None if depth else (count, alternatives)


def compile_pattern(source: str, flags: int) -> Callable[[str], bool]:
    """A budgeted `search` for `source` with `re` flags; raises `error` for a bad pattern."""
    if expansion(source) > MAX_EXPANSION:
        raise error(f"its counted repeats unroll to more than {MAX_EXPANSION} atoms")
    flat = flat_quantifiers(source)
    fast = None
    if flat is not None and flat[1] <= _FAST_STEPS // 100:
        try:
            fast = re.compile(source, flags).search
        except re.error:
            pass  # `regex` knows more escapes (\p{L}), or says what is wrong
    import regex  # ~9 ms to import: only a process that runs a $regex query pays it

    converted = 0
    for name in _RE_FLAGS:
        if flags & getattr(re, name):
            converted |= getattr(regex, name)
    try:
        compiled = regex.compile(source, converted)
    except regex.error as exc:
        raise error(str(exc)) from None
    budget = _compiling.get() or Budget(_limit.get())
    search = budget.search
    if fast is None or flat is None:
        return lambda text: search(compiled, text)
    quantifiers, alternatives = flat
    # fixed sequences of atoms are linear in the text; otherwise only texts up to `longest` are short
    longest = -1 if quantifiers == 0 else \
        int((_FAST_STEPS / max(len(source) * alternatives, 1)) ** (1 / (quantifiers + 1)))
    monotonic = time.monotonic

    def test(text: str) -> bool:  # Budget.search_fast inlined: this runs once per document
        if longest >= 0 and len(text) > longest:
            return search(compiled, text)
        left = budget.left
        if left is None:
            return fast(text) is not None
        start = monotonic()
        found = fast(text) is not None
        budget.left = left = left - (monotonic() - start)
        if left <= 0:
            raise QueryTimeout(source, budget.limit or 0.0)
        return found

    return test

