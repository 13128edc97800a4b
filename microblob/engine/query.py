"""MongoDB's query language evaluated in Python: filters, sort, projection and update operators.

Every backend that keeps documents itself (LMDB file, memory, Mongita used as storage) answers `find`,
`update_one` and friends through this module, while the MongoDB backend lets the server answer. A store
must behave the same on both, so the semantics here are MongoDB's (6.x/7.x), not Python's: `True` is not
`1`, `{"a": 1, "b": 2}` is not `{"b": 2, "a": 1}`, a query on an array field also tests its elements,
values of different types never compare (type bracketing) and sort across types follows BSON order.
The matcher's path walk and operator semantics follow MongoDB's server source (matcher/path.cpp,
expression_leaf.cpp, expression_parser.cpp, expression_array.cpp, update/pull_node.cpp).

Filters, projections and updates are validated and compiled once into closures: a collection scan calls
the compiled predicate per document, so all parsing happens up front and per-document work stays small.

Choices where this module is stricter than MongoDB (each one is pinned by a test in tests/test_query.py):
- A filter value that is a dict with "$" keys is an operator document. A dict that mixes "$" keys and
  plain keys raises InvalidQuery (MongoDB reads `{"a": 1, "$b": 2}` as a literal, which is almost always
  a typo). To match a stored dict whose keys start with "$", write `{"field": {"$eq": {...}}}`.
- Operators MongoDB has but this module does not ($type, $mod, $expr, $where, $text, geo and bit
  operators, positional and $slice/$elemMatch projections, computed projections, $push modifiers other
  than $each, array filters) raise InvalidQuery instead of being silently ignored.
- Regular expressions run on the `regex` package (`re`'s syntax, plus PCRE's ``\\p{...}``, atomic groups
  and possessive quantifiers), which agrees with PCRE on common patterns; a pattern it cannot compile
  raises InvalidQuery. Matching has a time budget per query (`_regex.py`): past it, QueryTimeout.
"""

from __future__ import annotations

import copy
import datetime as _dt
import functools
import heapq
import itertools
import math
import operator
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from .._exceptions import InvalidDocument, InvalidQuery
from . import regex as _regex
from .codec import MAX_DEPTH, utcnow

__all__ = [
    "check_depth",
    "compare_values",
    "compile_filter",
    "compile_projection",
    "compile_projection_owned",
    "compile_update",
    "equality_values",
    "field_values",
    "match",
    "normalize_sort",
    "sort_documents",
    "sort_key",
]

Document = Mapping[str, Any]
Predicate = Callable[[Document], bool]
_Test = Callable[[Any], bool]


class _Missing:
    """What a path that leads nowhere yields; MongoDB matches it like null ({"f": None} finds it)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<missing>"


_MISSING: Any = _Missing()
_ARRAYS = (list, tuple)
_NUMBER_TYPES = frozenset((int, float))
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_UTC = _dt.timezone.utc  # noqa: UP017 - keeps the module importable on 3.10 (setup.cfg)

# ---------------------------------------------------------------------------------------------------------
# BSON order. Canonical type ranks, spaced like MongoDB's canonicalizeBSONType so the order is easy to check.
_R_UNDEFINED, _R_NULL, _R_NUMBER, _R_STRING, _R_OBJECT, _R_ARRAY = 0, 5, 10, 15, 20, 25
_R_BINARY, _R_BOOL, _R_DATE, _R_REGEX = 30, 40, 45, 50
_NULL_KEY: tuple = (_R_NULL,)
_NAN_KEY: tuple = (_R_NUMBER, 0, 0)  # NaN sorts below every number and equals NaN
_UNDEFINED_KEY: tuple = (_R_UNDEFINED,)  # sort key of an empty array: below null, as in MongoDB
_RANKS: dict[type, int] = {
    str: _R_STRING, int: _R_NUMBER, float: _R_NUMBER, type(None): _R_NULL, _Missing: _R_NULL,
    bool: _R_BOOL, dict: _R_OBJECT, list: _R_ARRAY, tuple: _R_ARRAY, bytes: _R_BINARY,
    _dt.datetime: _R_DATE,
}


def _utc(value: _dt.datetime) -> _dt.datetime:
    # Naive datetimes mean UTC, as pymongo reads them.
    return value if value.tzinfo is not None else value.replace(tzinfo=_UTC)


def _key(value: Any) -> tuple:
    """A hashable tuple that orders and equals exactly as BSON compares `value`.

    Equal keys <=> MongoDB query equality (1 == 1.0, NaN == NaN, True != 1, field order matters); key
    order == BSON order. Sorting, `$in` and deep equality use keys, so comparisons run natively.
    """
    t = type(value)
    if t is str:
        return (_R_STRING, value)
    if t is int:
        return (_R_NUMBER, 1, value)
    if t is float:
        return _NAN_KEY if math.isnan(value) else (_R_NUMBER, 1, value)
    if value is None or value is _MISSING:
        return _NULL_KEY
    if t is bool:
        return (_R_BOOL, value)
    if t is dict:
        return (_R_OBJECT, tuple([_field_key(k, v) for k, v in value.items()]))
    if t is list or t is tuple:
        return (_R_ARRAY, tuple(map(_key, value)))
    if t is bytes:
        return (_R_BINARY, len(value), value)  # BSON compares binData by length first
    if t is _dt.datetime:
        return (_R_DATE, _utc(value))
    return _key_slow(value)


def _field_key(name: str, value: Any) -> tuple:
    key = _key(value)
    return (key[0], name, key)  # BSON compares a field's type, then its name, then its value


def _key_slow(value: Any) -> tuple:
    """`_key` for subclasses of the plain types, compiled regexes, and types no document may hold."""
    if isinstance(value, bool):
        return (_R_BOOL, bool(value))
    if isinstance(value, float):
        return _key(float(value))
    if isinstance(value, int):
        return _key(int(value))
    if isinstance(value, str):
        return (_R_STRING, str.__str__(value))  # str() of a str-based enum is its name
    if isinstance(value, Mapping):
        return (_R_OBJECT, tuple([_field_key(k, v) for k, v in value.items()]))
    if isinstance(value, _ARRAYS):
        return (_R_ARRAY, tuple(map(_key, value)))
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        return (_R_BINARY, len(raw), raw)
    if isinstance(value, _dt.datetime):
        return (_R_DATE, _utc(value))
    if isinstance(value, re.Pattern):
        return (_R_REGEX, value.pattern, _regex_options(value))
    raise InvalidDocument(f"cannot compare a value of type {type(value).__name__}")


def _rank(value: Any) -> int:
    rank = _RANKS.get(type(value))
    return _key_slow(value)[0] if rank is None else rank


def compare_values(a: Any, b: Any) -> int:
    """-1, 0 or 1 as MongoDB orders `a` and `b`: by BSON type first (null < numbers < strings < objects <
    arrays < binData < bool < date), then by value. A missing value compares like null."""
    ka, kb = _key(a), _key(b)
    return (ka > kb) - (ka < kb)


# ---------------------------------------------------------------------------------------------------------
# Paths. MongoDB's rules (matcher/path.cpp): walk documents by field name; at an array, every subdocument
# element continues with the same remaining path (fan-out) and a numeric component also selects the
# element at that position; a scalar where a document is needed yields "missing"; an array at the end of
# the path yields its elements and then the array itself ("leaf expansion", skipped by $size/$elemMatch).


def _split(path: str) -> tuple[tuple[str, ...], tuple[int, ...]]:
    parts = tuple(path.split("."))
    _check_digit_runs(path, parts)
    return parts, tuple(_array_index(p) for p in parts)


# The largest array position a path component can name. An array in a 16 MiB document has fewer than
# 2**24 elements, and MongoDB reads positions as 64-bit integers, so a run of digits above 2**63 - 1 can
# never select an element: it is only a field name (of a subdocument, where any string is; a 128-bit id
# written in decimal has 39 digits). Checking the length first keeps int() from seeing more than 19.
_MAX_POSITION = 2**63 - 1
_MAX_POSITION_DIGITS = len(str(_MAX_POSITION))

# Longer runs of digits are refused outright. 4,300 is CPython's limit for int(str) (the default of
# sys.int_max_str_digits, fixed here: the process may change that one). No real field is named by so
# many digits, while Python-based MongoDB servers (SecantusDB) fail on one with an internal error: one
# InvalidQuery at compile time gives every backend, and the HTTP API, the same clear 400.
_MAX_DIGIT_RUN = 4300


def _check_digit_runs(path: str, parts: Iterable[str]) -> None:
    for part in parts:
        if len(part) > _MAX_DIGIT_RUN and part.isascii() and part.isdigit():
            shown = path if len(path) <= 60 else f"{path[:40]}…({len(path):,} characters)"
            raise InvalidQuery(f"a path component of {len(part):,} digits in {shown!r}: over {_MAX_DIGIT_RUN:,} "
                               "digits it can be no array position, and no field is named so")


# How far an update may pad an array to reach the position it sets: MongoDB's limit (kMaxPaddingAllowed
# in its update code). Without one `{"$set": {"a.100000000": 1}}` would allocate 100 million nulls.
_MAX_PADDING = 1_500_000


def _array_index(part: str) -> int:
    """The array position a path component names, or -1. "01" names none: it never equals "1"."""
    if (part.isascii() and part.isdigit() and (part == "0" or part[0] != "0")
            and len(part) <= _MAX_POSITION_DIGITS):
        position = int(part)
        return position if position <= _MAX_POSITION else -1
    return -1


def _pad_to(array: list, position: int, path: str) -> None:
    """Extend `array` with nulls so that `position` exists, as MongoDB does, within its padding limit."""
    if position - len(array) >= _MAX_PADDING:
        raise InvalidQuery(f"cannot set position {position} of the array at {path!r}: it has {len(array)} "
                           f"elements and an update may pad an array by fewer than {_MAX_PADDING:,}")
    array.extend([None] * (position + 1 - len(array)))


def _walk(node: Mapping, parts: tuple, index: tuple, i: int, expand: bool, out: list) -> None:
    """Append to `out` every value `parts[i:]` reaches from the document `node`."""
    last = len(parts) - 1
    while True:
        value = node.get(parts[i], _MISSING)
        if i == last:
            if expand and isinstance(value, _ARRAYS):
                out.extend(value)
            out.append(value)
            return
        i += 1
        if isinstance(value, dict):
            node = value
        elif isinstance(value, _ARRAYS):
            _walk_array(value, parts, index, i, expand, out)
            return
        else:
            out.append(_MISSING)
            return


def _walk_array(array: Any, parts: tuple, index: tuple, i: int, expand: bool, out: list) -> None:
    position = index[i]
    at_end = i == len(parts) - 1
    for n, element in enumerate(array):
        if isinstance(element, dict):
            _walk(element, parts, index, i, expand, out)
            if n == position:
                if at_end:
                    out.append(element)
                else:
                    _walk(element, parts, index, i + 1, expand, out)
        elif n == position:
            if at_end:
                out.append(element)  # an explicit position is not a leaf array traversal: no expansion
            elif isinstance(element, _ARRAYS):
                _walk_array(element, parts, index, i + 1, expand, out)


_BRANCHED: Any = object()  # what `_direct` returns when the path meets an array: use the full walk


def _direct(parts: tuple) -> Callable[[Document], Any]:
    """The fast path of the walk: the one value `parts` reaches through plain documents (missing if it
    meets a scalar), or _BRANCHED when it meets an array on the way."""
    first, rest = parts[0], parts[1:]
    if not rest:
        return lambda doc: doc.get(first, _MISSING)

    def direct(doc: Document) -> Any:
        node = doc.get(first, _MISSING)
        for part in rest:
            if isinstance(node, dict):
                node = node.get(part, _MISSING)
            elif isinstance(node, _ARRAYS):
                return _BRANCHED
            else:
                return _MISSING
        return node

    return direct


def _getter(path: str, expand: bool) -> Callable[[Document], list]:
    parts, index = _split(path)
    direct = _direct(parts)

    def get(doc: Document) -> list:
        value = direct(doc)
        if value is _BRANCHED:
            out: list = []
            _walk(doc, parts, index, 0, expand, out)
            return out
        if expand and isinstance(value, _ARRAYS):
            return [*value, value]
        return [value]

    return get


def field_values(doc: Document, field: str) -> list:
    """Every value a filter on `field` tests in `doc` (array elements and the array itself included), with
    a missing value reported as None. An index an equality planner consults must hold all of them, so that
    a lookup of `equality_values(...)` finds every document the filter matches."""
    return [None if v is _MISSING else v for v in _getter(field, True)(doc)]


def _path_any(path: str, test: _Test, expand: bool) -> Predicate:
    """A predicate true when `test` holds for any value the path reaches (MongoDB's existential match)."""
    parts, _ = _split(path)
    if len(parts) == 1:
        key = parts[0]
        if not expand:
            return lambda doc: test(doc.get(key, _MISSING))

        def single(doc: Document) -> bool:
            value = doc.get(key, _MISSING)
            if isinstance(value, _ARRAYS):
                for element in value:
                    if test(element):
                        return True
            return test(value)

        return single
    direct, get = _direct(parts), _getter(path, expand)

    def dotted(doc: Document) -> bool:
        value = direct(doc)
        if value is _BRANCHED:
            return any(map(test, get(doc)))
        if expand and isinstance(value, _ARRAYS):
            for element in value:
                if test(element):
                    return True
        return test(value)

    return dotted


def _path_all(path: str, leaves: list[_Leaf]) -> Predicate:
    """Several operators on one path ({"$gt": 1, "$lt": 5}): each is its own existential match (they
    may hold for different array elements), but the path is read once when no array branches it."""
    direct = _direct(_split(path)[0])
    separately = _all_of([_path_any(path, leaf.test, leaf.expand) for leaf in leaves])
    checks = [(leaf.test, leaf.expand) for leaf in leaves]

    def together(doc: Document) -> bool:
        value = direct(doc)
        if value is _BRANCHED:
            return separately(doc)
        if isinstance(value, _ARRAYS):
            return all(test(value) or (expand and any(map(test, value))) for test, expand in checks)
        return all(test(value) for test, _ in checks)

    return together


# ---------------------------------------------------------------------------------------------------------
# Operator values: tests of one candidate value.


def _is_null(value: Any) -> bool:
    return value is None or value is _MISSING


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _never(value: Any) -> bool:
    return False


def _exists(value: Any) -> bool:
    return value is not _MISSING


def _check_text(text: str, where: str) -> None:
    """Lone surrogates cannot be encoded as BSON (or msgpack): MongoDB could never receive the filter."""
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidQuery(f"{text!r} in {where} is not valid Unicode (lone surrogates)") from None


def _check_operand(value: Any, where: str) -> None:
    """Reject operands MongoDB could not receive (sets, objects, integers beyond 64 bits, lone
    surrogates), so an invalid filter fails the same way on every backend instead of silently matching
    nothing."""
    if isinstance(value, str):
        _check_text(value, where)
        return
    if isinstance(value, bool) or value is None or isinstance(value, (float, bytes, _dt.datetime)):
        return
    if isinstance(value, int):
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise InvalidQuery(f"integer {value} in {where} does not fit in 64 bits")
    elif isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidQuery(f"keys must be str, not {type(key).__name__}, in {where}")
            _check_text(key, where)
            _check_operand(item, where)
    elif isinstance(value, _ARRAYS):
        for item in value:
            _check_operand(item, where)
    elif not isinstance(value, re.Pattern):
        raise InvalidQuery(f"cannot use a {type(value).__name__} in {where}")


def _eq_test(rhs: Any, where: str) -> _Test:
    _check_operand(rhs, where)
    if rhs is None:
        return _is_null
    t = type(rhs)
    if t is str:
        return lambda v: v == rhs
    if t is bool:
        return lambda v: v is rhs
    if t is int or t is float:
        if _is_nan(rhs):
            return _is_nan
        return lambda v: v == rhs and type(v) is not bool
    if t is _dt.datetime:
        instant = _utc(rhs)
        return lambda v: isinstance(v, _dt.datetime) and _utc(v) == instant
    rank, key = _rank(rhs), _key(rhs)
    return lambda v: _rank(v) == rank and _key(v) == key


_COMPARE = {"$gt": operator.gt, "$gte": operator.ge, "$lt": operator.lt, "$lte": operator.le}


def _compare_test(op: str, rhs: Any, where: str) -> _Test:
    """Type-bracketed comparison: only values of rhs's BSON type can match (numbers with numbers...)."""
    _check_operand(rhs, where)
    inclusive = op in ("$gte", "$lte")
    if rhs is None:  # null and missing compare equal to null and unequal to everything else
        return _is_null if inclusive else _never
    if isinstance(rhs, re.Pattern):
        raise InvalidQuery(f"can't have a regex as the argument of {op} in {where}")
    compare = _COMPARE[op]
    rank = _rank(rhs)
    if rank == _R_NUMBER:
        if _is_nan(rhs):  # NaN equals only NaN and is neither above nor below anything
            return _is_nan if inclusive else _never
        return lambda v: (type(v) in _NUMBER_TYPES or _rank(v) == _R_NUMBER) and compare(v, rhs)
    if rank == _R_STRING:
        return lambda v: (type(v) is str or _rank(v) == _R_STRING) and compare(v, rhs)
    if rank == _R_DATE:
        instant = _utc(rhs)
        return lambda v: isinstance(v, _dt.datetime) and compare(_utc(v), instant)
    key = _key(rhs)
    return lambda v: _rank(v) == rank and compare(_key(v), key)


def _first_key_is_operator(value: Mapping) -> bool:
    first = next(iter(value), None)
    return isinstance(first, str) and first.startswith("$")


def _in_test(values: Any, op: str, where: str) -> _Test:
    if not isinstance(values, _ARRAYS):
        raise InvalidQuery(f"{op} needs a list, not {type(values).__name__}, in {where}")
    keys: set[tuple] = set()
    regexes: list[Callable[[str], bool]] = []
    for item in values:
        if isinstance(item, re.Pattern):
            regexes.append(_compile_regex(item, _MISSING, where))
        elif isinstance(item, Mapping) and _first_key_is_operator(item):
            raise InvalidQuery(f"cannot nest an operator document under {op} in {where}")
        else:
            _check_operand(item, where)
            keys.add(_key(item))
    frozen = frozenset(keys)
    strings = frozenset(k[1] for k in keys if k[0] == _R_STRING)
    ranks = frozenset(k[0] for k in keys)

    def test(v: Any) -> bool:
        t = type(v)
        if t is str:
            if v in strings:
                return True
        else:
            rank = _RANKS.get(t)
            if (rank if rank is not None else _rank(v)) in ranks and _key(v) in frozen:  # no key when hopeless
                return True
        return bool(regexes) and isinstance(v, str) and any(search(v) for search in regexes)

    return test


_REGEX_FLAGS = {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL, "x": re.VERBOSE, "u": 0}


def _regex_options(pattern: re.Pattern) -> str:
    return "".join(c for c, flag in _REGEX_FLAGS.items() if flag and pattern.flags & flag)


def _compile_regex(pattern: Any, options: Any, where: str) -> Callable[[str], bool]:
    """A budgeted search for a `$regex` (a str with `$options`, or a compiled `re` pattern)."""
    if options is not _MISSING and not isinstance(options, str):
        raise InvalidQuery(f"$options has to be a string in {where}")
    if isinstance(getattr(pattern, "pattern", pattern), str):
        _check_text(getattr(pattern, "pattern", pattern), where)
    if isinstance(pattern, re.Pattern):
        if not isinstance(pattern.pattern, str):
            raise InvalidQuery(f"a regex must have a str pattern, not bytes, in {where}")
        source, flags = pattern.pattern, pattern.flags
        if options is not _MISSING and options != "" and _regex_options(pattern):
            raise InvalidQuery(f"options set in both $regex and $options in {where}")
    elif isinstance(pattern, str):
        source, flags = pattern, 0
    else:
        raise InvalidQuery(f"$regex has to be a string in {where}")
    for char in "" if options is _MISSING else options:
        if char not in _REGEX_FLAGS:
            raise InvalidQuery(f"invalid flag {char!r} in regex options of {where}")
        flags |= _REGEX_FLAGS[char]
    if "\x00" in source:
        raise InvalidQuery(f"a regex cannot contain a NUL character, in {where}")
    try:
        return _regex.compile_pattern(source, flags)
    except _regex.error as exc:
        raise InvalidQuery(f"invalid regex {source!r} in {where}: {exc}") from None


def _regex_test(search: Callable[[str], bool]) -> _Test:
    return lambda v: isinstance(v, str) and search(v)


def _true_value(value: Any) -> bool:
    """BSON truthiness, as $exists reads its operand: only false, 0, null are false ("" and [] are true)."""
    if value is None:
        return False
    if isinstance(value, (bool, int, float)):
        return value != 0
    return True


# ---------------------------------------------------------------------------------------------------------
# Filter compilation. An operator parses into nodes; a node becomes either a predicate over the path's
# values in a document, or (inside a value-form $elemMatch) a test of one array element.


class _Leaf:
    """One operator's test of a single value; `expand` is whether a leaf array's elements are tested too."""

    __slots__ = ("expand", "test")

    def __init__(self, test: _Test, expand: bool = True) -> None:
        self.test = test
        self.expand = expand


class _Not:
    """Negation of its children taken together ($ne, $nin, $not, $exists: false): it holds for a document
    when the positive match fails over *all* the path's values, so a missing field matches {"$ne": 1}."""

    __slots__ = ("children",)

    def __init__(self, children: list) -> None:
        self.children = children


def _node_on_path(node: _Leaf | _Not, path: str) -> Predicate:
    if isinstance(node, _Leaf):
        return _path_any(path, node.test, node.expand)
    inner = _all_of([_node_on_path(child, path) for child in node.children])
    return lambda doc: not inner(doc)


def _node_on_value(node: _Leaf | _Not) -> _Test:
    if isinstance(node, _Leaf):
        return node.test
    tests = [_node_on_value(child) for child in node.children]
    if len(tests) == 1:
        only = tests[0]
        return lambda v: not only(v)
    return lambda v: not all(t(v) for t in tests)


def _match_all(doc: Document) -> bool:
    return True


def _all_of(predicates: list[Predicate]) -> Predicate:
    if not predicates:
        return _match_all
    if len(predicates) == 1:
        return predicates[0]
    if len(predicates) == 2:
        first, second = predicates
        return lambda doc: first(doc) and second(doc)

    def every(doc: Document) -> bool:  # a plain loop: no generator object per document
        for predicate in predicates:  # noqa: SIM110
            if not predicate(doc):
                return False
        return True

    return every


_LOGICAL = ("$and", "$or", "$nor")
# Operators that make a $elemMatch document a query on subdocuments rather than on element values.
_PATHLESS = frozenset(("$and", "$or", "$nor", "$comment", "$expr", "$where", "$text", "$jsonSchema"))


def check_depth(value: Any, what: str) -> None:
    """Refuse nesting deeper than MAX_DEPTH (MongoDB's limit for documents and for query trees) before any
    recursive code walks it. The walk is iterative, so a 10,000-level or cyclic filter is an InvalidQuery,
    not a RecursionError from the parser, the operand checks or the matcher; 100 levels need about 260
    frames at most."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, Mapping):
            children: Iterable[Any] = node.values()
        elif isinstance(node, _ARRAYS):
            children = node
        else:
            continue
        if depth > MAX_DEPTH:
            raise InvalidQuery(f"{what} nests deeper than {MAX_DEPTH} levels")
        stack.extend((child, depth + 1) for child in children)


def compile_filter(filter: Mapping[str, Any] | None) -> Callable[[Mapping[str, Any]], bool]:
    """Validate a MongoDB filter and return a predicate over documents. None or {} matches everything.

    Raises InvalidQuery naming the problem for anything MongoDB would reject (and for the few things this
    module rejects on purpose, see the module docstring)."""
    if filter is None:
        return _match_all
    if not isinstance(filter, Mapping):
        raise InvalidQuery(f"a filter must be a dict, not {type(filter).__name__}")
    key = _filter_key(filter)
    if key is not None:
        cached = _compiled.get(key)
        if cached is not None:
            return cached
    check_depth(filter, "a filter")
    with _regex.filter_budget():  # every $regex of this filter draws on one matching budget
        # A cached predicate is built from a copy: one made from the caller's own lists would change
        # if the caller later changed them, and still answer for the filter they used to hold.
        predicate = _compile_document(copy.deepcopy(filter) if key is not None else filter)
    if key is not None:
        if len(_compiled) >= _COMPILED_MAX:
            _compiled.clear()
        _compiled[key] = predicate
    return predicate


# Compiled filters by their exact content: a page, a count or a browse query asks the same small filter
# again and again, and compiling it costs about a tenth of a limit-50 query. Only filters of plain
# values are kept (exact str/int/float/bool/None/datetime, dicts with str keys, lists), and none with an
# operator whose predicate carries per-query state ($regex's time budget) or that this module compiles
# specially; anything else compiles on every call.
_COMPILED_MAX = 256
_FILTER_KEY_NODES = 64
_compiled: dict[Any, Predicate] = {}
_UNCACHED_OPERATORS = frozenset(("$regex", "$options", "$where", "$expr", "$text", "$jsonSchema"))
_KEYED_SCALARS = frozenset((str, int, float, bool, type(None)))


class _Uncacheable(Exception):
    pass


def _filter_key(filter: Mapping[str, Any]) -> Any:
    """A hashable key saying exactly what `filter` holds (types included: 1, 1.0 and True differ), or
    None when the filter is not one the cache keeps. Bounded: past `_FILTER_KEY_NODES` values or
    MAX_DEPTH levels (a cyclic filter too) it gives up, and compile_filter's own checks answer."""
    nodes = [_FILTER_KEY_NODES]

    def key(value: Any, depth: int) -> Any:
        nodes[0] -= 1
        if nodes[0] < 0 or depth > MAX_DEPTH:
            raise _Uncacheable
        kind = type(value)
        if kind in _KEYED_SCALARS:
            return kind, value
        if kind is _dt.datetime:
            return kind, value, value.tzinfo
        if kind is dict:
            items = []
            for name, sub in value.items():
                if type(name) is not str or name in _UNCACHED_OPERATORS:
                    raise _Uncacheable
                items.append((name, key(sub, depth + 1)))
            return kind, tuple(items)
        if kind is list or kind is tuple:
            return kind, tuple(key(sub, depth + 1) for sub in value)
        raise _Uncacheable

    try:
        return key(filter, 1)
    except _Uncacheable:
        return None


def match(doc: Mapping[str, Any], filter: Mapping[str, Any] | None) -> bool:
    """Whether `doc` matches `filter`. Compiles the filter on every call: for a scan, use compile_filter."""
    return compile_filter(filter)(doc)


def _compile_document(spec: Mapping) -> Predicate:
    predicates: list[Predicate] = []
    for key, value in spec.items():
        if not isinstance(key, str):
            raise InvalidQuery(f"filter keys must be str, not {type(key).__name__} ({key!r})")
        _check_text(key, "a filter key")
        if key.startswith("$"):
            if key in _LOGICAL:
                predicates.append(_compile_logical(key, value))
            elif key != "$comment":
                raise InvalidQuery(f"unknown or unsupported top level operator: {key}")
        else:
            predicates.extend(_compile_field(key, value))
    return _all_of(predicates)


def _compile_logical(op: str, clauses: Any) -> Predicate:
    if not isinstance(clauses, _ARRAYS) or not clauses:
        raise InvalidQuery(f"{op} must be a non-empty list of documents")
    predicates = []
    for clause in clauses:
        if not isinstance(clause, Mapping):
            raise InvalidQuery(f"{op} entries must be documents, not {type(clause).__name__}")
        predicates.append(_compile_document(clause))
    if op == "$and":
        return _all_of(predicates)
    if op == "$or":
        return lambda doc: any(p(doc) for p in predicates)
    return lambda doc: not any(p(doc) for p in predicates)


def _is_operator_document(value: Any) -> bool:
    return isinstance(value, Mapping) and any(isinstance(k, str) and k.startswith("$") for k in value)


def _compile_field(path: str, value: Any) -> list[Predicate]:
    if _is_operator_document(value):
        nodes = _parse_operators(value, path)
        leaves = [node for node in nodes if isinstance(node, _Leaf)]
        if len(leaves) < 2:
            return [_node_on_path(node, path) for node in nodes]
        return [_path_all(path, leaves)] + [_node_on_path(n, path) for n in nodes if not isinstance(n, _Leaf)]
    if isinstance(value, re.Pattern):
        return [_path_any(path, _regex_test(_compile_regex(value, _MISSING, path)), True)]
    return [_path_any(path, _eq_test(value, path), True)]


def _parse_operators(spec: Mapping, path: str) -> list[_Leaf | _Not]:
    nodes: list[_Leaf | _Not] = []
    for op, arg in spec.items():
        if not (isinstance(op, str) and op.startswith("$")):
            raise InvalidQuery(
                f"unknown operator {op!r} for {path!r}: an operator document cannot mix operators and "
                f"plain fields (to match such a document literally, use $eq)")
        nodes.extend(_parse_operator(op, arg, spec, path))
    return nodes


def _parse_operator(op: str, arg: Any, spec: Mapping, path: str) -> list[_Leaf | _Not]:
    where = f"{path!r}"
    if op == "$eq":
        return [_Leaf(_eq_test(arg, where))]
    if op == "$ne":
        if isinstance(arg, re.Pattern):
            raise InvalidQuery(f"can't have a regex as the argument of $ne in {where} (use $not)")
        return [_Not([_Leaf(_eq_test(arg, where))])]
    if op in _COMPARE:
        return [_Leaf(_compare_test(op, arg, where))]
    if op == "$in":
        return [_Leaf(_in_test(arg, op, where))]
    if op == "$nin":
        return [_Not([_Leaf(_in_test(arg, op, where))])]
    if op == "$exists":
        exists = _Leaf(_exists, expand=False)
        return [exists if _true_value(arg) else _Not([exists])]
    if op == "$regex":
        options = spec.get("$options", _MISSING)
        return [_Leaf(_regex_test(_compile_regex(arg, options, where)))]
    if op == "$options":
        if "$regex" not in spec:
            raise InvalidQuery(f"$options needs a $regex in {where}")
        return []
    if op == "$not":
        if isinstance(arg, re.Pattern):
            return [_Not([_Leaf(_regex_test(_compile_regex(arg, _MISSING, where)))])]
        if not isinstance(arg, Mapping):
            raise InvalidQuery(f"$not needs a regex or an operator document in {where}")
        if not arg:
            raise InvalidQuery(f"$not cannot be empty in {where}")
        return [_Not(_parse_operators(arg, path))]
    if op == "$all":
        return _parse_all(arg, path)
    if op == "$elemMatch":
        return [_elem_match(arg, path)]
    if op == "$size":
        return [_size(arg, where)]
    raise InvalidQuery(f"unknown or unsupported operator {op} in {where}")


def _size(arg: Any, where: str) -> _Leaf:
    if isinstance(arg, bool) or not isinstance(arg, (int, float)):
        raise InvalidQuery(f"$size needs a number, not {type(arg).__name__}, in {where}")
    if isinstance(arg, float) and not arg.is_integer():
        raise InvalidQuery(f"$size must be a whole number in {where}")
    size = int(arg)
    if size < 0:
        raise InvalidQuery(f"$size may not be negative in {where}")
    if size > 2**31 - 1:
        raise InvalidQuery(f"$size must be representable as a 32-bit integer in {where}")
    return _Leaf(lambda v: isinstance(v, _ARRAYS) and len(v) == size, expand=False)


def _parse_all(arg: Any, path: str) -> list[_Leaf | _Not]:
    where = f"{path!r}"
    if not isinstance(arg, _ARRAYS):
        raise InvalidQuery(f"$all needs a list in {where}")
    if not arg:
        return [_Leaf(_never)]  # MongoDB: {$all: []} matches no document
    first = arg[0]
    if isinstance(first, Mapping) and next(iter(first), None) == "$elemMatch":
        nodes: list[_Leaf | _Not] = []
        for item in arg:
            if not (isinstance(item, Mapping) and list(item) == ["$elemMatch"]):
                raise InvalidQuery(f"$all/$elemMatch has to be consistent in {where}")
            nodes.append(_elem_match(item["$elemMatch"], path))
        return nodes
    nodes = []
    for item in arg:
        if isinstance(item, re.Pattern):
            nodes.append(_Leaf(_regex_test(_compile_regex(item, _MISSING, where))))
        elif isinstance(item, Mapping) and _first_key_is_operator(item):
            raise InvalidQuery(f"no $ expressions in $all ({where})")
        else:
            nodes.append(_Leaf(_eq_test(item, where)))
    return nodes


def _array_as_document(array: Any) -> dict:
    return {str(n): v for n, v in enumerate(array)}


def _elem_match(arg: Any, path: str) -> _Leaf:
    """$elemMatch: some element of an array value satisfies all conditions at once. With operators
    ({"$gt": 1, "$lt": 5}) the conditions test each element's value; otherwise they are a query over
    each element that is a document (a nested array counts as a document keyed "0", "1", ...)."""
    if not isinstance(arg, Mapping):
        raise InvalidQuery(f"$elemMatch needs a document in {path!r}")
    first = next(iter(arg), None)
    if isinstance(first, str) and first.startswith("$") and first not in _PATHLESS:
        tests = [_node_on_value(node) for node in _parse_operators(arg, path)]
        if len(tests) == 1:
            element_ok = tests[0]
        else:
            def element_ok(element: Any) -> bool:
                return all(t(element) for t in tests)
    else:
        query = _compile_document(arg)

        def element_ok(element: Any) -> bool:
            if isinstance(element, dict):
                return query(element)
            if isinstance(element, _ARRAYS):
                return query(_array_as_document(element))
            return False

    return _Leaf(lambda v: isinstance(v, _ARRAYS) and any(map(element_ok, v)), expand=False)


# ---------------------------------------------------------------------------------------------------------
# Index planning.


def _plannable(value: Any) -> bool:
    t = type(value)
    if t is str or t is bool or value is None:
        return True
    if t is int:
        return _INT64_MIN <= value <= _INT64_MAX
    return t is float and not math.isnan(value)  # NaN is left to the scan


def equality_values(filter: Mapping[str, Any] | None, field: str) -> list | None:
    """The finite set of scalar values (str, int, float, bool, None) that `filter` restricts `field` to by
    plain equality, $eq or $in, at the top level or in a top-level $and; None when it does not.

    Every document the filter matches has at least one of these among `field_values(doc, field)` — an
    array field matches when any element does — so an index lookup of these values (numbers by numeric
    value, 1 == 1.0, bools apart from numbers) loses nothing. For None the planner must also find
    documents where the field is missing (`field_values` reports those as None). When several clauses
    constrain the field, the smallest set is returned, not their intersection: {"tags": "a"} and
    {"tags": "b"} together match tags == ["a", "b"], which no intersection would find."""
    if not isinstance(filter, Mapping):
        return None
    candidates: list[list] = []
    _collect_equalities(filter, field, candidates)
    return min(candidates, key=len) if candidates else None


def _collect_equalities(spec: Mapping, field: str, out: list[list]) -> None:
    for key, value in spec.items():
        if key == field:
            values = _equality_set(value)
            if values is not None:
                out.append(values)
        elif key == "$and" and isinstance(value, _ARRAYS):
            for clause in value:
                if isinstance(clause, Mapping):
                    _collect_equalities(clause, field, out)


def _equality_set(value: Any) -> list | None:
    if _plannable(value):
        return [value]
    if not (isinstance(value, Mapping) and value and all(isinstance(k, str) and k[:1] == "$" for k in value)):
        return None
    options = []
    if "$eq" in value and _plannable(value["$eq"]):
        options.append([value["$eq"]])
    values = value.get("$in")
    if isinstance(values, _ARRAYS) and all(_plannable(v) for v in values):
        unique = {_key(v): v for v in values}  # 1 and 1.0 are one value; True and 1 are two
        options.append(list(unique.values()))
    return min(options, key=len) if options else None


# ---------------------------------------------------------------------------------------------------------
# Sort.


class _Descending:
    """Inverts a key's order, for mixed-direction sorts where `reverse=True` cannot be used."""

    __slots__ = ("key",)

    def __init__(self, key: tuple) -> None:
        self.key = key

    def __lt__(self, other: _Descending) -> bool:
        return other.key < self.key

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Descending) and self.key == other.key

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"_Descending({self.key!r})"


def _candidates_key(values: list, descending: bool) -> tuple:
    """MongoDB's sort key for the values a path reaches: an array stands for its smallest element in an
    ascending sort and its largest in a descending one; an empty array sorts below null; missing is null."""
    keys = []
    for value in values:
        if isinstance(value, _ARRAYS):
            if value:
                keys.extend(map(_key, value))
            else:
                keys.append(_UNDEFINED_KEY)
        else:
            keys.append(_key(value))
    if not keys:
        return _NULL_KEY
    if len(keys) == 1:
        return keys[0]
    return max(keys) if descending else min(keys)


def sort_key(value: Any, descending: bool = False) -> Any:
    """A key that sorts ascending in MongoDB's order for a field holding `value` sorted in that direction
    (arrays by their smallest element ascending, their largest descending)."""
    key = _candidates_key([value], descending)
    return _Descending(key) if descending else key


def _is_direction(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and value in (1, -1)


def _valid_path(path: Any) -> bool:
    """Whether `path` names fields ("a", "a.b.0"); raises InvalidQuery for an overlong run of digits."""
    if not isinstance(path, str) or not all(part and part[0] != "$" for part in path.split(".")):
        return False
    _check_digit_runs(path, path.split("."))
    try:
        return path.isascii() or bool(path.encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate: no BSON key can name it
        return False


def normalize_sort(sort: Any) -> list[tuple[str, int]]:
    """A sort spec as [(field, 1 or -1), ...]. Accepts None, "field", {"a": 1, "b": -1}, ("a", -1) and
    [("a", 1), "b", ...] (pymongo's forms; ASCENDING and DESCENDING are 1 and -1)."""
    if sort is None:
        return []
    if isinstance(sort, str):
        items: list = [(sort, 1)]
    elif isinstance(sort, Mapping):
        items = list(sort.items())
    elif isinstance(sort, _ARRAYS):
        if len(sort) == 2 and isinstance(sort[0], str) and _is_direction(sort[1]):
            items = [tuple(sort)]
        else:
            items = [(item, 1) if isinstance(item, str) else item for item in sort]
    else:
        raise InvalidQuery(f"a sort must be a field name, a list of (field, direction) or a dict, not {sort!r}")
    result: list[tuple[str, int]] = []
    for item in items:
        if not (isinstance(item, _ARRAYS) and len(item) == 2):
            raise InvalidQuery(f"a sort item must be a field name or a (field, direction) pair, not {item!r}")
        field, direction = item
        if not _valid_path(field):
            raise InvalidQuery(f"cannot sort on {field!r}: expected a field path such as 'a' or 'a.b'")
        if not _is_direction(direction):
            raise InvalidQuery(f"sort direction of {field!r} must be 1 (ascending) or -1 (descending)")
        if any(field == seen for seen, _ in result):
            raise InvalidQuery(f"field {field!r} appears twice in the sort")
        result.append((field, int(direction)))
    return result


def window(items: Iterable[Any], skip: int, limit: int) -> Iterator[Any]:
    """items[skip:skip + limit] (limit 0: no limit) for any skip and limit up to 2**63. islice refuses
    bounds beyond sys.maxsize (2**31 - 1 in a 32-bit process: a bare ValueError); nothing iterated
    here is longer than that, so clamping them changes no result."""
    stop = min(skip + limit, sys.maxsize) if limit else None
    return itertools.islice(items, min(skip, sys.maxsize), stop)


def sort_documents(docs: Iterable[dict], sort: Any, *, limit: int = 0, skip: int = 0) -> list[dict]:
    """Documents in MongoDB sort order (ties keep their input order), then `skip`, then at most `limit`
    (0 = no limit; a negative limit counts like its absolute value, as in pymongo). With a limit only
    skip + limit documents are kept while scanning (heap), so a small page of a big collection is cheap."""
    spec = normalize_sort(sort)
    for name, number in (("skip", skip), ("limit", limit)):
        if isinstance(number, bool) or not isinstance(number, int):
            raise InvalidQuery(f"{name} must be an int, not {type(number).__name__}")
    if skip < 0:
        raise InvalidQuery("skip must be >= 0")
    limit = abs(limit)
    if not spec:
        return list(window(docs, skip, limit))
    if limit or len({direction for _, direction in spec}) == 1:
        key, reverse = _sort_key_function(spec)
        if not limit:
            return sorted(docs, key=key, reverse=reverse)[skip:]
        pick = heapq.nlargest if reverse else heapq.nsmallest
        return pick(skip + limit, docs, key=key)[skip:]
    # Mixed directions: stable passes from the last field to the first, each with native keys.
    getters = [(_getter(field, False), direction == -1) for field, direction in spec]
    keyed = [([_candidates_key(get(doc), desc) for get, desc in getters], doc) for doc in docs]
    for position in reversed(range(len(getters))):
        keyed.sort(key=lambda item: item[0][position], reverse=getters[position][1])
    return [doc for _, doc in keyed][skip:]


def _sort_key_function(spec: list[tuple[str, int]]) -> tuple[Callable[[Any], Any], bool]:
    """The key function and whether to sort in reverse. One direction for all fields sorts natively with
    `reverse` (Python keeps ties stable either way); mixed directions wrap the descending keys."""
    getters = [(_getter(field, False), direction == -1) for field, direction in spec]
    uniform = len({descending for _, descending in getters}) == 1
    reverse = uniform and getters[0][1]
    if len(getters) == 1:
        get, descending = getters[0]
        return (lambda doc: _candidates_key(get(doc), descending)), reverse
    if uniform:
        return (lambda doc: tuple([_candidates_key(g(doc), d) for g, d in getters])), reverse

    def mixed(doc: Any) -> tuple:
        return tuple([_Descending(_candidates_key(g(doc), True)) if d else _candidates_key(g(doc), False)
                      for g, d in getters])

    return mixed, False


# ---------------------------------------------------------------------------------------------------------
# Projection.


def compile_projection_owned(projection: Any) -> Callable[[dict], dict]:
    """`compile_projection` for a caller that owns each document it projects (one it just decoded):
    leaving out top-level fields (`{"data": 0}`, every listing's) drops them from that dict instead of
    copying the rest, about 2 us a document saved."""
    project = compile_projection(projection)
    dropped = getattr(project, "drops_top_level", None)
    if dropped is None:
        return project

    def drop(doc: dict) -> dict:
        for key in dropped:
            doc.pop(key, None)
        return doc

    return drop


def compile_projection(projection: Any) -> Callable[[Mapping[str, Any]], dict]:
    """MongoDB find() projection as a function from a document to a new document (the input is never
    modified; values passed through whole are shared with it, not copied).

    Inclusion ({"a": 1, "b.c": True}) keeps those fields in document order, `_id` too unless excluded;
    exclusion ({"a": 0}) drops them; `_id` may be excluded in either mode, but inclusion and exclusion of
    other fields cannot mix. A list of names means inclusion. Dotted paths go through subdocuments and
    through arrays of them; in inclusion mode non-document array elements are dropped, as in MongoDB.
    None or {} returns the whole document."""
    if projection is None:
        return dict
    if isinstance(projection, _ARRAYS):
        if not all(isinstance(name, str) for name in projection):
            raise InvalidQuery("a projection list must hold field names")
        projection = dict.fromkeys(projection, 1)
    if not isinstance(projection, Mapping):
        raise InvalidQuery(f"a projection must be a dict or a list of field names, not {type(projection).__name__}")
    if not projection:
        return dict
    include_id = True
    modes = set()
    paths: list[str] = []
    for path, flag in projection.items():
        if not _valid_path(path):
            raise InvalidQuery(f"invalid projection path {path!r}")
        if isinstance(flag, (bool, int, float)):
            included = bool(flag)  # any non-zero number includes, as in MongoDB
        else:
            raise InvalidQuery(
                f"unsupported projection value {flag!r} for {path!r}: only 1/0 and True/False are supported")
        if path == "_id":
            include_id = included
        else:
            modes.add(included)
            paths.append(path)
    if len(modes) > 1:
        raise InvalidQuery("a projection cannot mix inclusion and exclusion (except of _id)")
    inclusion = modes == {True} or (not modes and include_id)
    if inclusion == include_id:  # _id is named in the tree when it is included (inclusion) or excluded
        paths.append("_id")
    tree = _projection_tree(paths)
    if inclusion:
        return lambda doc: _include(doc, tree)
    if all(sub is True for sub in tree.values()):  # top-level fields only ({"data": 0}: every listing)
        dropped = frozenset(tree)

        def exclude_top_level(doc: Mapping[str, Any]) -> dict:
            return {key: value for key, value in doc.items() if key not in dropped}

        exclude_top_level.drops_top_level = tuple(dropped)  # type: ignore[attr-defined]
        return exclude_top_level
    return lambda doc: _exclude(doc, tree)


def _projection_tree(paths: list[str]) -> dict:
    """{"a.b": ..., "c": ...} as nested dicts {"a": {"b": True}, "c": True}; overlapping paths are an error."""
    tree: dict = {}
    for path in paths:
        node = tree
        parts = path.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if child is True:
                raise InvalidQuery(f"path collision at {path!r}")
            node = child
        if parts[-1] in node:
            if path == "_id":  # "_id.x" given explicitly wins over the default inclusion of _id
                continue
            raise InvalidQuery(f"path collision at {path!r}")
        node[parts[-1]] = True
    return tree


def _include(doc: Mapping, tree: dict) -> dict:
    out = {}
    for key, value in doc.items():
        sub = tree.get(key)
        if sub is True:
            out[key] = value
        elif sub is not None:
            projected = _include_value(value, sub)
            if projected is not _MISSING:
                out[key] = projected
    return out


def _include_value(value: Any, tree: dict) -> Any:
    if isinstance(value, dict):
        return _include(value, tree)
    if isinstance(value, _ARRAYS):
        return [p for p in (_include_value(v, tree) for v in value) if p is not _MISSING]
    return _MISSING  # a scalar where the projection expects a document is dropped


def _exclude(doc: Mapping, tree: dict) -> dict:
    out = {}
    for key, value in doc.items():
        sub = tree.get(key)
        if sub is None:
            out[key] = value
        elif sub is not True:
            out[key] = _exclude_value(value, sub)
    return out


def _exclude_value(value: Any, tree: dict) -> Any:
    if isinstance(value, dict):
        return _exclude(value, tree)
    if isinstance(value, _ARRAYS):
        return [_exclude_value(v, tree) for v in value]
    return value


# ---------------------------------------------------------------------------------------------------------
# Update operators.

_UPDATE_OPERATORS = frozenset((
    "$set", "$unset", "$inc", "$min", "$max", "$push", "$addToSet", "$pull", "$rename", "$currentDate",
    "$setOnInsert",
))


def _copy(value: Any) -> Any:
    """A deep copy of a document value (tuples become lists, as they would after a round trip)."""
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, _ARRAYS):
        return [_copy(v) for v in value]
    return value


def _compare_path_parts(a: tuple, b: tuple) -> int:
    """MongoDB (5.0+) applies updates in field order: names lexicographically, numeric names numerically."""
    for x, y in zip(a, b, strict=False):
        if x != y:
            if x.isdigit() and y.isdigit() and x.isascii() and y.isascii():
                return -1 if _numeric_order(x) < _numeric_order(y) else 1
            return -1 if x < y else 1
    return len(a) - len(b)


def _numeric_order(digits: str) -> tuple[int, str]:
    """Sorts ASCII digit strings by value without int(), which refuses more than 4,300 digits."""
    significant = digits.lstrip("0")
    return len(significant), significant


_PATH_ORDER = functools.cmp_to_key(_compare_path_parts)


def compile_update(update: Mapping[str, Any], *, inserting: bool = False) -> Callable[[Mapping[str, Any]], dict]:
    """An update document ({"$set": {...}, "$inc": {...}, ...}) as a function from a document to the
    updated copy (the input is never modified). Supported: $set $unset $inc $min $max $push/$addToSet
    (with $each) $pull (value or condition) $rename $currentDate, and $setOnInsert, applied only when
    `inserting` (an upsert creating the document). Dotted paths create missing subdocuments.

    Raises InvalidQuery at compile time for a replacement document, a mix of operators and fields,
    unknown operators, bad operands ($inc of a non-number, ...) and two operators on overlapping paths;
    and when applied, for a document the update cannot apply to ($inc of a string, $push to a non-array,
    a path through a scalar) or an update that would change `_id`."""
    if not isinstance(update, Mapping) or not update:
        raise InvalidQuery("an update must be a non-empty dict of update operators")
    check_depth(update, "an update")
    keys = list(update)
    operators = [k for k in keys if isinstance(k, str) and k.startswith("$")]
    if len(operators) != len(keys):
        if operators:
            raise InvalidQuery("an update cannot mix update operators and plain fields")
        raise InvalidQuery("an update needs update operators such as $set; to replace a document use replace_one")
    actions: list[tuple[tuple[str, ...], Callable[[dict], None]]] = []
    written: list[tuple[str, ...]] = []
    for op, fields in update.items():
        if op not in _UPDATE_OPERATORS:
            raise InvalidQuery(f"unknown or unsupported update operator {op}")
        if not isinstance(fields, Mapping):
            raise InvalidQuery(f"{op} needs a dict of fields, not {type(fields).__name__}")
        for path, arg in fields.items():
            targets = _update_targets(op, path, arg)
            for target in targets:
                for other in written:
                    if other[: len(target)] == target[: len(other)]:
                        raise InvalidQuery(
                            f"updating the path {'.'.join(target)!r} would conflict with {'.'.join(other)!r}")
                written.append(target)
            actions.append((targets[-1], _update_action(op, path, arg, inserting)))
    actions.sort(key=lambda action: _PATH_ORDER(action[0]))
    ordered = [action for _, action in actions]

    def apply(doc: Mapping[str, Any]) -> dict:
        new = {k: _copy(v) for k, v in doc.items()}
        for action in ordered:
            action(new)
        if "_id" in doc and ("_id" not in new or _key(new["_id"]) != _key(doc["_id"])):
            raise InvalidQuery("the update would change the immutable field '_id'")
        return new

    return apply


def _update_targets(op: str, path: Any, arg: Any) -> list[tuple[str, ...]]:
    """The paths an operator writes (both ends of a $rename), validated; used to find conflicts."""
    for candidate in (path, arg) if op == "$rename" else (path,):
        if not isinstance(candidate, str) or not candidate or not _valid_path(candidate):
            raise InvalidQuery(f"invalid path {candidate!r} in {op} (positional operators are not supported)")
    if op == "$rename":
        if path == arg:
            raise InvalidQuery(f"$rename source and destination must differ: {path!r}")
        return [tuple(path.split(".")), tuple(arg.split("."))]
    return [tuple(path.split("."))]


def _update_action(op: str, path: str, arg: Any, inserting: bool) -> Callable[[dict], None]:
    parts = tuple(path.split("."))
    where = f"{op} of {path!r}"
    if op in ("$set", "$setOnInsert"):
        _check_operand(arg, where)
        if op == "$setOnInsert" and not inserting:
            return lambda doc: None
        return _setter(parts, lambda current: _copy(arg))
    if op == "$unset":
        return lambda doc: _unset(doc, parts)
    if op == "$currentDate":
        if not (isinstance(arg, bool) or (isinstance(arg, Mapping) and dict(arg) == {"$type": "date"})):
            raise InvalidQuery(f"{where} must be true or {{'$type': 'date'}} (timestamps are not supported)")
        return _setter(parts, lambda current: utcnow())
    if op == "$inc":
        if isinstance(arg, bool) or not isinstance(arg, (int, float)):
            raise InvalidQuery(f"{where} needs a number, not {type(arg).__name__}")
        _check_operand(arg, where)
        return _setter(parts, lambda current: _increment(current, arg, path))
    if op in ("$min", "$max"):
        _check_operand(arg, where)
        better = -1 if op == "$min" else 1
        return _setter(parts, lambda current: _copy(arg) if current is _MISSING
                       or compare_values(arg, current) == better else current)
    if op in ("$push", "$addToSet"):
        values = _each(op, arg, where)
        if op == "$push":
            return _setter(parts, lambda current: _array_of(current, path, op) + _copy(values))
        return _setter(parts, lambda current: _add_to_set(_array_of(current, path, op), values))
    if op == "$pull":
        remove = _pull_matcher(arg, where)
        return lambda doc: _pull(doc, parts, remove, path)
    return _renamer(parts, tuple(arg.split(".")))


def _each(op: str, arg: Any, where: str) -> list:
    if isinstance(arg, Mapping) and "$each" in arg:
        for key in arg:
            if key != "$each":
                raise InvalidQuery(f"unsupported clause {key!r} in {where} (only $each is supported)")
        values = arg["$each"]
        if not isinstance(values, _ARRAYS):
            raise InvalidQuery(f"$each in {where} needs a list, not {type(values).__name__}")
        _check_operand(values, where)
        return list(values)
    _check_operand(arg, where)
    return [arg]


def _container(doc: dict, parts: tuple, create: bool) -> Any:
    """The dict or list that holds the last part of `parts`, creating subdocuments on the way when
    `create`; None when the path does not exist and `create` is false."""
    node: Any = doc
    for depth, part in enumerate(parts[:-1]):
        if isinstance(node, dict):
            child = node.get(part, _MISSING)
            if child is _MISSING:
                if not create:
                    return None
                child = node[part] = {}
        else:  # a list: the part must be a position
            position = _array_index(part)
            if position < 0:
                if not create:
                    return None
                raise InvalidQuery(f"cannot create field {part!r} in the array at {'.'.join(parts[:depth])!r}")
            if position >= len(node):
                if not create:
                    return None
                _pad_to(node, position, ".".join(parts[:depth]))
                node[position] = {}
            child = node[position]
        if not isinstance(child, (dict, list)):
            if not create:
                return None
            raise InvalidQuery(f"cannot create field {parts[depth + 1]!r} in {'.'.join(parts[: depth + 1])!r}, "
                               f"which holds {child!r}")
        node = child
    return node


def _get(container: Any, part: str) -> Any:
    if isinstance(container, dict):
        return container.get(part, _MISSING)
    position = _array_index(part)
    return container[position] if 0 <= position < len(container) else _MISSING


def _setter(parts: tuple, compute: Callable[[Any], Any]) -> Callable[[dict], None]:
    last = parts[-1]

    def set_value(doc: dict) -> None:
        container = _container(doc, parts, True)
        value = compute(_get(container, last))
        if isinstance(container, dict):
            container[last] = value
            return
        position = _array_index(last)
        if position < 0:
            raise InvalidQuery(f"cannot create field {last!r} in the array at {'.'.join(parts[:-1])!r}")
        if position >= len(container):
            _pad_to(container, position, ".".join(parts[:-1]))
        container[position] = value

    return set_value


def _unset(doc: dict, parts: tuple) -> None:
    container = _container(doc, parts, False)
    if isinstance(container, dict):
        container.pop(parts[-1], None)
    elif isinstance(container, list):
        position = _array_index(parts[-1])
        if 0 <= position < len(container):
            container[position] = None  # MongoDB nulls an unset array element rather than shifting


def _increment(current: Any, amount: float, path: str) -> float:
    if current is _MISSING:
        return amount
    if isinstance(current, bool) or not isinstance(current, (int, float)):
        raise InvalidQuery(f"cannot apply $inc to {path!r}, which holds a {type(current).__name__}")
    result = current + amount
    if isinstance(result, int) and not _INT64_MIN <= result <= _INT64_MAX:
        raise InvalidQuery(f"$inc of {path!r} overflows a 64-bit integer")
    return result


def _array_of(current: Any, path: str, op: str) -> list:
    if current is _MISSING:
        return []
    if not isinstance(current, list):
        raise InvalidQuery(f"{op} needs {path!r} to be an array, not a {type(current).__name__}")
    return current


def _add_to_set(array: list, values: list) -> list:
    present = {_key(v) for v in array}
    for value in values:
        key = _key(value)
        if key not in present:
            present.add(key)
            array.append(_copy(value))
    return array


def _pull_matcher(arg: Any, where: str) -> _Test:
    """MongoDB's three $pull forms: a plain document is a query on document elements; an operator
    document or regex is a condition on each element's value; anything else removes equal elements."""
    if isinstance(arg, Mapping) and not _is_operator_document(arg):
        query = compile_filter(arg)
        return lambda element: isinstance(element, dict) and query(element)
    if isinstance(arg, (Mapping, re.Pattern)):
        condition = compile_filter({"": arg})
        return lambda element: condition({"": element})
    _check_operand(arg, where)
    key = _key(arg)
    return lambda element: _key(element) == key


def _pull(doc: dict, parts: tuple, remove: _Test, path: str) -> None:
    container = _container(doc, parts, False)
    if container is None:
        return
    current = _get(container, parts[-1])
    if current is _MISSING:
        return
    if not isinstance(current, list):
        raise InvalidQuery(f"cannot apply $pull to {path!r}, which holds a {type(current).__name__}")
    current[:] = [element for element in current if not remove(element)]


def _dict_container(doc: dict, parts: tuple, create: bool, role: str) -> dict | None:
    node = doc
    for part in parts[:-1]:
        child = node.get(part, _MISSING)
        if child is _MISSING or not isinstance(child, (dict, list)):
            if not create:
                return None
            if child is not _MISSING:
                raise InvalidQuery(f"$rename {role} {'.'.join(parts)!r} goes through a non-document")
            child = node[part] = {}
        if isinstance(child, list):
            raise InvalidQuery(f"$rename {role} {'.'.join(parts)!r} cannot be an array element")
        node = child
    return node


def _renamer(source: tuple, target: tuple) -> Callable[[dict], None]:
    def rename(doc: dict) -> None:
        container = _dict_container(doc, source, False, "source")
        if container is None or source[-1] not in container:
            return
        value = container.pop(source[-1])
        destination = _dict_container(doc, target, True, "destination")
        assert destination is not None
        destination[target[-1]] = value

    return rename
