"""The embedded planner: which index it picks (via explain), that index walks stop after skip + limit,
that counts come from index entries or the stored counter without decoding documents, and that every
plan gives exactly the answer of a scan. Structural checks (documents read, entries walked), no timings."""

from __future__ import annotations

import datetime as dt
import random
from typing import Any

import pytest

import microblob
from microblob.engine.query import compile_filter, sort_documents

UTC = dt.timezone.utc  # noqa: UP017 - importable on 3.10
T0 = dt.datetime(2024, 1, 1, tzinfo=UTC)
N = 400


def _fill(store: microblob.Store) -> None:
    """N objects with distinct updated_at (so a page's contents do not depend on tie order)."""
    coll = store.backend.collection("objects")

    def load() -> None:
        for i in range(N):
            stamp = T0 + dt.timedelta(seconds=i * 7 % N)  # not in _id order
            coll.insert_one({"_id": f"o{i:04d}", "object_id": f"o{i:04d}", "type": ["image", "scan", "model"][i % 3],
                             "workflow_id": f"w{i % 10}", "updated_at": stamp, "created_at": stamp,
                             "custom_metadata": {"exposure_ms": i % 50}})

    store.backend.atomic(load)


@pytest.fixture
def filled(embedded_store: microblob.Store) -> microblob.Store:
    _fill(embedded_store)
    embedded_store.create_index("custom_metadata.exposure_ms")
    return embedded_store


def test_browse_list_walks_updated_at_and_stops(filled: microblob.Store, count_reads: Any) -> None:
    for sort in ([("updated_at", -1)], [("updated_at", -1), ("object_id", 1)]):
        plan = filled.explain(None, sort=sort, limit=51)
        assert plan["index"] == "updated_at_1" and plan["direction"] == "backward", plan
        assert plan["sort"].startswith("index order")
        counts = count_reads(filled)
        page = filled.query(None, sort=sort, limit=51)
        assert counts["scanned"] == 0 and counts["docs_get"] <= 52 + 51, counts
        everything = filled.query(None)
        assert [d["_id"] for d in page] == [d["_id"] for d in sort_documents(everything, sort, limit=51)]
    newest = filled.query(None, sort=[("updated_at", -1)], limit=1)[0]
    assert newest["updated_at"] == max(d["updated_at"] for d in filled.query(None))


def test_type_query_with_a_limit_is_o_limit(filled: microblob.Store, count_reads: Any) -> None:
    plan = filled.explain({"type": "image"}, limit=50)
    assert plan["index"] == "type_1" and plan["exact"], plan
    counts = count_reads(filled)
    got = filled.query({"type": "image"}, limit=50)
    assert len(got) == 50 and all(d["type"] == "image" for d in got)
    assert counts["docs_get"] == 50 and counts["index_entries"] <= 51 and counts["scanned"] == 0, counts


def test_filter_and_sort_on_a_selective_field_use_its_index(filled: microblob.Store, count_reads: Any) -> None:
    flt = {"workflow_id": "w3"}
    plan = filled.explain(flt, sort=[("updated_at", -1)], limit=10)
    assert plan["index"] == "workflow_id_1" and plan["sort"] == "in memory", plan
    counts = count_reads(filled)
    got = filled.query(flt, sort=[("updated_at", -1)], limit=10)
    assert counts["docs_get"] == N // 10 and counts["scanned"] == 0, counts
    assert [d["_id"] for d in got] == [d["_id"] for d in sort_documents(
        [d for d in filled.query(None) if d["workflow_id"] == "w3"], [("updated_at", -1)], limit=10)]


def test_custom_field_range_and_in(filled: microblob.Store, count_reads: Any) -> None:
    name = "custom_metadata.exposure_ms_1"
    for flt in ({"custom_metadata.exposure_ms": {"$gt": 10, "$lte": 12}},
                {"custom_metadata.exposure_ms": {"$in": [3, 4.0, 99]}},
                {"$and": [{"custom_metadata.exposure_ms": {"$gte": 40}}, {"type": "scan"}]}):
        plan = filled.explain(flt, limit=50)
        assert plan["plan"] == "IXSCAN" and plan["index"] in (name, "type_1"), (flt, plan)
        counts = count_reads(filled)
        got = filled.query(flt, limit=50)
        assert counts["scanned"] == 0, counts
        predicate = compile_filter(flt)
        assert sorted(d["_id"] for d in got) == sorted(d["_id"] for d in filled.query(None) if predicate(d))[:50]
    sort = [("custom_metadata.exposure_ms", -1)]
    plan = filled.explain({"custom_metadata.exposure_ms": {"$lt": 30}}, sort=sort, limit=5)
    assert plan["index"] == name and plan["sort"] == "index order" and plan["direction"] == "backward", plan
    got = filled.query({"custom_metadata.exposure_ms": {"$lt": 30}}, sort=sort, limit=5)
    every = [d for d in filled.query(None) if d["custom_metadata"]["exposure_ms"] < 30]
    assert [d["_id"] for d in got] == [d["_id"] for d in sort_documents(every, sort, limit=5)]


def test_counts_without_decoding_documents(filled: microblob.Store, count_reads: Any) -> None:
    assert filled.explain(None)["count"] == "stored counter"
    assert filled.explain({"type": "scan"})["count"] == "stored counters of type_1"
    assert filled.explain({"custom_metadata.exposure_ms": {"$gte": 45}})["count"] == \
        "index entries of custom_metadata.exposure_ms_1"
    assert filled.explain({"type": {"$ne": "scan"}})["count"] == "documents checked one by one"
    counts = count_reads(filled)
    assert filled.count_objects() == N
    assert filled.count_objects({"type": "scan"}) == len([i for i in range(N) if i % 3 == 1])
    assert filled.count_objects({"custom_metadata.exposure_ms": {"$gte": 45}}) == N // 50 * 5
    assert counts["docs_get"] == 0 and counts["scanned"] == 0, counts
    assert filled.count_objects({"type": {"$ne": "scan"}}) == N - len([i for i in range(N) if i % 3 == 1])


def test_counter_follows_inserts_deletes_and_rollbacks(embedded_store: microblob.Store) -> None:
    store = embedded_store
    ids = [store.save_or_update_object(b"x", type="t") for _ in range(5)]
    store.save_or_update_object(b"y", object_id=ids[0], control_version=True)
    store.delete_object(ids[1])
    assert store.count_objects() == 4
    assert store.query(collection="object_history", filter=None) != []
    coll = store.backend.collection("objects")

    def failing() -> None:
        coll.insert_one({"_id": "rolled-back"})
        raise RuntimeError("abort")

    with pytest.raises(RuntimeError):
        store.backend.atomic(failing)
    assert store.count_objects() == 4 == len(store.query(None))


def test_arrays_and_unkeyable_values_never_change_a_result(embedded_store: microblob.Store) -> None:
    coll = embedded_store.backend.collection("things")
    docs = [{"_id": 0, "a": [0, 10]}, {"_id": 1, "a": 5}, {"_id": 2, "a": {"x": 1}}, {"_id": 3, "a": "s" * 400},
            {"_id": 4}, {"_id": 5, "a": None}, {"_id": 6, "a": [None, 3]}, {"_id": 7, "a": [[5]]},
            {"_id": 8, "a": "t"}, {"_id": 9, "a": [{"b": 5}]}]
    filters = [{"a": {"$gt": 1, "$lt": 5}}, {"a": 5}, {"a": None}, {"a": {"$gte": "s"}}, {"a": {"$in": [3, "t"]}},
               {"a": {"$lt": 100}}, {"a.b": 5}, {"a": {"$gt": 1}}]
    for doc in docs:
        coll.insert_one(doc)
    expected = {str(f): sorted(d["_id"] for d in coll.find(f)) for f in filters}  # scans: no index yet
    sorts = {str(s): [d["_id"] for d in coll.find({}, sort=s)] for s in ([("a", 1)], [("a", -1)])}
    coll.create_index("a")
    coll.create_index("a.b")
    for f in filters:
        assert sorted(d["_id"] for d in coll.find(f)) == expected[str(f)], f
        assert coll.count_documents(f) == len(expected[str(f)]), f
    for s in ([("a", 1)], [("a", -1)]):
        assert [d["_id"] for d in coll.find({}, sort=s)] == sorts[str(s)]
        assert coll.explain({}, sort=s)["plan"] == "COLLSCAN"  # an array and sub-documents: no index order


@pytest.mark.parametrize("seed", range(6))
def test_random_indexes_filters_and_pages_match_a_scan(embedded_store: microblob.Store, seed: int) -> None:
    """Random data, random indexes and random queries: each answer equals the plain scan's, in order
    when sorted (ties included: a page through an index is the same page a full sort gives)."""
    rng = random.Random(seed)
    coll = embedded_store.backend.collection(f"random{seed}")
    values = [None, 0, 1, 1.0, 2.5, -3, "a", "b", "ab", True, False, T0, T0 + dt.timedelta(days=1), [1, 2], []]

    def some_value() -> Any:
        return rng.choice(values)

    docs = []
    for i in range(120):
        doc: dict[str, Any] = {"_id": i}
        for field in ("a", "b", "c"):
            if rng.random() < 0.85:
                doc[field] = some_value()
        if rng.random() < 0.5:
            doc["d"] = {"e": some_value()}
        docs.append(doc)
    rng.shuffle(docs)
    for doc in docs:
        coll.insert_one(doc)
    for keys in rng.sample([["a"], ["b"], [("a", 1), ("b", 1)], ["d.e"], [("c", -1)], [("b", 1), ("c", 1)]], 3):
        coll.create_index(keys)
    ops = ["$eq", "$gt", "$gte", "$lt", "$lte", "$in", "$ne"]
    scalars = [v for v in values if not isinstance(v, list)]
    for _ in range(60):
        flt: dict[str, Any] = {}
        for field in rng.sample(["a", "b", "c", "d.e"], rng.randint(0, 2)):
            op = rng.choice(ops)
            if op == "$in":
                flt[field] = {"$in": rng.sample(scalars, 2)}
            elif op == "$eq" and rng.random() < 0.5:
                flt[field] = rng.choice(scalars)
            else:
                flt[field] = {op: rng.choice(scalars)}
        sort = rng.choice([None, [("a", 1)], [("a", -1)], [("b", 1), ("c", 1)], [("c", -1)], [("d.e", 1)],
                           [("a", 1), ("b", -1)]])
        skip, limit = rng.randint(0, 3), rng.choice([0, 1, 5, 30])
        predicate = compile_filter(flt)
        in_order = sorted(docs, key=lambda d: d["_id"])  # the scan's order: _id keys of small ints
        matching = [d for d in in_order if predicate(d)]
        got = coll.find(flt, sort=sort, skip=skip, limit=limit)
        if sort:
            assert got == sort_documents(matching, sort, skip=skip, limit=limit), (flt, sort, skip, limit)
        else:
            ids = [d["_id"] for d in got]
            assert len(set(ids)) == len(ids) == len(matching[skip: skip + limit if limit else None])
            assert set(ids) <= {d["_id"] for d in matching}
            if not skip and not limit:
                assert sorted(ids) == [d["_id"] for d in matching]
        assert coll.count_documents(flt) == len(matching), flt


def test_get_objects_newest_first_walks_the_index(filled: microblob.Store, count_reads: Any, make_server: Any,
                                                  asgi: Any) -> None:
    """The browse page's request (GET /objects/?sort=-updated_at,object_id&limit=51, also by type) reads
    about one page of documents, not the collection: twice (the page's ids, then its documents a few at
    a time as the body streams, so a page of huge metadata is never held whole)."""
    client = asgi(make_server({}, store=filled))
    counts = count_reads(filled)
    listed = client.get("/objects/", params={"sort": "-updated_at,object_id", "limit": "51"})
    assert listed.status_code == 200 and len(listed.json()) == 51
    assert counts["scanned"] == 0 and counts["docs_get"] <= 52 + 51, counts
    newest = max(filled.query(None), key=lambda d: d["updated_at"])
    assert listed.json()[0]["object_id"] == newest["_id"]
    counts.update({key: 0 for key in counts})
    typed = client.get("/objects/", params={"sort": "-updated_at,object_id", "limit": "51",
                                            "filter": '{"type": "scan"}'})
    assert typed.status_code == 200 and len(typed.json()) == 51
    assert all(o["type"] == "scan" for o in typed.json())
    assert counts["scanned"] == 0 and counts["docs_get"] <= N // 3 + 1 + 51, counts


def test_history_lookups_use_object_id_version(embedded_store: microblob.Store, count_reads: Any) -> None:
    store = embedded_store
    oid = store.save_or_update_object(b"v0")
    for i in range(5):
        store.save_or_update_object(f"v{i + 1}".encode(), object_id=oid, control_version=True)
    other = store.save_or_update_object(b"w0")
    store.save_or_update_object(b"w1", object_id=other, control_version=True)
    plan = store.explain({"object_id": oid}, sort=[("version", -1)], collection="object_history")
    assert plan["index"] == "object_id_1_version_1" and plan["sort"] == "index order", plan
    counts = count_reads(store)
    got = store.query({"object_id": oid}, sort=[("version", -1)], collection="object_history")
    assert [d["version"] for d in got] == [4, 3, 2, 1, 0]
    assert counts["scanned"] == 0 and counts["docs_get"] == 5, counts


def test_a_backward_walk_over_long_runs_of_ties_gives_a_full_sorts_order(embedded_store: microblob.Store) -> None:
    """Runs longer than the walk buffers (256 entries) are read forwards from their first entry: the
    page is still the one a stable descending sort of a scan gives (ties in id order)."""
    coll = embedded_store.backend.collection("objects")
    ids = [f"t{(i * 37) % 700:04d}" for i in range(700)]  # inserted out of id order
    embedded_store.backend.atomic(lambda: [coll.insert_one({"_id": oid, "k": int(oid[1:]) % 2}) for oid in ids])
    scanned = coll.find({})
    embedded_store.create_index("k")
    assert coll.explain(sort=[("k", -1)], limit=10)["direction"] == "backward"
    for skip, limit in [(0, 10), (0, 0), (340, 20), (349, 3), (600, 0)]:
        got = coll.find({}, sort=[("k", -1)], skip=skip, limit=limit)
        assert got == sort_documents(scanned, [("k", -1)], skip=skip, limit=limit), (skip, limit)
