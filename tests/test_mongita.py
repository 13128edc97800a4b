"""The Mongita backend: Mongita only persists and fetches documents by `_id`; microblob evaluates the
rest. The whole store suite also runs on it through the parametrized `store` fixture."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import microblob
from microblob import InvalidDocument, StorageError
from microblob.engine.mongita_backend import collection_name, mongita_name


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    return tmp_path / "mongita"


def open_mongita(directory: Path) -> microblob.Store:
    return microblob.connect(f"mongita://{directory}", chunk_size=100_000)


def test_collection_names_map_reversibly_into_what_mongita_accepts() -> None:
    assert mongita_name("fs.files") == "fs--files"
    assert mongita_name("object_history") == "object_history"
    assert mongita_name("a-b") == "a-2db" and mongita_name("_x_") == "-5fx-5f"
    assert collection_name("fs--pending") == "fs.pending"
    with pytest.raises(microblob.InvalidArgument):
        collection_name("fs-files")


# at most 5 characters: even 5 four-byte characters map to 60 of Mongita's 64
@given(st.lists(st.text(st.characters(max_codepoint=0x7F) | st.sampled_from("é€𐀀"), min_size=1, max_size=5),
                min_size=2, max_size=6, unique=True))
def test_mapped_names_never_collide(names: list[str]) -> None:
    from mongita.common import ok_name, secure_filename

    mapped = [mongita_name(n) for n in names]
    assert len(set(mapped)) == len(names)
    for name, m in zip(names, mapped, strict=True):
        assert collection_name(m) == name
        # Mongita accepts it, and keeps it as is on disk, where the path is "<database>.<collection>"
        assert ok_name(m) and secure_filename(f"microblob.{m}") == f"microblob.{m}"


def test_everything_survives_a_reopen(directory: Path) -> None:
    with open_mongita(directory) as store:
        with microblob.Workflow(name="run", store=store):
            object_id = store.save_or_update_object(b"a" * 250_000, type="image", custom_metadata={"$x": 1})
        store.save_or_update_object(b"b", object_id=object_id, control_version=True, save_data_in_collection=True)
        when = dt.datetime(2024, 1, 2, tzinfo=dt.timezone.utc)
        store.backend.collection("things").insert_one({"_id": 7, "when": when})
    with open_mongita(directory) as store:
        obj = store.get_blob_object(object_id)
        assert (obj.version, obj.data, obj.prev_version) == (1, b"b", 0)
        assert store.get_blob_object(object_id, 0).data == b"a" * 250_000
        assert store.get_blob_object(object_id, 0).custom_metadata == {"$x": 1}
        assert obj.created_at.tzinfo is not None
        assert len(store.query({}, collection="workflows")) == 1
        thing = store.backend.collection("things").find_one({"_id": 7.0})  # numeric ids round-trip
        assert thing == {"_id": 7, "when": dt.datetime(2024, 1, 2, tzinfo=dt.timezone.utc)}
        assert store.verify().ok


def test_plain_mongita_sees_microblob_documents(directory: Path) -> None:
    from mongita import MongitaClientDisk

    with open_mongita(directory) as store:
        object_id = store.save_or_update_object(b"x" * 150_000, type="scan")
        file_id = store.get_blob_object(object_id).file_id
    db = MongitaClientDisk(str(directory)).microblob
    assert db.objects.find_one({"_id": object_id})["type"] == "scan"
    assert db["fs--files"].find_one({"_id": file_id})["length"] == 150_000
    # _microblob_indexes: the index specs (the documents stay in the collections named after them)
    assert sorted(db.list_collection_names()) == ["_microblob_indexes", "fs--files", "fs--pending", "objects"]
    assert (directory / "chunks.db").exists()


def test_filters_mongita_gets_wrong_are_right_here(store_factory: Callable) -> None:
    store = store_factory("mongita")
    coll = store.backend.collection("things")
    for i in range(6):
        coll.insert_one({"_id": f"d{i}", "n": i, "tag": "even" if i % 2 == 0 else "odd", "version": i % 3})
    assert sorted(d["_id"] for d in coll.find({"$or": [{"n": 1}, {"n": 4}]})) == ["d1", "d4"]
    both = {"$and": [{"n": {"$gt": 1}}, {"tag": "odd"}]}
    assert [d["_id"] for d in coll.find(both, sort=[("n", 1)])] == ["d3", "d5"]
    assert coll.find({"_id": "d2", "n": 99}) == []  # Mongita alone ignores n when _id is given
    assert coll.replace_one({"_id": "d2", "version": 0}, {"n": 20}) == 0  # a compare-and-swap that must lose
    assert coll.find_one({"_id": "d2"})["n"] == 2
    assert coll.replace_one({"_id": "d2", "version": 2}, {"n": 20, "version": 3}) == 1
    assert [d["_id"] for d in coll.find({"tag": {"$regex": "^ev"}, "n": {"$exists": True, "$nin": [0]}})] == ["d4"]


def test_documents_mongita_cannot_hold_are_refused_up_front(store_factory: Callable) -> None:
    store = store_factory("mongita")
    coll = store.backend.collection("things")
    with pytest.raises(InvalidDocument):
        coll.insert_one({"_id": "a", "$top": 1})
    with pytest.raises(InvalidDocument):
        coll.insert_one({"_id": "a", "": 1})
    assert coll.count_documents({}) == 0


def test_one_process_at_a_time(directory: Path, run_python: Callable) -> None:
    with open_mongita(directory):
        with pytest.raises(StorageError, match="already open in this process"):
            open_mongita(directory)
        code = ("import sys, microblob\n"
                "try:\n    microblob.connect(sys.argv[1])\nexcept microblob.StorageError as e:\n    print(e)")
        out = run_python(code, f"mongita://{directory}").stdout
        assert "open in another process" in out
    with open_mongita(directory) as store:  # closed: free again
        assert store.blob_object_query({}) == []


def test_move_mongita_data_onto_the_embedded_default(directory: Path, tmp_path: Path) -> None:
    with open_mongita(directory) as store:
        object_id = store.save_or_update_object(b"legacy", custom_metadata={"from": "mongita"})
        store.save_or_update_object(b"legacy v1", object_id=object_id, control_version=True)
    report = microblob.copy(f"mongita://{directory}", tmp_path / "microblob.db")
    assert report.ok and report.versions_copied == 2
    with microblob.connect(tmp_path / "microblob.db") as store:
        assert [h["version"] for h in store.get_object_history(object_id)] == [1, 0]
        assert store.get_blob_object(object_id, 0).data == b"legacy"
