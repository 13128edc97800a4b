"""User-defined indexes through the public API: create/list/drop/explain on every backend, persisted in
the file, built over existing documents, bad input refused with nothing changed, and the order-preserving
key encoding they rest on."""

from __future__ import annotations

import datetime as dt
import math
import random
from pathlib import Path

import pytest

import microblob
from microblob import InvalidArgument
from microblob.engine.index_keys import encode
from microblob.engine.query import compare_values

UTC = dt.timezone.utc  # noqa: UP017 - importable on 3.10


def _seed(store: microblob.Store, n: int = 60) -> list[str]:
    ids = []
    for i in range(n):
        ids.append(store.save_or_update_object(
            f"payload {i}".encode(), type=["image", "scan", "model"][i % 3],
            custom_metadata={"exposure_ms": i % 20, "label": f"l{i % 7}"}, save_data_in_collection=True))
    return ids


def test_create_list_explain_drop(store: microblob.Store) -> None:
    _seed(store)
    name = store.create_index("custom_metadata.exposure_ms")
    assert name == "custom_metadata.exposure_ms_1"
    assert {"name": name, "key": [("custom_metadata.exposure_ms", 1)], "unique": False} in store.list_indexes()
    assert store.create_index("custom_metadata.exposure_ms") == name  # the same index again: found, not an error
    plan = store.explain({"custom_metadata.exposure_ms": {"$gte": 5, "$lt": 8}}, limit=50)
    assert plan["plan"] == "IXSCAN" and plan["index"] == name, plan
    got = store.query({"custom_metadata.exposure_ms": {"$gte": 5, "$lt": 8}}, limit=50)
    assert sorted(d["custom_metadata"]["exposure_ms"] for d in got) == sorted([5, 6, 7] * 3)
    compound = store.create_index([("type", 1), ("custom_metadata.label", -1)], name="type_label")
    assert compound == "type_label"
    assert [s["key"] for s in store.list_indexes() if s["name"] == "type_label"] == \
        [[("type", 1), ("custom_metadata.label", -1)]]
    store.drop_index(name)
    assert name not in [s["name"] for s in store.list_indexes()]
    assert store.explain({"custom_metadata.exposure_ms": 3})["index"] != name
    assert len(store.query({"custom_metadata.exposure_ms": 3})) == 3  # same answer, by another path


def test_bad_index_input_is_refused_and_changes_nothing(store: microblob.Store) -> None:
    _seed(store, 9)
    store.create_index("custom_metadata.label", name="by_label")
    before = store.list_indexes()
    bad = [
        ("a..b", {}), ("$where", {}), ("a.$b", {}), ("", {}), ([], {}), ([("a", 2)], {}), ([("a", True)], {}),
        ([("a", 1), ("a", -1)], {}), (5, {}), ("ok", {"name": ""}), ("ok", {"name": "x" * 200}),
        ("ok", {"unique": "yes"}),
    ]
    for keys, kwargs in bad:
        with pytest.raises(InvalidArgument):
            store.create_index(keys, **kwargs)
    with pytest.raises(InvalidArgument, match="by_label"):  # the name is taken by other keys
        store.create_index("custom_metadata.other", name="by_label")
    with pytest.raises(InvalidArgument, match="by_label"):  # these keys have a name already
        store.create_index("custom_metadata.label", name="another")
    with pytest.raises(InvalidArgument, match="no index named 'nope'"):
        store.drop_index("nope")
    with pytest.raises(InvalidArgument):
        store.create_index("type", collection="nope")
    assert store.list_indexes() == before


def test_indexes_persist_and_are_built_over_existing_documents(lmdb_path: Path) -> None:
    with microblob.connect(lmdb_path) as store:
        _seed(store)
        store.create_index("custom_metadata.exposure_ms")
    with microblob.connect(lmdb_path) as store:
        assert "custom_metadata.exposure_ms_1" in [s["name"] for s in store.list_indexes()]
        plan = store.explain({"custom_metadata.exposure_ms": 4})
        assert plan["index"] == "custom_metadata.exposure_ms_1" and plan["count"].startswith("stored counters")
        assert store.count_objects({"custom_metadata.exposure_ms": 4}) == 3
        store.drop_index("custom_metadata.exposure_ms_1")
    with microblob.connect(lmdb_path) as store:
        assert "custom_metadata.exposure_ms_1" not in [s["name"] for s in store.list_indexes()]


def test_an_index_of_the_old_entry_format_is_rebuilt(lmdb_path: Path) -> None:
    """A file whose index specs predate ordered entries (no "v") is upgraded at the next open."""
    from microblob.engine.kvdocs import _INDEXES_KEY, _pack

    with microblob.connect(lmdb_path) as store:
        _seed(store, 12)
        backend = store.backend

        def downgrade(txn) -> None:  # type: ignore[no-untyped-def]
            specs = backend._index_specs(txn)
            for spec in specs["objects"]:
                spec.pop("v")
            txn.put("meta", _INDEXES_KEY, _pack(specs))
            txn.delete("meta", b"count" + _pack("objects"))

        backend.engine.write(downgrade)
        assert store.explain({"type": "image"})["plan"] == "COLLSCAN"  # an old index is never trusted
        assert len(store.query({"type": "image"})) == 4
    with microblob.connect(lmdb_path) as store:
        assert store.explain({"type": "image"})["index"] == "type_1"
        assert len(store.query({"type": "image"})) == 4
        assert store.count_objects() == 12


def test_unique_index(embedded_store: microblob.Store) -> None:
    coll = embedded_store.backend.collection("things")
    coll.insert_one({"_id": 1, "k": "a"})
    coll.insert_one({"_id": 2, "k": "a"})
    with pytest.raises(microblob.DuplicateKey):
        coll.create_index("k", unique=True)
    assert coll.list_indexes() == []  # the failed build left nothing
    coll.delete_one({"_id": 2})
    coll.create_index("k", unique=True)
    with pytest.raises(microblob.DuplicateKey):
        coll.insert_one({"_id": 3, "k": "a"})
    coll.insert_one({"_id": 3, "k": "b"})


# --- the encoding ---------------------------------------------------------------------------------

SAMPLES = [None, -math.inf, -2.5, -1, 0, 0.0, -0.0, 0.5, 1, 1.0, 2**53, 2**53 + 1, float(2**60), 2**60 + 1,
           2**63 - 1, math.inf, "", "a", "a\x00", "a\x00b", "ab", "b", "é", "\U0001f600", b"", b"a", b"ab", b"b",
           False, True, dt.datetime(1969, 12, 31, 23, 59, 59, tzinfo=UTC), dt.datetime(2024, 1, 1, tzinfo=UTC),
           dt.datetime(2024, 1, 1, 0, 0, 0, 1, tzinfo=UTC), math.nan]


def test_keys_order_and_equal_as_mongodb_compares() -> None:
    rng = random.Random(7)
    values = SAMPLES + [rng.uniform(-1e6, 1e6) for _ in range(50)] + [rng.randint(-2**63, 2**63 - 1) for _ in range(50)]
    for a in values:
        for b in values:
            ka, kb = encode(a), encode(b)
            assert ka is not None and kb is not None
            assert ((ka > kb) - (ka < kb)) == compare_values(a, b), (a, b)


def test_values_without_a_key() -> None:
    assert encode({"a": 1}) is None and encode([1]) is None
    assert encode("x" * 500) is None  # too long for an LMDB key: the document is re-checked on every lookup


def test_mongita_keeps_index_specs_across_opens(tmp_path: Path) -> None:
    uri = f"mongita://{tmp_path / 'm'}"
    with microblob.connect(uri) as store:
        _seed(store, 6)
        store.create_index("custom_metadata.exposure_ms")
    with microblob.connect(uri) as store:
        assert store.explain({"custom_metadata.exposure_ms": 1})["index"] == "custom_metadata.exposure_ms_1"
        assert store.count_objects({"custom_metadata.exposure_ms": 1}) == 1
        store.drop_index("custom_metadata.exposure_ms_1")
    with microblob.connect(uri) as store:
        assert "custom_metadata.exposure_ms_1" not in [s["name"] for s in store.list_indexes()]
