"""verify() finds damage and names it; gc() frees what nothing references and nothing else."""

from __future__ import annotations

import os

import microblob


def test_verify_is_clean_on_a_healthy_store(store: microblob.Store) -> None:
    a = store.save_or_update_object(os.urandom(600_000))
    store.save_or_update_object(b"v1", object_id=a, control_version=True)
    store.save_or_update_object(b"inline", save_data_in_collection=True)
    report = store.verify()
    assert report.ok and report.damaged == [] and report.checked == 3


def test_verify_names_damaged_versions(store: microblob.Store) -> None:
    a = store.save_or_update_object(os.urandom(600_000), object_id="flipped")
    b = store.save_or_update_object(os.urandom(300_000), object_id="lost-chunk")
    c = store.save_or_update_object(b"x", object_id="lost-file")
    d = store.save_or_update_object(b"inline", object_id="bad-inline", save_data_in_collection=True)
    chunks = store.backend.chunks
    file_a = store.get_blob_object(a).file_id
    good = chunks.get(file_a, 1)
    chunks.put(file_a, 1, bytes([good[0] ^ 1]) + good[1:])  # one flipped bit
    chunks.delete(store.get_blob_object(b).file_id)
    store.backend.collection("fs.files").delete_one({"_id": store.get_blob_object(c).file_id})
    store.backend.collection("objects").update_one({"_id": d}, {"$set": {"data": b"tampered"}})
    report = store.verify()
    assert not report.ok
    damaged = {object_id: reason for object_id, _, reason in report.damaged}
    assert set(damaged) == {"flipped", "lost-chunk", "lost-file", "bad-inline"}
    assert "sha256" in damaged["flipped"]
    assert "missing" in damaged["lost-chunk"] and "missing" in damaged["lost-file"]


def test_verify_reports_a_dangling_prev_version(store: microblob.Store) -> None:
    a = store.save_or_update_object(b"0")
    store.save_or_update_object(b"1", object_id=a, control_version=True)
    store.backend.collection("object_history").delete_many({"object_id": a})
    report = store.verify()
    assert report.damaged == [(a, 1, "prev_version 0 cannot be read")]


def test_gc_frees_unreferenced_object_files_only(store: microblob.Store) -> None:
    keep = store.save_or_update_object(os.urandom(300_000))
    user_file = store.files.upload_from_stream("user-owned.bin", b"not an object")
    # an object file whose object document never got written (as after a crash between the steps)
    orphan = store.files.upload_from_stream("x", os.urandom(100_000),
                                            metadata={"microblob_object_id": "ghost"})
    report = store.gc()
    assert (report.freed_files, report.freed_bytes) == (1, 100_000)
    assert not store.files.exists(orphan)
    assert store.files.exists(user_file)
    assert store.get_blob_object(keep).size == 300_000
    assert store.gc().freed_files == 0
