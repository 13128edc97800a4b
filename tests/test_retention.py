"""Retention for small disks (issue 18): `evict` frees the local bytes of versions confirmed at the sync
destination and nothing else; evicted versions keep their metadata and history and read back from the
destination (`ObjectEvicted` when it cannot serve them); verify, gc, copy and export know them; a disk
that fills with unsynced data refuses saves with `StoreFull` and loses nothing."""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from _hypothesis_budget import examples
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

import microblob
from microblob import InvalidArgument, ObjectEvicted, StorageError, StoreFull, SyncWorker, evict, sync

MiB = 1 << 20


def versions_of(store: microblob.Store, object_id: str) -> dict[int, Any]:
    return {h["version"]: store.get_blob_object(object_id, h["version"]) for h in store.get_object_history(object_id)}


def evicted_versions(store: microblob.Store) -> set[tuple[str, int]]:
    found = set()
    for obj in store.blob_object_query(None):
        for version, o in versions_of(store, obj.object_id).items():
            if o.evicted_to:
                found.add((obj.object_id, version))
    return found


def fill(save: Any, saved: dict[str, bytes], then: Any = None) -> BaseException:
    """Saves of 1 MiB of random bytes (`save(data)` returns the object id, kept in `saved`), each
    followed by `then()`, until one fails: returns that error (the 24 MiB filesystems fill within 60)."""
    for _ in range(60):
        data = os.urandom(MiB)
        try:
            saved[save(data)] = data
        except Exception as exc:  # noqa: BLE001 - the caller looks at it
            return exc
        if then is not None:
            then()
    raise AssertionError("60 MiB fitted on a 24 MiB filesystem")


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "microblob", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_only_versions_confirmed_at_the_destination_lose_their_bytes(embedded_store: microblob.Store,
                                                                     tmp_path: Path) -> None:
    store, dst = embedded_store, tmp_path / "dst.db"
    data: dict[tuple[str, int], bytes] = {}
    a = store.save_or_update_object(os.urandom(300_000), type="scan")
    data[a, 0] = store.get_blob_object(a).data
    store.save_or_update_object(os.urandom(200_000), object_id=a, control_version=True)
    data[a, 1] = store.get_blob_object(a).data
    b = store.save_or_update_object(os.urandom(100_000))
    data[b, 0] = store.get_blob_object(b).data
    assert sync(store, dst).confirmed == 2
    # After the round: a new object, a new version of a, a metadata-only version of b (sharing b's file).
    c = store.save_or_update_object(os.urandom(50_000))
    data[c, 0] = store.get_blob_object(c).data
    store.save_or_update_object(os.urandom(70_000), object_id=a, control_version=True)
    data[a, 2] = store.get_blob_object(a).data
    store.update_object_metadata(b, custom_metadata={"checked": True})
    data[b, 1] = data[b, 0]
    history_before = {oid: store.get_object_history(oid) for oid in (a, b, c)}

    report = evict(store, max_size=0)
    assert report.destination == str(dst)
    assert (report.evicted_files, report.evicted_versions, report.bytes_freed) == (2, 2, 500_000)
    assert not report.met and report.still_needed > 0  # the rest is not confirmed: it stays
    assert evicted_versions(store) == {(a, 0), (a, 1)}
    # metadata and history stay, only the eviction marks are new
    for oid, before in history_before.items():
        after = store.get_object_history(oid)
        strip = [{k: v for k, v in h.items() if k not in ("evicted_at", "evicted_to")} for h in after]
        assert strip == [{k: v for k, v in h.items() if k not in ("evicted_at", "evicted_to")} for h in before]
    assert store.get_blob_object(a, 0).evicted_to == str(dst) and store.get_blob_object(a, 0).evicted_at
    assert store.get_blob_object(a, 0).size == 300_000
    # every version reads back exactly, the evicted ones from the destination
    for (oid, version), expected in data.items():
        obj = store.get_blob_object(oid, version)
        assert obj.data == expected
        with store.get_blob_object(oid, version).open() as stream:
            assert stream.read() == expected
    verified = store.verify()
    assert verified.ok and verified.evicted == 2 and verified.checked == store.count_versions() - 2
    from microblob.store.info import store_info

    assert store_info(store).evicted_versions == 2
    gc = store.gc()
    assert (gc.freed_files, gc.freed_orphan_chunks) == (0, 0)
    assert store.verify().ok
    # once the rest is confirmed, it may go too; and it all still reads back
    assert sync(store, dst).confirmed == 3
    evict(store, max_size=0)
    assert evicted_versions(store) == set(data)
    assert all(store.get_blob_object(oid, v).data == expected for (oid, v), expected in data.items())
    assert store.verify().ok


def test_inline_objects_are_never_evicted(embedded_store: microblob.Store, tmp_path: Path) -> None:
    oid = embedded_store.save_or_update_object(b"small and inline", save_data_in_collection=True)
    sync(embedded_store, tmp_path / "dst.db")
    report = evict(embedded_store, max_size=0)
    assert report.evicted_files == 0 and evicted_versions(embedded_store) == set()
    assert embedded_store.get_blob_object(oid).data == b"small and inline"


def test_a_target_already_met_changes_nothing(tmp_path: Path) -> None:
    with microblob.connect(tmp_path / "src.db") as store:
        oid = store.save_or_update_object(os.urandom(100_000))
        sync(store, tmp_path / "dst.db")
        before = store.backend.engine.last_txnid()
        report = evict(store, max_size=10 * 1024 * MiB, keep_free=1)
        assert report.met and report.evicted_files == 0
        assert store.backend.engine.last_txnid() == before
        assert not store.get_blob_object(oid).evicted_to


def test_keep_free_counts_the_free_pages_inside_the_file(make_tmpfs: Any, tmp_path: Path) -> None:
    """LMDB never shrinks its file: an eviction makes room by freeing pages that later saves reuse.
    (A filesystem of the test's own: other processes' writes do not move its free space.)"""
    fs = make_tmpfs("64m")
    with microblob.connect(fs.path / "src.db") as store:
        for _ in range(8):
            store.save_or_update_object(os.urandom(MiB))
        sync(store, tmp_path / "dst.db")
        free = shutil.disk_usage(fs.path).free
        size = (fs.path / "src.db").stat().st_size
        report = evict(store, keep_free=free + 3 * MiB)  # the disk's free space plus 3 MiB of free pages
        assert report.met and report.evicted_files in (3, 4), report  # the oldest first, no more than asked
        assert (fs.path / "src.db").stat().st_size < size + 64 * 1024  # not shrunk: reusable pages inside
        for _ in range(3):  # the freed pages take most of 3 MiB of new saves
            store.save_or_update_object(os.urandom(MiB))
        assert (fs.path / "src.db").stat().st_size < size + 2 * MiB


def test_reading_an_evicted_object_whose_destination_is_away(tmp_path: Path) -> None:
    src, dst = tmp_path / "src.db", tmp_path / "dst.db"
    payload = os.urandom(250_000)
    with microblob.connect(src) as store:
        oid = store.save_or_update_object(payload)
        sync(store, dst)
        evict(store, max_size=0)
    dst.rename(tmp_path / "away.db")
    with microblob.connect(src) as store:
        obj = store.get_blob_object(oid)
        assert obj.size == len(payload) and obj.sha256 == hashlib.sha256(payload).hexdigest()  # metadata here
        with pytest.raises(ObjectEvicted) as caught:
            obj.data  # noqa: B018
        error = caught.value
        assert isinstance(error, StorageError)
        assert (error.object_id, error.version, error.destination) == (oid, 0, str(dst))
        assert oid in str(error) and str(dst) in str(error) and "v0" in str(error)
        with pytest.raises(ObjectEvicted):
            store.get_blob_object(oid).open()
        (tmp_path / "away.db").rename(dst)  # back: the next read reaches it
        assert store.get_blob_object(oid).data == payload


def test_what_the_destination_no_longer_holds_is_not_evicted(tmp_path: Path) -> None:
    """Confirmed once, then overwritten at the destination without history: the record is stale, and the
    check at the destination when evicting keeps the bytes here. Unreachable: nothing is evicted."""
    src, dst = tmp_path / "src.db", tmp_path / "dst.db"
    with microblob.connect(src) as store:
        changed, kept = store.save_or_update_object(os.urandom(100_000)), store.save_or_update_object(b"x" * 9)
        sync(store, dst)
        with microblob.connect(dst) as there:
            there.save_or_update_object(b"theirs", object_id=changed)
        report = evict(store, max_size=0)
        assert evicted_versions(store) == {(kept, 0)} and report.evicted_files == 1
        assert len(store.get_blob_object(changed).data) == 100_000
        later = store.save_or_update_object(os.urandom(50_000))
        assert sync(store, dst).confirmed == 1
    dst.rename(tmp_path / "away.db")
    with microblob.connect(src) as store:
        report = evict(store, max_size=0)
        assert report.evicted_files == 0 and report.unreachable and str(dst) in report.unreachable
        assert "cannot be reached" in report.summary()
        assert not store.get_blob_object(later).evicted_to and len(store.get_blob_object(later).data) == 50_000


def test_a_destination_that_lost_the_bytes_is_object_evicted_not_wrong_bytes(tmp_path: Path) -> None:
    src, dst = tmp_path / "src.db", tmp_path / "dst.db"
    with microblob.connect(src) as store:
        oid = store.save_or_update_object(os.urandom(100_000))
        sync(store, dst)
        evict(store, max_size=0)
        with microblob.connect(dst) as there:  # replaced there without keeping history: v0's file is freed
            there.save_or_update_object(b"other bytes", object_id=oid)
        with pytest.raises(ObjectEvicted, match="no longer holds"):
            store.get_blob_object(oid).data  # noqa: B018


def test_http_download_of_an_evicted_object(tmp_path: Path, make_server: Any, asgi: Any) -> None:
    src, dst = tmp_path / "src.db", tmp_path / "dst.db"
    payload = os.urandom(300_000)
    with microblob.connect(src) as store:
        oid = store.save_or_update_object(payload, content_type="application/x-scan")
        sync(store, dst)
        evict(store, max_size=0)
        http = asgi(make_server({}, store=store))
        r = http.get(f"/objects/{oid}/data")
        assert r.status_code == 200 and r.content == payload
        assert r.headers["content-type"].startswith("application/x-scan")
        r = http.get(f"/objects/{oid}/data", headers={"Range": "bytes=1000-1999"})
        assert r.status_code == 206 and r.content == payload[1000:2000]
        meta = http.get(f"/objects/{oid}").json()
        assert meta["evicted_to"] == str(dst) and meta["size"] == len(payload)
        store.read_through.close()  # the opened destination let go, so it can move away
        dst.rename(tmp_path / "away.db")
        r = http.get(f"/objects/{oid}/data")
        assert r.status_code == 503, r.text
        body = r.json()
        assert body["error"] == "ObjectEvicted" and oid in body["detail"] and str(dst) in body["detail"]


def test_eviction_to_mongodb_reads_back_from_it(tmp_path: Path, mongo_server: Any) -> None:
    uri = mongo_server.fresh_uri()
    try:
        payloads = [os.urandom(150_000 + i) for i in range(3)]
        with microblob.connect(tmp_path / "src.db") as store:
            ids = [store.save_or_update_object(p) for p in payloads]
            store.save_or_update_object(b"v1", object_id=ids[0], control_version=True)
            sync(store, uri)
            report = evict(store, max_size=0)
            assert report.evicted_versions == 4
        with microblob.connect(tmp_path / "src.db") as store:  # a new process knows only the record
            assert [store.get_blob_object(i).data for i in ids[1:]] == payloads[1:]
            assert store.get_blob_object(ids[0], 0).data == payloads[0]
            assert store.get_blob_object(ids[0]).data == b"v1"
            assert store.verify().ok
    finally:
        mongo_server.drop(uri)


def test_copy_and_export_of_a_store_with_evicted_versions(tmp_path: Path) -> None:
    src, dst = tmp_path / "src.db", tmp_path / "dst.db"
    with microblob.connect(src) as store:
        oid = store.save_or_update_object(os.urandom(200_000))
        store.save_or_update_object(os.urandom(100_000), object_id=oid, control_version=True)
        expected = {v: o.data for v, o in versions_of(store, oid).items()}
        sync(store, dst)
        evict(store, max_size=0)
        assert evicted_versions(store) == {(oid, 0), (oid, 1)}
        # copy elsewhere: the evicted bytes are read back from the destination, and arrive unmarked
        report = microblob.copy(store, tmp_path / "other.db")
        assert report.ok and report.files_copied == 2
        with microblob.connect(tmp_path / "other.db") as other:
            assert {v: o.data for v, o in versions_of(other, oid).items()} == expected
            assert evicted_versions(other) == set() and other.verify().ok
        # the destination itself: nothing travels again
        again = sync(store, dst)
        assert not again.copy.copied_anything
        microblob.export_store(store, tmp_path / "bundle.mbx")
        microblob.import_store(tmp_path / "bundle.mbx", tmp_path / "imported.db")
        with microblob.connect(tmp_path / "imported.db") as imported:
            assert {v: o.data for v, o in versions_of(imported, oid).items()} == expected
            assert imported.verify().ok
        store.read_through.close()
        dst.rename(tmp_path / "away.db")
        # with the destination away: the object is left out and named, nothing broken is written
        report = microblob.copy(store, tmp_path / "third.db")
        assert [p[0] for p in report.problems] == [oid] and "evicted" in report.problems[0][1]
        with microblob.connect(tmp_path / "third.db") as third:
            assert third.count_objects() == 0 and third.verify().ok


def test_bad_sizes_are_typed_errors_and_change_nothing(embedded_store: microblob.Store, tmp_path: Path) -> None:
    oid = embedded_store.save_or_update_object(os.urandom(100_000))
    sync(embedded_store, tmp_path / "dst.db")
    for bad in ({"keep_free": -1}, {"max_size": -5}, {"max_size": "lots"}, {"max_size": "-2G"},
                {"keep_free": True}, {"max_size": 1.5}, {"max_size": [1]}, {}):
        with pytest.raises(InvalidArgument):
            evict(embedded_store, **bad)
    with pytest.raises(InvalidArgument):
        evict("not a store", max_size=0)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        evict(embedded_store, max_size=0, destination=42)  # type: ignore[arg-type]
    for bad in ({"keep_free": -1}, {"max_size": "2X"}):
        with pytest.raises(InvalidArgument):
            SyncWorker(embedded_store, tmp_path / "dst.db", **bad)
    assert evicted_versions(embedded_store) == set()
    assert embedded_store.get_blob_object(oid).data and embedded_store.verify().ok
    assert evict(embedded_store, max_size="0B").evicted_files == 1  # "0B", "2G", "64KiB" are sizes


def test_keep_free_needs_a_file_and_mongodb_evicts_nothing(tmp_path: Path, mongo_server: Any) -> None:
    with microblob.connect("memory://") as memory, pytest.raises(microblob.UnsupportedOperation):
        evict(memory, keep_free=MiB)
    uri = mongo_server.fresh_uri()
    try:
        with microblob.connect(uri) as mongo, pytest.raises(microblob.UnsupportedOperation):
            evict(mongo, max_size=0)
    finally:
        mongo_server.drop(uri)


def test_several_destinations_must_be_named(tmp_path: Path) -> None:
    with microblob.connect(tmp_path / "src.db") as store:
        oid = store.save_or_update_object(os.urandom(100_000))
        sync(store, tmp_path / "one.db")
        sync(store, tmp_path / "two.db")
        with pytest.raises(InvalidArgument, match="several destinations"):
            evict(store, max_size=0)
        assert evict(store, max_size=0, destination=tmp_path / "two.db").evicted_files == 1
        assert store.get_blob_object(oid).evicted_to == str(tmp_path / "two.db")


def test_the_sync_worker_evicts_after_its_rounds(tmp_path: Path) -> None:
    dst = tmp_path / "dst.db"
    with microblob.connect(tmp_path / "src.db") as store:
        ids = [store.save_or_update_object(os.urandom(200_000)) for _ in range(4)]
        with SyncWorker(store, dst, interval=0.05, max_size=0) as worker:
            deadline = time.monotonic() + 60
            while len(evicted_versions(store)) < 4:
                assert time.monotonic() < deadline, "the worker never evicted"
                time.sleep(0.05)
        assert worker.last_eviction is not None
        with microblob.connect(dst) as there:
            assert all(store.get_blob_object(i).data == there.get_blob_object(i).data for i in ids)


def test_cli_evict_and_sync_with_retention(tmp_path: Path) -> None:
    src, dst = tmp_path / "src.db", tmp_path / "dst.db"
    with microblob.connect(src) as store:
        first = store.save_or_update_object(os.urandom(300_000))
    done = cli("sync", str(src), str(dst), "--max-size", "1")
    assert done.returncode == 0, done.stderr
    assert "evicted 1 version (1 file" in done.stdout, done.stdout
    with microblob.connect(src) as store:
        second = store.save_or_update_object(os.urandom(300_000))
    unsynced = cli("evict", "--db", str(src), "--max-size", "1", "--json")
    assert unsynced.returncode == 1  # the target cannot be met: the rest is not synced
    report = json.loads(unsynced.stdout)
    assert report["evicted_files"] == 0 and report["met"] is False and report["still_needed"] > 0
    assert cli("sync", str(src), str(dst)).returncode == 0
    text = cli("evict", "--db", str(src), "--max-size", "1", "--to", str(dst))
    assert "evicted 1 version" in text.stdout and "confirmed at" in text.stdout, text.stdout
    with microblob.connect(src) as store:
        assert evicted_versions(store) == {(first, 0), (second, 0)}
    assert "evicted:   2 versions" in cli("info", "--db", str(src)).stdout
    for bad in (["--max-size", "-1"], ["--keep-free", "lots"], []):
        wrong = cli("evict", "--db", str(src), *bad)
        assert wrong.returncode == 2, (bad, wrong.stderr)
    assert cli("sync", str(src), str(dst), "--keep-free", "nope").returncode == 2
    got = cli("get", first, "--db", str(src), "-o", str(tmp_path / "out.bin"))
    assert got.returncode == 0, got.stderr
    with microblob.connect(dst) as there:
        assert (tmp_path / "out.bin").read_bytes() == there.get_blob_object(first).data


def test_a_filling_disk_with_retention_then_unsynced_data(make_tmpfs: Any, tmp_path: Path) -> None:
    """On a 24 MiB filesystem: a disk full of synced bytes gets room back from one eviction; 60 MiB of
    saves then succeed while each is synced and the confirmed ones evicted; then, with nothing synced,
    saves fail with StoreFull and nothing is lost."""
    fs = make_tmpfs("24m")
    src, dst = fs.path / "src.db", tmp_path / "dst.db"
    saved: dict[str, bytes] = {}
    with microblob.connect(src) as store:
        # synced but kept here, until the disk is full
        assert isinstance(fill(store.save_or_update_object, saved, lambda: sync(store, dst)), StoreFull)
        assert evict(store, keep_free=6 * MiB).met  # a full disk of confirmed bytes: room again at once
        for i in range(60):
            data = os.urandom(MiB)
            saved[store.save_or_update_object(data, custom_metadata={"i": i})] = data
            sync(store, dst)
            evict(store, keep_free=6 * MiB)
        assert len(evicted_versions(store)) > 30  # most of it lives at the destination now
        unsynced: dict[str, bytes] = {}
        while True:  # fill with unsynced data; evict what is still evictable; until nothing is
            error = fill(store.save_or_update_object, unsynced)
            assert isinstance(error, StoreFull) and isinstance(error, StorageError), repr(error)
            assert "full" in str(error)
            report = evict(store, keep_free=6 * MiB)
            if report.evicted_files == 0:
                break
        assert unsynced, "not one unsynced object fitted"
        evicted = {oid for oid, _ in evicted_versions(store)}
        assert evicted <= set(saved) and not evicted & set(unsynced)  # the unsynced bytes all stay here
        for oid, data in {**saved, **unsynced}.items():
            assert store.get_blob_object(oid).data == data
        assert store.verify().ok
    with microblob.connect(src, create=False) as store:
        assert {o.object_id for o in store.blob_object_query({})} == set(saved) | set(unsynced)
        assert store.verify().ok
        assert all(not store.get_blob_object(oid).evicted_to for oid in unsynced)


def test_with_a_sync_worker_a_save_that_finds_the_disk_full_evicts_first(make_tmpfs: Any,
                                                                         tmp_path: Path) -> None:
    """Between the worker's rounds the disk fills up with synced bytes: the save that finds it full
    evicts confirmed bytes and succeeds; once only unsynced bytes are left, saves fail with StoreFull."""
    fs = make_tmpfs("24m")
    src, dst = fs.path / "src.db", tmp_path / "dst.db"
    with microblob.connect(src) as store:
        synced: dict[str, bytes] = {}
        assert isinstance(fill(store.save_or_update_object, synced, lambda: sync(store, dst)), StoreFull)
        worker = SyncWorker(store, dst, interval=3600, keep_free=1).start()  # one round now, then none
        try:
            deadline = time.monotonic() + 60
            while worker.rounds < 1:
                assert time.monotonic() < deadline, "the worker's first round never ended"
                time.sleep(0.05)
            unsynced: dict[str, bytes] = {}
            error = fill(store.save_or_update_object, unsynced)
        finally:
            worker.stop()
        assert store.on_full is None  # the worker's hook goes with it
        assert len(unsynced) > 10  # room made by evicting synced bytes, save by save
        assert isinstance(error, StoreFull)  # and then only unsynced bytes were left
        evicted = {oid for oid, _ in evicted_versions(store)}
        assert evicted <= set(synced) and len(evicted) > 10
        for oid, data in {**synced, **unsynced}.items():
            assert store.get_blob_object(oid).data == data
        assert store.verify().ok


class _OneWayStream:
    """A file object that reads forward only (a pipe, a socket): it cannot be read twice."""

    def __init__(self, data: bytes) -> None:
        self._inner = io.BytesIO(data)

    def read(self, n: int = -1) -> bytes:
        return self._inner.read(n)

    def seekable(self) -> bool:
        return False


def test_a_stream_save_that_finds_the_disk_full_is_retried_only_if_it_can_be_rewound(make_tmpfs: Any,
                                                                                    tmp_path: Path) -> None:
    """A disk full of synced bytes, retention on: a seekable file object (read from its middle) is
    rewound to where the save began and saved after the eviction; a forward-only stream fails with a
    StoreFull that says why, leaving nothing, and saves fine from its start once room was made."""
    fs = make_tmpfs("24m")
    src, dst = fs.path / "src.db", tmp_path / "dst.db"
    with microblob.connect(src) as store:
        synced: dict[str, bytes] = {}
        assert isinstance(fill(store.save_or_update_object, synced, lambda: sync(store, dst)), StoreFull)
        payload = os.urandom(5 * MiB)
        with pytest.raises(StoreFull):  # no retention yet: it does not fit
            store.save_or_update_object(io.BytesIO(payload))
        worker = SyncWorker(store, dst, interval=3600, keep_free=1).start()
        try:
            deadline = time.monotonic() + 60
            while worker.rounds < 1:
                assert time.monotonic() < deadline, "the worker's first round never ended"
                time.sleep(0.05)
            hook, asked = store.on_full, []
            assert hook is not None
            store.on_full = lambda wanted: (asked.append(wanted), hook(wanted))[1]
            stream = io.BytesIO(b"skip me" + payload)
            stream.seek(7)  # the save starts here, and the retry must too
            oid = store.save_or_update_object(stream)
            assert asked == [5 * MiB]  # it found the disk full, made room, and was tried again
            assert store.get_blob_object(oid).data == payload
            before = store.count_objects()
            store.on_full = None  # full again, of synced bytes
            assert isinstance(fill(store.save_or_update_object, synced, lambda: sync(store, dst)), StoreFull)
            store.on_full = hook
            count = store.count_objects()
            with pytest.raises(StoreFull, match="cannot be rewound.*save it again from its start"):
                store.save_or_update_object(_OneWayStream(payload))
            assert store.count_objects() == count > before  # nothing of it was kept
            again = store.save_or_update_object(_OneWayStream(payload))  # room was made: from its start, it fits
            assert store.get_blob_object(again).data == payload
        finally:
            worker.stop()
        assert store.gc().freed_orphan_chunks == 0 and store.verify().ok
        for object_id, data in synced.items():
            assert store.get_blob_object(object_id).data == data


# --- the property: no unconfirmed byte is ever evicted --------------------------------------------------


class RetentionMachine(RuleBasedStateMachine):
    """Random saves, updates (with and without history, metadata only), sync rounds, evictions, reopens
    and changes made at the destination. After every step: each version the model knows reads back
    exactly from the source (its own bytes or the destination's), or, when the destination overwrote
    it, raises ObjectEvicted (never other bytes); and every eviction only took versions the
    destination held at that moment with the same sha256."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="retention-"))
        self.src_path, self.dst_path = self.dir / "src.db", self.dir / "dst.db"
        self.store = microblob.connect(self.src_path, chunk_size=16_384)
        self.model: dict[str, dict[int, bytes]] = {}  # object -> version -> bytes (what the source holds)
        self.lost: set[tuple[str, int]] = set()  # versions the destination overwrote after they were evicted

    def teardown(self) -> None:
        self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    @rule(size=st.integers(0, 40_000), inline=st.booleans())
    def save_new(self, size: int, inline: bool) -> None:
        data = os.urandom(size)
        oid = self.store.save_or_update_object(data, save_data_in_collection=inline and size < 20_000)
        self.model[oid] = {0: data}

    @rule(data=st.data(), size=st.integers(1, 40_000), versioned=st.booleans())
    def update(self, data: st.DataObject, size: int, versioned: bool) -> None:
        if not self.model:
            return
        oid = data.draw(st.sampled_from(sorted(self.model)))
        payload = os.urandom(size)
        obj = self.store.save_object(payload, object_id=oid, control_version=versioned)
        if not versioned:
            self.model[oid] = {v: b for v, b in self.model[oid].items() if v != obj.version - 1}
        self.model[oid][obj.version] = payload

    @rule(data=st.data())
    def update_metadata(self, data: st.DataObject) -> None:
        if not self.model:
            return
        oid = data.draw(st.sampled_from(sorted(self.model)))
        latest = max(self.model[oid])
        self.store.update_object_metadata(oid, custom_metadata={"n": latest})
        self.model[oid][latest + 1] = self.model[oid][latest]
        if (oid, latest) in self.lost:  # the new version shares those bytes, wherever they are
            self.lost.add((oid, latest + 1))

    @rule()
    def sync_round(self) -> None:
        sync(self.store, self.dst_path)

    @rule(max_size=st.sampled_from([0, 50_000, 10 * MiB]))
    def evict_some(self, max_size: int) -> None:
        before = evicted_versions(self.store)
        report = evict(self.store, max_size=max_size)
        newly = evicted_versions(self.store) - before
        if not self.dst_path.exists():  # never synced: nothing is confirmed anywhere
            assert not newly and report.evicted_files == 0
            return
        with microblob.connect(self.dst_path, create=False) as there:
            for oid, version in newly:
                mine = self.store.get_blob_object(oid, version)
                theirs = there.get_blob_object(oid, version)  # the destination holds this very version
                assert (theirs.sha256, theirs.size) == (mine.sha256, mine.size)
                assert theirs.data == self.model[oid][version]

    @rule()
    def reopen(self) -> None:
        self.store.close()
        self.store = microblob.connect(self.src_path, chunk_size=16_384)

    @rule(data=st.data())
    def destination_overwrites(self, data: st.DataObject) -> None:
        """Someone at the destination replaces an object without keeping history: what was evicted
        there from this object can no longer be read back, and must say so."""
        if not self.model or not self.dst_path.exists():
            return
        oid = data.draw(st.sampled_from(sorted(self.model)))
        with microblob.connect(self.dst_path, create=False) as there:
            if there.count_objects({"_id": oid}) == 0:
                return
            there.save_or_update_object(b"changed at the destination", object_id=oid)
        self.store.read_through.close()
        for version in self.model[oid]:
            self.lost.add((oid, version))

    @invariant()
    def every_version_reads_back_or_says_why_not(self) -> None:
        for oid, versions in self.model.items():
            assert sorted(h["version"] for h in self.store.get_object_history(oid)) == sorted(versions)
            for version, expected in versions.items():
                obj = self.store.get_blob_object(oid, version)
                if not obj.evicted_to:
                    assert obj.data == expected
                    continue
                try:
                    got = obj.data
                except ObjectEvicted:
                    assert (oid, version) in self.lost
                    continue
                assert got == expected

    @invariant()
    def verify_accepts_it(self) -> None:
        report = self.store.verify()
        assert report.ok, report.damaged


def test_eviction_never_touches_an_unconfirmed_version() -> None:
    run_state_machine_as_test(RetentionMachine, settings=settings(
        max_examples=examples(200), stateful_step_count=30, deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]))


# --- kill -9 while evicting -----------------------------------------------------------------------------

_CHILD = r"""
import sys, microblob
with microblob.connect(sys.argv[1], create=False) as store:
    print("ready", flush=True)
    report = microblob.evict(store, max_size=0)
    print("done", report.evicted_files, flush=True)
"""


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_kill_9_while_evicting_leaves_bytes_or_a_mark(tmp_path: Path, seed: int) -> None:
    """A process evicting 600 confirmed files (about ten transactions) is killed at a random moment:
    every version still has its bytes here, or is marked evicted with its bytes at the destination;
    never neither, and an eviction run again finishes the job."""
    src, dst = tmp_path / "src.db", tmp_path / "dst.db"
    expected: dict[tuple[str, int], str] = {}
    with microblob.connect(src) as store:
        for _ in range(300):
            oid = store.save_or_update_object(os.urandom(20_000))
            store.save_or_update_object(os.urandom(10_000), object_id=oid, control_version=True)
        sync(store, dst)
        for obj in store.blob_object_query(None):
            for version, o in versions_of(store, obj.object_id).items():
                expected[obj.object_id, version] = o.sha256
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(src)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    time.sleep(random.Random(seed).uniform(0.0, 0.25))
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    with microblob.connect(src, create=False) as store:
        assert store.verify().ok
        marked = 0
        for (oid, version), sha256 in expected.items():
            o = store.get_blob_object(oid, version)
            assert store.files.exists(o.file_id) != bool(o.evicted_to), (oid, version)  # bytes xor mark
            marked += bool(o.evicted_to)
            data = o.data  # here or from the destination, sha256-checked on the way
            assert hashlib.sha256(data).hexdigest() == sha256
        again = evict(store, max_size=0)
        assert marked + again.evicted_versions == len(expected)
        assert store.gc().freed_orphan_chunks == 0 and store.verify().ok


def test_serve_with_retention_evicts_and_still_serves_the_bytes(tmp_path: Path) -> None:
    """`serve --sync-to DST --max-size 1`: what the server saves is pushed, then evicted here, and its
    download is read back from DST by the server."""
    import httpx

    src, dst = tmp_path / "src.db", tmp_path / "dst.db"
    proc = subprocess.Popen([sys.executable, "-m", "microblob", "serve", "--db", str(src), "--port", "0",
                             "--sync-to", str(dst), "--max-size", "1", "--log-level", "warning"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    payload = os.urandom(400_000)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), proc.stderr.read() if proc.stderr else ""
        with httpx.Client(base_url=url, timeout=30) as http:
            r = http.post("/objects/", content=payload, headers={"X-Requested-With": "test",
                                                                 "Content-Type": "application/octet-stream"})
            assert r.status_code == 201, r.text
            object_id = r.json()["object_id"]
            deadline = time.monotonic() + 60
            while not http.get(f"/objects/{object_id}").json().get("evicted_to"):
                assert time.monotonic() < deadline, "the server never evicted what it synced"
                time.sleep(0.1)
            assert http.get(f"/objects/{object_id}").json()["evicted_to"] == str(dst)
            r = http.get(f"/objects/{object_id}/data")
            assert r.status_code == 200 and r.content == payload
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
    assert proc.returncode in (0, 130)
    with microblob.connect(src) as store:
        assert store.get_blob_object(object_id).evicted_to == str(dst) and store.verify().ok


def test_records_written_before_retention_are_renewed_by_a_full_round(tmp_path: Path) -> None:
    """A confirmation without the life and history (as sync wrote them before retention) allows no
    eviction; the next full round writes it again, and then the versions may go."""
    dst = tmp_path / "dst.db"
    with microblob.connect(tmp_path / "src.db") as store:
        oid = store.save_or_update_object(os.urandom(50_000))
        store.save_or_update_object(os.urandom(40_000), object_id=oid, control_version=True)
        sync(store, dst)
        confirmed = store.backend.collection("microblob.sync_confirmed")
        [record] = confirmed.find({"object_id": oid})
        confirmed.replace_one({"_id": record["_id"]}, {k: v for k, v in record.items()
                                                       if k not in ("created_at", "history")})
        assert evict(store, max_size=0).evicted_files == 0
        assert sync(store, dst).confirmed == 0  # an ordinary round: nothing new
        renewed = sync(store, dst, full=True)
        assert renewed.confirmed == 0 and not renewed.copy.copied_anything
        assert evict(store, max_size=0).evicted_versions == 2
        assert {v for _, v in evicted_versions(store)} == {0, 1}
