"""Differential test: random documents and queries through every engine and through mongomock.

The engines under test are the values of ENGINES: callables `(docs, filter, sort, skip, limit,
projection) -> list[dict]` that store `docs` and run one find. A storage backend adds itself there
(`ENGINES["lmdb-file"] = ...`), so one generator checks every backend against the same oracle.

mongomock (4.3) is the oracle, but it is wrong in places. The generator stays away from each corner
below, and tests/test_query.py::test_mongodb_where_mongomock_differs pins MongoDB's behaviour there.
MongoDB's behaviour was established from the server source (src/mongo/db/matcher/path.cpp,
expression_leaf.cpp, expression_parser.cpp, expression_array.cpp; the element walk and the
parser are the same in 6.x/7.x) and the MongoDB manual:

 1. `{f: {}}` matches documents without `f`. MongoDB: `{}` is not an operator document (its first field
    must start with "$"), so this is equality with an empty document, which a missing field is not.
    -> equality operands are never empty documents.
 2. `{f: {$not: {$regex: r, $options: o}}}` raises "unknown operator: $options". MongoDB parses the
    `$not` document like any operator document, pairing $options with $regex.
    -> no $options under $not / $elemMatch.
 3. `$gte: None` / `$lte: None` do not match a missing field. MongoDB: missing (EOO) and null have
    canonical types summing to 5, which matches EQ, LTE and GTE (expression_leaf.cpp).
    -> comparison operands are never None.
 4. `$eq` / `$ne` with an array operand compare only the whole array, never its elements; MongoDB's
    `{f: {$eq: v}}` is exactly `{f: v}` (manual, $eq). -> $eq/$ne operands are not arrays.
 5. A dotted path through a scalar or null (`"a.b"` on `{a: 5}`) yields no value at all in mongomock;
    in MongoDB it yields "missing" (path.cpp: getFieldDottedOrArray returns EOO, which the iterator
    yields once), so `{"a.b": None}` matches. -> no None operands on dotted paths.
 6. `{$all: []}` matches every document; MongoDB matches none (parseAll: AlwaysFalse).
    -> $all lists are never empty.
 7. `$in` never tests an array value as a whole (`{a: {$in: [[]]}}` misses `{a: []}`); MongoDB's leaf
    array traversal yields the elements and then the array itself (path.cpp, kTraverse).
    -> $in/$nin lists hold no arrays.
 8. `$not`, and a negation mixed with other operators in one document, are false when a dotted path
    yields no value (through an array without subdocuments, or a scalar); MongoDB's NOT of an empty
    existential is true. -> no $not on dotted paths.
 9. `{f: {$all: [None]}}` does not match a missing `f`; MongoDB turns $all into an AND of equalities
    (parseAll), and `{f: None}` does. -> no None in $all.
10. `$size` counts a dict's fields, and `$size: 1` matches any truthy scalar; MongoDB's $size only
    matches arrays (ArrayMatchingMatchExpression). -> the oracle query gets `$type: "array"` beside
    every $size (mongomock's $type is right), keeping $size covered.
11. `$all` flattens the candidates when the first one is an array, so `{"a.0": {$all: [[]]}}` misses
    `{a: [[]]}`, and it raises TypeError when a dotted path also yields a scalar or a missing value.
    -> $all lists hold no arrays, and $all is only used on top-level fields.
12. `$exists: false` holds when *any* value is missing (`{"a.b": {$exists: false}}` matches
    `{a: [{b: 1}, {}]}`); MongoDB parses it as NOT(exists) over all values.
    -> $exists: false only on top-level fields.
13. Equality uses Python's `==`: `True == 1`, `NaN != NaN`, `{a: 1, b: 2} == {b: 2, a: 1}`; MongoDB
    compares BSON types and field order, and NaN equals NaN. -> the value pool has no 0, 1 or NaN,
    and every generated dict has its keys in sorted order.
14. Sorting uses an array's first element (MongoDB: its smallest ascending, largest descending; manual,
    "Comparison/Sort Order", and DOCS-15307) and only the first value of a dotted path through an
    array. -> sorted fields hold no arrays.
15. Projection crashes on scalars inside arrays of a projected path and, when excluding `a.b`, drops
    `a` entirely when it is a scalar (MongoDB keeps it; projection_node.cpp). -> projected documents
    hold documents or arrays of documents at `a` and `b`.
16. `$elemMatch` walks into arrays nested in arrays: `{a: {$elemMatch: {$gt: 4}}}` matches
    `{a: [[1, 5]]}` and `{$elemMatch: {b: 1}}` matches `{a: [[{b: 1}]]}`. MongoDB tests each element
    as one value (ElemMatchValueMatchExpression: matchesSingleElement), and reads an inner array as a
    document keyed "0", "1", ... (ElemMatchObjectMatchExpression: isABSONObj); mongomock's $all
    flattening (note 11) is another nested-array bug. -> arrays never directly hold arrays.
17. `{$elemMatch: {$not: ...}}` holds for every element: mongomock reads the value-form `$not` as its
    logical operator, which returns a generator (always truthy). MongoDB negates the condition for
    each element. -> no $not directly under $elemMatch.

mongomock also stores dates naive (UTC); `_for_mongomock` converts what it is given.
"""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Callable
from typing import Any

import mongomock
import pytest
from _hypothesis_budget import examples
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from microblob.engine.query import compile_filter, compile_projection, sort_documents

Engine = Callable[[list, Any, Any, int, int, Any], list]


def _python_matcher(docs: list, filter: Any, sort: Any, skip: int, limit: int, projection: Any) -> list:
    predicate = compile_filter(filter)
    project = compile_projection(projection)
    hits = sort_documents((d for d in docs if predicate(d)), sort, skip=skip, limit=limit)
    return [project(d) for d in hits]


# name -> engine. An engine gets its own copies of the documents (with `_id`s 0, 1, ...) and returns what
# find(filter, projection, sort=sort, skip=skip, limit=limit) returns, in order.
ENGINES: dict[str, Engine] = {"python-matcher": _python_matcher}

_LMDB_STORE: list = []  # one scratch file for the whole module, opened on first use


def _lmdb_file(docs: list, filter: Any, sort: Any, skip: int, limit: int, projection: Any) -> list:
    """The embedded default itself: documents through the LMDB file's document layer and indexes."""
    import tempfile

    import microblob

    if not _LMDB_STORE:
        directory = tempfile.mkdtemp(prefix="microblob-differential-")
        # sync=False: a scratch file per test run; durability is not what this test measures
        _LMDB_STORE.append(microblob.connect(f"{directory}/differential.db", sync=False))
    coll = _LMDB_STORE[0].backend.collection("differential")
    coll.create_index([("a", 1)])  # so the planner's index path is exercised, not only scans
    coll.delete_many({})
    _LMDB_STORE[0].backend.atomic(lambda: [coll.insert_one(d) for d in docs])
    return coll.find(filter, projection, sort=sort or None, skip=skip, limit=limit)


ENGINES["lmdb-file"] = _lmdb_file


def _run(engine: str, docs: list, filter: Any, sort: Any, skip: int, limit: int, projection: Any) -> list:
    return ENGINES[engine](copy.deepcopy(docs), copy.deepcopy(filter), sort, skip, limit, projection)

UTC = dt.timezone.utc  # noqa: UP017 - same spelling as the package (importable on 3.10)
T1 = dt.datetime(2024, 1, 1, 12, 0, tzinfo=UTC)
T2 = dt.datetime(2024, 6, 1, 12, 0, 0, 123000, tzinfo=UTC)


# ---------------------------------------------------------------------------------------------- the oracle


def _for_mongomock(value: Any) -> Any:
    """mongomock keeps dates naive (UTC) and compares a query's dates with them as Python does."""
    if isinstance(value, dt.datetime):
        return value.astimezone(UTC).replace(tzinfo=None)
    if isinstance(value, dict):
        return {k: _for_mongomock(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_for_mongomock(v) for v in value]
    return value


def _filter_for_mongomock(filter: Any) -> Any:
    """The filter as mongomock needs it to answer like MongoDB (note 10: $size gets `$type: "array"`)."""
    if isinstance(filter, dict):
        converted = {k: _filter_for_mongomock(v) for k, v in filter.items()}
        if "$size" in converted:
            converted["$type"] = "array"
        return converted
    if isinstance(filter, (list, tuple)):
        return [_filter_for_mongomock(v) for v in filter]
    return _for_mongomock(filter)


def _mongomock_find(docs: list, filter: Any, sort: Any, skip: int, limit: int, projection: Any) -> list:
    collection = mongomock.MongoClient(tz_aware=True).db.coll
    if docs:
        collection.insert_many(_for_mongomock(docs))
    projection = dict(projection) if isinstance(projection, dict) else projection  # mongomock edits it
    cursor = collection.find(_filter_for_mongomock(filter), projection, skip=skip, limit=limit, sort=sort)
    return list(cursor)


_ORACLE: dict[str, list] = {}


def _oracle(docs: list, filter: Any, sort: Any, skip: int, limit: int, projection: Any) -> list:
    """mongomock's answer, computed once per example however many engines are compared with it."""
    key = repr((docs, filter, sort, skip, limit, projection))
    if key not in _ORACLE:
        if len(_ORACLE) > 50_000:
            _ORACLE.clear()
        _ORACLE[key] = _mongomock_find(docs, filter, sort, skip, limit, projection)
    return _ORACLE[key]


def _strict(value: Any) -> Any:
    """A form of `value` whose == is type-strict (True != 1 != 1.0) and keeps list order."""
    if isinstance(value, dict):
        return ("dict", sorted((k, _strict(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return ("list", [_strict(v) for v in value])
    return (type(value).__name__, value)


# ---------------------------------------------------------------------------------------------- strategies

# No 0, 1 or NaN (note 13); 2 and 2.0 test numeric equality across types. Hypothesis draws the first
# entries most, so they are ordinary values rather than None.
SCALARS = [2, "x", 2.5, True, "xy", None, 3, "", False, 2.0, -1, "y", b"x", T1, T2]
scalars = st.sampled_from(SCALARS)
keys = st.sampled_from(["a", "b", "c"])


def _sorted_dicts(inner: st.SearchStrategy, min_size: int = 0, max_size: int = 3) -> st.SearchStrategy:
    return st.dictionaries(keys, inner, min_size=min_size, max_size=max_size).map(lambda d: dict(sorted(d.items())))


# Arrays hold scalars and documents, never arrays directly (note 16). Fields `a` and `b` are usually
# there and hold non-empty subdocuments often enough for dotted paths to find something.
values = st.deferred(
    lambda: scalars | scalars | st.lists(scalars | _sorted_dicts(values), max_size=3) | _sorted_dicts(values))
fields = scalars | st.lists(scalars | _sorted_dicts(values, min_size=1), max_size=3) | _sorted_dicts(values, min_size=1)
documents = st.lists(
    st.fixed_dictionaries({"a": fields, "b": fields}, optional={"c": values}) | _sorted_dicts(values),
    min_size=2, max_size=10,
).map(lambda docs: [{"_id": n, **d} for n, d in enumerate(docs)])

PATHS = ["a", "b", "a.b", "a.c", "b.a", "a.b.c", "a.0", "a.1", "a.0.b"]
OPERATORS = ["$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$exists", "$regex", "$not", "$all",
             "$elemMatch", "$size", "range"]


def _scalars_in(value: Any, out: dict) -> None:
    if isinstance(value, dict):
        for item in value.values():
            _scalars_in(item, out)
    elif isinstance(value, list):
        for item in value:
            _scalars_in(item, out)
    else:
        out.setdefault((type(value), value), value)


def _paths_in(value: Any, prefix: str, out: dict) -> None:
    """Dotted paths (at most three parts) that lead somewhere in `value`, positions included."""
    if prefix.count(".") >= 2:
        return
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, list) and prefix:
        items = [(str(n), v) for n, v in enumerate(value[:2])]
        items += [(k, v) for element in value if isinstance(element, dict) for k, v in element.items()]
    else:
        return
    for key, item in items:
        path = f"{prefix}.{key}" if prefix else key
        out.setdefault(path, None)
        _paths_in(item, path, out)


class _Operands:
    """Operand strategies: the fixed pool plus scalars found in the documents (so filters hit), without
    None when `nulls` is false (notes 3, 5, 9)."""

    def __init__(self, nulls: bool, found: list) -> None:
        pool = [v for v in found + SCALARS if nulls or v is not None]  # found first: drawn more often
        self.scalars = st.sampled_from(pool)
        self.comparable = st.sampled_from([v for v in pool if v is not None])
        self.documents = _sorted_dicts(self.scalars, min_size=1, max_size=2)  # never {} (note 1)
        self.values = self.scalars | st.lists(self.scalars, max_size=2) | self.documents


def _operator(draw: Callable, with_nulls: _Operands, without: _Operands, *, top: bool, nested: bool,
              in_elem_match: bool = False) -> dict:
    operands = with_nulls if top else without
    excluded = ("$not", "$all") if not top else ("$not",) if in_elem_match else ()  # notes 8, 11, 17
    op = draw(st.sampled_from([o for o in OPERATORS if o not in excluded]))
    if op in ("$eq", "$ne"):
        return {op: draw(operands.scalars | operands.documents)}  # note 4
    if op in ("$gt", "$gte", "$lt", "$lte"):
        return {op: draw(operands.comparable)}  # note 3
    if op == "range":
        return {"$gt": draw(operands.comparable), "$lt": draw(operands.comparable)}
    if op in ("$in", "$nin"):
        return {op: draw(st.lists(operands.scalars | operands.documents, max_size=3))}  # note 7
    if op == "$all":
        return {op: draw(st.lists(without.scalars | without.documents, min_size=1, max_size=3))}  # 6, 9, 11
    if op == "$exists":
        return {op: draw(st.booleans()) if top else True}  # note 12
    if op == "$regex":
        pattern = draw(st.sampled_from(["^x", "y$", "X", "^$"]))
        if nested:
            return {op: pattern}  # note 2
        return {op: pattern, "$options": draw(st.sampled_from(["", "i"]))}
    if op == "$not":
        return {op: _operator(draw, with_nulls, without, top=top, nested=True)}
    if op == "$elemMatch":
        if draw(st.booleans()):
            return {op: _operator(draw, with_nulls, without, top=True, nested=True, in_elem_match=True)}
        return {op: {draw(keys): draw(with_nulls.scalars)}}
    return {op: draw(st.integers(0, 3))}


def _filters(found: list, paths: list[str]) -> st.SearchStrategy:
    with_nulls, without = _Operands(True, found), _Operands(False, found)
    paths = paths + [p for p in PATHS if p not in paths]

    @st.composite
    def clause(draw: Callable) -> dict:
        result = {}
        count = draw(st.sampled_from([1, 1, 1, 2]))
        for path in draw(st.lists(st.sampled_from(paths), min_size=count, max_size=count, unique=True)):
            top = "." not in path
            if draw(st.booleans()):
                result[path] = draw((with_nulls if top else without).values)
            else:
                result[path] = _operator(draw, with_nulls, without, top=top, nested=False)
        return result

    return st.recursive(
        clause(),
        lambda inner: st.builds(lambda op, parts: {op: parts}, st.sampled_from(["$and", "$or", "$nor"]),
                                st.lists(inner, min_size=1, max_size=3)),
        max_leaves=4,
    )


@st.composite
def cases(draw: Callable) -> tuple[list, dict]:
    docs = draw(documents)
    found: dict = {}
    paths: dict = {}
    for doc in docs:
        content = {k: v for k, v in doc.items() if k != "_id"}
        _scalars_in(content, found)
        _paths_in(content, "", paths)
    return docs, draw(_filters(list(found.values()), list(paths)))


# Sorting: fields hold no arrays (note 14); dicts, all scalar types and missing fields do occur.
sortable = st.deferred(lambda: scalars | scalars | _sorted_dicts(sortable, max_size=2))
sort_documents_strategy = st.lists(_sorted_dicts(sortable), min_size=1, max_size=12).map(
    lambda docs: [{"_id": n, **d} for n, d in enumerate(docs)])
sorts = st.lists(st.tuples(st.sampled_from(["a", "b", "a.b", "b.c"]), st.sampled_from([1, -1])),
                 min_size=1, max_size=2, unique_by=lambda item: item[0])

# Projection: `a` and `b` hold documents or arrays of documents (note 15); anything below them.
subdocuments = _sorted_dicts(values)
projectable = st.lists(
    st.fixed_dictionaries({}, optional={"a": subdocuments | st.lists(subdocuments, max_size=3),
                                        "b": subdocuments | st.lists(subdocuments, max_size=3),
                                        "c": values}),
    min_size=1, max_size=6).map(lambda docs: [{"_id": n, **d} for n, d in enumerate(docs)])


@st.composite
def projections(draw: Callable) -> Any:
    chosen: list[str] = []
    for path in draw(st.lists(st.sampled_from(["a", "b", "c", "a.b", "a.c", "b.a", "b.c"]), max_size=3)):
        if not any(path == p or path.startswith(p + ".") or p.startswith(path + ".") for p in chosen):
            chosen.append(path)  # overlapping paths are a "path collision" error in MongoDB
    include = draw(st.booleans())
    if include and chosen and draw(st.booleans()):
        return chosen  # pymongo's list form
    projection: dict = {path: draw(st.sampled_from([1, True] if include else [0, False])) for path in chosen}
    if draw(st.booleans()):
        projection["_id"] = draw(st.sampled_from([0, 1]))
    return projection


DIFFERENTIAL = settings(
    max_examples=examples(300), derandomize=True, database=None, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
engines = pytest.mark.parametrize("engine", list(ENGINES))


@engines
@DIFFERENTIAL
@given(case=cases())
def test_filter_agrees_with_mongomock(engine: str, case: tuple[list, dict]) -> None:
    docs, flt = case
    expected = sorted(d["_id"] for d in _oracle(docs, flt, None, 0, 0, None))
    got = sorted(d["_id"] for d in _run(engine, docs, flt, None, 0, 0, None))
    assert got == expected


@engines
@DIFFERENTIAL
@given(docs=sort_documents_strategy, sort=sorts, skip=st.integers(0, 3), limit=st.integers(0, 4))
def test_sort_agrees_with_mongomock(engine: str, docs: list, sort: list, skip: int, limit: int) -> None:
    # Both sorts are stable, so ties come out in insertion order and the whole order must agree.
    expected = [d["_id"] for d in _oracle(docs, None, sort, skip, limit, None)]
    got = [d["_id"] for d in _run(engine, docs, None, sort, skip, limit, None)]
    assert got == expected


@engines
@DIFFERENTIAL
@given(docs=projectable, projection=projections())
def test_projection_agrees_with_mongomock(engine: str, docs: list, projection: Any) -> None:
    expected = [_strict(_for_mongomock(d)) for d in _oracle(docs, None, None, 0, 0, projection)]
    got = [_strict(_for_mongomock(d)) for d in _run(engine, docs, None, None, 0, 0, projection)]
    assert got == expected


@engines
@DIFFERENTIAL
@given(case=cases(), sort=sorts, skip=st.integers(0, 3), limit=st.integers(0, 4))
def test_filter_sort_and_page_together(engine: str, case: tuple[list, dict], sort: list, skip: int,
                                       limit: int) -> None:
    docs, flt = case
    sortable_docs = [d for d in docs if not _has_array_on(d, [field for field, _ in sort])]
    expected = [d["_id"] for d in _oracle(sortable_docs, flt, sort, skip, limit, ["_id"])]
    got = _run(engine, sortable_docs, flt, sort, skip, limit, ["_id"])
    assert [d["_id"] for d in got] == expected
    assert all(list(d) == ["_id"] for d in got)


def _has_array_on(doc: dict, fields: list[str]) -> bool:
    """Whether a sort field's path meets an array (note 14 keeps those documents out)."""
    for field in fields:
        value: Any = doc
        for part in field.split("."):
            if isinstance(value, list):
                return True
            value = value.get(part) if isinstance(value, dict) else None
        if isinstance(value, list):
            return True
    return False
