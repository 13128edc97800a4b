"""Ordered indexes of the embedded document layer, and the planner that picks one for a query.

An index entry is `prefix + component per field + id key -> len(id key)` (one byte; the components are
in `_index_keys.py`), so an index is walked in value order with a cursor, forwards or backwards, and a walk stops after
`skip + limit` matches. The planner reads a filter's plain conjunction (top level and `$and`): equality,
`$in` and the type-bracketed ranges `$gt/$gte/$lt/$lte` on indexed fields become key ranges; a sort whose
fields are the index's (after the fields fixed by equality) is served by the walk's own order. Every
candidate is still re-checked by the full matcher, so a plan can only change a query's cost.

Two markers keep that promise where a value has no place in the order: a document whose value cannot be
keyed (a sub-document, a string too long for a key, an array inside the path) has one ALWAYS entry and
is a candidate of every lookup; a document with an array on an indexed path has an entry per element
plus a MULTI entry. An index that has either kind is not used to serve a sort (MongoDB sorts an array by
its smallest or largest element, which a walk over elements does not give), and a MULTI index is walked
with de-duplication and one bound per field (`{a: {$gt: 1, $lt: 5}}` matches `a: [0, 10]`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack

from .._exceptions import InvalidArgument
from . import index_keys as keys
from .codec import is_utf8

__all__ = ["Index", "Plan", "any_entry", "check_index_spec", "documents_under", "plan", "stored_count"]

_MAX_ENTRIES = 1000  # entries of one document (array fan-out) or key prefixes of one lookup ($in fan-out)
_MAX_KEY = 500  # LMDB refuses keys over 511 bytes
_ESTIMATE_CAP = 1000  # a lookup's size is counted up to this many entries when the plan choice needs it
_MAX_NAME = 64
_RUN = 256  # ties longer than this, walked backwards, are read forwards from their first entry instead


class _Missing:
    pass


_MISSING = _Missing()


def _pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def _valid_field(path: Any) -> bool:
    if not isinstance(path, str) or not path or "\x00" in path or not is_utf8(path):
        return False
    return all(part and not part.startswith("$") for part in path.split("."))


def check_index_spec(keys_: Any, name: Any = None, unique: Any = False) -> tuple[list[tuple[str, int]], str]:
    """The normalised [(field, direction)] and name of an index spec; InvalidArgument naming the problem.
    Accepts "field", [("a", 1), ("b", -1)], [("a", 1)] and {"a": 1} (pymongo's forms)."""
    if isinstance(keys_, str):
        items: list = [(keys_, 1)]
    elif isinstance(keys_, Mapping):
        items = list(keys_.items())
    elif isinstance(keys_, (list, tuple)):
        if len(keys_) == 2 and isinstance(keys_[0], str) and isinstance(keys_[1], int) \
                and not isinstance(keys_[1], bool):
            items = [tuple(keys_)]
        else:
            items = [(item, 1) if isinstance(item, str) else item for item in keys_]
    else:
        raise InvalidArgument(f"index keys must be a field path or a list of (field, direction), not {keys_!r:.100}")
    if not items:
        raise InvalidArgument("an index needs at least one field")
    out: list[tuple[str, int]] = []
    for item in items:
        if not (isinstance(item, (list, tuple)) and len(item) == 2):
            raise InvalidArgument(f"an index key must be a (field, direction) pair, not {item!r:.100}")
        path, direction = item
        if not _valid_field(path):
            raise InvalidArgument(f"{path!r:.100} is not a field path (dot-separated names, none empty or "
                                  f"starting with '$')")
        if isinstance(direction, bool) or direction not in (1, -1):
            raise InvalidArgument(f"index direction of {path!r} must be 1 or -1, not {direction!r:.100}")
        if any(path == seen for seen, _ in out):
            raise InvalidArgument(f"field {path!r} appears twice in the index")
        out.append((path, int(direction)))
    if len(out) > 8:
        raise InvalidArgument("an index has at most 8 fields")
    if name is None:
        name = "_".join(f"{path}_{direction}" for path, direction in out)
    if not isinstance(name, str) or not name or "\x00" in name or not is_utf8(name) \
            or len(name.encode()) > _MAX_NAME:
        raise InvalidArgument(f"an index name is a non-empty UTF-8 str of at most {_MAX_NAME} bytes, no NUL, "
                              f"not {name!r:.100}")
    if name == "_id_":
        raise InvalidArgument("the index name '_id_' is reserved for the _id index")
    if not isinstance(unique, bool):
        raise InvalidArgument(f"unique must be True or False, not {unique!r:.100}")
    return out, name


def _field_components(doc: Mapping[str, Any], path: str) -> tuple[list[bytes] | None, bool]:
    """(components of the document's value on `path`, whether it is an array); None = no components."""
    value: Any = doc
    if "." not in path:  # a top-level field: one lookup
        value = doc.get(path, _MISSING) if isinstance(doc, dict) else _MISSING
        if value is _MISSING:
            return [keys.NULL], False
    else:
        for part in path.split("."):
            if isinstance(value, dict):
                value = value.get(part, _MISSING)
            elif isinstance(value, (list, tuple)):
                return None, False  # array fan-out inside the path: left to the matcher
            else:
                value = _MISSING
            if value is _MISSING:
                return [keys.NULL], False
    if isinstance(value, (list, tuple)):
        found = set()
        for item in value:
            if isinstance(item, (dict, list, tuple)):
                continue  # a scalar lookup never matches a sub-document or a nested array element
            comp = keys.encode(item)
            if comp is None:
                return None, True
            found.add(comp)
        return (sorted(found) if found else None), True
    comp = keys.encode(value)
    return ([comp] if comp is not None else None), False


class Index:
    """One index of one collection, as stored in the file's meta table."""

    __slots__ = ("name", "spec", "fields", "directions", "unique", "prefix")

    def __init__(self, collection_prefix: bytes, spec: Mapping[str, Any]) -> None:
        self.spec = spec
        self.name: str = spec["name"]
        self.fields: list[str] = [f for f, _ in spec["keys"]]
        self.directions: list[int] = [int(d) for _, d in spec["keys"]]
        self.unique: bool = bool(spec.get("unique"))
        self.prefix = collection_prefix + _pack(self.name)

    def entries(self, doc: Mapping[str, Any], idk: bytes) -> set[bytes]:
        """Every key this document files under this index."""
        return self.filing(doc, idk)[0]

    def filing(self, doc: Mapping[str, Any], idk: bytes) -> tuple[set[bytes], set[bytes]]:
        """(every key this document files under this index, the value prefixes it is counted under).

        A value prefix is the components of the first 1..k indexed fields of one of its entries (without
        the index prefix); a document is counted once under each, however many array combinations share
        it. A document filed under ALWAYS is counted under none (counts re-check those with the matcher)."""
        if len(self.fields) == 1:  # the common case, one field holding one value: no sets of combinations
            comps, is_array = _field_components(doc, self.fields[0])
            if comps is not None and not is_array and len(comps) == 1:
                entry = self.prefix + comps[0] + idk
                if len(entry) <= _MAX_KEY:
                    return {entry}, {comps[0]}
        per_field = []
        multi = False
        always = {self.prefix + keys.ALWAYS + idk}, set()
        for path in self.fields:
            comps, is_array = _field_components(doc, path)
            if comps is None:
                return always
            multi = multi or is_array
            per_field.append(comps)
        combos = 1
        for comps in per_field:
            combos *= len(comps)
        if combos > _MAX_ENTRIES:
            return always
        if len(per_field) == 1:  # the common case: one field, one value
            values = per_field[0]
            counted = set(values)
            out = {self.prefix + value + idk for value in values}
        else:
            counted = set()
            out = set()
            for combo in itertools.product(*per_field):
                out.add(self.prefix + b"".join(combo) + idk)
                counted.update(b"".join(combo[:depth]) for depth in range(1, len(combo) + 1))
        if any(len(entry) > _MAX_KEY for entry in out):
            return always
        if multi:
            out.add(self.prefix + keys.MULTI + idk)
        return out, counted

    def counter_key(self, value_prefix: bytes) -> bytes:
        """Where the number of documents filed under a value prefix is kept (when it is 2 or more)."""
        return self.prefix + keys.COUNTER + value_prefix

    def markers(self, txn: Any) -> tuple[bool, bool]:
        """(has ALWAYS entries, has MULTI entries): two cursor probes."""
        return any_entry(txn, self.prefix + keys.ALWAYS), any_entry(txn, self.prefix + keys.MULTI)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "key": [(f, d) for f, d in zip(self.fields, self.directions, strict=True)],
                "unique": self.unique}


def any_entry(txn: Any, prefix: bytes) -> bool:
    """Whether any index entry starts with `prefix`: one cursor probe."""
    for _ in txn.range("index", prefix, keys.successor(prefix)):
        return True
    return False


# --- reading a filter -----------------------------------------------------------------------------


@dataclass
class _FieldCond:
    eq: list[list[Any]] = field(default_factory=list)  # each clause's set of allowed values
    lower: list[tuple[Any, bool, str]] = field(default_factory=list)  # (value, inclusive, bracket)
    upper: list[tuple[Any, bool, str]] = field(default_factory=list)
    inexact: bool = False  # some condition on the field is left to the matcher


def _keyable(value: Any) -> bool:
    return not isinstance(value, (dict, list, tuple)) and keys.encode(value) is not None


def _conditions(filter: Mapping[str, Any] | None) -> tuple[dict[str, _FieldCond], bool]:
    """Per-field conditions the indexes can serve, and whether they are the whole filter."""
    conds: dict[str, _FieldCond] = {}
    whole = [True]

    def walk(spec: Mapping[str, Any]) -> None:
        for key, value in spec.items():
            if not isinstance(key, str):
                whole[0] = False
            elif key == "$and" and isinstance(value, (list, tuple)) and all(isinstance(c, Mapping) for c in value):
                for clause in value:
                    walk(clause)
            elif key.startswith("$"):
                whole[0] = False
            else:
                _field(conds.setdefault(key, _FieldCond()), value)

    def _field(cond: _FieldCond, value: Any) -> None:
        if isinstance(value, Mapping) and value and all(isinstance(k, str) and k.startswith("$") for k in value):
            for op, arg in value.items():
                if op == "$eq" and _keyable(arg):
                    cond.eq.append([arg])
                elif op == "$in" and isinstance(arg, (list, tuple)) and all(_keyable(v) for v in arg):
                    cond.eq.append(list(arg))
                elif op in ("$gt", "$gte", "$lt", "$lte") and keys.bracket(arg) is not None \
                        and keys.encode(arg) is not None:
                    bound = (arg, op in ("$gte", "$lte"), keys.bracket(arg))
                    (cond.lower if op in ("$gt", "$gte") else cond.upper).append(bound)
                else:
                    cond.inexact = True
        elif _keyable(value):
            cond.eq.append([value])
        else:
            cond.inexact = True

    if isinstance(filter, Mapping):
        walk(filter)
    for cond in conds.values():
        if len(cond.eq) > 1 or (cond.eq and (cond.lower or cond.upper)):
            cond.inexact = True  # several clauses on one field: narrowed by one, all checked by the matcher
        if not cond.eq and not cond.lower and not cond.upper:
            cond.inexact = True
    return conds, whole[0] and all(not c.inexact for c in conds.values())


# --- plans ----------------------------------------------------------------------------------------


@dataclass
class Plan:
    """How to find a query's candidates: an index walk over key ranges, or a collection scan."""

    index: Index | None = None
    ranges: list[tuple[bytes, bytes | None]] = field(default_factory=list)
    reverse: bool = False
    in_sort_order: bool = False  # candidates arrive in the query's sort order (or it has none)
    tiebreak: bool = False  # ... in the order of its leading fields only: runs of ties are sorted in memory
    exact: bool = False  # the ranges answer the whole filter: counts need no document
    counted: bool = False  # ... and each range is one value prefix of equalities: its count is stored
    multi: bool = False  # the index has array entries: de-duplicate candidates
    always: bool = False  # the index has documents filed under ALWAYS: they are candidates too
    used_fields: list[str] = field(default_factory=list)
    estimate: int | None = None  # entries in the ranges, counted up to _ESTIMATE_CAP
    reason: str = ""

    def candidates(self, txn: Any) -> Iterator[bytes]:
        """Id keys of every document that may match, in plan order, each once."""
        for _, idk in self.keyed_candidates(txn):
            yield idk

    def keyed_candidates(self, txn: Any) -> Iterator[tuple[bytes, bytes]]:
        """(indexed values as key bytes, id key) of every candidate, in plan order, each once."""
        assert self.index is not None
        if len(self.ranges) == 1 and not (self.multi or self.always):  # the common walk: no generator around it
            return (_walk_reverse if self.reverse else _walk_forward)(txn, *self.ranges[0])
        return self._keyed_candidates(txn)

    def _keyed_candidates(self, txn: Any) -> Iterator[tuple[bytes, bytes]]:
        assert self.index is not None
        seen: set[bytes] | None = set() if self.multi else None
        for lo, hi in self.ranges:
            walk = _walk_reverse(txn, lo, hi) if self.reverse else _walk_forward(txn, lo, hi)
            for value, idk in walk:
                if seen is not None:
                    if idk in seen:
                        continue
                    seen.add(idk)
                yield value, idk
        if self.always:
            for key, n in txn.range("index", self.index.prefix + keys.ALWAYS, self.index.prefix + keys.MULTI):
                yield keys.ALWAYS, key[-n[0]:]

    def count_entries(self, txn: Any) -> int:
        """Documents in the ranges, from index keys alone (only for an exact, non-array plan)."""
        return sum(txn.count_range("index", lo, hi) for lo, hi in self.ranges)

    def count_counted(self, txn: Any) -> int:
        """Documents in the ranges, from the stored counter of each value prefix (only for a `counted`
        plan): O(ranges), whatever the number of matches."""
        assert self.index is not None
        cut = len(self.index.prefix)
        return sum(stored_count(txn, self.index, lo[cut:]) for lo, _ in self.ranges)

    def explain(self) -> dict[str, Any]:
        if self.index is None:
            return {"plan": "COLLSCAN", "index": None, "sort": "in memory" if not self.in_sort_order else "none",
                    "reason": self.reason}
        return {
            "plan": "IXSCAN",
            "index": self.index.name,
            "key": self.index.describe()["key"],
            "fields_used": self.used_fields,
            "direction": "backward" if self.reverse else "forward",
            "ranges": len(self.ranges),
            "sort": ("index order, ties sorted in memory" if self.tiebreak else "index order")
            if self.in_sort_order else "in memory",
            "exact": self.exact,
            "counted": self.counted,
            "multikey": self.multi,
            "estimate": self.estimate,
            "reason": self.reason,
        }


def documents_under(txn: Any, index: Index, value_prefix: bytes, limit: int) -> int:
    """How many distinct documents have entries under a value prefix, counted up to `limit` (a document
    of arrays has several entries under one prefix)."""
    lo = index.prefix + value_prefix
    seen: set[bytes] = set()
    for key, n in txn.range("index", lo, keys.successor(lo)):
        seen.add(key[-n[0]:])
        if len(seen) >= limit:
            break
    return len(seen)


def stored_count(txn: Any, index: Index, value_prefix: bytes) -> int:
    """The documents filed under a value prefix: its counter if it has one, else (fewer than two) the
    entries themselves."""
    raw = txn.get("index", index.counter_key(value_prefix))
    if raw is not None:
        return int.from_bytes(raw, "big")
    return documents_under(txn, index, value_prefix, 2)


def _walk_forward(txn: Any, lo: bytes, hi: bytes | None) -> Iterator[tuple[bytes, bytes]]:
    return _pairs(txn, lo, hi, False)


def _pairs(txn: Any, lo: bytes, hi: bytes | None, reverse: bool) -> Iterator[tuple[bytes, bytes]]:
    """(indexed values, id key) of every entry in [lo, hi), in key order or reversed."""
    walk = getattr(txn, "index_walk", None)  # the LMDB engine splits them in its own cursor loop
    if walk is not None:
        return walk("index", lo, hi, reverse=reverse)
    return _split_entries(txn, lo, hi, reverse)


def _split_entries(txn: Any, lo: bytes, hi: bytes | None, reverse: bool) -> Iterator[tuple[bytes, bytes]]:
    for key, n in txn.range("index", lo, hi, reverse=reverse):
        cut = len(key) - n[0]
        yield key[:cut], key[cut:]


def _walk_reverse(txn: Any, lo: bytes, hi: bytes | None) -> Iterator[tuple[bytes, bytes]]:
    """Id keys in descending value order, ties in ascending id order (as a stable descending sort of a
    scan gives them): runs of equal values are buffered, long ones read forwards."""
    while True:
        run: list[bytes] = []
        run_value = b""
        restart: bytes | None = None
        for value, idk in _pairs(txn, lo, hi, True):
            if run and value != run_value:
                for idk_ in reversed(run):
                    yield run_value, idk_
                run = []
            if not run:
                run_value = value
            run.append(idk)
            if len(run) > _RUN:
                restart = run_value
                break
        else:
            for idk_ in reversed(run):
                yield run_value, idk_
            return
        for _, idk in _pairs(txn, restart, keys.successor(restart), False):
            yield restart, idk
        hi = restart


def _bounds(index: Index, conds: dict[str, _FieldCond], multi: bool
            ) -> tuple[list[tuple[bytes, bytes | None]], list[str], int, bool, bool]:
    """(key ranges, fields used, how many lead fields are fixed by equality, whether the ranges are the
    exact answer for the fields used, whether they are too on an index with array entries: then every
    used field is one equality, so each document has at most one matching value prefix)."""
    prefixes = [index.prefix]
    used: list[str] = []
    fixed = 0
    exact = True
    for path in index.fields:
        cond = conds.get(path)
        if cond is None:
            break
        if cond.eq:
            values = min(cond.eq, key=len)
            comps = sorted({keys.encode(v) for v in values})  # type: ignore[type-var]
            if len(prefixes) * max(1, len(comps)) > _MAX_ENTRIES:
                break
            prefixes = [p + c for p in prefixes for c in comps]  # type: ignore[operator]
            used.append(path)
            fixed += 1
            exact = exact and not cond.inexact
            continue
        if cond.lower or cond.upper:
            bracket_name = (cond.lower or cond.upper)[0][2]
            lower = [b for b in cond.lower if b[2] == bracket_name]
            upper = [b for b in cond.upper if b[2] == bracket_name]
            if multi:  # one bound only: the two may be met by different elements of an array
                lower, upper = (lower[:1], []) if lower else ([], upper[:1])
            first, after = keys.bracket_bounds(bracket_name)
            ranges = []
            for p in prefixes:
                lo, hi = p + first, p + after
                for value, inclusive, _ in lower:
                    comp = p + keys.encode(value)  # type: ignore[operator]
                    lo = max(lo, comp if inclusive else keys.successor(comp) or comp)
                for value, inclusive, _ in upper:
                    comp = p + keys.encode(value)  # type: ignore[operator]
                    hi = min(hi, keys.successor(comp) or comp if inclusive else comp)
                if lo < hi:
                    ranges.append((lo, hi))
            used.append(path)
            mixed = len(lower) + len(upper) != len(cond.lower) + len(cond.upper)
            exact = exact and not cond.inexact and not mixed
            return ranges, used, fixed, exact and not multi, False
        break
    if not used:
        return [(index.prefix + keys.NULL, keys.successor(index.prefix))], [], 0, False, False
    return [(p, keys.successor(p)) for p in prefixes], used, fixed, exact and not multi, exact and len(prefixes) == 1


def _sort_direction(index: Index, fixed: int, sort: Sequence[tuple[str, int]],
                    fixed_fields: Sequence[str]) -> tuple[int, bool] | None:
    """(1 or -1, whether ties need sorting) if walking this index (after `fixed` equality fields) yields
    the order of the sort's leading fields, with ties in id order; None if it cannot."""
    rest = [(f, d) for f, d in sort if f not in fixed_fields]
    tail = index.fields[fixed:]
    if not rest:
        return (1, False) if not tail else None  # every sort field is fixed: all tie, in id order
    if not tail or [f for f, _ in rest[: len(tail)]] != tail:
        return None
    directions = {d for _, d in rest[: len(tail)]}
    if len(directions) != 1:
        return None
    return directions.pop(), len(rest) > len(tail)


def plan(txn: Any, indexes: Sequence[Index], filter: Mapping[str, Any] | None,
         sort: Sequence[tuple[str, int]], window: int | None,
         markers: Callable[[Index], tuple[bool, bool]] | None = None) -> Plan:
    """The cheapest way this planner knows to answer (filter, sort, skip+limit = window). `markers` gives
    an index's (has ALWAYS, has MULTI) as of `txn` (default: probe it)."""
    conds, whole = _conditions(filter)
    found: list[Plan] = []
    for index in indexes:
        if index.fields[0] not in conds and not (sort and any(f == index.fields[0] for f, _ in sort)):
            continue
        always, multi = markers(index) if markers is not None else index.markers(txn)
        ranges, used, fixed, exact, exact_multi = _bounds(index, conds, multi)
        answers = whole and set(used) == set(conds)
        exact = exact and answers
        # Equality on leading fields only: the documents are counted by value prefix (Plan.counted).
        counted = answers and fixed == len(used) > 0 and (exact or exact_multi)
        served = None
        if sort and not always and not multi and len(ranges) == 1:
            served = _sort_direction(index, fixed, sort, used[:fixed])
        if not used and served is None:
            continue
        found.append(Plan(index=index, ranges=ranges, reverse=served is not None and served[0] == -1,
                          in_sort_order=not sort or served is not None, tiebreak=served is not None and served[1],
                          exact=exact, multi=multi, always=always, used_fields=used, counted=counted))
    if not found:
        reason = "no index serves the filter or the sort" if (conds or sort) else "no filter: every document"
        return Plan(in_sort_order=not sort, reason=reason)
    options: list[tuple[tuple, Plan]] = []
    for p in found:
        used = p.used_fields
        if used and not (p.exact and p.in_sort_order and window) and len(found) > 1:
            p.estimate = _estimate(txn, p.ranges)  # only a choice needs one
        if not used:  # a walk in sort order, the filter checked on each document
            cost = window if (window and not conds and whole) else (_ESTIMATE_CAP if window else 10**12)
            p.reason = "walks the index in the sort's order and stops after skip+limit matches"
        elif p.exact and p.in_sort_order and window:
            cost = window
            p.reason = "the index answers the filter; the walk stops after skip+limit entries"
        else:
            cost = p.estimate or 0
            p.reason = "the index narrows the filter" + (f" to about {p.estimate} candidates"
                                                         if p.estimate is not None else " (the only one that can)")
            if not p.in_sort_order:
                p.reason += ", sorted in memory"
        assert p.index is not None
        options.append(((cost, not p.in_sort_order, -len(used), p.index.name), p))
    options.sort(key=lambda item: item[0])
    return options[0][1]


def _estimate(txn: Any, ranges: list[tuple[bytes, bytes | None]]) -> int:
    total = 0
    for lo, hi in ranges:
        total += txn.count_range("index", lo, hi, _ESTIMATE_CAP - total)
        if total >= _ESTIMATE_CAP:
            break
    return total
