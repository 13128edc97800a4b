"""Counts with an indexed equality filter come from per-value counters kept in the index's own write
transaction: they stay exact through inserts, updates that change the value, deletes, arrays, missing
fields, rollbacks, an index rebuild from an older entry format, and compaction. Structural checks (which
keys exist, how many entries a count reads), no timings."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

import microblob
from microblob.engine import index_keys, kvdocs
from microblob.engine.planner import Index
from microblob.engine.query import compile_filter

VALUES: list[Any] = ["x", "y", "z", 1, 1.0, 2, None, True, [1, "x"], ["y", "y"], [], {"k": 1}]


def _doc(rng: random.Random, n: int) -> dict[str, Any]:
    doc: dict[str, Any] = {"_id": n}
    for field in ("a", "b"):
        if rng.random() < 0.8:  # sometimes missing: filed (and counted) under null
            doc[field] = rng.choice(VALUES)
    if rng.random() < 0.5:
        doc["s"] = {"t": rng.choice(["p", "q", None])}
    return doc


FILTERS: list[dict[str, Any]] = [
    {"a": "x"}, {"a": "y"}, {"a": 1}, {"a": 2}, {"a": None}, {"a": True}, {"b": "z"}, {"b": 1.0},
    {"a": {"$in": ["x", 2]}}, {"a": {"$eq": "y"}}, {"a": "x", "b": "y"}, {"a": 1, "b": None},
    {"a": {"$in": [1, "z"]}, "b": "x"}, {"s.t": "p"}, {"s.t": None}, {"b": {"$in": [None, True]}},
]


def _check_counts(coll: Any) -> None:
    docs = coll.find({})
    for flt in FILTERS:
        predicate = compile_filter(flt)
        assert coll.count_documents(flt) == sum(1 for d in docs if predicate(d)), flt


def _counter_values(store: microblob.Store, collection: str) -> dict[bytes, int]:
    """Every counter key of a collection's indexes -> its stored count."""
    prefix = kvdocs._pack(collection)
    with store.backend.engine.read() as txn:
        return {key: int.from_bytes(value, "big") for key, value in txn.scan("index", prefix)
                if index_keys.COUNTER in key and len(value) == 8}


def _fill(store: microblob.Store, name: str = "counted") -> Any:
    coll = store.backend.collection(name)
    coll.create_index("a")
    coll.create_index([("a", 1), ("b", -1)])
    coll.create_index("s.t")
    return coll


def test_counts_stay_exact_through_every_kind_of_write(embedded_store: microblob.Store) -> None:
    coll = _fill(embedded_store)
    rng = random.Random(11)
    for n in range(60):
        coll.insert_one(_doc(rng, n))
    _check_counts(coll)
    for step in range(150):
        n = rng.randrange(70)
        op = rng.random()
        if op < 0.45:  # replace: the indexed values change (or stay), arrays come and go
            coll.replace_one({"_id": n}, _doc(rng, n), upsert=True)
        elif op < 0.6:
            coll.update_one({"_id": n}, {"$set": {"a": rng.choice(VALUES)}})
        elif op < 0.8:
            coll.delete_one({"_id": n})
        else:
            coll.delete_many({"a": rng.choice(["x", "y", 2])})
        if step % 10 == 0:
            _check_counts(coll)
    _check_counts(coll)


def test_a_counter_exists_only_from_two_documents_on(embedded_store: microblob.Store) -> None:
    coll = embedded_store.backend.collection("few")
    coll.create_index("a")
    index = Index(kvdocs._pack("few"), {"name": "a_1", "keys": [["a", 1]]})
    key = index.counter_key(index_keys.encode("v"))
    coll.insert_one({"_id": 1, "a": "v"})
    assert key not in _counter_values(embedded_store, "few")  # one document: its entry is the count
    coll.insert_one({"_id": 2, "a": ["v", "v", "w"]})  # an array counts once per distinct value
    assert _counter_values(embedded_store, "few")[key] == 2
    coll.insert_one({"_id": 3, "a": "v"})
    assert _counter_values(embedded_store, "few")[key] == 3
    assert coll.count_documents({"a": "v"}) == 3 and coll.count_documents({"a": "w"}) == 1
    coll.delete_one({"_id": 2})
    coll.update_one({"_id": 3}, {"$set": {"a": "w"}})
    assert key not in _counter_values(embedded_store, "few")
    assert coll.count_documents({"a": "v"}) == 1 and coll.count_documents({"a": "w"}) == 1
    coll.delete_many({})
    assert _counter_values(embedded_store, "few") == {}


def test_a_count_reads_no_document_and_no_entry(embedded_store: microblob.Store, count_reads: Any) -> None:
    coll = embedded_store.backend.collection("many")
    coll.create_index("kind")
    embedded_store.backend.atomic(lambda: [coll.insert_one({"_id": i, "kind": i % 3}) for i in range(600)])
    plan = coll.explain({"kind": 1})
    assert plan["count"] == "stored counters of kind_1" and plan["counted"], plan
    assert coll.explain({"kind": {"$in": [0, 2]}})["count"] == "stored counters of kind_1"
    assert coll.explain({"kind": {"$gt": 0}})["count"] == "index entries of kind_1"
    counts = count_reads(embedded_store)
    assert coll.count_documents({"kind": 1}) == 200
    assert coll.count_documents({"kind": {"$in": [0, 2, 7]}}) == 400
    assert counts["docs_get"] == 0 and counts["scanned"] == 0, counts
    assert counts["index_entries"] <= 1, counts  # the absent value 7: one probe of its (empty) range


def test_arrays_in_a_multikey_index_are_counted_by_one_value_only(embedded_store: microblob.Store) -> None:
    coll = embedded_store.backend.collection("tags")
    coll.create_index("tags")
    coll.insert_one({"_id": 1, "tags": ["a", "b"]})
    coll.insert_one({"_id": 2, "tags": ["a"]})
    coll.insert_one({"_id": 3, "tags": "b"})
    assert coll.explain({"tags": "a"})["count"] == "stored counters of tags_1"
    # Several values of a multikey index may meet in one document: checked one by one.
    assert coll.explain({"tags": {"$in": ["a", "b"]}})["count"] == "documents checked one by one"
    assert coll.count_documents({"tags": "a"}) == 2 and coll.count_documents({"tags": "b"}) == 2
    assert coll.count_documents({"tags": {"$in": ["a", "b"]}}) == 3


def test_a_failed_transaction_leaves_the_counters_as_they_were(embedded_store: microblob.Store) -> None:
    coll = embedded_store.backend.collection("rolled")
    coll.create_index("a")
    for i in range(3):
        coll.insert_one({"_id": i, "a": "v"})
    before = _counter_values(embedded_store, "rolled")

    def failing() -> None:
        coll.insert_one({"_id": 10, "a": "v"})
        coll.delete_one({"_id": 0})
        coll.update_one({"_id": 1}, {"$set": {"a": "w"}})
        raise RuntimeError("abort")

    with pytest.raises(RuntimeError):
        embedded_store.backend.atomic(failing)
    assert _counter_values(embedded_store, "rolled") == before
    assert coll.count_documents({"a": "v"}) == 3


def test_an_index_of_the_older_format_is_rebuilt_with_its_counters(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with microblob.connect(path) as store:
        for i in range(20):
            store.save_or_update_object(b"x", object_id=f"o{i}", type=["image", "scan"][i % 2])
        coll = store.backend.collection("objects")

        def downgrade(txn: Any) -> None:
            """What a file of index format 2 holds: the same entries, no counters, specs marked v=2."""
            for key in list(_counter_values(store, "objects")):
                txn.delete("index", key)
            specs = store.backend._index_specs(txn)
            for spec in specs["objects"]:
                spec["v"] = 2
            txn.put("meta", kvdocs._INDEXES_KEY, kvdocs._pack(specs))

        store.backend._writing(downgrade)
        assert coll.explain({"type": "image"})["plan"] == "COLLSCAN"  # an old index is not used
        assert _counter_values(store, "objects") == {}
    with microblob.connect(path) as store:  # opening rebuilds the store's own indexes
        coll = store.backend.collection("objects")
        assert coll.explain({"type": "image"})["count"] == "stored counters of type_1"
        assert store.count_objects({"type": "image"}) == 10 == store.count_objects({"type": "scan"})
        assert len(_counter_values(store, "objects")) >= 2


def test_counters_survive_compaction_and_reopening(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    with microblob.connect(path) as store:
        coll = _fill(store)
        rng = random.Random(5)
        for n in range(80):
            coll.insert_one(_doc(rng, n))
        for n in range(0, 80, 3):
            coll.delete_one({"_id": n})
        before = _counter_values(store, "counted")
        store.compact()
        assert _counter_values(store, "counted") == before
        _check_counts(coll)
    with microblob.connect(path) as store:
        coll = store.backend.collection("counted")
        _check_counts(coll)
        coll.insert_one({"_id": 1000, "a": "x", "b": "y"})
        _check_counts(coll)


def test_dropping_and_recreating_an_index_recounts(embedded_store: microblob.Store) -> None:
    coll = embedded_store.backend.collection("again")
    coll.create_index("a")
    for i in range(10):
        coll.insert_one({"_id": i, "a": i % 2})
    coll.drop_index("a_1")
    assert _counter_values(embedded_store, "again") == {}
    for i in range(10, 15):
        coll.insert_one({"_id": i, "a": 1})
    coll.create_index("a")
    assert coll.count_documents({"a": 1}) == 10 and coll.count_documents({"a": 0}) == 5
    assert sorted(_counter_values(embedded_store, "again").values()) == [5, 10]
