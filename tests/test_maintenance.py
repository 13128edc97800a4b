"""verify() finds damage and names it; gc() frees what nothing references and nothing else."""

from __future__ import annotations

import gc
import os
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

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


# --- batch maintenance at scale: memory flat as the store grows, few write transactions -----------------


def fill(store: microblob.Store, n: int, chunked_every: int = 40) -> None:
    """`n` small objects (every `chunked_every`-th chunked, with a versioned update), in one transaction."""

    def save_all() -> None:
        for i in range(n):
            chunked = i % chunked_every == 0
            oid = store.save_or_update_object(f"object {i}".encode() * 20, object_id=f"o{i:06}", type="frame",
                                              save_data_in_collection=not chunked, custom_metadata={"i": i})
            if chunked:
                store.save_or_update_object(b"next", object_id=oid, control_version=True)

    store.backend.atomic(save_all)


def peak_during(fn: Any) -> tuple[Any, int]:
    """What `fn()` returns, and how far Python's allocations peaked above where they were before it."""
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        result = fn()
        return result, tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def test_verify_and_gc_memory_stays_flat_as_the_store_grows(embedded_store: microblob.Store,
                                                             tmp_path: Path) -> None:
    small_store = microblob.connect(tmp_path / "small.db") if embedded_store.uri.startswith("lmdb") else \
        microblob.connect("memory://")
    with small_store:
        fill(small_store, 1_000, chunked_every=8)
        fill(embedded_store, 8_000, chunked_every=8)
        peaks = {}
        for name, store in (("small", small_store), ("big", embedded_store)):
            report, peaks[name, "verify"] = peak_during(store.verify)
            assert report.ok and report.checked == len(store.blob_object_query({})) + len(
                store.query({}, collection="object_history"))
            freed, peaks[name, "gc"] = peak_during(store.gc)
            assert freed.freed_files == 0
    # 8x the versions: the same peak within a batch's worth (a table of every id or hash grows 8x)
    for job in ("verify", "gc"):
        assert peaks["big", job] < 1.5 * peaks["small", job] + 256 * 1024, peaks


def count_writes(store: microblob.Store, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every write transaction the engine runs from now on (one item each)."""
    engine = store.backend.engine
    writes: list[int] = []
    real = engine.write

    def counted(fn: Any, **options: Any) -> Any:
        writes.append(1)
        return real(fn, **options)

    monkeypatch.setattr(engine, "write", counted)
    return writes


def test_gc_with_nothing_to_free_writes_nothing(embedded_store: microblob.Store,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    fill(embedded_store, 2_000, chunked_every=10)  # 200 chunked objects, 400 files
    writes = count_writes(embedded_store, monkeypatch)
    report = embedded_store.gc()
    assert (report.freed_files, report.freed_orphan_chunks, writes) == (0, 0, [])


def test_gc_frees_many_files_in_few_transactions(embedded_store: microblob.Store,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    fill(embedded_store, 200, chunked_every=20)
    orphans = [embedded_store.files.upload_from_stream(f"x{i}", os.urandom(1000 + i),
                                                       metadata={"microblob_object_id": f"ghost{i}"})
               for i in range(600)]
    writes = count_writes(embedded_store, monkeypatch)
    report = embedded_store.gc()
    assert report.freed_files == 600 and report.freed_bytes == sum(1000 + i for i in range(600))
    assert len(writes) <= 3  # 256 files per transaction
    assert not any(embedded_store.files.exists(f) for f in orphans)
    assert embedded_store.verify().ok and embedded_store.gc().freed_files == 0


def test_delete_object_frees_every_version_in_one_transaction(embedded_store: microblob.Store,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    oid = embedded_store.save_or_update_object(os.urandom(5000), object_id="long-lived")
    for v in range(1, 300):
        embedded_store.save_or_update_object(os.urandom(5000 + v), object_id=oid, control_version=True)
    kept = embedded_store.save_or_update_object(os.urandom(5000), object_id="neighbour")
    writes = count_writes(embedded_store, monkeypatch)
    embedded_store.delete_object(oid)
    assert len(writes) == 1
    files = embedded_store.query({}, collection="fs.files")
    assert [f["metadata"]["microblob_object_id"] for f in files] == [kept]  # nothing of the 300 versions left
    assert embedded_store.get_object_history(oid) == [] and embedded_store.gc().freed_files == 0
    assert embedded_store.verify().ok


def test_gc_drops_history_entries_that_lead_nowhere_whatever_their_object_id(store: microblob.Store) -> None:
    """Entries a non-transactional backend's interrupted writes can leave, with odd object ids too; on a
    transactional backend there are none to find, and gc leaves a healthy history alone."""
    oid = store.save_or_update_object(b"v0")
    store.save_or_update_object(b"v1", object_id=oid, control_version=True)
    history = store.backend.collection("object_history")
    strays = [{"_id": "gone:0", "object_id": "gone", "version": 0},
              {"_id": "odd:0", "object_id": ["a", "list"], "version": 0},
              {"_id": "doc:0", "object_id": {"a": 1}, "version": 0}]
    for entry in strays:
        history.insert_one(entry)
    report = store.gc()
    expected = 0 if store.backend.transactional else len(strays)
    assert report.freed_history_entries == expected
    assert [h["version"] for h in store.get_object_history(oid)] == [1, 0]
