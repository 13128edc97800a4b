"""Unit tests of microblob.engine.query: MongoDB semantics of filters, sort, projection and updates.

Where a test pins behaviour that differs from Python's (or from mongomock's), the comment says where the
MongoDB behaviour comes from: the server source (src/mongo/db/matcher/path.cpp, expression_leaf.cpp,
expression_parser.cpp, expression_array.cpp, update/pull_node.cpp) or the MongoDB manual.
"""

from __future__ import annotations

import copy
import datetime as dt
import math
import re

import pytest

from microblob._exceptions import InvalidArgument, InvalidQuery
from microblob.engine.query import (
    compare_values,
    compile_filter,
    compile_projection,
    compile_update,
    equality_values,
    field_values,
    match,
    normalize_sort,
    sort_documents,
    sort_key,
)

NAN = float("nan")
UTC = dt.timezone.utc  # noqa: UP017 - same spelling as the package (importable on 3.10)
T1 = dt.datetime(2024, 1, 1, 12, 0, tzinfo=UTC)
T2 = dt.datetime(2024, 6, 1, 12, 0, tzinfo=UTC)


def ids(docs: list[dict], flt: dict) -> list:
    predicate = compile_filter(flt)
    return [d["_id"] for d in docs if predicate(d)]


# ----------------------------------------------------------------------------------------------- equality


@pytest.mark.parametrize(
    ("doc", "flt", "expected"),
    [
        ({"a": 1}, {"a": 1}, True),
        ({"a": 1}, {"a": 2}, False),
        ({"a": 1}, {"a": 1.0}, True),  # numbers compare across int/float
        ({"a": 2.5}, {"a": 2}, False),
        ({"a": True}, {"a": 1}, False),  # bool is its own BSON type: True is not 1
        ({"a": 1}, {"a": True}, False),
        ({"a": 0}, {"a": False}, False),
        ({"a": False}, {"a": False}, True),
        ({"a": "1"}, {"a": 1}, False),
        ({"a": b"x"}, {"a": "x"}, False),
        ({"a": b"x"}, {"a": b"x"}, True),
        ({"a": [1, 2]}, {"a": 2}, True),  # an element matches
        ({"a": [1, 2]}, {"a": [1, 2]}, True),  # the whole array matches
        ({"a": [1, 2]}, {"a": [2, 1]}, False),
        ({"a": [1, 2]}, {"a": [1]}, False),
        ({"a": [[1, 2], 3]}, {"a": [1, 2]}, True),  # an element that is an array
        ({"a": [[1, 2]]}, {"a": 1}, False),  # only one level of elements is tried
        ({"a": (1, 2)}, {"a": [1, 2]}, True),  # tuples are arrays
        ({"a": [1, 2]}, {"a": (1, 2)}, True),
        ({"a": [1.0]}, {"a": [1]}, True),
        ({"a": [True]}, {"a": [1]}, False),
        ({"a": {"x": 1, "y": 2}}, {"a": {"x": 1, "y": 2}}, True),
        ({"a": {"x": 1, "y": 2}}, {"a": {"y": 2, "x": 1}}, False),  # field order matters, as in BSON
        ({"a": {"x": 1, "y": 2}}, {"a": {"x": 1}}, False),
        ({"a": {"x": 1}}, {"a": {"x": 1.0}}, True),
        ({"a": {"x": True}}, {"a": {"x": 1}}, False),
        ({"a": NAN}, {"a": NAN}, True),  # MongoDB: NaN == NaN in query equality
        ({"a": NAN}, {"a": 5}, False),
        ({"a": [NAN]}, {"a": [NAN]}, True),
        ({"a": T1}, {"a": T1}, True),
        ({"a": T1}, {"a": T1.astimezone(dt.timezone(dt.timedelta(hours=2)))}, True),  # same instant
        ({"a": T1}, {"a": T1.replace(tzinfo=None)}, True),  # naive means UTC, as in pymongo
        ({"a": T1}, {"a": T2}, False),
        ({"a": ""}, {"a": ""}, True),
        ({"a": {}}, {"a": {}}, True),  # {} is not an operator document
        ({"a": {"b": 1}}, {"a": {}}, False),
    ],
)
def test_equality(doc, flt, expected):
    assert match(doc, flt) is expected


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ({"a": None}, True),
        ({}, True),  # missing matches null
        ({"a": 0}, False),
        ({"a": False}, False),
        ({"a": ""}, False),
        ({"a": [1, None]}, True),
        ({"a": [1, 2]}, False),
        ({"a": []}, False),
    ],
)
def test_null_matches_null_and_missing(doc, expected):
    assert match(doc, {"a": None}) is expected
    assert match(doc, {"a": {"$eq": None}}) is expected
    assert match(doc, {"a": {"$in": [None]}}) is expected
    assert match(doc, {"a": {"$ne": None}}) is not expected


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ({"a": 5}, True),  # a scalar where a document is needed: "a.b" is missing
        ({"a": None}, True),
        ({}, True),
        ({"a": {}}, True),
        ({"a": {"b": None}}, True),
        ({"a": {"b": 1}}, False),
        ({"a": [{"c": 1}]}, True),  # a subdocument without b
        ({"a": [{"b": 1}, {"c": 1}]}, True),
        ({"a": [{"b": 1}]}, False),
        # An array with no subdocument yields no value at all for "a.b", so null does not match
        # (path.cpp: only document elements continue the walk).
        ({"a": [1, 2]}, False),
        ({"a": []}, False),
    ],
)
def test_dotted_null(doc, expected):
    assert match(doc, {"a.b": None}) is expected


# -------------------------------------------------------------------------------------------------- paths


@pytest.mark.parametrize(
    ("doc", "flt", "expected"),
    [
        ({"a": {"b": {"c": 3}}}, {"a.b.c": 3}, True),
        ({"a": {"b": {"c": 3}}}, {"a.b": {"c": 3}}, True),
        ({"a": [{"b": 1}, {"b": 2}]}, {"a.b": 2}, True),  # fan-out through an array of subdocuments
        ({"a": [{"b": [1, 2]}, {"b": 3}]}, {"a.b": 2}, True),
        ({"a": [{"b": [1, 2]}, {"b": 3}]}, {"a.b": [1, 2]}, True),
        ({"a": [{"b": {"c": 5}}]}, {"a.b.c": 5}, True),
        ({"a": [[{"b": 1}]]}, {"a.b": 1}, False),  # arrays directly in arrays are not walked into
        ({"a": [[{"b": 1}]]}, {"a.0.b": 1}, True),  # ...unless a position selects the inner array
        ({"a": [5, 6]}, {"a.1": 6}, True),
        ({"a": [5, 6]}, {"a.1": 5}, False),
        ({"a": [5, 6]}, {"a.2": {"$exists": True}}, False),
        ({"a": [{"b": 1}, {"b": 2}]}, {"a.1.b": 2}, True),
        ({"a": [{"b": 1}, {"b": 2}]}, {"a.1.b": 1}, False),
        ({"a": {"0": 7}}, {"a.0": 7}, True),  # a numeric component is also a field name
        ({"a": [{"0": 7}]}, {"a.0": 7}, True),  # ...of subdocuments in an array
        ({"a": [5]}, {"a.00": 5}, False),  # "00" is not the position "0"
        ({"a": [[1, 2]]}, {"a.0": [1, 2]}, True),
        # An explicit position is not an implicit array traversal: the element [1, 2] is compared as a
        # whole (path.cpp, "Our path terminates at the array offset").
        ({"a": [[1, 2]]}, {"a.0": 1}, False),
        # A subdocument in an array is also walked with the numeric component as a field name, which is
        # missing there, so null matches (path.cpp); mongomock only applies the position.
        ({"a": [{"x": 1}]}, {"a.0": None}, True),
        ({"a": [{"x": 1}]}, {"a.0": {"x": 1}}, True),
        ({"a": [{"b": 1}]}, {"a.0.b": None}, True),
        ({"a": [3]}, {"a.0.b": None}, False),
    ],
)
def test_paths(doc, flt, expected):
    assert match(doc, flt) is expected


def test_field_values_lists_every_candidate_and_missing_as_none():
    assert field_values({"a": [1, [2]]}, "a") == [1, [2], [1, [2]]]
    assert field_values({"a": [{"b": 1}, {"c": 2}]}, "a.b") == [1, None]
    assert field_values({}, "a.b") == [None]
    assert field_values({"a": [1, 2]}, "a.b") == []


# ------------------------------------------------------------------------------------------- comparisons


@pytest.mark.parametrize(
    ("value", "flt", "expected"),
    [
        (5, {"$gt": 4}, True),
        (5, {"$gt": 5}, False),
        (5, {"$gte": 5.0}, True),
        (4.5, {"$lt": 5}, True),
        (5, {"$lte": 5}, True),
        (2**62, {"$gt": 2.0**61}, True),
        ("2", {"$gt": 1}, False),  # type bracketing: strings never compare with numbers
        (True, {"$gt": 0}, False),  # nor booleans
        (None, {"$lt": 1}, False),
        ("b", {"$gt": "a"}, True),
        ("B", {"$gt": "a"}, False),  # binary comparison
        ("é", {"$gt": "z"}, True),  # code point order == UTF-8 byte order
        (1, {"$gt": "a"}, False),
        (True, {"$gt": False}, True),
        (False, {"$gt": False}, False),
        (T2, {"$gt": T1}, True),
        (T1, {"$gt": T1.replace(tzinfo=None)}, False),
        ("x", {"$gt": T1}, False),
        (b"aaa", {"$gt": b"zz"}, True),  # binData compares length first
        (b"ab", {"$gt": b"aa"}, True),
        ([1, 9], {"$gt": 8}, True),  # any element
        ([1, 9], {"$lt": 0}, False),
        ([1, 9], {"$gt": 2, "$lt": 5}, True),  # each condition may be met by a different element
        ([2], {"$gt": [1]}, True),  # the array itself compares with an array operand
        ([1, 2], {"$gt": [1]}, True),
        ([1], {"$gt": [1, 0]}, False),
        ({"a": 2}, {"$gt": {"a": 1}}, True),
        ({"a": 1}, {"$gt": {"a": 1}}, False),
        ({"b": 1}, {"$gt": {"a": 5}}, True),  # field names compare before values
        ({"a": "x"}, {"$gt": {"a": 5}}, True),  # ...but value types before names
        (NAN, {"$gt": 5}, False),
        (NAN, {"$lt": 5}, False),  # NaN is neither above nor below numbers when matching
        (NAN, {"$gte": NAN}, True),
        (NAN, {"$lte": NAN}, True),
        (5, {"$gte": NAN}, False),
        (NAN, {"$gt": NAN}, False),
        (NAN, {"$lt": NAN}, False),
        (float("inf"), {"$gt": 2**63 - 1}, True),
        (float("-inf"), {"$lt": -(2**63)}, True),
    ],
)
def test_comparisons(value, flt, expected):
    assert match({"a": value}, {"a": flt}) is expected


@pytest.mark.parametrize(
    ("doc", "op", "expected"),
    [
        ({"a": None}, "$gte", True),
        ({}, "$gte", True),  # missing compares equal to null
        ({}, "$lte", True),
        ({"a": None}, "$lte", True),
        ({"a": None}, "$gt", False),
        ({}, "$gt", False),
        ({"a": None}, "$lt", False),
        ({"a": 0}, "$gte", False),
        ({"a": [None, 1]}, "$lte", True),
    ],
)
def test_comparisons_with_null(doc, op, expected):
    assert match(doc, {"a": {op: None}}) is expected


def test_comparison_on_missing_field_is_false():
    assert not match({}, {"a": {"$gt": 0}})
    assert not match({}, {"a": {"$lt": 0}})


# ------------------------------------------------------------------------------------------- $in / $nin


def test_in_and_nin():
    docs = [
        {"_id": 1, "a": 1},
        {"_id": 2, "a": [2, 3]},
        {"_id": 3, "a": "x"},
        {"_id": 4},
        {"_id": 5, "a": None},
        {"_id": 6, "a": True},
        {"_id": 7, "a": [1, 2]},
        {"_id": 8, "a": NAN},
    ]
    assert ids(docs, {"a": {"$in": [1, 3]}}) == [1, 2, 7]
    assert ids(docs, {"a": {"$in": [1.0]}}) == [1, 7]
    assert ids(docs, {"a": {"$in": [None]}}) == [4, 5]
    assert ids(docs, {"a": {"$in": [[1, 2]]}}) == [7]  # the whole array is a candidate too
    assert ids(docs, {"a": {"$in": [re.compile("^x$"), 2]}}) == [2, 3, 7]
    assert ids(docs, {"a": {"$in": [True]}}) == [6]
    assert ids(docs, {"a": {"$in": [NAN]}}) == [8]
    assert ids(docs, {"a": {"$in": []}}) == []
    assert ids(docs, {"a": {"$nin": []}}) == [1, 2, 3, 4, 5, 6, 7, 8]
    assert ids(docs, {"a": {"$nin": [1, 3]}}) == [3, 4, 5, 6, 8]  # missing matches $nin
    assert ids(docs, {"a": {"$nin": [None]}}) == [1, 2, 3, 6, 7, 8]
    assert ids(docs, {"a": {"$in": ("x",)}}) == [3]  # a tuple is a list


# ------------------------------------------------------------------------------------ negations, $exists


def test_ne_is_the_negation_over_all_candidates():
    assert match({}, {"a": {"$ne": 1}})
    assert match({"a": 2}, {"a": {"$ne": 1}})
    assert not match({"a": [1, 2]}, {"a": {"$ne": 1}})
    assert match({"a": [[1], 2]}, {"a": {"$ne": 1}})
    assert not match({"a": [{"b": 1}, {"b": 2}]}, {"a.b": {"$ne": 2}})
    assert match({"a": [{"b": 1}, {"b": 2}]}, {"a.b": {"$ne": 3}})
    assert match({"a": True}, {"a": {"$ne": 1}})


def test_not():
    assert match({}, {"a": {"$not": {"$gt": 5}}})
    assert match({"a": 3}, {"a": {"$not": {"$gt": 5}}})
    assert not match({"a": [3, 10]}, {"a": {"$not": {"$gt": 5}}})  # some element is > 5
    assert match({"a": "x"}, {"a": {"$not": {"$gt": 5}}})
    assert match({"a": "abc"}, {"a": {"$not": re.compile("^b")}})
    assert not match({"a": "abc"}, {"a": {"$not": {"$regex": "^A", "$options": "i"}}})
    # $not of several conditions negates them together: not (a > 1 and a < 5)
    assert match({"a": 7}, {"a": {"$not": {"$gt": 1, "$lt": 5}}})
    assert not match({"a": 3}, {"a": {"$not": {"$gt": 1, "$lt": 5}}})
    assert match({"a": [1, 2]}, {"a": {"$not": {"$size": 3}}})


@pytest.mark.parametrize(
    ("doc", "path", "expected"),
    [
        ({"a": None}, "a", True),
        ({"a": []}, "a", True),
        ({}, "a", False),
        ({"a": {"b": 1}}, "a.b", True),
        ({"a": 5}, "a.b", False),
        ({"a": [{"b": 1}, {"c": 1}]}, "a.b", True),
        ({"a": [{"c": 1}]}, "a.b", False),
        ({"a": [1]}, "a.b", False),
        ({"a": [1]}, "a.0", True),
        ({"a": []}, "a.0", False),
    ],
)
def test_exists(doc, path, expected):
    assert match(doc, {path: {"$exists": True}}) is expected
    assert match(doc, {path: {"$exists": False}}) is not expected


@pytest.mark.parametrize(("operand", "exists"),
                         [(1, True), (0, False), (0.0, False), ("", True), ([], True), (None, False)])
def test_exists_reads_its_operand_like_bson_truthiness(operand, exists):
    # expression_parser.cpp: `e.trueValue()`; only false, 0 and null are false ("" and [] are true).
    assert match({"a": 1}, {"a": {"$exists": operand}}) is exists


def test_logical_operators():
    docs = [{"_id": n, "a": n % 3, "b": n % 2} for n in range(6)]
    assert ids(docs, {"$and": [{"a": 1}, {"b": 1}]}) == [1]
    assert ids(docs, {"$or": [{"a": 2}, {"b": 1}]}) == [1, 2, 3, 5]
    assert ids(docs, {"$nor": [{"a": 2}, {"b": 1}]}) == [0, 4]
    assert ids(docs, {"$or": [{"$and": [{"a": 0}, {"b": 0}]}, {"a": 2, "b": 1}]}) == [0, 5]
    assert ids(docs, {"a": 0, "$or": [{"b": 1}]}) == [3]
    assert ids(docs, {"$comment": "why", "a": 0}) == [0, 3]
    assert ids(docs, {}) == list(range(6))
    assert ids(docs, None) == list(range(6))


# -------------------------------------------------------------------------------------------------- $regex


@pytest.mark.parametrize(
    ("value", "flt", "expected"),
    [
        ("Hello", {"$regex": "ell"}, True),  # a search, not an anchored match
        ("Hello", {"$regex": "^ell"}, False),
        ("Hello", {"$regex": "^h", "$options": "i"}, True),
        ("a\nb", {"$regex": "^b", "$options": "m"}, True),
        ("a\nb", {"$regex": "^b"}, False),
        ("a\nb", {"$regex": "a.b", "$options": "s"}, True),
        ("ab", {"$regex": "a b # comment", "$options": "x"}, True),
        ("Hello", {"$regex": re.compile("^h", re.IGNORECASE)}, True),
        ("Hello", {"$regex": re.compile("^h"), "$options": "i"}, True),
        (["x", "Hello"], {"$regex": "^H"}, True),  # any element
        (5, {"$regex": "5"}, False),  # only strings match
        (b"5", {"$regex": "5"}, False),
        (None, {"$regex": ".*"}, False),
    ],
)
def test_regex(value, flt, expected):
    assert match({"a": value}, {"a": flt}) is expected


def test_regex_value_and_eq_regex():
    assert match({"a": "abc"}, {"a": re.compile("b")})
    assert match({"a": ["x", "abc"]}, {"a": re.compile("b")})
    assert not match({}, {"a": re.compile(".*")})
    # {$eq: /re/} compares with stored regex values, it does not pattern-match (MongoDB manual, $eq
    # "Regex Match Behaviour"); documents here cannot hold regexes, so it never matches.
    assert not match({"a": "abc"}, {"a": {"$eq": re.compile("b")}})


# -------------------------------------------------------------------------------- $all, $elemMatch, $size


def test_all():
    assert match({"a": [1, 2, 3]}, {"a": {"$all": [3, 1]}})
    assert not match({"a": [1, 2, 3]}, {"a": {"$all": [1, 4]}})
    assert match({"a": 1}, {"a": {"$all": [1]}})
    assert match({"a": 1}, {"a": {"$all": [1, 1.0]}})
    assert not match({"a": [1]}, {"a": {"$all": []}})  # MongoDB: {$all: []} matches nothing
    assert not match({}, {"a": {"$all": []}})
    assert match({"a": [[1, 2], 3]}, {"a": {"$all": [[1, 2]]}})
    assert match({"a": [1, 2]}, {"a": {"$all": [[1, 2]]}})  # the array itself equals [1, 2]
    assert match({"a": ["xy", "z"]}, {"a": {"$all": [re.compile("^x"), "z"]}})
    assert match({"a": [{"b": 1}, {"b": 5}]},
                 {"a": {"$all": [{"$elemMatch": {"b": 1}}, {"$elemMatch": {"b": {"$gt": 4}}}]}})
    assert not match({"a": [{"b": 1}]}, {"a": {"$all": [{"$elemMatch": {"b": 1}}, {"$elemMatch": {"b": 2}}]}})
    assert match({"a": [{"b": [1, 2]}]}, {"a.b": {"$all": [1, 2]}})


def test_elem_match_on_values():
    flt = {"a": {"$elemMatch": {"$gt": 1, "$lt": 5}}}
    assert match({"a": [0, 3, 9]}, flt)
    assert not match({"a": [0, 9]}, flt)  # the same element must meet both conditions
    assert not match({"a": 3}, flt)  # not an array
    assert not match({"a": [[3]]}, flt)  # elements are tested as values, not walked into
    assert match({"a": [1, 2]}, {"a": {"$elemMatch": {"$ne": 1}}})
    assert not match({"a": [1, 1]}, {"a": {"$elemMatch": {"$ne": 1}}})
    assert match({"a": [[1, 2], [3]]}, {"a": {"$elemMatch": {"$size": 1}}})
    assert match({"a": ["ab"]}, {"a": {"$elemMatch": {"$regex": "b"}}})
    assert match({"a": [5, None]}, {"a": {"$elemMatch": {"$exists": True, "$in": [None]}}})
    assert match({"a": [[1, 5]]}, {"a": {"$elemMatch": {"$elemMatch": {"$gt": 4}}}})
    assert match({"a": [2]}, {"a": {"$elemMatch": {"$not": {"$gt": 5}}}})


def test_elem_match_on_subdocuments():
    flt = {"a": {"$elemMatch": {"x": 1, "y": {"$gt": 2}}}}
    assert match({"a": [{"x": 1, "y": 3}]}, flt)
    assert not match({"a": [{"x": 1, "y": 1}, {"x": 2, "y": 3}]}, flt)  # one element must do both
    assert match({"a": [{"x": 1, "y": 1}, {"x": 2, "y": 3}]}, {"a.x": 1, "a.y": {"$gt": 2}})  # without: any
    assert not match({"a": [1, 2]}, {"a": {"$elemMatch": {"x": 1}}})
    assert match({"a": [{"x": [0, 1]}]}, {"a": {"$elemMatch": {"x": 1}}})
    assert match({"a": [{"x": 1}, {"x": 2}]}, {"a": {"$elemMatch": {"$or": [{"x": 2}, {"x": 3}]}}})
    assert match({"a": [{}]}, {"a": {"$elemMatch": {}}})
    assert not match({"a": [1]}, {"a": {"$elemMatch": {}}})
    # A nested array counts as a document keyed "0", "1", ... (expression_array.cpp: isABSONObj)
    assert match({"a": [[7, 8]]}, {"a": {"$elemMatch": {"1": 8}}})
    assert match({"a": [{"b": [{"c": 1}]}]}, {"a.b": {"$elemMatch": {"c": 1}}})


def test_size():
    assert match({"a": []}, {"a": {"$size": 0}})
    assert match({"a": [1, [2, 3]]}, {"a": {"$size": 2}})
    assert match({"a": [1, 2]}, {"a": {"$size": 2.0}})
    assert not match({"a": [[1, 2]]}, {"a": {"$size": 2}})  # the field's array, not its elements
    assert not match({"a": 5}, {"a": {"$size": 1}})
    assert not match({"a": "ab"}, {"a": {"$size": 2}})
    assert not match({"a": {"x": 1}}, {"a": {"$size": 1}})
    assert not match({}, {"a": {"$size": 0}})
    assert match({"a": [{"b": [1, 2]}, {"b": [1]}]}, {"a.b": {"$size": 1}})


# --------------------------------------------------------------------------------------- literal operators


def test_dollar_fields_in_literal_values():
    doc = {"meta": {"$x": 1}}
    assert match(doc, {"meta": {"$eq": {"$x": 1}}})
    assert match({"meta": {"a": {"$x": 1}}}, {"meta": {"a": {"$x": 1}}})  # only the first level is read
    assert match({"meta": "$x"}, {"meta": "$x"})
    with pytest.raises(InvalidQuery, match=r"\$x"):
        compile_filter({"meta": {"$x": 1}})  # MongoDB: unknown operator: $x


# ----------------------------------------------------------------------------------------- InvalidQuery


@pytest.mark.parametrize(
    ("flt", "message"),
    [
        ([("a", 1)], "must be a dict"),
        ("a", "must be a dict"),
        ({1: 2}, "keys must be str"),
        ({"$gt": 1}, r"top level operator: \$gt"),
        ({"$where": "true"}, r"\$where"),
        ({"$expr": {"$eq": ["$a", 1]}}, r"\$expr"),
        ({"$text": {"$search": "x"}}, r"\$text"),
        ({"a": {"$foo": 1}}, r"\$foo"),
        ({"a": {"$type": "string"}}, r"\$type"),
        ({"a": {"$and": [{"b": 1}]}}, r"\$and"),
        ({"$and": []}, "non-empty list"),
        ({"$or": {"a": 1}}, "non-empty list"),
        ({"$nor": [1]}, "must be documents"),
        ({"$and": "a"}, "non-empty list"),
        ({"a": {"$in": 1}}, r"\$in needs a list"),
        ({"a": {"$nin": "ab"}}, r"\$nin needs a list"),
        ({"a": {"$all": 1}}, r"\$all needs a list"),
        ({"a": {"$in": [{"$gt": 1}]}}, "cannot nest"),
        ({"a": {"$size": "1"}}, r"\$size needs a number"),
        ({"a": {"$size": True}}, r"\$size needs a number"),
        ({"a": {"$size": 1.5}}, "whole number"),
        ({"a": {"$size": -1}}, "negative"),
        ({"a": {"$size": 2**40}}, "32-bit"),
        ({"a": {"$regex": 5}}, r"\$regex has to be a string"),
        ({"a": {"$regex": "("}}, "invalid regex"),
        ({"a": {"$regex": "a\x00"}}, "NUL"),
        ({"a": {"$regex": "a", "$options": "q"}}, "invalid flag"),
        ({"a": {"$regex": "a", "$options": 1}}, r"\$options has to be a string"),
        ({"a": {"$options": "i"}}, r"\$options needs a \$regex"),
        ({"a": {"$regex": re.compile("a", re.IGNORECASE), "$options": "m"}}, "both"),
        ({"a": re.compile(b"a")}, "bytes"),
        ({"a": {"$not": 5}}, r"\$not needs a regex"),
        ({"a": {"$not": {}}}, "cannot be empty"),
        ({"a": {"$not": {"b": 1}}}, "'b'"),
        ({"a": {"$elemMatch": 5}}, r"\$elemMatch needs a document"),
        ({"a": {"$elemMatch": [1]}}, r"\$elemMatch needs a document"),
        ({"a": {"$elemMatch": {"$gt": 1, "b": 1}}}, "'b'"),
        ({"a": {"$gt": 1, "b": 2}}, "cannot mix"),
        ({"a": {"b": 2, "$gt": 1}}, "cannot mix"),
        ({"a": {"$ne": re.compile("x")}}, r"regex as the argument of \$ne"),
        ({"a": {"$gt": re.compile("x")}}, r"regex as the argument of \$gt"),
        ({"a": {"$all": [{"$gt": 1}]}}, r"no \$ expressions in \$all"),
        ({"a": {"$all": [{"$elemMatch": {"b": 1}}, 5]}}, "consistent"),
        ({"a": {1, 2}}, "cannot use a set"),
        ({"a": {"$in": [object()]}}, "cannot use a object"),
        ({"a": 2**64}, "64 bits"),
        ({"a": {"$gt": {1: 2}}}, "keys must be str"),
        ({"$or": [{"a": {"$bad": 1}}]}, r"\$bad"),
        ({"a": {"$elemMatch": {"b": {"$bad": 1}}}}, r"\$bad"),
    ],
)
def test_invalid_filters(flt, message):
    with pytest.raises(InvalidQuery, match=message):
        compile_filter(flt)


def test_invalid_query_is_a_value_error():
    with pytest.raises(ValueError):
        compile_filter({"$gt": 1})
    assert issubclass(InvalidQuery, InvalidArgument)


def test_compiled_filter_is_reusable_and_does_not_mutate():
    flt = {"a": {"$in": [1, 2]}, "b": {"$elemMatch": {"c": 1}}}
    before = copy.deepcopy(flt)
    predicate = compile_filter(flt)
    doc = {"a": 1, "b": [{"c": 1}]}
    assert predicate(doc) and predicate(doc)
    assert flt == before and doc == {"a": 1, "b": [{"c": 1}]}


# ------------------------------------------------------------------------------------- BSON comparison


def test_bson_type_order():
    ordered = [None, NAN, float("-inf"), -5, 0, 2.5, 3, "", "a", "b", {}, {"a": 1}, [], [1], b"", b"z", b"aa",
               False, True, T1, T2]
    for i, low in enumerate(ordered):
        for high in ordered[i + 1:]:
            assert compare_values(low, high) == -1, (low, high)
            assert compare_values(high, low) == 1, (high, low)
        assert compare_values(low, copy.copy(low)) == 0


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        (1, 1.0, 0),
        (NAN, NAN, 0),
        (True, 1, 1),
        ({"a": 1, "b": 2}, {"b": 2, "a": 1}, -1),  # same types: field names decide
        ({"a": "x"}, {"b": 1}, 1),  # the first field's type decides before its name
        ({"a": 1}, {"a": 1, "b": 0}, -1),
        ([1, 2], [1, 3], -1),
        ([1, 2], [1], 1),
        ([2], [1, 9], 1),
        (b"b", b"aa", -1),
        (T1, T1.replace(tzinfo=None), 0),
        ((1, 2), [1, 2], 0),
        (re.compile("a"), T1, 1),  # regex sorts after dates
    ],
)
def test_compare_values(a, b, expected):
    assert compare_values(a, b) == expected


def test_compare_values_treats_missing_like_null():
    from microblob.engine.query import _MISSING

    assert compare_values(_MISSING, None) == 0
    assert compare_values(_MISSING, 0) == -1


def test_sort_key_uses_smallest_element_ascending_and_largest_descending():
    assert sort_key([3, 1, 2]) == sort_key(1)
    assert sort_key([3, 1, 2], descending=True) == sort_key(3, descending=True)
    assert sort_key([]) < sort_key(None)  # an empty array sorts before null
    assert sort_key([1, "a"]) == sort_key(1)
    assert sort_key([1, "a"], True) == sort_key("a", True)
    assert sort_key(5, True) < sort_key(1, True)
    assert sorted([3, None, "x", 1], key=sort_key) == [None, 1, 3, "x"]
    assert sorted([3, None, "x", 1], key=lambda v: sort_key(v, True)) == ["x", 3, 1, None]


# --------------------------------------------------------------------------------------------------- sort


@pytest.mark.parametrize(
    ("sort", "expected"),
    [
        (None, []),
        ("a", [("a", 1)]),
        ({"a": 1, "b": -1}, [("a", 1), ("b", -1)]),
        ([("a", 1), ("b", -1)], [("a", 1), ("b", -1)]),
        (("a", -1), [("a", -1)]),
        (["a", ("b", -1.0)], [("a", 1), ("b", -1)]),
        (("a", "b"), [("a", 1), ("b", 1)]),
        ([], []),
    ],
)
def test_normalize_sort(sort, expected):
    assert normalize_sort(sort) == expected


@pytest.mark.parametrize(
    "sort",
    [5, [("a", 2)], [("a", True)], [("a", "asc")], {"a": 0}, [("a",)], [("", 1)], [("a..b", 1)],
     [("$natural", 1)], {"score": {"$meta": "textScore"}}, [("a", 1), ("a", -1)], [(1, 1)]],
)
def test_invalid_sorts(sort):
    with pytest.raises(InvalidQuery):
        normalize_sort(sort)


def test_sort_documents_follows_bson_order_and_is_stable():
    docs = [{"_id": 0, "a": 1}, {"_id": 1, "a": [0, 1]}, {"_id": 2}, {"_id": 3, "a": []}, {"_id": 4, "a": [1]},
            {"_id": 5, "a": None}, {"_id": 6, "a": "s"}, {"_id": 7, "a": True}, {"_id": 8, "a": 1.0}]
    # Ascending: [] < missing == null < [0, 1] (its 0) < 1 == [1] == 1.0 < "s" < True (the DOCS-2760
    # example of the MongoDB issue tracker, extended); ties keep the input order.
    assert [d["_id"] for d in sort_documents(docs, "a")] == [3, 2, 5, 1, 0, 4, 8, 6, 7]
    assert [d["_id"] for d in sort_documents(docs, [("a", -1)])] == [7, 6, 0, 1, 4, 8, 2, 5, 3]


def test_sort_on_several_fields_with_mixed_directions():
    docs = [{"_id": n, "a": n % 2, "b": n // 2} for n in range(6)]
    result = sort_documents(docs, [("a", 1), ("b", -1)])
    assert [d["_id"] for d in result] == [4, 2, 0, 5, 3, 1]
    result = sort_documents(docs, {"a": -1, "b": -1})
    assert [d["_id"] for d in result] == [5, 3, 1, 4, 2, 0]


def test_sort_on_dotted_paths_through_arrays():
    docs = [{"_id": 0, "a": [{"b": 5}, {"b": 1}]}, {"_id": 1, "a": {"b": 3}}, {"_id": 2, "a": [{"b": 4}, {"c": 0}]}]
    assert [d["_id"] for d in sort_documents(docs, "a.b")] == [2, 0, 1]  # doc 2 has a missing b: null
    assert [d["_id"] for d in sort_documents(docs, [("a.b", -1)])] == [0, 2, 1]


def test_sort_with_skip_and_limit_matches_full_sort():
    docs = [{"_id": n, "v": (n * 7) % 10, "w": n % 3} for n in range(40)]
    full = sort_documents(docs, [("v", 1), ("w", -1)])
    for skip in (0, 3, 38, 50):
        for limit in (1, 5, 100):
            assert sort_documents(docs, [("v", 1), ("w", -1)], skip=skip, limit=limit) == full[skip:skip + limit]
            expected = sort_documents(docs, "v")[skip:skip + limit]
            assert sort_documents(iter(docs), "v", skip=skip, limit=limit) == expected
    assert sort_documents(docs, "v", limit=-3) == sort_documents(docs, "v", limit=3)  # as pymongo
    assert sort_documents(iter(docs), None, skip=2, limit=3) == docs[2:5]
    assert sort_documents(docs, None) == docs


def test_sort_with_limit_does_not_sort_everything(monkeypatch):
    import heapq

    calls = []
    real = heapq.nsmallest
    monkeypatch.setattr(heapq, "nsmallest", lambda n, it, key: calls.append(n) or real(n, it, key=key))
    docs = ({"v": n % 97} for n in range(1000))
    assert [d["v"] for d in sort_documents(docs, "v", limit=3)] == [0, 0, 0]
    assert calls == [3]


@pytest.mark.parametrize(("skip", "limit"), [(-1, 0), (0, 1.5), ("1", 0), (True, 0)])
def test_invalid_skip_and_limit(skip, limit):
    with pytest.raises(InvalidQuery):
        sort_documents([], "a", skip=skip, limit=limit)


# ---------------------------------------------------------------------------------------------- projection

DOC = {"_id": 7, "a": 1, "b": {"c": 2, "d": 3}, "e": [{"c": 4, "f": 5}, {"f": 6}, 7, [{"c": 8}]], "g": 9}


@pytest.mark.parametrize(
    ("projection", "expected"),
    [
        (None, DOC),
        ({}, DOC),
        ({"a": 1}, {"_id": 7, "a": 1}),
        ({"a": True, "g": 1}, {"_id": 7, "a": 1, "g": 9}),
        (["a", "g"], {"_id": 7, "a": 1, "g": 9}),
        ({"a": 1, "_id": 0}, {"a": 1}),
        ({"_id": 1}, {"_id": 7}),
        ({"_id": 0}, {k: v for k, v in DOC.items() if k != "_id"}),
        ({"b.c": 1}, {"_id": 7, "b": {"c": 2}}),
        ({"b.x": 1}, {"_id": 7, "b": {}}),  # a subdocument without the field stays, empty
        ({"a.x": 1}, {"_id": 7}),  # a scalar where a document is expected is dropped
        ({"missing": 1}, {"_id": 7}),
        # through arrays: documents are projected, other elements dropped, nested arrays walked
        ({"e.c": 1}, {"_id": 7, "e": [{"c": 4}, {}, [{"c": 8}]]}),
        ({"a": 0}, {"_id": 7, "b": {"c": 2, "d": 3}, "e": DOC["e"], "g": 9}),
        ({"b.c": 0, "g": False}, {"_id": 7, "a": 1, "b": {"d": 3}, "e": DOC["e"]}),
        ({"e.c": 0}, {"_id": 7, "a": 1, "b": DOC["b"], "e": [{"f": 5}, {"f": 6}, 7, [{}]], "g": 9}),
        ({"a.x": 0}, DOC),  # exclusion keeps what it cannot walk into
        ({"a": 2, "g": -1.5}, {"_id": 7, "a": 1, "g": 9}),  # any non-zero number includes
    ],
)
def test_projection(projection, expected):
    before = copy.deepcopy(DOC)
    result = compile_projection(projection)(DOC)
    assert result == expected
    assert list(result) == [k for k in DOC if k in result]  # document order is kept
    assert before == DOC


@pytest.mark.parametrize("projection", [None, {"b.c": 1}, {"b.d": 0}])
def test_projection_result_is_a_new_document(projection):
    doc = {"_id": 1, "b": {"c": 1, "d": 2}}
    result = compile_projection(projection)(doc)
    result["new"] = 1
    assert "new" not in doc
    if projection is not None:  # a projected-through subdocument is new too
        result["b"]["x"] = 1
        assert doc["b"] == {"c": 1, "d": 2}


@pytest.mark.parametrize(
    "projection",
    [{"a": 1, "b": 0}, {"a": 0, "b.c": 1}, {"a": 1, "a.b": 1}, {"a.b": 1, "a": 1}, {"a": "yes"},
     {"a": {"$slice": 2}}, {"a.$": 1}, {"": 1}, {"a..b": 1}, 5, "a", [1], {"a": None}],
)
def test_invalid_projections(projection):
    with pytest.raises(InvalidQuery):
        compile_projection(projection)


# ------------------------------------------------------------------------------------------------- update


def test_update_returns_a_new_document_and_never_mutates():
    doc = {"_id": 1, "a": {"b": [1, 2]}, "n": 1}
    before = copy.deepcopy(doc)
    new = compile_update({"$push": {"a.b": 3}, "$inc": {"n": 1}, "$set": {"a.c": 1}})(doc)
    assert new == {"_id": 1, "a": {"b": [1, 2, 3], "c": 1}, "n": 2}
    assert doc == before


@pytest.mark.parametrize(
    ("doc", "update", "expected"),
    [
        ({"_id": 1}, {"$set": {"a": 1}}, {"_id": 1, "a": 1}),
        ({"_id": 1, "a": 1}, {"$set": {"a": [1]}}, {"_id": 1, "a": [1]}),
        ({"_id": 1}, {"$set": {"a.b.c": 1}}, {"_id": 1, "a": {"b": {"c": 1}}}),
        ({"_id": 1, "a": {"x": 0}}, {"$set": {"a.b": 1}}, {"_id": 1, "a": {"x": 0, "b": 1}}),
        ({"_id": 1, "a": [1, 2]}, {"$set": {"a.1": 5}}, {"_id": 1, "a": [1, 5]}),
        ({"_id": 1, "a": [1]}, {"$set": {"a.3": 5}}, {"_id": 1, "a": [1, None, None, 5]}),
        ({"_id": 1, "a": [{"b": 1}]}, {"$set": {"a.0.b": 2}}, {"_id": 1, "a": [{"b": 2}]}),
        ({"_id": 1, "a": []}, {"$set": {"a.1.b": 2}}, {"_id": 1, "a": [None, {"b": 2}]}),
        ({"_id": 1}, {"$set": {"z": 1, "b": 1, "a.y": 1, "a.x": 1}}, {"_id": 1, "a": {"x": 1, "y": 1}, "b": 1, "z": 1}),
        ({"_id": 1, "a": [0] * 11}, {"$set": {"a.10": 1, "a.2": 2}}, {"_id": 1, "a": [0, 0, 2] + [0] * 7 + [1]}),
        ({"_id": 1, "a": 1, "b": 2}, {"$unset": {"a": ""}}, {"_id": 1, "b": 2}),
        ({"_id": 1}, {"$unset": {"a.b": 1}}, {"_id": 1}),
        ({"_id": 1, "a": 5}, {"$unset": {"a.b": 1}}, {"_id": 1, "a": 5}),
        ({"_id": 1, "a": [1, 2, 3]}, {"$unset": {"a.1": 1}}, {"_id": 1, "a": [1, None, 3]}),
        ({"_id": 1, "a": {"b": 1, "c": 2}}, {"$unset": {"a.b": 1}}, {"_id": 1, "a": {"c": 2}}),
        ({"_id": 1, "n": 1}, {"$inc": {"n": 2}}, {"_id": 1, "n": 3}),
        ({"_id": 1, "n": 1}, {"$inc": {"n": 0.5}}, {"_id": 1, "n": 1.5}),
        ({"_id": 1}, {"$inc": {"a.n": -1}}, {"_id": 1, "a": {"n": -1}}),
        ({"_id": 1, "n": 5}, {"$min": {"n": 3}}, {"_id": 1, "n": 3}),
        ({"_id": 1, "n": 5}, {"$min": {"n": 7}}, {"_id": 1, "n": 5}),
        ({"_id": 1, "n": 5}, {"$min": {"n": None}}, {"_id": 1, "n": None}),  # null sorts below numbers
        ({"_id": 1, "n": 5}, {"$max": {"n": "a"}}, {"_id": 1, "n": "a"}),  # strings sort above
        ({"_id": 1}, {"$max": {"n": 1}}, {"_id": 1, "n": 1}),
        ({"_id": 1, "d": T2}, {"$max": {"d": T1}}, {"_id": 1, "d": T2}),
        ({"_id": 1}, {"$push": {"l": 1}}, {"_id": 1, "l": [1]}),
        ({"_id": 1, "l": [1]}, {"$push": {"l": [2]}}, {"_id": 1, "l": [1, [2]]}),
        ({"_id": 1, "l": [1]}, {"$push": {"l": {"$each": [2, 3]}}}, {"_id": 1, "l": [1, 2, 3]}),
        ({"_id": 1, "l": [1]}, {"$push": {"l": {"x": 1}}}, {"_id": 1, "l": [1, {"x": 1}]}),
        ({"_id": 1, "l": [1, 2]}, {"$addToSet": {"l": 1.0}}, {"_id": 1, "l": [1, 2]}),
        ({"_id": 1, "l": [1, 2]}, {"$addToSet": {"l": True}}, {"_id": 1, "l": [1, 2, True]}),
        ({"_id": 1, "l": [{"a": 1, "b": 2}]}, {"$addToSet": {"l": {"b": 2, "a": 1}}},
         {"_id": 1, "l": [{"a": 1, "b": 2}, {"b": 2, "a": 1}]}),
        ({"_id": 1}, {"$addToSet": {"l": {"$each": [1, 2, 1]}}}, {"_id": 1, "l": [1, 2]}),
        ({"_id": 1, "l": [1, 2, 1, 3]}, {"$pull": {"l": 1}}, {"_id": 1, "l": [2, 3]}),
        ({"_id": 1, "l": [1, 2, 5, 9]}, {"$pull": {"l": {"$gte": 5}}}, {"_id": 1, "l": [1, 2]}),
        ({"_id": 1, "l": ["ab", "cd"]}, {"$pull": {"l": re.compile("^a")}}, {"_id": 1, "l": ["cd"]}),
        ({"_id": 1, "l": [[1, 2], [1]]}, {"$pull": {"l": [1]}}, {"_id": 1, "l": [[1, 2]]}),
        # a plain document is a query on the elements: extra fields do not stop a match
        # (update/pull_node.cpp, ObjectMatcher)
        ({"_id": 1, "l": [{"a": 1, "b": 2}, {"a": 2}, 1]}, {"$pull": {"l": {"a": 1}}}, {"_id": 1, "l": [{"a": 2}, 1]}),
        ({"_id": 1, "l": [{"a": [1, 2]}, {"a": 3}]}, {"$pull": {"l": {"a": {"$gt": 2}}}},
         {"_id": 1, "l": [{"a": [1, 2]}]}),
        ({"_id": 1}, {"$pull": {"l": 1}}, {"_id": 1}),
        ({"_id": 1, "a": 1, "b": 2}, {"$rename": {"a": "c"}}, {"_id": 1, "b": 2, "c": 1}),
        ({"_id": 1, "a": {"b": 1}}, {"$rename": {"a.b": "c.d"}}, {"_id": 1, "a": {}, "c": {"d": 1}}),
        ({"_id": 1, "b": 2}, {"$rename": {"a": "c"}}, {"_id": 1, "b": 2}),
        ({"_id": 1, "a": 1, "c": 0}, {"$rename": {"a": "c"}}, {"_id": 1, "c": 1}),
        ({"_id": 1}, {"$set": {"_id": 1}}, {"_id": 1}),
        ({}, {"$set": {"_id": 5}}, {"_id": 5}),
        ({"_id": 1}, {"$setOnInsert": {"a": 1}}, {"_id": 1}),
        ({"_id": 1}, {"$set": {}}, {"_id": 1}),
    ],
)
def test_update_operators(doc, update, expected):
    result = compile_update(update)(doc)
    assert result == expected
    assert list(result) == list(expected)  # field order is MongoDB's too


def test_set_copies_its_operand():
    value = {"x": [1]}
    update = compile_update({"$set": {"a": value}, "$push": {"l": {"$each": [[1]]}}})
    first, second = update({}), update({})
    first["a"]["x"].append(2)
    first["l"][0].append(2)
    assert second == {"a": {"x": [1]}, "l": [[1]]} and value == {"x": [1]}


def test_set_on_insert_and_current_date():
    assert compile_update({"$setOnInsert": {"a": 1}, "$set": {"b": 2}}, inserting=True)({}) == {"a": 1, "b": 2}
    before = dt.datetime.now(UTC) - dt.timedelta(seconds=1)
    new = compile_update({"$currentDate": {"t": True, "u": {"$type": "date"}}})({"_id": 1})
    assert before <= new["t"] <= dt.datetime.now(UTC) and new["u"].tzinfo is not None


def test_update_with_tuples_gives_lists():
    assert compile_update({"$push": {"l": 3}})({"l": (1, 2)}) == {"l": [1, 2, 3]}


@pytest.mark.parametrize(
    ("update", "message"),
    [
        ({}, "non-empty"),
        ([("$set", {"a": 1})], "non-empty dict"),
        ({"a": 1}, "replace_one"),
        ({"$set": {"a": 1}, "b": 2}, "cannot mix"),
        ({"$foo": {"a": 1}}, r"\$foo"),
        ({"$mul": {"a": 2}}, r"\$mul"),
        ({"$set": 5}, "needs a dict"),
        ({"$inc": {"a": "1"}}, "needs a number"),
        ({"$inc": {"a": True}}, "needs a number"),
        ({"$inc": {"a": None}}, "needs a number"),
        ({"$set": {"a": 1}, "$inc": {"a": 1}}, "conflict"),
        ({"$set": {"a": 1, "a.b": 1}}, "conflict"),
        ({"$set": {"a.b": 1}, "$unset": {"a": 1}}, "conflict"),
        ({"$rename": {"a": "b"}, "$set": {"b": 1}}, "conflict"),
        ({"$rename": {"a": "a.b"}}, "conflict"),
        ({"$rename": {"a": "a"}}, "must differ"),
        ({"$rename": {"a": 5}}, "invalid path"),
        ({"$set": {"a.$": 1}}, "positional"),
        ({"$set": {"a.$[]": 1}}, "positional"),
        ({"$set": {"": 1}}, "invalid path"),
        ({"$set": {"a..b": 1}}, "invalid path"),
        ({"$set": {"a": {1, 2}}}, "set"),
        ({"$push": {"a": {"$each": 1}}}, r"\$each"),
        ({"$push": {"a": {"$each": [1], "$slice": 2}}}, r"\$slice"),
        ({"$addToSet": {"a": {"$each": [1], "b": 2}}}, "'b'"),
        ({"$currentDate": {"a": {"$type": "timestamp"}}}, "timestamp"),
        ({"$currentDate": {"a": 1}}, "currentDate"),
        ({"$pull": {"a": {"$bad": 1}}}, r"\$bad"),
    ],
)
def test_invalid_updates(update, message):
    with pytest.raises(InvalidQuery, match=message):
        compile_update(update)


@pytest.mark.parametrize(
    ("doc", "update", "message"),
    [
        ({"_id": 1}, {"$set": {"_id": 2}}, "_id"),
        ({"_id": 1}, {"$unset": {"_id": 1}}, "_id"),
        ({"_id": 1}, {"$inc": {"_id": 1}}, "_id"),
        ({"_id": {"a": 1}}, {"$set": {"_id.a": 2}}, "_id"),
        ({"_id": 1}, {"$rename": {"_id": "x"}}, "_id"),
        ({"a": "x"}, {"$inc": {"a": 1}}, "holds a str"),
        ({"a": None}, {"$inc": {"a": 1}}, "holds a NoneType"),
        ({"a": 2**63 - 1}, {"$inc": {"a": 1}}, "overflows"),
        ({"a": 5}, {"$set": {"a.b": 1}}, "cannot create field 'b'"),
        ({"a": None}, {"$set": {"a.b": 1}}, "cannot create field 'b'"),
        ({"a": [1]}, {"$set": {"a.b": 1}}, "cannot create field 'b'"),
        ({"a": [1]}, {"$set": {"a.b.c": 1}}, "cannot create field 'b'"),
        ({"a": 1}, {"$push": {"a": 2}}, "array"),
        ({"a": {"b": 1}}, {"$addToSet": {"a": 2}}, "array"),
        ({"a": 1}, {"$pull": {"a": 1}}, r"\$pull"),
        ({"a": [{"b": 1}]}, {"$rename": {"a.0.b": "c"}}, "array element"),
        ({"a": 1, "c": [1]}, {"$rename": {"a": "c.0"}}, "array element"),
    ],
)
def test_updates_that_cannot_apply(doc, update, message):
    apply = compile_update(update)
    before = copy.deepcopy(doc)
    with pytest.raises(InvalidQuery, match=message):
        apply(doc)
    assert doc == before


# ------------------------------------------------------------------------------------------ index planning


@pytest.mark.parametrize(
    ("flt", "expected"),
    [
        ({"a": 1}, [1]),
        ({"a": "x", "b": 2}, ["x"]),
        ({"a": None}, [None]),
        ({"a": True}, [True]),
        ({"a": 2.5}, [2.5]),
        ({"a": {"$eq": "x"}}, ["x"]),
        ({"a": {"$in": ["x", "y", "x"]}}, ["x", "y"]),
        ({"a": {"$in": [1, 1.0, True]}}, [1, True]),
        ({"a": {"$in": []}}, []),
        ({"a": {"$in": [1, 2, 3], "$gt": 1}}, [1, 2, 3]),
        ({"a": {"$in": [1, 2], "$eq": 2}}, [2]),
        ({"$and": [{"a": {"$in": [1, 2, 3]}}, {"a": {"$in": [3, 4]}}]}, [3, 4]),  # smallest, not intersection
        ({"a": 1, "$and": [{"$and": [{"a": {"$in": [1, 2]}}]}]}, [1]),
        (None, None),
        ({}, None),
        ({"b": 1}, None),
        ({"a": {"$gt": 1}}, None),
        ({"a": {"$ne": 1}}, None),
        ({"a": {"$nin": [1]}}, None),
        ({"a": [1, 2]}, None),
        ({"a": {"x": 1}}, None),
        ({"a": re.compile("x")}, None),
        ({"a": {"$in": [1, re.compile("x")]}}, None),
        ({"a": {"$in": [1, [2]]}}, None),
        ({"a": NAN}, None),
        ({"a": {"$in": [NAN]}}, None),
        ({"$or": [{"a": 1}, {"a": 2}]}, None),
        ({"$nor": [{"a": 1}]}, None),
        ({"a": {"$not": {"$eq": 1}}}, None),
        ({"a": {"$elemMatch": {"$eq": 1}}}, None),
        ({"a.b": 1}, None),
    ],
)
def test_equality_values(flt, expected):
    assert equality_values(flt, "a") == expected


def test_equality_values_never_exclude_a_match():
    docs = [{"tags": ["a", "b"]}, {"tags": "a"}, {"tags": ["b"]}, {}, {"tags": [None]}, {"tags": [{"x": 1}]}]
    filters = [
        {"$and": [{"tags": "a"}, {"tags": "b"}]},
        {"tags": {"$in": ["a", "c"]}, "$and": [{"tags": {"$in": ["b"]}}]},
        {"tags": None},
        {"tags": {"$in": [None, "b"]}},
        {"tags.x": 1},
    ]
    for flt in filters:
        for field in ("tags", "tags.x"):
            values = equality_values(flt, field)
            if values is None:
                continue
            wanted = {sort_key(v) for v in values}  # equal keys <=> MongoDB equality
            for doc in docs:
                if match(doc, flt):
                    assert wanted & {sort_key(v) for v in field_values(doc, field)}, (flt, doc)


def test_equality_values_with_dotted_field():
    assert equality_values({"a.b": {"$in": [1, 2]}}, "a.b") == [1, 2]
    assert equality_values({"a": {"b": 1}}, "a.b") is None


# ----------------------------------------------------------------------------------------------- misc


def test_nan_inf_and_big_numbers_are_plain_values():
    assert match({"a": math.inf}, {"a": math.inf})
    assert match({"a": 2**63 - 1}, {"a": {"$gt": 2**62}})
    assert not match({"a": 2**53 + 1}, {"a": float(2**53)})  # exact int/float comparison


# ------------------------------------------------------------------------ where mongomock is wrong
# The numbers are the notes in tests/test_query_differential.py, whose generator avoids these corners.


@pytest.mark.parametrize(
    ("note", "doc", "flt", "expected"),
    [
        (1, {}, {"a": {}}, False),  # equality with an empty document; missing is not {}
        (2, {"a": "ya"}, {"a": {"$not": {"$regex": "^X", "$options": "i"}}}, True),
        (2, {"a": "xa"}, {"a": {"$not": {"$regex": "^X", "$options": "i"}}}, False),
        (3, {}, {"a": {"$gte": None}}, True),
        (3, {}, {"a": {"$lte": None}}, True),
        (4, {"a": [[1, 2], 3]}, {"a": {"$eq": [1, 2]}}, True),  # an element equals the operand
        (4, {"a": [[1, 2], 3]}, {"a": {"$ne": [1, 2]}}, False),
        (5, {"a": 5}, {"a.b": None}, True),
        (5, {"a": None}, {"a.b": {"$in": [None]}}, True),
        (5, {"a": 5}, {"a.b": {"$ne": None}}, False),
        (6, {"a": [1]}, {"a": {"$all": []}}, False),
        (7, {"a": []}, {"a": {"$in": [[]]}}, True),  # the array itself is a candidate
        (7, {"a": [1, 2]}, {"a": {"$nin": [[1, 2]]}}, False),
        (8, {"a": [1, 2]}, {"a.b": {"$not": {"$gt": 1}}}, True),  # NOT of "no value > 1"
        (8, {"a": 5}, {"a.b": {"$exists": False, "$ne": 1}}, True),
        (9, {}, {"a": {"$all": [None]}}, True),
        (10, {"a": {"x": 1, "y": 2}}, {"a": {"$size": 2}}, False),
        (10, {"a": 7}, {"a": {"$size": 1}}, False),
        (11, {"a": [[], [""]]}, {"a.0": {"$all": [[]]}}, True),
        (11, {"b": [{"a": []}, {}]}, {"b.a": {"$all": [2]}}, False),  # mongomock raises TypeError
        (12, {"a": [{"b": 1}, {}]}, {"a.b": {"$exists": False}}, False),
        (13, {"a": True}, {"a": 1}, False),
        (13, {"a": [True]}, {"a": {"$in": [1]}}, False),
        (13, {"a": float("nan")}, {"a": float("nan")}, True),
        (13, {"a": {"x": 1, "y": 2}}, {"a": {"y": 2, "x": 1}}, False),
        (16, {"a": [[1, 5]]}, {"a": {"$elemMatch": {"$gt": 4}}}, False),
        (16, {"a": [[{"b": 1}]]}, {"a": {"$elemMatch": {"b": 1}}}, False),
        (16, {"a": [[1, "x"]]}, {"a": {"$elemMatch": {"b": None}}}, True),  # ["1", "x"] read as a document
        (17, {"a": [1]}, {"a": {"$elemMatch": {"$not": {"$exists": True}}}}, False),
        (17, {"a": [{"x": 1}]}, {"a": {"$elemMatch": {"$not": {"$exists": True}}}}, False),
    ],
)
def test_mongodb_where_mongomock_differs(note, doc, flt, expected):
    assert match(doc, flt) is expected


def test_mongodb_sort_and_projection_where_mongomock_differs():
    # note 14: an array sorts by its smallest element ascending and its largest descending
    docs = [{"_id": 0, "a": [5, 1]}, {"_id": 1, "a": 3}]
    assert [d["_id"] for d in sort_documents(docs, "a")] == [0, 1]
    assert [d["_id"] for d in sort_documents(docs, [("a", -1)])] == [0, 1]
    docs = [{"_id": 0, "a": [{"b": 9}, {"b": 1}]}, {"_id": 1, "a": {"b": 5}}]
    assert [d["_id"] for d in sort_documents(docs, "a.b")] == [0, 1]  # every value of the path counts
    # note 15: scalars in arrays are dropped by inclusion and kept by exclusion; a scalar parent stays
    assert compile_projection({"a.b": 1})({"_id": 1, "a": [{"b": 1}, 2]}) == {"_id": 1, "a": [{"b": 1}]}
    assert compile_projection({"a.b": 0})({"_id": 1, "a": [{"b": 1}, 2]}) == {"_id": 1, "a": [{}, 2]}
    assert compile_projection({"a.b": 0})({"_id": 1, "a": 5}) == {"_id": 1, "a": 5}


def test_subclasses_of_plain_types_behave_like_them():
    import enum
    from collections import OrderedDict

    class Colour(str, enum.Enum):
        RED = "red"

    class Level(enum.IntEnum):
        HIGH = 3

    doc = OrderedDict([("_id", 1), ("c", Colour.RED), ("n", Level.HIGH), ("d", OrderedDict(x=1))])
    assert match(doc, {"c": "red"}) and match(doc, {"c": {"$in": ["red", "blue"]}})
    assert match(doc, {"c": {"$gt": "a"}}) and match(doc, {"c": {"$regex": "^r"}})
    assert match(doc, {"n": 3}) and match(doc, {"n": {"$in": [3.0]}}) and match(doc, {"n": {"$gte": 3}})
    assert match(doc, {"d": {"x": 1}}) and match(doc, {"d.x": 1})
    assert compile_projection({"c": 1})(doc) == {"_id": 1, "c": "red"}


def test_naive_datetimes_in_documents_mean_utc():
    naive = {"a": T1.replace(tzinfo=None)}
    assert match(naive, {"a": T1})
    assert match(naive, {"a": {"$gte": T1, "$lt": T2}})
    assert match(naive, {"a": {"$in": [T1]}})
    assert compare_values(naive["a"], T1) == 0
