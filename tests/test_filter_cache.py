"""Compiled filters are reused by their exact content (engine/query.py, `compile_filter`): a reused one
must answer exactly as a fresh compile would, whatever the caller does to its filter afterwards."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import pytest

import microblob
from microblob._exceptions import InvalidQuery
from microblob.engine import query
from microblob.engine.query import compile_filter


def test_an_equal_filter_reuses_its_predicate() -> None:
    assert compile_filter({"a": {"$gte": 10, "$lt": 12}}) is compile_filter({"a": {"$gte": 10, "$lt": 12}})


@pytest.mark.parametrize("first, second, doc, second_matches", [
    ({"a": 1}, {"a": True}, {"a": 1}, False),  # 1 == True in Python: the key must tell the types apart
    ({"a": True}, {"a": 1}, {"a": True}, False),
    ({"a": 1}, {"a": 1.0}, {"a": 1}, True),
    ({"a": [1]}, {"a": (1,)}, {"a": [1]}, True),
    ({"a": "1"}, {"a": 1}, {"a": "1"}, False),
    ({"t": dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)},  # noqa: UP017 - the package's spelling
     {"t": dt.datetime(2025, 1, 1)}, {"t": dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)}, True),  # noqa: UP017
])
def test_filters_equal_in_python_but_not_in_content_get_their_own_predicate(
        first: dict, second: dict, doc: dict, second_matches: bool) -> None:
    assert compile_filter(first)(doc)
    assert compile_filter(second)(doc) is second_matches
    assert compile_filter(second)(doc) is query._compile_document(second)(doc)


def test_a_filter_changed_after_use_is_compiled_again() -> None:
    values = [1, 2]
    filt = {"a": {"$in": values}}
    before = compile_filter(filt)
    values.append(3)
    after = compile_filter(filt)
    assert after({"a": 3}) and not before({"a": 3})
    assert compile_filter({"a": {"$in": [1, 2]}})({"a": 2}) and not compile_filter({"a": {"$in": [1, 2]}})({"a": 3})
    whole = [1, 2]
    filt = {"a": whole, "b": {"$all": whole}}  # an array's equality keeps its operand
    assert compile_filter(filt)({"a": [1, 2], "b": [1, 2]})
    whole.append(3)
    assert compile_filter({"a": [1, 2], "b": {"$all": [1, 2]}})({"a": [1, 2], "b": [1, 2]})
    assert compile_filter(filt)({"a": [1, 2, 3], "b": [1, 2, 3]})


@pytest.mark.parametrize("filt", [
    {"name": {"$regex": "^a"}},
    {"name": re.compile("^a")},
    {"$or": [{"x": 1}, {"name": {"$regex": "a", "$options": "i"}}]},
])
def test_filters_with_per_query_state_compile_every_time(filt: dict) -> None:
    """A $regex draws on a time budget per query: a shared predicate would share one budget."""
    assert compile_filter(filt) is not compile_filter(filt)
    assert compile_filter(filt)({"name": "abc", "x": 0})


@pytest.mark.parametrize("filt", [{"a": {"$bogus": 1}}, {"$and": []}, {"a": {"$in": 5}}])
def test_a_bad_filter_is_refused_every_time(filt: dict) -> None:
    for _ in range(2):
        with pytest.raises(InvalidQuery):
            compile_filter(filt)


def test_a_filter_too_deep_or_cyclic_for_the_key_is_refused_as_before() -> None:
    deep: dict[str, Any] = {"a": 1}
    for _ in range(300):
        deep = {"$and": [deep]}
    with pytest.raises(InvalidQuery, match="deeper"):
        compile_filter(deep)
    cyclic: dict[str, Any] = {"a": {}}
    cyclic["a"]["$eq"] = cyclic
    with pytest.raises(InvalidQuery):
        compile_filter(cyclic)


def test_the_cache_stays_bounded() -> None:
    for i in range(3 * query._COMPILED_MAX):
        assert compile_filter({"n": i})({"n": i})
    assert 0 < len(query._compiled) <= query._COMPILED_MAX


def test_a_store_query_sees_a_changed_filter(embedded_store: microblob.Store) -> None:
    for n in range(5):
        embedded_store.save_or_update_object(b"x", object_id=f"o{n}", custom_metadata={"n": n})
    wanted = [1, 2]
    filt = {"custom_metadata.n": {"$in": wanted}}
    assert sorted(d["object_id"] for d in embedded_store.query(filt)) == ["o1", "o2"]
    wanted.append(4)
    assert sorted(d["object_id"] for d in embedded_store.query(filt)) == ["o1", "o2", "o4"]
    assert embedded_store.count_objects(filt) == 3
