"""Store-to-store copy (docs/ARCHITECTURE.md, "Objects and versions"): exact, idempotent, resumable, only missing
bytes travel."""

from __future__ import annotations

import datetime as dt
import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import microblob
from microblob import CopyReport, InvalidArgument

PAIRS = [("lmdb", "mongodb"), ("mongodb", "lmdb"), ("mongita", "lmdb"), ("memory", "mongita")]


def populate(store: microblob.Store) -> dict[str, str]:
    """Objects of every shape: multi-chunk, inline, a versioned history with a non-versioned overwrite
    in it, metadata-only versions, a workflow, and a file that belongs to no object."""
    ids = {}
    with microblob.Workflow(name="capture", store=store):
        ids["big"] = store.save_or_update_object(os.urandom(450_000), type="image", tags=["raw"],
                                                 custom_metadata={"exposure_ms": 12.5, "$literal": "kept"})
        ids["inline"] = store.save_or_update_object(b"small inline payload", save_data_in_collection=True,
                                                    content_type="text/plain")
    ids["versioned"] = store.save_or_update_object(b"v0" * 70_000, object_id="versioned")
    store.save_or_update_object(b"v1" * 70_000, object_id="versioned", control_version=True)
    store.save_or_update_object(b"v2" * 70_000, object_id="versioned", control_version=False)
    store.update_object_metadata("versioned", custom_metadata={"note": "metadata only"})
    store.save_or_update_object(b"v4", object_id="versioned", control_version=True, save_data_in_collection=True)
    store.files.upload_from_stream("calibration.bin", os.urandom(120_000), metadata={"lab": "B2"})
    return ids


def snapshot(store: microblob.Store) -> dict[str, Any]:
    """Everything a copy must carry, in a form that compares across backends."""
    objects = {}
    for obj in store.blob_object_query({}):
        versions = {}
        for entry in store.get_object_history(obj.object_id):
            version = store.get_blob_object(obj.object_id, entry["version"])
            versions[entry["version"]] = (dict(version), version.data)
        objects[obj.object_id] = versions
    files = {}
    for doc in store.query({}, collection="fs.files"):
        with store.files.open_download_stream(doc["_id"]) as stream:
            files[str(doc["_id"])] = ({**doc, "_id": str(doc["_id"])}, stream.read())
    history = sorted(store.query({}, collection="object_history"), key=lambda d: d["_id"])
    workflows = sorted(store.query({}, collection="workflows"), key=lambda d: d["_id"])
    return {"objects": objects, "history": history, "workflows": workflows, "files": files}


def assert_same(src: microblob.Store, dst: microblob.Store) -> None:
    a, b = snapshot(src), snapshot(dst)
    assert a["objects"].keys() == b["objects"].keys()
    for object_id, versions in a["objects"].items():
        assert versions == b["objects"][object_id], object_id  # version for version, byte for byte
    assert a["history"] == b["history"]
    assert a["workflows"] == b["workflows"]
    assert a["files"] == b["files"]
    assert dst.verify().ok


@pytest.mark.parametrize(("src_kind", "dst_kind"), PAIRS, ids=[f"{s}-to-{d}" for s, d in PAIRS])
def test_copy_mutate_copy_again(store_factory: Callable, src_kind: str, dst_kind: str) -> None:
    src, dst = store_factory(src_kind), store_factory(dst_kind)
    ids = populate(src)
    progress: list[tuple[int, int]] = []
    report = microblob.copy(src, dst, progress=lambda done, total: progress.append((done, total)))
    assert report.ok and report.copied_anything
    # files: big's, versioned's v0 and v2 (v1 was overwritten, v3 shares v2's, v4 is inline), calibration
    assert (report.objects_copied, report.workflows_copied, report.files_copied) == (3, 1, 4)
    assert report.versions_copied == 6  # big, inline, and versioned's 0, 2, 3 and 4
    assert progress[0][0] == 0 and progress[-1][0] == progress[-1][1] == report.bytes_copied
    assert_same(src, dst)

    again = microblob.copy(src, dst)
    assert not again.copied_anything and again.bytes_copied == 0
    assert again.summary().startswith("nothing to copy")
    assert (again.objects_skipped, again.versions_skipped, again.workflows_skipped) == (3, 6, 1)
    assert (again.files_skipped, again.bytes_skipped) == (4, report.bytes_copied)  # each file counted once
    assert "4 files already up to date" in again.summary()

    # the source moves on: new versions of both kinds, a metadata update, a new object, a new file
    src.save_or_update_object(b"v5" * 80_000, object_id="versioned", control_version=True)
    src.save_or_update_object(b"v6" * 80_000, object_id="versioned", control_version=False)
    src.update_object_metadata(ids["big"], tags=["raw", "reviewed"])
    src.save_or_update_object(os.urandom(250_000), object_id="new-one")
    third = microblob.copy(src, dst)
    assert third.ok and third.objects_copied == 3 and third.objects_skipped == 1
    # v6's bytes and the new object's; v5 was overwritten at the source, so it never travels
    assert third.files_copied == 2 and third.bytes_copied == 160_000 + 250_000
    assert_same(src, dst)
    assert dst.gc().freed_files == 0
    assert not microblob.copy(src, dst).copied_anything


def test_round_trip_lmdb_to_mongodb_to_lmdb(store_factory: Callable) -> None:
    first, middle, last = store_factory("lmdb"), store_factory("mongodb"), store_factory("lmdb")
    populate(first)
    microblob.copy(first, middle)
    microblob.copy(middle, last)
    assert_same(first, last)
    assert_same(middle, last)


class Interrupted(Exception):
    pass


def test_an_interrupted_copy_resumes(store_factory: Callable) -> None:
    src, dst = store_factory("lmdb"), store_factory("mongodb")
    populate(src)
    src.save_or_update_object(os.urandom(20_000_000), object_id="huge")  # several 8 MiB batches

    def stop_midway(done: int, total: int) -> None:
        if done > 10_000_000:
            raise Interrupted

    with pytest.raises(Interrupted):
        microblob.copy(src, dst, progress=stop_midway)
    with pytest.raises(microblob.ObjectNotFound):
        dst.get_blob_object("huge")  # nothing partial is visible
    resumed = microblob.copy(src, dst)
    assert resumed.ok and resumed.copied_anything
    assert_same(src, dst)
    report = dst.gc()
    assert report.freed_files == 0 and report.freed_orphan_chunks == 0
    assert dst.backend.collection("fs.pending").count_documents({}) == 0


def copy_interrupted_at(src: microblob.Store, dst: microblob.Store, object_id: str,
                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A copy that dies as it writes the latest version of `object_id` at the destination."""
    objects = dst.backend.collection("objects")
    original = objects.insert_one

    def fail_on(doc: dict) -> Any:
        if doc["_id"] == object_id:
            raise Interrupted
        return original(doc)

    monkeypatch.setattr(objects, "insert_one", fail_on)
    with pytest.raises(Interrupted):
        microblob.copy(src, dst)
    monkeypatch.setattr(objects, "insert_one", original)


def test_interrupted_between_history_and_latest(store_factory: Callable, monkeypatch: pytest.MonkeyPatch) -> None:
    """An object too big for one commit: bytes, history and latest version go in turn."""
    from microblob.store import copier

    monkeypatch.setattr(copier, "_BATCH_BYTES", 1024)  # every object of populate() is "big" now
    src, dst = store_factory("memory"), store_factory("lmdb")
    populate(src)
    copy_interrupted_at(src, dst, "versioned", monkeypatch)
    with pytest.raises(microblob.ObjectNotFound):
        dst.get_blob_object("versioned")  # its history and bytes arrived, the object did not
    assert dst.get_object_history("versioned") == []
    resumed = microblob.copy(src, dst)
    assert resumed.versions_copied == 1 and resumed.versions_skipped >= 3  # only the latest was missing
    assert_same(src, dst)


def test_a_small_object_arrives_in_one_commit_or_not_at_all(store_factory: Callable,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Into a transactional store, an object whose versions' bytes fit one batch is copied in ONE write
    transaction (not about seven): an interruption leaves nothing of it, and the next run copies it whole."""
    src, dst = store_factory("memory"), store_factory("lmdb")
    populate(src)
    copy_interrupted_at(src, dst, "versioned", monkeypatch)
    with pytest.raises(microblob.ObjectNotFound):
        dst.get_blob_object("versioned")
    assert dst.get_object_history("versioned") == []
    assert dst.backend.collection("object_history").count_documents({"object_id": "versioned"}) == 0
    assert dst.gc().freed_files == 0  # and no bytes of it were left behind either
    engine = dst.backend.engine
    before = engine.last_txnid()
    resumed = microblob.copy(src, dst)
    assert resumed.objects_copied == 1 and resumed.versions_copied == len(src.get_object_history("versioned"))
    assert engine.last_txnid() - before == 1  # the whole object, every version and its bytes: one commit
    assert_same(src, dst)


def test_only_missing_bytes_travel(store_factory: Callable) -> None:
    src, dst = store_factory("lmdb"), store_factory("memory")
    populate(src)
    microblob.copy(src, dst)
    written = count_chunk_writes(dst)
    read = count_chunk_reads(src)
    src.save_or_update_object(b"n" * 333_333, object_id="versioned", control_version=True)
    src.update_object_metadata("versioned", custom_metadata={"again": True})  # shares those bytes
    report = microblob.copy(src, dst)
    assert report.files_copied == 1 and report.bytes_copied == 333_333
    assert written["bytes"] == 333_333  # the new file's bytes, once, and nothing else
    assert read["bytes"] == 333_333  # files the destination has are not even read
    assert_same(src, dst)


def count_chunk_writes(store: microblob.Store) -> dict[str, int]:
    chunks = store.backend.chunks
    counts = {"bytes": 0}
    put, put_many = chunks.put, chunks.put_many

    def counting_put(file_id: Any, n: int, data: Any) -> None:
        counts["bytes"] += len(data)
        put(file_id, n, data)

    def counting_put_many(file_id: Any, first: int, batch: Any) -> None:
        counts["bytes"] += sum(len(c) for c in batch)
        put_many(file_id, first, batch)

    chunks.put, chunks.put_many = counting_put, counting_put_many  # type: ignore[method-assign]
    return counts


def count_chunk_reads(store: microblob.Store) -> dict[str, int]:
    chunks = store.backend.chunks
    counts = {"bytes": 0}
    get = chunks.get

    def counting_get(file_id: Any, n: int) -> Any:
        data = get(file_id, n)
        counts["bytes"] += len(data or b"")
        return data

    chunks.get = counting_get  # type: ignore[method-assign]
    return counts


def test_since_copies_only_recent_objects(store_factory: Callable) -> None:
    src, dst = store_factory("memory"), store_factory("memory")
    old = src.save_or_update_object(b"old")
    cutoff = src.get_blob_object(old).updated_at + dt.timedelta(milliseconds=1)
    while microblob.engine.codec.utcnow() <= cutoff:
        pass
    recent = src.save_or_update_object(b"recent")
    report = microblob.copy(src, dst, since=cutoff.replace(tzinfo=None))  # naive means UTC
    assert report.objects_copied == 1
    assert dst.get_blob_object(recent).data == b"recent"
    with pytest.raises(microblob.ObjectNotFound):
        dst.get_blob_object(old)


def test_a_diverged_destination_is_left_alone(store_factory: Callable) -> None:
    src, dst = store_factory("memory"), store_factory("memory")
    src.save_or_update_object(b"a", object_id="shared")
    microblob.copy(src, dst)
    src.save_or_update_object(b"from the source", object_id="shared", control_version=True)
    dst.save_or_update_object(b"edited at the destination", object_id="shared", control_version=True)
    src.save_or_update_object(b"other", object_id="other")
    report = microblob.copy(src, dst)
    assert [object_id for object_id, _ in report.problems] == ["shared"]
    assert "differs" in report.problems[0][1] and not report.ok
    assert dst.get_blob_object("shared").data == b"edited at the destination"
    assert dst.get_blob_object("other").data == b"other"  # the rest was copied
    assert "left alone" in report.summary()


def test_gridfs_bucket_files_copy_into_the_embedded_store(store_factory: Callable) -> None:
    gridfs = pytest.importorskip("gridfs")
    src, dst = store_factory("mongodb"), store_factory("lmdb")
    bucket = gridfs.GridFSBucket(src.backend.database)
    payload = os.urandom(300_000)
    oid = bucket.upload_from_stream("scope.tif", io.BytesIO(payload), chunk_size_bytes=64 * 1024)
    report = microblob.copy(src, dst)
    assert report.files_copied == 1
    doc = dst.files.get_file(str(oid))  # the ObjectId became its hex string
    assert doc["filename"] == "scope.tif" and doc["chunkSize"] == 64 * 1024
    with dst.files.open_download_stream(str(oid)) as stream:
        assert stream.read() == payload
    assert not microblob.copy(src, dst).copied_anything


def test_uris_and_bad_arguments(tmp_path: Path) -> None:
    a, b = tmp_path / "a.db", tmp_path / "b.db"
    with microblob.connect(a) as store:
        object_id = store.save_or_update_object(b"by uri")
    report = microblob.copy(str(a), f"lmdb://{b}")
    assert isinstance(report, CopyReport) and report.objects_copied == 1
    with microblob.connect(b) as store:
        assert store.get_blob_object(object_id).data == b"by uri"
    assert report.as_dict()["objects_copied"] == 1
    with pytest.raises(InvalidArgument, match="same store"):
        microblob.copy(a, a)
    with pytest.raises(InvalidArgument):
        microblob.copy(a, b, since="yesterday")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        microblob.copy(42, b)  # type: ignore[arg-type]
