"""The object API (docs/ARCHITECTURE.md, "Objects and versions"): the documented scenarios, storage modes, sources
and aliases."""

from __future__ import annotations

import array
import hashlib
import io
import os
from pathlib import Path

import pytest

import microblob
from microblob import BlobObject, InvalidArgument, ObjectNotFound, VersionNotFound, Workflow

# --- the scenarios of the object API documentation ------------------------------------------------


def test_save_with_linkage_inside_workflow_and_read_back(store: microblob.Store) -> None:
    with Workflow(name="blob_demo", store=store) as wf:
        object_id = store.save_or_update_object(
            b"raw-bytes-v0",
            task_id="task-1",
            type="image",
            custom_metadata={"exposure_ms": 12, "stage": {"x": 1.5}},
            tags=["raw"],
        )
    obj = store.get_blob_object(object_id)
    assert isinstance(obj, BlobObject)
    # attribute access
    assert obj.data == b"raw-bytes-v0"
    assert obj.workflow_id == wf.workflow_id
    assert obj.task_id == "task-1"
    assert obj.type == "image"
    assert obj.version == 0
    assert obj.prev_version is None
    assert obj.custom_metadata == {"exposure_ms": 12, "stage": {"x": 1.5}}
    assert obj.tags == ["raw"]
    assert obj.size == 12
    assert obj.sha256 == hashlib.sha256(b"raw-bytes-v0").hexdigest()
    assert obj.storage == "chunked"
    # mapping access
    assert obj["workflow_id"] == wf.workflow_id
    assert obj["data"] == b"raw-bytes-v0"
    meta = dict(obj)
    assert meta["object_id"] == object_id and "data" not in meta
    assert set(meta) == set(microblob.store.objects.FIELDS)
    # the workflow was recorded
    record = store.get_workflow(wf.workflow_id)
    assert record["name"] == "blob_demo" and record["ended_at"] is not None
    assert record["status"] == "completed"


def test_update_to_version_1_and_read_exact_versions(store: microblob.Store) -> None:
    object_id = store.save_or_update_object(b"v0", type="ml_model", task_id="train")
    same = store.save_or_update_object(b"v1", object_id=object_id, control_version=True)
    assert same == object_id
    latest = store.get_blob_object(object_id)
    assert (latest.version, latest.prev_version, latest.data) == (1, 0, b"v1")
    assert latest.type == "ml_model" and latest.task_id == "train"  # unspecified fields carry over
    old = store.get_blob_object(object_id, version=0)
    assert (old.version, old.data) == (0, b"v0")
    assert store.get_blob_object(object_id, version=1).data == b"v1"
    with pytest.raises(VersionNotFound):
        store.get_blob_object(object_id, version=2)


def test_history_lists_every_version_without_bytes(store: microblob.Store) -> None:
    object_id = store.save_or_update_object(b"a", custom_metadata={"step": 0})
    for step in (1, 2):
        store.save_or_update_object(
            bytes([97 + step]), object_id=object_id, control_version=True, custom_metadata={"step": step}
        )
    history = store.get_object_history(object_id)
    assert [h["version"] for h in history] == [2, 1, 0]
    assert [h["prev_version"] for h in history] == [1, 0, None]
    assert [h["custom_metadata"]["step"] for h in history] == [2, 1, 0]
    for entry in history:
        assert "data" not in entry
        assert set(entry) == set(microblob.store.HISTORY_FIELDS)
        assert entry["sha256"] and entry["size"] == 1
    assert store.get_object_history("never-saved") == []


# --- storage modes and sources ---------------------------------------------------------------------


def test_inline_storage_round_trip(store: microblob.Store) -> None:
    object_id = store.save_or_update_object(b"tiny", save_data_in_collection=True)
    obj = store.get_blob_object(object_id)
    assert obj.storage == "inline" and obj.file_id is None and obj.data == b"tiny"
    # queries leave inline bytes out of the document and load them on demand
    [found] = store.blob_object_query({"object_id": object_id})
    assert found.data == b"tiny"


def test_switching_storage_drops_the_other_field(store: microblob.Store) -> None:
    object_id = store.save_or_update_object(b"inline-old", save_data_in_collection=True)
    store.save_or_update_object(b"chunked-new", object_id=object_id)
    obj = store.get_blob_object(object_id)
    assert obj.storage == "chunked" and obj.data == b"chunked-new"
    raw = store.query({"_id": object_id})[0]
    assert "data" not in raw
    store.save_or_update_object(b"inline-again", object_id=object_id)
    store.save_or_update_object(b"inline-again", object_id=object_id, save_data_in_collection=True)
    raw = store.query({"_id": object_id})[0]
    assert raw["storage"] == "inline" and "file_id" not in raw
    assert store.get_blob_object(object_id).data == b"inline-again"
    assert store.query({}, collection="fs.files") == []  # nothing left behind


@pytest.mark.parametrize("kind", ["bytes", "bytearray", "memoryview", "file", "path", "empty"])
def test_every_source_kind(store: microblob.Store, tmp_path: Path, kind: str) -> None:
    payload = b"" if kind == "empty" else os.urandom(300_000)  # more than one chunk
    src = tmp_path / "payload.bin"
    src.write_bytes(payload)
    if kind == "bytearray":
        obj = bytearray(payload)
    elif kind == "memoryview":
        obj = memoryview(payload)
    elif kind == "file":
        obj = open(src, "rb")  # noqa: SIM115 - closed below
    elif kind == "path":
        obj = src
    else:
        obj = payload
    object_id = store.save_or_update_object(obj)
    if kind == "file":
        assert not obj.closed  # the caller's file stays the caller's
        obj.close()
    got = store.get_blob_object(object_id)
    assert got.size == len(payload)
    assert got.data == payload
    assert got.sha256 == hashlib.sha256(payload).hexdigest()


class _LyingBytes(bytes):
    def __len__(self) -> int:
        return 0

    def __bytes__(self) -> bytes:
        return b"a lie"


@pytest.mark.parametrize("inline", [False, True], ids=["chunked", "inline"])
def test_unusual_buffers_store_their_contents(store: microblob.Store, inline: bool) -> None:
    """Found by tests/test_store_fuzz.py: a non-contiguous memoryview raised a bare TypeError (chunked), and
    a bytes subclass with its own __bytes__ was stored as that (inline) but as its buffer (chunked)."""
    payload = os.urandom(250_000)
    interleaved = memoryview(bytes(b for x in payload for b in (x, 0)))[::2]
    for obj, expected in ((interleaved, payload), (_LyingBytes(payload), payload),
                          (memoryview(payload[:200_000]).cast("B", (2, 100_000)), payload[:200_000]),
                          (memoryview(array.array("H", payload[:1000])), payload[:1000])):
        got = store.get_blob_object(store.save_or_update_object(obj, save_data_in_collection=inline))
        assert got.data == expected and got.size == len(expected)
    file_id = store.files.upload_from_stream("f", interleaved)
    assert store.files.open_download_stream(file_id).read() == payload


def test_open_is_seekable_and_save_is_atomic(store: microblob.Store, tmp_path: Path) -> None:
    payload = os.urandom(700_000)
    object_id = store.save_or_update_object(payload)
    obj = store.get_blob_object(object_id)
    with obj.open() as stream:
        stream.seek(500_000)
        assert stream.read(10) == payload[500_000:500_010]
        stream.seek(-5, io.SEEK_END)
        assert stream.read() == payload[-5:]
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    assert obj.save(target) == len(payload)
    assert target.read_bytes() == payload
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".microblob-")] == []


def test_content_type_default_given_and_inherited(store: microblob.Store) -> None:
    a = store.save_or_update_object(b"x")
    assert store.get_blob_object(a).content_type == "application/octet-stream"
    b = store.save_or_update_object(b"\x89PNG", content_type="image/png")
    store.save_or_update_object(b"\x89PNG2", object_id=b)
    assert store.get_blob_object(b).content_type == "image/png"


def test_content_type_guessed_from_a_path(store: microblob.Store, tmp_path: Path) -> None:
    (tmp_path / "scan.png").write_bytes(b"\x89PNG")
    (tmp_path / "noext").write_bytes(b"x")
    assert store.get_blob_object(store.save_or_update_object(tmp_path / "scan.png")).content_type == "image/png"
    explicit = store.save_or_update_object(tmp_path / "scan.png", content_type="image/x-raw")
    assert store.get_blob_object(explicit).content_type == "image/x-raw"
    plain = store.save_or_update_object(tmp_path / "noext")
    assert store.get_blob_object(plain).content_type == "application/octet-stream"


# --- Flowcept lessons (§3.3) -----------------------------------------------------------------------


def test_dollar_metadata_is_stored_literally(store: microblob.Store) -> None:
    meta = {"$where": "1", "note": "$set", "a.b": {"$gt": 1}, "nested": {"$inc": {"x": 1}}}
    object_id = store.save_or_update_object(b"x", custom_metadata=meta)
    store.update_object_metadata(object_id, custom_metadata=meta)
    assert store.get_blob_object(object_id).custom_metadata == meta
    assert store.get_blob_object(object_id, version=0).custom_metadata == meta


def test_recreating_a_deleted_id_starts_fresh_history(store: microblob.Store) -> None:
    store.save_or_update_object(b"a", object_id="reused")
    store.save_or_update_object(b"b", object_id="reused", control_version=True)
    store.delete_object("reused")
    with pytest.raises(ObjectNotFound):
        store.get_blob_object("reused")
    assert store.get_object_history("reused") == []
    store.save_or_update_object(b"c", object_id="reused")
    obj = store.get_blob_object("reused")
    assert (obj.version, obj.prev_version, obj.data) == (0, None, b"c")
    assert [h["version"] for h in store.get_object_history("reused")] == [0]


def test_document_written_before_versioning_reads_as_v0_and_updates(store: microblob.Store) -> None:
    # What a pre-versioning writer (Flowcept < 0.9) left: no version, prev_version or storage fields.
    store.backend.collection("objects").insert_one(
        {"_id": "legacy", "object_id": "legacy", "data": b"old", "type": "dataset"}
    )
    obj = store.get_blob_object("legacy")
    assert obj.version == 0 and obj.data == b"old"
    store.save_or_update_object(b"new", object_id="legacy", control_version=True)
    assert store.get_blob_object("legacy").version == 1
    assert store.get_blob_object("legacy", version=0).data == b"old"
    assert [h["version"] for h in store.get_object_history("legacy")] == [1, 0]


# --- fingerprints, deletion, helpers ---------------------------------------------------------------


def test_fingerprint_and_equality(store: microblob.Store) -> None:
    a = store.save_or_update_object(b"same")
    b = store.save_or_update_object(b"same", save_data_in_collection=True)
    c = store.save_or_update_object(b"other")
    fp = store.get_blob_fingerprint(a)
    assert fp == {"object_id": a, "version": 0, "size": 4, "sha256": hashlib.sha256(b"same").hexdigest(),
                  "storage": "chunked"}
    assert store.blob_objects_equal(a, b)
    assert not store.blob_objects_equal(a, c)
    store.save_or_update_object(b"other", object_id=a, control_version=True)
    assert store.blob_objects_equal(a, c)
    assert store.blob_objects_equal(a, b, version_a=0)


def test_delete_object_removes_history_and_bytes(store: microblob.Store) -> None:
    object_id = store.save_or_update_object(os.urandom(600_000))
    store.save_or_update_object(os.urandom(600_000), object_id=object_id, control_version=True)
    keep = store.save_or_update_object(b"keep")
    store.delete_object(object_id)
    assert store.query({"object_id": object_id}, collection="object_history") == []
    files = store.query({}, collection="fs.files")
    assert [f["metadata"]["microblob_object_id"] for f in files] == [keep]
    assert sorted(store.backend.chunks.file_ids()) == [f["_id"] for f in files]
    with pytest.raises(ObjectNotFound):
        store.delete_object(object_id)


def test_non_versioned_update_frees_replaced_bytes(store: microblob.Store) -> None:
    object_id = store.save_or_update_object(os.urandom(400_000))
    first_file = store.get_blob_object(object_id).file_id
    store.save_or_update_object(os.urandom(400_000), object_id=object_id)
    assert not store.files.exists(first_file)
    assert store.backend.chunks.count(first_file) == 0
    assert store.gc().freed_files == 0  # nothing was orphaned


def test_metadata_update_shares_bytes(store: microblob.Store) -> None:
    object_id = store.save_or_update_object(os.urandom(300_000), custom_metadata={"a": 1})
    v0 = store.get_blob_object(object_id)
    store.update_object_metadata(object_id, custom_metadata={"a": 2}, tags=["reviewed"])
    v1 = store.get_blob_object(object_id)
    assert (v1.version, v1.prev_version, v1.custom_metadata, v1.tags) == (1, 0, {"a": 2}, ["reviewed"])
    assert v1.file_id == v0.file_id and v1.data == v0.data
    assert len(store.query({}, collection="fs.files")) == 1
    # a later non-versioned save must not free bytes that history still references
    store.save_or_update_object(b"replacement", object_id=object_id)
    assert store.get_blob_object(object_id, version=0).data == v0.data
    assert store.verify().ok
    with pytest.raises(ObjectNotFound):
        store.update_object_metadata("missing", custom_metadata={})


def test_query_and_typed_helpers(store: microblob.Store) -> None:
    m1 = store.save_or_update_ml_model(b"weights", custom_metadata={"acc": 0.9})
    m2 = store.insert_or_update_ml_model(b"weights2", custom_metadata={"acc": 0.7})
    d1 = store.save_or_update_dataset(b"rows", task_id="t")
    store.insert_or_update_object(b"plain", object_type="image")
    assert store.get_ml_model(m1).type == "ml_model"
    assert {o.object_id for o in store.ml_model_query({})} == {m1, m2}
    assert [o.object_id for o in store.ml_model_query({"custom_metadata.acc": {"$gt": 0.8}})] == [m1]
    assert [o.object_id for o in store.dataset_query({"task_id": "t"})] == [d1]
    assert store.get_dataset(d1).data == b"rows"
    assert [o.type for o in store.blob_object_query({"type": "image"})] == ["image"]
    ordered = store.blob_object_query({}, sort=[("type", 1)], limit=2, skip=1)
    assert [o.type for o in ordered] == ["image", "ml_model"]
    assert store.count_objects({"type": "ml_model"}) == 2
    plain = store.query({"type": "dataset"}, projection={"task_id": 1, "_id": 0})
    assert plain == [{"task_id": "t"}]
    with pytest.raises(InvalidArgument):
        store.save_or_update_ml_model(b"x", type="dataset")
    with pytest.raises(InvalidArgument):
        store.save_or_update_object(b"x", type="a", object_type="b")


def test_typed_helpers_take_type_none_as_not_given(store: microblob.Store) -> None:
    """Found by tests/test_store_fuzz.py: save_or_update_ml_model(data, type=None) raised InvalidArgument
    ("this helper saves type 'ml_model'"), though None means "not given" for every other argument."""
    model = store.save_or_update_ml_model(b"weights", type=None, object_type=None)
    dataset = store.insert_or_update_dataset(b"rows", type=None)
    assert store.get_ml_model(model).type == "ml_model" and store.get_dataset(dataset).type == "dataset"
    with pytest.raises(InvalidArgument, match="ml_model"):
        store.save_or_update_ml_model(b"weights", type="dataset")
    with pytest.raises(InvalidArgument, match="dataset"):
        store.save_or_update_dataset(b"rows", object_type="ml_model")


def test_a_bad_content_type_is_refused_before_the_object_is_looked_up(store: microblob.Store) -> None:
    """Found by tests/test_store_fuzz.py: a content type the MIME check let through (a lone surrogate in a
    parameter) made update_object_metadata of a missing id answer ObjectNotFound instead of
    InvalidArgument, and of an existing id fail only in the encoder."""
    object_id = store.save_or_update_object(b"x", content_type="text/plain; charset=utf-8")
    for target in ("missing", object_id):
        with pytest.raises(InvalidArgument, match="content_type"):
            store.update_object_metadata(target, content_type="text/plain; charset=\ud800")
    assert store.get_blob_object(object_id).content_type == "text/plain; charset=utf-8"


def test_new_object_and_file_ids_are_distinct_version_4_uuids(store: microblob.Store) -> None:
    """Ids made by the store read as uuid4 hex (as they always have), whatever builds them."""
    import uuid

    ids = set()
    for _ in range(200):
        obj = store.save_object(b"x")
        for made in (obj.object_id, obj.file_id):
            parsed = uuid.UUID(hex=made)
            assert parsed.hex == made and parsed.version == 4 and parsed.variant == uuid.RFC_4122
            ids.add(made)
    assert len(ids) == 400


def test_a_save_whose_made_id_is_taken_looks_again_instead_of_failing(
        store: microblob.Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """A save without an id skips looking the id up (it was just made); should it ever be taken, the
    insert refuses the duplicate and the save goes the way of a given id: a new version, nothing lost."""
    from microblob.store import core

    taken = store.save_or_update_object(b"first", control_version=True)
    monkeypatch.setattr(core, "new_id", lambda: taken)
    assert store.save_object(b"second", control_version=True).version == 1
    assert store.get_blob_object(taken).data == b"second"
    assert store.get_blob_object(taken, 0).data == b"first"
