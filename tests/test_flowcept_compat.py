"""Flowcept 1.0.3's object/blob API through `microblob.flowcept`, on every backend.

The first part restates, in our own words, what Flowcept's own tests check of that API
(tests/api/db_api_test.py and the torch save/load test of tests/instrumentation_tests in
github.com/ORNL/flowcept at v1.0.3): code written for Flowcept runs unchanged after
``from microblob.flowcept import Flowcept``. The second part covers what microblob decides differently
(pickle, dict payloads), `object_type` everywhere, and documents written in Flowcept's own layout."""

from __future__ import annotations

import pickle
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

import microblob
from microblob import InvalidArgument
from microblob.flowcept import PICKLE_REFUSED, Flowcept, FlowceptDB


class Payload:
    def __init__(self) -> None:
        self.a, self.b = 1, 2


@pytest.fixture
def fc(store: microblob.Store) -> Iterator[type[Flowcept]]:
    Flowcept.configure(store)
    yield Flowcept
    Flowcept._db = None
    Flowcept.current_workflow_id = None


def latest_doc(object_id: str) -> dict[str, Any]:
    docs = Flowcept.db.query(filter={"object_id": object_id}, collection="objects")
    assert len(docs) == 1
    return docs[0]


# -- Flowcept 1.0.3's object API, as its tests use it ---------------------------------------------------------


def test_pickled_bytes_saved_in_the_document_come_back(fc: Any) -> None:
    oid = Flowcept.db.insert_or_update_object(pickle.dumps(Payload()), save_data_in_collection=True)
    restored = pickle.loads(latest_doc(oid)["data"])  # noqa: S301 - our own bytes, just written
    assert isinstance(restored, Payload) and (restored.a, restored.b) == (1, 2)


def test_query_and_get_inside_a_workflow(fc: Any) -> None:
    with Flowcept(workflow_name="blob_demo"):
        oid = Flowcept.insert_or_update_object(
            object=b"blob-content", task_id="t1", object_type="artifact", custom_metadata={"owner": "tests"},
            save_data_in_collection=True)
        wf = Flowcept.current_workflow_id
        assert wf is not None
        docs = Flowcept.db.blob_object_query(filter={"object_id": oid})
        assert len(docs) == 1 and docs[0]["object_id"] == oid and docs[0]["data"] == b"blob-content"
        blob = Flowcept.db.get_blob_object(oid)
        assert isinstance(blob, microblob.BlobObject)
        assert (blob.object_id, blob.task_id, blob.workflow_id, blob.object_type) == (oid, "t1", wf, "artifact")
        assert blob.custom_metadata["owner"] == "tests" and blob.version == 0
    assert Flowcept.current_workflow_id is None


def test_each_save_without_control_version_bumps_the_version(fc: Any) -> None:
    oid = str(uuid.uuid4())
    Flowcept.db.insert_or_update_object(b"v0", object_id=oid, object_type="artifact", save_data_in_collection=True)
    assert Flowcept.db.get_blob_object(oid).version == 0 and latest_doc(oid)["data"] == b"v0"
    Flowcept.db.insert_or_update_object(b"v1", object_id=oid, object_type="artifact", save_data_in_collection=True)
    assert Flowcept.db.get_blob_object(oid).version == 1 and latest_doc(oid)["data"] == b"v1"


def test_gridfs_storage_keeps_a_file_id_and_no_data(fc: Any) -> None:
    with Flowcept(workflow_name="gridfs"):
        wf = Flowcept.current_workflow_id
        oid = Flowcept.insert_or_update_object(object=b"gridfs-v0", task_id="t", object_type="artifact",
                                               save_data_in_collection=False)
        blob = Flowcept.db.get_blob_object(oid)
        assert blob.workflow_id == wf and blob.version == 0
        doc = latest_doc(oid)
        assert "data" not in doc and "grid_fs_file_id" in doc
        assert Flowcept.db._dao().get_file_data(doc["grid_fs_file_id"]) == b"gridfs-v0"


def test_gridfs_update_points_at_the_new_file(fc: Any) -> None:
    with Flowcept(workflow_name="gridfs-update"):
        wf = Flowcept.current_workflow_id
        oid = str(uuid.uuid4())
        Flowcept.insert_or_update_object(object=b"first", object_id=oid, object_type="artifact")
        first = latest_doc(oid)
        assert Flowcept.db._dao().get_file_data(first["grid_fs_file_id"]) == b"first"
        Flowcept.insert_or_update_object(object=b"second", object_id=oid, object_type="artifact")
        blob = Flowcept.db.get_blob_object(oid)
        assert blob.workflow_id == wf and blob.version == 1
        second = latest_doc(oid)
        assert "data" not in second
        assert Flowcept.db._dao().get_file_data(second["grid_fs_file_id"]) == b"second"


@pytest.mark.parametrize("in_collection", [True, False])
def test_fingerprints_and_equality(fc: Any, in_collection: bool) -> None:
    with Flowcept(workflow_name="fingerprints"):
        a = Flowcept.insert_or_update_object(object=b"same", save_data_in_collection=in_collection)
        b = Flowcept.insert_or_update_object(object=b"same", save_data_in_collection=in_collection)
        c = Flowcept.insert_or_update_object(object=b"other", save_data_in_collection=in_collection)
        fp = Flowcept.db.get_blob_fingerprint(a)
        assert fp["data_hash_algo"] == "sha256" and fp["data_sha256"] and fp["object_size_bytes"] == 4
        assert fp["storage_type"] == ("in_object" if in_collection else "gridfs")
        assert Flowcept.db.blob_objects_equal(a, b)
        assert not Flowcept.db.blob_objects_equal(a, c)


@pytest.mark.parametrize(("kind", "save", "get", "query"), [
    ("ml_model", "insert_or_update_ml_model", "get_ml_model", "ml_model_query"),
    ("dataset", "insert_or_update_dataset", "get_dataset", "dataset_query"),
])
def test_ml_model_and_dataset_helpers(fc: Any, kind: str, save: str, get: str, query: str) -> None:
    with Flowcept(workflow_name=f"{kind}-helpers"):
        oid = getattr(Flowcept, save)(object=b"bytes", task_id="t", save_data_in_collection=True)
        wf = Flowcept.current_workflow_id
        blob = getattr(Flowcept.db, get)(oid)
        assert (blob.object_id, blob.object_type, blob.task_id, blob.workflow_id) == (oid, kind, "t", wf)
        docs = getattr(Flowcept.db, query)(filter={"object_id": oid, "object_type": kind})
        assert len(docs) == 1 and docs[0]["data"] == b"bytes" and docs[0]["object_type"] == kind


def test_the_current_workflow_is_the_default(fc: Any) -> None:
    with Flowcept(workflow_name="default-wf"):
        wf = Flowcept.current_workflow_id
        oid = Flowcept.insert_or_update_object(object=b"x", object_type="artifact", save_data_in_collection=True)
    assert Flowcept.db.get_blob_object(oid).workflow_id == wf


def test_created_at_stays_updated_at_moves(fc: Any) -> None:
    oid = Flowcept.insert_or_update_object(object=b"a", save_data_in_collection=True)
    created = latest_doc(oid)["created_at"]
    assert "updated_at" in latest_doc(oid)
    Flowcept.insert_or_update_object(object=b"b", object_id=oid, save_data_in_collection=True)
    doc = latest_doc(oid)
    assert doc["created_at"] == created and doc["updated_at"] >= created


def test_control_version_first_insert_has_no_history(fc: Any) -> None:
    oid = Flowcept.insert_or_update_object(object=b"cv-v1", task_id="t", save_data_in_collection=True,
                                           control_version=True)
    doc = latest_doc(oid)
    assert doc["version"] == 0 and doc["prev_version"] is None and "created_at" in doc
    assert Flowcept.db.query(filter={"object_id": oid}, collection="object_history") == []
    assert Flowcept.db.get_blob_object(oid).data == b"cv-v1"


@pytest.mark.parametrize("in_collection", [True, False])
def test_control_version_keeps_the_old_version_readable(fc: Any, in_collection: bool) -> None:
    oid = Flowcept.insert_or_update_object(object=b"one", save_data_in_collection=in_collection,
                                           control_version=True)
    Flowcept.insert_or_update_object(object=b"two", object_id=oid, save_data_in_collection=in_collection,
                                     control_version=True)
    latest, old = Flowcept.db.get_blob_object(oid), Flowcept.db.get_blob_object(oid, version=0)
    assert (latest.version, latest.data, old.version, old.data) == (1, b"two", 0, b"one")
    history = Flowcept.db.query(filter={"object_id": oid}, collection="object_history")
    assert [h["version"] for h in history] == [0]


def test_object_history_is_metadata_newest_first(fc: Any) -> None:
    oid = Flowcept.insert_or_update_object(object=b"lv-v1", save_data_in_collection=True, control_version=True)
    Flowcept.insert_or_update_object(object=b"lv-v2", object_id=oid, save_data_in_collection=True,
                                     control_version=True)
    versions = Flowcept.db.get_object_history(oid)
    assert [v["version"] for v in versions] == [1, 0]
    assert versions[0]["storage_type"] == "in_object"
    assert "data" not in versions[0] and "grid_fs_file_id" not in versions[0]
    assert Flowcept.db.list_object_versions(oid) == versions


def test_racing_versioned_writers_each_get_a_version(fc: Any) -> None:
    """Flowcept's test forces one lost compare-and-swap; here writers really race and none is lost."""
    oid = Flowcept.insert_or_update_object(object=b"base", save_data_in_collection=True, control_version=True)
    errors: list[BaseException] = []

    def write(i: int) -> None:
        try:
            Flowcept.insert_or_update_object(object=b"w%d" % i, object_id=oid, save_data_in_collection=True,
                                             control_version=True)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert Flowcept.db.get_blob_object(oid).version == 4
    assert sorted(v["version"] for v in Flowcept.db.get_object_history(oid)) == [0, 1, 2, 3, 4]


@pytest.mark.torch
def test_torch_model_save_and_load(fc: Any) -> None:
    torch = pytest.importorskip("torch")
    model = torch.nn.Linear(3, 2)
    oid = Flowcept.insert_or_update_torch_model(model, custom_metadata={"run": 1})
    fresh = torch.nn.Linear(3, 2)
    doc = Flowcept.db.load_torch_model(model=fresh, object_id=oid)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values(),
                                                  strict=True))
    assert doc["object_type"] == "ml_model" and doc["custom_metadata"]["class"] == "Linear"
    assert fresh._flowcept_model_object["object_id"] == oid


# -- what microblob decides, and object_type everywhere ---------------------------------------------------------


def test_pickle_true_is_refused_saying_to_pickle_explicitly(fc: Any) -> None:
    with pytest.raises(InvalidArgument) as e:
        Flowcept.insert_or_update_object(object=Payload(), pickle=True, save_data_in_collection=True)
    assert str(e.value) == PICKLE_REFUSED and "pickle.dumps" in str(e.value) and "code" in str(e.value)
    assert Flowcept.db.blob_object_query({}) == []


@pytest.mark.parametrize("value", [{"lr": 0.1, "layers": [3, 2], "name": "ünï"}, [1, "two", None], "plain text"])
def test_dict_list_and_str_payloads_round_trip(fc: Any, value: Any) -> None:
    oid = Flowcept.insert_or_update_object(object=value, save_data_in_collection=True)
    assert latest_doc(oid)["data"] == value
    blob = Flowcept.db.get_blob_object(oid)
    assert blob.content_type in ("application/json", "text/plain; charset=utf-8")


def test_a_dict_that_is_not_json_is_refused(fc: Any) -> None:
    with pytest.raises(InvalidArgument, match="JSON"):
        Flowcept.insert_or_update_object(object={"when": object()})
    with pytest.raises(InvalidArgument):
        Flowcept.insert_or_update_object(object={"x": float("nan")})


def test_object_type_filters_on_the_plain_store(store: microblob.Store) -> None:
    store.save_or_update_ml_model(b"m", object_id="m1")
    store.save_or_update_object(b"d", object_id="d1", object_type="dataset")
    assert [o.object_id for o in store.ml_model_query({"object_type": "ml_model"})] == ["m1"]
    assert [o.object_id for o in store.blob_object_query({"object_type": "dataset"})] == ["d1"]
    assert [o.object_id for o in store.blob_object_query({"type": "dataset"})] == ["d1"]
    assert {o.object_id for o in store.blob_object_query({"object_type": {"$ne": "dataset"}})} == {"m1"}
    assert store.count_objects({"object_type": {"$in": ["ml_model", "dataset"]}}) == 2
    obj = store.get_blob_object("m1")
    assert obj.object_type == "ml_model" == obj["object_type"]
    assert [d["_id"] for d in store.query({"object_type": "ml_model"})] == ["m1"]


def test_older_save_or_update_spellings(fc: Any) -> None:
    a = Flowcept.db.save_or_update_object(b"a", save_data_in_collection=True)
    m = Flowcept.db.save_or_update_ml_model(b"m")
    d = Flowcept.db.save_or_update_dataset(b"d")
    assert [Flowcept.db.get_blob_object(i).object_type for i in (a, m, d)] == [None, "ml_model", "dataset"]
    with pytest.raises(InvalidArgument):
        Flowcept.db.save_or_update_ml_model(b"x", object_type="dataset")


def test_unknown_ids_and_versions_are_none(fc: Any) -> None:
    assert Flowcept.db.get_blob_object("nope") is None
    oid = Flowcept.insert_or_update_object(object=b"x")
    assert Flowcept.db.get_blob_object(oid, version=7) is None


def test_collections_microblob_does_not_keep_are_refused(fc: Any) -> None:
    with pytest.raises(InvalidArgument, match="tasks"):
        Flowcept.db.query(filter={})  # Flowcept's default collection
    with pytest.raises(InvalidArgument, match="aggregation"):
        Flowcept.db.query(collection="objects", aggregation=[{"$group": {}}])


def test_a_workflow_is_recorded(fc: Any, store: microblob.Store) -> None:
    with Flowcept(workflow_name="recorded", workflow_description="a run") as f:
        wf = f.current_workflow_id
    doc = store.get_workflow(wf)
    assert doc["name"] == "recorded" and doc["status"] == "completed"
    assert Flowcept.db.query({"workflow_id": wf}, collection="workflows")[0]["name"] == "recorded"


def test_configure_takes_a_uri(tmp_path: Any) -> None:
    db = Flowcept.configure(str(tmp_path / "fc.db"))
    try:
        assert isinstance(db, FlowceptDB) and Flowcept.db is db
        oid = Flowcept.insert_or_update_object(object=b"on disk")
        assert Flowcept.db.get_blob_object(oid).data == b"on disk"
    finally:
        db.close()
        Flowcept._db = None


# -- documents in Flowcept's own MongoDB layout ------------------------------------------------------------------


def _flowcept_doc(object_id: str, version: int, **payload: Any) -> dict[str, Any]:
    """A document as Flowcept's MongoDB DAO writes it: its own `_id`, epoch-float times, its field names."""
    return {"_id": uuid.uuid4().hex, "object_id": object_id, "version": version,
            "prev_version": version - 1 if version else None, "created_at": 1_700_000_000.5,
            "updated_at": 1_700_000_100.25 + version, "task_id": "t", "workflow_id": "wf", "object_type": "ml_model",
            "custom_metadata": {"k": 1}, "tags": ["a"], "data_hash_algo": "sha256", **payload}


def _inline_payload(data: bytes) -> dict[str, Any]:
    import hashlib

    return {"data": data, "data_sha256": hashlib.sha256(data).hexdigest(), "object_size_bytes": len(data)}


def _file_payload(store: microblob.Store, data: bytes) -> dict[str, Any]:
    import hashlib

    file_id = store.files.upload_from_stream("flowcept", data)
    return {"grid_fs_file_id": file_id, "data_sha256": hashlib.sha256(data).hexdigest(),
            "object_size_bytes": len(data)}


def test_flowcept_layout_documents_are_read_and_verified(store: microblob.Store) -> None:
    store._objects.insert_one(_flowcept_doc("fc-inline", 1, **_inline_payload(b"new bytes")))
    store._history.insert_one(_flowcept_doc("fc-inline", 0, **_inline_payload(b"old bytes")))
    store._objects.insert_one(_flowcept_doc("fc-file", 0, **_file_payload(store, b"file bytes" * 1000)))
    obj = store.get_blob_object("fc-inline")
    assert (obj.version, obj.data, obj.object_type, obj.size) == (1, b"new bytes", "ml_model", 9)
    assert obj.created_at == 1_700_000_000.5
    assert store.get_blob_object("fc-inline", 0).data == b"old bytes"
    assert store.get_blob_object("fc-file").data == b"file bytes" * 1000
    assert [h["version"] for h in store.get_object_history("fc-inline")] == [1, 0]
    assert {o.object_id for o in store.ml_model_query({"object_type": "ml_model"})} == {"fc-inline", "fc-file"}
    assert store.blob_objects_equal("fc-file", "fc-file")
    report = store.verify()
    assert report.ok and report.checked == 3, report.damaged


def test_verify_still_flags_a_damaged_flowcept_document(store: microblob.Store) -> None:
    doc = _flowcept_doc("fc-bad", 0, **_inline_payload(b"right"))
    doc["data"] = b"wrong"
    store._objects.insert_one(doc)
    report = store.verify()
    assert not report.ok and report.damaged[0][0] == "fc-bad"


def test_the_facade_reads_flowcept_documents_in_their_names(fc: Any, store: microblob.Store) -> None:
    store._objects.insert_one(_flowcept_doc("fc-doc", 0, **_file_payload(store, b"weights")))
    doc = Flowcept.db.blob_object_query({"object_type": "ml_model"})[0]
    assert doc["object_id"] == "fc-doc" and Flowcept.db._dao().get_file_data(doc["grid_fs_file_id"]) == b"weights"
    assert Flowcept.db.get_blob_fingerprint("fc-doc")["object_size_bytes"] == 7


def test_microblob_does_not_write_over_a_flowcept_document(store: microblob.Store) -> None:
    store._objects.insert_one(_flowcept_doc("fc-owned", 0, **_inline_payload(b"x")))
    with pytest.raises(InvalidArgument, match="Flowcept"):
        store.save_or_update_object(b"y", object_id="fc-owned")
    assert store.get_blob_object("fc-owned").data == b"x"


@pytest.mark.parametrize("object_id", [
    "fc-plain",
    ["fc-listed"],  # filed under each element of the array
    ["fc-long", "x" * 600],  # an element too long for a key: the document is filed under ALWAYS only
])
def test_a_flowcept_document_is_found_however_its_object_id_is_filed(store: microblob.Store, object_id: Any) -> None:
    """A save of a new id probes the `object_id` index for a Flowcept document (no planner, no scan): the
    probe must see the document whether its value is filed exactly, per array element, or under ALWAYS."""
    wanted = object_id if isinstance(object_id, str) else object_id[0]
    store._objects.insert_one({**_flowcept_doc(wanted, 0, **_inline_payload(b"x")), "object_id": object_id})
    assert store._objects.find_one({"object_id": wanted}, projection={"_id": 1}) is not None
    with pytest.raises(InvalidArgument, match="Flowcept"):
        store.save_or_update_object(b"y", object_id=wanted)
    assert store.get_blob_object(wanted).data == b"x"
    assert store._objects.find_one({"object_id": wanted + "-other"}) is None
    assert store.save_or_update_object(b"z", object_id=wanted + "-other") == wanted + "-other"


def test_documents_written_by_pymongo_and_gridfs_as_flowcept_does(mongo_server: Any) -> None:
    """On a real MongoDB: ObjectId `_id`s and a GridFS file put by pymongo's own `gridfs`, as Flowcept does."""
    import hashlib

    import gridfs
    import pymongo

    uri = mongo_server.fresh_uri()
    try:
        with pymongo.MongoClient(uri) as client:
            db = client.get_default_database()
            data = b"flowcept wrote this" * 500
            file_id = gridfs.GridFS(db).put(data)
            db["objects"].insert_one({
                "object_id": "written-by-flowcept", "version": 0, "prev_version": None, "created_at": 1.5e9,
                "updated_at": 1.5e9, "object_type": "dataset", "grid_fs_file_id": file_id,
                "data_sha256": hashlib.sha256(data).hexdigest(), "data_hash_algo": "sha256",
                "object_size_bytes": len(data), "custom_metadata": {}, "tags": None})
        store = microblob.connect(uri)
        try:
            obj = store.get_blob_object("written-by-flowcept")
            assert obj.data == data and obj.object_type == "dataset"
            assert [o.object_id for o in store.dataset_query({})] == ["written-by-flowcept"]
            assert store.verify().ok
        finally:
            store.close()
    finally:
        mongo_server.drop(uri)
