"""The document layer under the store: pymongo-style collections with secondary indexes."""

from __future__ import annotations

import pytest

import microblob
from microblob import DuplicateKey, InvalidDocument, InvalidQuery


def _things(store: microblob.Store):  # type: ignore[no-untyped-def]
    c = store.backend.collection("things")
    c.create_index([("kind", 1)])
    c.create_index([("owner", 1), ("rank", 1)])
    return c


@pytest.fixture
def coll(store: microblob.Store):  # type: ignore[no-untyped-def]
    return _things(store)


def test_crud(coll) -> None:  # type: ignore[no-untyped-def]
    coll.insert_one({"_id": 1, "kind": "a", "n": 1})
    coll.insert_one({"_id": 2, "kind": "b", "n": 2})
    with pytest.raises(DuplicateKey):
        coll.insert_one({"_id": 1.0, "kind": "dup"})  # 1 == 1.0, as in MongoDB
    assert coll.find_one({"_id": 2})["kind"] == "b"
    assert coll.replace_one({"_id": 2}, {"kind": "c", "n": 3}) == 1
    assert coll.find_one({"_id": 2}) == {"_id": 2, "kind": "c", "n": 3}
    assert coll.replace_one({"_id": 2, "n": 99}, {"kind": "z"}) == 0  # compare-and-swap lost
    assert coll.update_one({"_id": 1}, {"$inc": {"n": 10}, "$set": {"kind": "c"}}) == 1
    assert coll.find_one({"_id": 1})["n"] == 11
    assert coll.count_documents({"kind": "c"}) == 2
    assert coll.delete_many({"kind": "c"}) == 2
    assert coll.count_documents({}) == 0
    generated = coll.insert_one({"kind": "auto"})
    assert isinstance(generated, str) and coll.find_one({"_id": generated})["kind"] == "auto"


def test_find_window_sort_projection(coll) -> None:  # type: ignore[no-untyped-def]
    for i in range(20):
        coll.insert_one({"_id": i, "kind": "even" if i % 2 == 0 else "odd", "n": (i * 7) % 20})
    top = coll.find({"kind": "even"}, projection={"n": 1, "_id": 0}, sort=[("n", -1)], skip=1, limit=3)
    evens = sorted(((i * 7) % 20 for i in range(0, 20, 2)), reverse=True)
    assert top == [{"n": n} for n in evens[1:4]]
    assert [d["_id"] for d in coll.find({}, limit=3)] == [0, 1, 2]


def test_indexes_follow_updates_and_deletes(coll) -> None:  # type: ignore[no-untyped-def]
    coll.insert_one({"_id": "x", "kind": ["a", "b"], "owner": "ann", "rank": 1})
    assert [d["_id"] for d in coll.find({"kind": "b"})] == ["x"]  # multikey
    coll.replace_one({"_id": "x"}, {"kind": "c", "owner": "bob", "rank": 2})
    assert coll.find({"kind": "b"}) == []
    assert [d["_id"] for d in coll.find({"kind": "c"})] == ["x"]
    assert [d["_id"] for d in coll.find({"owner": "bob", "rank": 2.0})] == ["x"]
    assert coll.find({"owner": "ann"}) == []
    coll.delete_one({"_id": "x"})
    assert coll.find({"kind": "c"}) == []


def test_indexed_lookups_do_not_scan(embedded_store: microblob.Store, count_reads) -> None:  # type: ignore[no-untyped-def]
    store = embedded_store
    coll = _things(store)
    for i in range(200):
        coll.insert_one({"_id": i, "kind": f"k{i % 10}", "owner": f"o{i % 7}", "rank": i})
    counts = count_reads(store)
    assert len(coll.find({"kind": "k3"})) == 20
    assert len(coll.find({"kind": {"$in": ["k1", "k2"]}, "rank": {"$gt": 100}})) == 20
    assert [d["_id"] for d in coll.find({"owner": "o3", "rank": 10})] == [10]
    assert counts["scanned"] == 0
    # a filter no index serves still gives the right answer, by scanning
    assert len(coll.find({"rank": {"$lt": 5}})) == 5
    assert counts["scanned"] == 200


def test_null_and_missing_values_through_an_index(coll) -> None:  # type: ignore[no-untyped-def]
    coll.insert_one({"_id": 1, "kind": None})
    coll.insert_one({"_id": 2})
    coll.insert_one({"_id": 3, "kind": "x"})
    coll.insert_one({"_id": 4, "kind": [None, "y"]})
    coll.insert_one({"_id": 5, "kind": {"nested": 1}})
    assert sorted(d["_id"] for d in coll.find({"kind": None})) == [1, 2, 4]
    assert [d["_id"] for d in coll.find({"kind": {"nested": 1}})] == [5]


def test_indexes_are_shared_through_the_file(lmdb_path) -> None:  # type: ignore[no-untyped-def]
    with microblob.connect(lmdb_path) as a:
        a.backend.collection("things").insert_one({"_id": 1, "color": "red"})
        a.backend.collection("things").create_index([("color", 1)])
        with microblob.connect(lmdb_path) as b:  # a second Store on the same file sees the index
            b.backend.collection("things").insert_one({"_id": 2, "color": "red"})
        assert a.backend.collection("things").index_information()["color_1"]["key"] == [("color", 1)]
        assert sorted(d["_id"] for d in a.backend.collection("things").find({"color": "red"})) == [1, 2]


def test_long_ids_and_values_are_hashed_into_keys(coll) -> None:  # type: ignore[no-untyped-def]
    long_id = "i" * 5000
    coll.insert_one({"_id": long_id, "kind": "k" * 5000})
    assert coll.find_one({"_id": long_id})["kind"] == "k" * 5000
    assert [d["_id"] for d in coll.find({"kind": "k" * 5000})] == [long_id]


def test_bad_documents_and_filters(coll) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidDocument):
        coll.insert_one({"_id": 1, 2: "int key"})
    with pytest.raises(InvalidDocument):
        coll.insert_one({"_id": 1, "big": 2**70})
    with pytest.raises(InvalidDocument):
        coll.insert_one({"_id": 1, "obj": object()})
    with pytest.raises(InvalidQuery):
        coll.find({"$gt": 1})
    with pytest.raises(InvalidQuery):
        coll.find({"a": {"$frobnicate": 1}})
    with pytest.raises(microblob.InvalidArgument):
        coll.find({}, limit=-1)
    assert coll.count_documents({}) == 0  # nothing partial was written



def test_writes_refuse_what_is_no_filter_no_document_or_no_bool(store: microblob.Store, coll) -> None:  # type: ignore[no-untyped-def]
    """A write of None (every document, to pymongo's refusal), of a non-mapping document or with a truthy
    non-bool `upsert` is refused on every backend, and nothing is written or deleted."""
    for i in range(3):
        coll.insert_one({"_id": i, "kind": "a"})
    refused = [
        (InvalidQuery, lambda: coll.delete_many(None)),
        (InvalidQuery, lambda: coll.delete_one(None)),
        (InvalidQuery, lambda: coll.update_one(None, {"$set": {"kind": "b"}})),
        (InvalidQuery, lambda: coll.replace_one(None, {"kind": "b"})),
        (InvalidQuery, lambda: coll.delete_many("kind")),
        (microblob.InvalidArgument, lambda: coll.update_one({"_id": 77}, {"$set": {"a": 1}}, upsert="no")),
        (microblob.InvalidArgument, lambda: coll.replace_one({"_id": 77}, {"a": 1}, upsert=1)),
        (InvalidDocument, lambda: coll.insert_one(5)),
        (InvalidDocument, lambda: coll.insert_one(None)),
        (InvalidDocument, lambda: coll.insert_one("ab")),
        (InvalidDocument, lambda: coll.insert_one([("_id", 9), ("kind", "list")])),
        (InvalidDocument, lambda: coll.replace_one({"_id": 0}, None)),
        (InvalidDocument, lambda: coll.replace_one({"_id": 0}, 5)),
        (microblob.InvalidArgument, lambda: store.backend.collection("\ud800")),
        (microblob.InvalidArgument, lambda: coll.create_index([("rank", 1)], name="\ud800")),
        (microblob.InvalidArgument, lambda: store.create_index("rank", name="\ud800")),
    ]
    for error, call in refused:
        with pytest.raises(error):
            call()
    assert sorted((d["_id"], d["kind"]) for d in coll.find({})) == [(0, "a"), (1, "a"), (2, "a")]
    assert coll.find_one({"_id": 77}) is None
    assert coll.delete_many({}) == 3  # {} still means every document

def test_compound_index_sees_documents_whose_other_field_is_a_subdocument_or_empty_array(coll) -> None:  # type: ignore[no-untyped-def]
    # Found by tests/test_backend_differential.py: such documents had no index entry at all, so an
    # equality lookup on the index's first field missed them.
    coll.insert_one({"_id": 0, "owner": "ann", "rank": []})
    coll.insert_one({"_id": 1, "owner": "ann", "rank": {"x": 1}})
    coll.insert_one({"_id": 2, "owner": "ann", "rank": 3})
    assert sorted(d["_id"] for d in coll.find({"owner": "ann"})) == [0, 1, 2]
    assert [d["_id"] for d in coll.find({"owner": "ann", "rank": 3})] == [2]
