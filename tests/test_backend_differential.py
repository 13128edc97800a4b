"""Differential test across backends: random documents, filters, sorts and projections through every
backend's `find` (lmdb, memory, mongita: microblob's matcher behind indexes and persistence; mongodb:
the server's own matcher, over the wire) compared with `_query` evaluated directly in Python.

`_query` is itself checked against mongomock by tests/test_query_differential.py (random cases) and
pinned to MongoDB's documented behaviour where mongomock is wrong by tests/test_query.py; this file
extends that chain to every backend. Where the MongoDB wire server in CI (SecantusDB 0.7.0b3) answers
differently from MongoDB's documented behaviour, the generator stays away from that corner for the
`mongodb` engine only, and the note below says what differs and where MongoDB documents it:

S1. Sort on a dotted path through an array whose document elements lack the subfield (`a.b` on
    `{a: [{b: true}, {}]}`): SecantusDB ignores such elements; MongoDB's key generator (used for sort
    keys too) gives them a null key, so the ascending key of that document is null (MongoDB's docs team
    on compound multikey keys: `{a: [{sub_a: 1}, {sub_b: 1}]}` has the entries `{sub_a: 1, sub_b: null}`
    and `{sub_a: null, sub_b: 1}`, mongodb/docs#2970), which is what microblob's matcher does.
    -> for the mongodb engine, such documents are left out of sorted cases (`_sort_hazard`).
S2. `{a: {$all: [null]}}` does not match a document without `a` in SecantusDB (nor in mongomock).
    MongoDB's manual ($all, "Equivalent to $and Operation") defines `{a: {$all: [x, y]}}` as
    `{$and: [{a: x}, {a: y}]}`, and `{a: null}` matches a missing `a`; microblob's matcher follows the
    manual. -> for the mongodb engine, no null inside $all.
S3. A positional path past the end of an array, `{"a.0": null}` on `{a: []}`, matches in SecantusDB;
    microblob's matcher and mongomock agree that `a.0` then yields no value at all (so `{"a.0":
    {$exists: false}}` holds, the manual's idiom for "empty array", and equality with null does not;
    MongoDB's path.cpp only yields "missing" for a path that ends in a non-array). -> for the mongodb
    engine, no null operands on paths with a numeric component.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from _hypothesis_budget import examples
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import microblob
from microblob.engine.query import compile_filter, compile_projection, sort_documents

UTC = dt.timezone.utc  # noqa: UP017 - importable on 3.10
T1 = dt.datetime(2024, 1, 1, 12, 0, tzinfo=UTC)
T2 = dt.datetime(2024, 6, 1, 12, 0, 0, 123000, tzinfo=UTC)
KINDS = ["lmdb", "memory", "mongita", "mongodb"]


def python_find(docs: list, filter: Any, sort: Any, skip: int, limit: int, projection: Any) -> list:
    predicate = compile_filter(filter)
    project = compile_projection(projection)
    hits = sort_documents((d for d in docs if predicate(d)), sort, skip=skip, limit=limit) if sort else \
        [d for d in docs if predicate(d)][skip: skip + limit if limit else None]
    return [project(d) for d in hits]


@pytest.fixture(scope="module")
def backends(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """One store per backend kind for the module; each example gets a fresh collection in it."""
    opened: dict[str, microblob.Store] = {}
    directory = tmp_path_factory.mktemp("differential")
    uris: list[str] = []

    def get(kind: str) -> microblob.Store:
        if kind not in opened:
            if kind == "lmdb":
                opened[kind] = microblob.connect(directory / "d.db", sync=False)  # scratch data
            elif kind == "memory":
                opened[kind] = microblob.connect("memory://")
            elif kind == "mongita":
                opened[kind] = microblob.connect(f"mongita://{directory / 'mongita'}")
            else:
                server = request.getfixturevalue("mongo_server")
                uris.append(server.fresh_uri())
                opened[kind] = microblob.connect(uris[-1])
        return opened[kind]

    yield {"get": get}
    for store in opened.values():
        store.close()
    if uris:
        request.getfixturevalue("mongo_server").drop(uris[0])


def run_find(store: microblob.Store, docs: list, filter: Any, sort: Any, skip: int, limit: int,
             projection: Any) -> list:
    coll = store.backend.collection("differential")  # emptied after every case

    def setup() -> None:  # one transaction on the embedded engines, one write-through on Mongita
        coll.create_index([("a", 1)])
        coll.create_index([("a.b", 1), ("b", 1)])
        for doc in docs:
            coll.insert_one(doc)

    store.backend.atomic(setup)
    try:
        return coll.find(filter, projection=projection, sort=sort, skip=skip, limit=limit)
    finally:
        coll.delete_many({})


def strict(value: Any) -> Any:
    """A form of `value` whose == is type-strict (True != 1 != 1.0) and keeps list order."""
    if isinstance(value, dict):
        return ("dict", sorted((k, strict(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return ("list", [strict(v) for v in value])
    if isinstance(value, dt.datetime):
        return ("datetime", value.astimezone(UTC))
    return (type(value).__name__, value)


# --- strategies: MongoDB's corners (0/1 vs bools, int vs float, null vs missing, arrays, nesting) ------

SCALARS = [None, True, False, 0, 1, -1, 2, 2.0, 2.5, -0.5, "", "x", "xy", "Y", b"x", b"", T1, T2]
scalars = st.sampled_from(SCALARS)
keys = st.sampled_from(["a", "b", "c"])


def dicts(inner: st.SearchStrategy, min_size: int = 0, max_size: int = 3) -> st.SearchStrategy:
    return st.dictionaries(keys, inner, min_size=min_size, max_size=max_size)


values = st.deferred(lambda: scalars | scalars | st.lists(scalars | dicts(values, 1), max_size=3) | dicts(values))
documents = st.lists(dicts(values, max_size=3), min_size=1, max_size=8).map(
    lambda docs: [{"_id": n, **d} for n, d in enumerate(docs)])
PATHS = ["a", "b", "a.b", "a.c", "b.a", "a.0", "a.1", "a.0.b"]


def operand_values() -> st.SearchStrategy:
    return scalars | st.lists(scalars, max_size=2) | dicts(scalars, min_size=1, max_size=2)


@st.composite
def operator(draw: Callable, nested: bool = False) -> dict:
    op = draw(st.sampled_from(["$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$exists", "$regex",
                               "$not", "$all", "$elemMatch", "$size", "$type-range"]))
    if op in ("$eq", "$ne"):
        return {op: draw(operand_values())}
    if op in ("$gt", "$gte", "$lt", "$lte"):
        return {op: draw(scalars)}
    if op == "$type-range":
        return {"$gte": draw(scalars), "$lt": draw(scalars)}
    if op in ("$in", "$nin"):
        return {op: draw(st.lists(scalars | dicts(scalars, 1, 1), max_size=3))}
    if op == "$exists":
        return {op: draw(st.booleans())}
    if op == "$regex":
        spec = {op: draw(st.sampled_from(["^x", "y$", "X", "^$", "x|Y"]))}
        if not nested and draw(st.booleans()):
            spec["$options"] = "i"
        return spec
    if op == "$not":
        return {op: draw(operator(nested=True))}
    if op == "$all":
        return {op: draw(st.lists(scalars | dicts(scalars, 1, 1), min_size=1, max_size=2))}
    if op == "$elemMatch":
        if draw(st.booleans()):
            return {op: draw(operator(nested=True))}
        return {op: {draw(keys): draw(scalars)}}
    return {"$size": draw(st.integers(0, 3))}


@st.composite
def clause(draw: Callable) -> dict:
    result = {}
    for path in draw(st.lists(st.sampled_from(PATHS), min_size=1, max_size=2, unique=True)):
        result[path] = draw(operand_values()) if draw(st.booleans()) else draw(operator())
    return result


filters = st.recursive(
    clause(),
    lambda inner: st.builds(lambda op, parts: {op: parts}, st.sampled_from(["$and", "$or", "$nor"]),
                            st.lists(inner, min_size=1, max_size=3)),
    max_leaves=4,
)
sorts = st.lists(st.tuples(st.sampled_from(["a", "b", "a.b", "c"]), st.sampled_from([1, -1])),
                 min_size=1, max_size=2, unique_by=lambda item: item[0]).map(lambda s: [*s, ("_id", 1)])
projections = st.sampled_from([None, {"a": 1}, {"a": 0}, {"a.b": 1, "_id": 0}, {"b": 0, "a.c": 0}, ["c"]])

DIFFERENTIAL = settings(
    max_examples=examples(150), derandomize=True, database=None, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much,
                           HealthCheck.function_scoped_fixture],
)
kinds = pytest.mark.parametrize("kind", KINDS)


def _clauses(flt: Any) -> Iterator[tuple[str, Any]]:
    for key, value in flt.items():
        if key in ("$and", "$or", "$nor"):
            for part in value:
                yield from _clauses(part)
        else:
            yield key, value


def _holds_none(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, dict):
        return any(_holds_none(v) for v in value.values())
    if isinstance(value, list):
        return any(_holds_none(v) for v in value)
    return False


def _all_with_none(value: Any) -> bool:
    if isinstance(value, dict):
        return any((k == "$all" and isinstance(v, list) and None in v) or _all_with_none(v) for k, v in value.items())
    return False


def secantus_differs(flt: dict) -> bool:
    """Whether a filter reaches a corner where SecantusDB differs from MongoDB (S2, S3)."""
    for path, spec in _clauses(flt):
        if _all_with_none(spec):
            return True
        if any(part.isdigit() for part in path.split(".")) and _holds_none(spec):
            return True
    return False


@kinds
@DIFFERENTIAL
@given(docs=documents, flt=filters)
def test_find_agrees_with_the_matcher(backends: dict, kind: str, docs: list, flt: dict) -> None:
    assume(kind != "mongodb" or not secantus_differs(flt))
    expected = sorted(d["_id"] for d in python_find(docs, flt, None, 0, 0, None))
    got = sorted(d["_id"] for d in run_find(backends["get"](kind), docs, flt, None, 0, 0, None))
    assert got == expected, flt


def _sort_hazard(doc: Any, path: str) -> bool:
    """Whether `path` meets an array with a document element that lacks the rest of the path (S1)."""
    parts = path.split(".")
    value = doc
    for i, part in enumerate(parts):
        if isinstance(value, list):
            return any(isinstance(item, dict) and (part not in item or _sort_hazard(item, ".".join(parts[i:])))
                       for item in value)
        if not isinstance(value, dict) or part not in value:
            return False
        value = value[part]
    return False


@kinds
@DIFFERENTIAL
@given(docs=documents, flt=filters, sort=sorts, skip=st.integers(0, 2), limit=st.integers(0, 3),
       projection=projections)
def test_sort_page_and_project_agree(backends: dict, kind: str, docs: list, flt: dict, sort: list, skip: int,
                                     limit: int, projection: Any) -> None:
    if kind == "mongodb":
        assume(not secantus_differs(flt))
        docs = [d for d in docs if not any(_sort_hazard(d, field) for field, _ in sort)]
    expected = python_find(docs, flt, sort, skip, limit, projection)
    got = run_find(backends["get"](kind), docs, flt, sort, skip, limit, projection)
    assert [strict(d) for d in got] == [strict(d) for d in expected], (flt, sort)


INDEX_CHOICES = [[("a", 1)], [("b", 1)], [("c", -1)], [("a.b", 1)], [("a", 1), ("b", 1)], [("b", 1), ("c", 1)],
                 [("a.c", 1)]]
index_sets = st.lists(st.sampled_from(INDEX_CHOICES), max_size=3, unique_by=lambda keys: tuple(keys))
plain_sorts = st.sampled_from([[("a", 1)], [("a", -1)], [("b", 1)], [("c", -1)], [("b", 1), ("c", 1)],
                               [("a", 1), ("b", 1)]]).map(lambda s: [*s, ("_id", 1)])


@contextlib.contextmanager
def indexed_collection(store: Any, name: str, indexes: list, docs: list) -> Iterator[Any]:
    """`name` with `indexes` created and `docs` inserted in one write, emptied and its indexes dropped
    after (the store is shared by every example of a test)."""
    coll = store.backend.collection(name)

    def setup() -> None:
        for keys in indexes:
            coll.create_index(keys)
        for doc in docs:
            coll.insert_one(doc)

    store.backend.atomic(setup)
    try:
        yield coll
    finally:
        coll.delete_many({})
        for spec in coll.list_indexes():
            coll.drop_index(spec["name"])


@kinds
@DIFFERENTIAL
@given(docs=documents, flt=filters, sort=st.none() | plain_sorts, skip=st.integers(0, 2),
       limit=st.integers(0, 3), indexes=index_sets)
def test_random_indexes_never_change_a_result(backends: dict, kind: str, docs: list, flt: dict, sort: Any,
                                              skip: int, limit: int, indexes: list) -> None:
    """The planner may pick any of a random set of indexes (ordered walks, ranges, counts from entries):
    the documents, their order when sorted, and the count are those of `_query` over a plain list."""
    if kind == "mongodb":
        assume(not secantus_differs(flt))
        if sort:
            docs = [d for d in docs if not any(_sort_hazard(d, field) for field, _ in sort)]
    with indexed_collection(backends["get"](kind), "differential_indexes", indexes, docs) as coll:
        expected = python_find(docs, flt, sort, skip, limit, None)
        got = coll.find(flt, sort=sort, skip=skip, limit=limit)
        if sort:
            assert [strict(d) for d in got] == [strict(d) for d in expected], (flt, sort, indexes)
        else:  # without a sort the order (and so which page) is the plan's, as in MongoDB
            everything = {d["_id"] for d in python_find(docs, flt, None, 0, 0, None)}
            ids = [d["_id"] for d in got]
            assert len(ids) == len(set(ids)) == len(expected) and set(ids) <= everything, (flt, indexes)
        assert coll.count_documents(flt) == len(python_find(docs, flt, None, 0, 0, None)), (flt, indexes)


eq_operands = scalars | st.lists(scalars, min_size=1, max_size=3).map(lambda vs: {"$in": vs})
equality_filters = st.lists(st.dictionaries(st.sampled_from(["a", "b", "c", "a.b"]), eq_operands, min_size=1,
                                            max_size=2), min_size=1, max_size=4)
writes = st.lists(st.tuples(st.sampled_from(["replace", "delete", "insert"]), st.integers(0, 9),
                            dicts(values, max_size=3)), max_size=6)


@kinds
@DIFFERENTIAL
@given(docs=documents, changes=writes, flts=equality_filters, indexes=index_sets)
def test_counts_follow_every_write(backends: dict, kind: str, docs: list, changes: list, flts: list,
                                   indexes: list) -> None:
    """Counts by equality (the embedded engines answer them from per-value counters) after inserts,
    replacements that change indexed values, and deletes: those of the matcher over the documents left."""
    if kind == "mongodb":
        assume(not any(secantus_differs(f) for f in flts))
    current = {d["_id"]: d for d in docs}
    with indexed_collection(backends["get"](kind), "differential_counts", indexes, docs) as coll:
        for op, n, body in changes:
            if op == "delete":
                coll.delete_one({"_id": n})
                current.pop(n, None)
            elif op == "replace" or n in current:
                coll.replace_one({"_id": n}, {"_id": n, **body}, upsert=True)
                current[n] = {"_id": n, **body}
            else:
                coll.insert_one({"_id": n, **body})
                current[n] = {"_id": n, **body}
        left = list(current.values())
        for flt in flts:
            assert coll.count_documents(flt) == len(python_find(left, flt, None, 0, 0, None)), (flt, indexes)
