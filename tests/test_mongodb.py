"""The MongoDB backend over the wire: GridFS interoperability both ways, compare-and-swap under threads,
and crashes between the steps of a write (a standalone server has no multi-document transactions).

These run against the session's server (conftest.py: SecantusDB in CI, or MICROBLOB_TEST_MONGODB_URI).
The whole store suite runs on this backend too, through the parametrized `store` fixture.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
from collections.abc import Callable, Iterator

import pytest

import microblob
from microblob import DuplicateKey, InvalidArgument, InvalidQuery, ObjectNotFound, StorageError

gridfs = pytest.importorskip("gridfs")
pymongo = pytest.importorskip("pymongo")


@pytest.fixture
def mongo_uri(mongo_server) -> Iterator[str]:  # type: ignore[no-untyped-def]
    uri = mongo_server.fresh_uri()
    yield uri
    mongo_server.drop(uri)


@pytest.fixture
def mstore(mongo_uri: str) -> Iterator[microblob.Store]:
    with microblob.connect(mongo_uri) as store:
        yield store


@pytest.fixture
def bucket(mongo_uri: str) -> Iterator[gridfs.GridFSBucket]:
    client = pymongo.MongoClient(mongo_uri, tz_aware=True)
    yield gridfs.GridFSBucket(client.get_default_database())
    client.close()


# --- GridFS both ways --------------------------------------------------------------------------------


def test_gridfs_bucket_reads_what_microblob_wrote(mstore: microblob.Store, bucket: gridfs.GridFSBucket) -> None:
    payload = os.urandom(3 * 255 * 1024 + 1234)  # the default GridFS chunk size: several full chunks and a tail
    object_id = mstore.save_or_update_object(payload, type="scan")
    obj = mstore.get_blob_object(object_id)
    assert obj.storage == "chunked" and mstore.chunk_size == 255 * 1024
    assert bucket.open_download_stream(obj.file_id).read() == payload
    grid_out = bucket.open_download_stream_by_name(object_id)  # microblob names an object's file by its id
    assert grid_out.length == len(payload) and grid_out.chunk_size == 255 * 1024
    file_doc = mstore.files.get_file(obj.file_id)
    assert {"_id", "length", "chunkSize", "uploadDate", "filename", "metadata"} <= set(file_doc)
    assert file_doc["sha256"] == hashlib.sha256(payload).hexdigest()
    # the chunk documents are exactly the spec's: {_id, files_id, n, data}
    db = bucket._collection.database  # type: ignore[attr-defined]
    chunk = db["fs.chunks"].find_one({"files_id": obj.file_id, "n": 0})
    assert set(chunk) == {"_id", "files_id", "n", "data"} and len(chunk["data"]) == 255 * 1024
    indexes = {tuple(spec["key"]): spec.get("unique", False) for spec in db["fs.chunks"].index_information().values()}
    assert indexes[(("files_id", 1), ("n", 1))] is True
    files_indexes = {tuple(spec["key"]) for spec in db["fs.files"].index_information().values()}
    assert (("filename", 1), ("uploadDate", 1)) in files_indexes
    # a file uploaded through store.files reads back through GridFS too
    file_id = mstore.files.upload_from_stream("notes.txt", b"hello gridfs", metadata={"lab": "B2"})
    out = io.BytesIO()
    bucket.download_to_stream(file_id, out)
    assert out.getvalue() == b"hello gridfs"


def test_microblob_reads_what_gridfs_bucket_wrote(mstore: microblob.Store, bucket: gridfs.GridFSBucket) -> None:
    payload = os.urandom(700_000)
    oid = bucket.upload_from_stream("from-gridfs.bin", io.BytesIO(payload), chunk_size_bytes=100_000,
                                    metadata={"origin": "mongofiles"})
    doc = mstore.files.get_file(oid)  # an ObjectId id, and no sha256 field
    assert doc["length"] == len(payload) and "sha256" not in doc
    with mstore.files.open_download_stream(oid) as stream:
        stream.seek(250_000)
        assert stream.read(10) == payload[250_000:250_010]
        stream.seek(0)
        assert stream.read() == payload
    assert [d["_id"] for d in mstore.files.find({"filename": "from-gridfs.bin"})] == [oid]
    assert mstore.query({"metadata.origin": "mongofiles"}, collection="fs.files")[0]["_id"] == oid
    # maintenance leaves files it does not own alone, and verify has nothing to complain about
    assert mstore.gc().freed_files == 0 and mstore.gc().freed_orphan_chunks == 0
    assert mstore.verify().ok
    mstore.files.delete(oid)
    with pytest.raises(gridfs.errors.NoFile):
        bucket.open_download_stream(oid)


def test_gridfs_written_empty_file(mstore: microblob.Store, bucket: gridfs.GridFSBucket) -> None:
    oid = bucket.upload_from_stream("empty", io.BytesIO(b""))
    with mstore.files.open_download_stream(oid) as stream:
        assert stream.read() == b""


# --- the collection wrapper ---------------------------------------------------------------------------


def test_errors_are_typed(mstore: microblob.Store) -> None:
    coll = mstore.backend.collection("things")
    coll.insert_one({"_id": "a", "n": 1})
    with pytest.raises(DuplicateKey):
        coll.insert_one({"_id": "a"})
    with pytest.raises(InvalidQuery):
        coll.find({"n": {"$where": "1"}})  # refused by microblob's parser before it reaches the server
    with pytest.raises(InvalidQuery):
        coll.update_one({"_id": "a"}, {"$inc": {"n": "one"}})
    with pytest.raises(InvalidQuery):
        coll.replace_one({"_id": "a"}, {"_id": "b"})  # _id is immutable
    with pytest.raises(microblob.InvalidDocument):
        coll.insert_one({"_id": "big", "n": 2**70})
    assert coll.find_one({"_id": "a"}) == {"_id": "a", "n": 1}


def test_datetimes_come_back_tz_aware_utc(mstore: microblob.Store) -> None:
    object_id = mstore.save_or_update_object(b"x")
    created = mstore.get_blob_object(object_id).created_at
    assert created.tzinfo is not None and created.utcoffset().total_seconds() == 0


def test_uri_needs_a_database_and_unreachable_server_is_a_storage_error() -> None:
    with pytest.raises(InvalidArgument, match="database"):
        microblob.connect("mongodb://127.0.0.1:1")
    with pytest.raises(StorageError):
        microblob.connect("mongodb://127.0.0.1:1/db?serverSelectionTimeoutMS=300")


def test_password_is_not_in_the_uri_we_show() -> None:
    from microblob.engine.mongodb_backend import redact_uri

    assert redact_uri("mongodb://ann:s3cret@h:27017/db") == "mongodb://ann:***@h:27017/db"
    assert redact_uri("mongodb://h/db") == "mongodb://h/db"


# --- compare-and-swap --------------------------------------------------------------------------------


def test_compare_and_swap_has_exactly_one_winner_per_version(mstore: microblob.Store) -> None:
    coll = mstore.backend.collection("objects")
    coll.insert_one({"_id": "cas", "version": 0})
    wins: list[int] = []
    barrier = threading.Barrier(8)

    def contender(n: int) -> None:
        barrier.wait()
        for _ in range(20):
            current = coll.find_one({"_id": "cas"})
            if coll.replace_one({"_id": "cas", "version": current["version"]},
                                {"version": current["version"] + 1, "by": n}):
                wins.append(current["version"])

    threads = [threading.Thread(target=contender, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(wins) == list(range(len(wins)))  # every version was won once, none twice
    assert coll.find_one({"_id": "cas"})["version"] == len(wins)


def test_threads_mixing_versioned_and_plain_updates(mstore: microblob.Store) -> None:
    """Versioned and non-versioned writers racing on one object: every version in the history can be
    read, every prev_version names a readable version, and no bytes are left unreferenced."""
    object_id = mstore.save_or_update_object(b"start")
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            for i in range(12):
                mstore.save_or_update_object(f"{n}-{i}".encode() * 30_000, object_id=object_id,
                                             control_version=(n + i) % 2 == 0)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert mstore.get_blob_object(object_id).version == 72
    history = mstore.get_object_history(object_id)
    versions = {h["version"] for h in history}
    for entry in history:
        assert entry["prev_version"] is None or entry["prev_version"] in versions
        assert mstore.get_blob_object(object_id, entry["version"]).sha256 == entry["sha256"]
    assert mstore.verify().ok
    mstore.gc()
    referenced = {h["sha256"] for h in history}
    assert {f["sha256"] for f in mstore.query({}, collection="fs.files")} == referenced


# --- crashes between the steps of a write --------------------------------------------------------------

CRASH = """
import os, signal, sys
import microblob
from microblob.engine import mongodb_backend as _mongodb

uri, where, object_id = sys.argv[1], sys.argv[2], sys.argv[3]
store = microblob.connect(uri, chunk_size=100_000)

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

def crash_on(collection, method):
    original = getattr(_mongodb.MongoCollection, method)
    def patched(self, *args, **kwargs):
        if self.name == collection:
            die()
        return original(self, *args, **kwargs)
    setattr(_mongodb.MongoCollection, method, patched)

if where == "before-object-doc":        # bytes and files document written, object document not
    crash_on("objects", "insert_one")
    store.save_or_update_object(os.urandom(450_000), object_id=object_id)
elif where == "before-cas":             # history entry written, latest not yet replaced
    crash_on("objects", "replace_one")
    store.save_or_update_object(b"second" * 50_000, object_id=object_id, control_version=True)
elif where == "before-history-delete":  # object document deleted, its history not yet
    crash_on("object_history", "delete_many")
    store.delete_object(object_id)
elif where == "before-stale-delete":    # latest replaced without versioning, a killed save's archive not yet dropped
    crash_on("object_history", "delete_one")
    store.save_or_update_object(b"overwrite" * 30_000, object_id=object_id)
elif where == "before-release":         # latest replaced without versioning, old bytes not yet freed
    crash_on("fs.files", "delete_one")
    store.save_or_update_object(b"third" * 50_000, object_id=object_id)
print("not killed")
"""


@pytest.fixture
def crash(mongo_uri: str, run_python: Callable) -> Callable[[str, str], None]:
    def run(where: str, object_id: str) -> None:
        proc = run_python(CRASH, mongo_uri, where, object_id, check=False)
        assert proc.returncode == -9, (proc.returncode, proc.stdout, proc.stderr)

    return run


def test_crash_after_files_doc_before_object_doc(mongo_uri: str, crash: Callable) -> None:
    crash("before-object-doc", "cam-1")
    with microblob.connect(mongo_uri) as store:
        with pytest.raises(ObjectNotFound):
            store.get_blob_object("cam-1")  # no partial object is visible
        assert store.blob_object_query({}) == []
        files = store.query({}, collection="fs.files")
        assert len(files) == 1 and files[0]["length"] == 450_000  # the published file, unreferenced
        report = store.gc()
        assert (report.freed_files, report.freed_bytes) == (1, 450_000)
        assert store.query({}, collection="fs.files") == [] and list(store.backend.chunks.file_ids()) == []
        assert store.backend.collection("fs.pending").count_documents({}) == 0  # the dead lease is gone
        store.save_or_update_object(b"retry", object_id="cam-1")
        assert store.get_blob_object("cam-1").data == b"retry"


def test_crash_after_archiving_before_replacing(mongo_uri: str, crash: Callable) -> None:
    with microblob.connect(mongo_uri) as store:
        store.save_or_update_object(b"first" * 50_000, object_id="obj")
    crash("before-cas", "obj")
    with microblob.connect(mongo_uri) as store:
        obj = store.get_blob_object("obj")
        assert (obj.version, obj.data) == (0, b"first" * 50_000)  # the old state, whole
        assert [h["version"] for h in store.get_object_history("obj")] == [0]
        store.gc()  # frees the new bytes nobody references
        assert store.verify().ok
        store.save_or_update_object(b"again", object_id="obj", control_version=True)
        assert [h["version"] for h in store.get_object_history("obj")] == [1, 0]
        assert store.get_blob_object("obj", 0).data == b"first" * 50_000
        assert store.query({"object_id": "obj"}, collection="object_history")[0]["version"] == 0


def test_crash_after_archiving_then_a_non_versioned_overwrite(mongo_uri: str, crash: Callable) -> None:
    """The entry a killed versioned save archived must not outlive a non-versioned overwrite of that
    version: the history would show (and keep the bytes of) a version that was overwritten."""
    with microblob.connect(mongo_uri) as store:
        store.save_or_update_object(b"first" * 50_000, object_id="obj")
    crash("before-cas", "obj")
    with microblob.connect(mongo_uri) as store:
        store.save_or_update_object(b"overwrite" * 30_000, object_id="obj")  # control_version=False
        latest = store.get_blob_object("obj")
        assert (latest.version, latest.prev_version, latest.data) == (1, None, b"overwrite" * 30_000)
        assert [h["version"] for h in store.get_object_history("obj")] == [1]
        with pytest.raises(microblob.VersionNotFound):
            store.get_blob_object("obj", 0)
        assert store.query({"object_id": "obj"}, collection="object_history") == []
        assert store.verify().ok
        store.gc()  # the killed save's bytes (and version 0's, overwritten) are garbage
        assert [f["length"] for f in store.query({}, collection="fs.files")] == [270_000]


def test_a_crash_before_dropping_that_entry_leaves_it_to_gc(mongo_uri: str, crash: Callable) -> None:
    with microblob.connect(mongo_uri) as store:
        store.save_or_update_object(b"first" * 50_000, object_id="obj")
    crash("before-cas", "obj")
    crash("before-stale-delete", "obj")  # the overwrite is in, the killed save's entry for version 0 not out
    with microblob.connect(mongo_uri) as store:
        assert store.get_blob_object("obj").data == b"overwrite" * 30_000
        assert store.verify().ok
        report = store.gc()
        assert report.freed_history_entries == 1  # version 0 was overwritten: its entry is garbage
        assert [h["version"] for h in store.get_object_history("obj")] == [1]
        with pytest.raises(microblob.VersionNotFound):
            store.get_blob_object("obj", 0)
        assert [f["length"] for f in store.query({}, collection="fs.files")] == [270_000]
        assert store.verify().ok and store.gc().freed_history_entries == 0


def test_crash_during_delete_then_recreate_starts_fresh(mongo_uri: str, crash: Callable) -> None:
    with microblob.connect(mongo_uri) as store:
        store.save_or_update_object(b"old-0" * 40_000, object_id="reused")
        store.save_or_update_object(b"old-1" * 40_000, object_id="reused", control_version=True)
        store.save_or_update_object(b"old-2" * 40_000, object_id="reused", control_version=True)
    crash("before-history-delete", "reused")
    with microblob.connect(mongo_uri) as store:
        with pytest.raises(ObjectNotFound):
            store.get_blob_object("reused")
        assert store.get_object_history("reused") == []
        store.save_or_update_object(b"new-0", object_id="reused")
        assert [h["version"] for h in store.get_object_history("reused")] == [0]
        with pytest.raises(microblob.VersionNotFound):
            store.get_blob_object("reused", 1)  # the old life's history is not this object's
        store.save_or_update_object(b"new-1", object_id="reused", control_version=True)
        store.save_or_update_object(b"new-2", object_id="reused", control_version=True)
        assert [store.get_blob_object("reused", v).data for v in (0, 1, 2)] == [b"new-0", b"new-1", b"new-2"]
        assert [h["version"] for h in store.get_object_history("reused")] == [2, 1, 0]
        report = store.gc()  # what the interrupted delete left: the old history and its bytes
        assert report.freed_files == 3
        assert store.verify().ok
        assert len(store.query({"object_id": "reused"}, collection="object_history")) == 2


def test_crash_before_freeing_replaced_bytes(mongo_uri: str, crash: Callable) -> None:
    with microblob.connect(mongo_uri) as store:
        store.save_or_update_object(b"first" * 50_000, object_id="obj")
    crash("before-release", "obj")
    with microblob.connect(mongo_uri) as store:
        assert store.get_blob_object("obj").data == b"third" * 50_000  # the new state, whole
        assert len(store.query({}, collection="fs.files")) == 2
        assert store.gc().freed_bytes == 250_000
        assert store.verify().ok and len(store.query({}, collection="fs.files")) == 1


def test_a_lost_compare_and_swap_leaves_no_phantom_version(mstore: microblob.Store) -> None:
    """A versioned writer archives version 0, then loses its compare-and-swap to a non-versioned writer
    (which overwrote version 0): version 0 must not stay in the history, and its bytes are garbage."""
    object_id = mstore.save_or_update_object(b"v0" * 60_000)
    objects = mstore._objects
    original = objects.replace_one
    interleaved: list[bool] = []

    def replace_one(filter, doc, upsert=False):  # type: ignore[no-untyped-def]
        if not interleaved:
            interleaved.append(True)  # the rival's whole save runs between our archive and our CAS
            mstore.save_or_update_object(b"rival" * 60_000, object_id=object_id, control_version=False)
        return original(filter, doc, upsert)

    objects.replace_one = replace_one  # type: ignore[method-assign]
    try:
        mstore.save_or_update_object(b"mine" * 60_000, object_id=object_id, control_version=True)
    finally:
        del objects.replace_one
    latest = mstore.get_blob_object(object_id)
    assert (latest.version, latest.prev_version, latest.data) == (2, 1, b"mine" * 60_000)
    assert [h["version"] for h in mstore.get_object_history(object_id)] == [2, 1]
    assert mstore.get_blob_object(object_id, 1).data == b"rival" * 60_000
    with pytest.raises(microblob.VersionNotFound):
        mstore.get_blob_object(object_id, 0)
    assert mstore.verify().ok
    # The rival dropped the entry archived for the version it overwrote, so it freed version 0's bytes
    # itself: nothing is left for gc.
    assert mstore.gc().freed_bytes == 0
    assert sorted(f["length"] for f in mstore.query({}, collection="fs.files")) == [240_000, 300_000]
