"""`sync status` reads counters kept with every change (store/sync_pending.py), not a walk of the
backlog: after any sequence of saves, updates, deletes, copies in and rounds, on every embedded
backend, to one or two destinations, after a reopen and after a kill -9 at a random moment, the
numbers are exactly what a brute-force comparison with each destination finds."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import microblob
from microblob import sync, sync_status


def brute_force(store: microblob.Store, dst: microblob.Store) -> tuple[int, int, Any]:
    """(objects, bytes, oldest updated_at) of the objects whose latest version the destination does
    not hold as its own latest (same version, sha256 and life): asked of both stores, document by
    document."""
    objects = size = 0
    oldest = None
    for doc in store.internals.objects.iter_documents({}, projection={"data": 0}):
        there = dst.internals.objects.find_one({"_id": doc["_id"]}, projection={"data": 0})
        same = there is not None and all(there.get(k) == doc.get(k) for k in ("version", "sha256", "created_at"))
        if not same:
            objects += 1
            size += int(doc.get("size") or 0)
            oldest = doc["updated_at"] if oldest is None else min(oldest, doc["updated_at"])
    return objects, size, oldest


def by_records(store: microblob.Store, dst: microblob.Store) -> tuple[int, int, Any]:
    """The same from the source's own confirmation records, each found by its fields: what the counts
    must equal at every moment, also when a round was killed between its copy and its confirmation
    (then the destination holds versions the source does not yet know are there)."""
    records = {d["object_id"]: d for d in store.internals.backend.collection("microblob.sync_confirmed").find(
        {"destination": dst.uri})}
    objects = size = 0
    oldest = None
    for doc in store.internals.objects.iter_documents({}, projection={"data": 0}):
        mine = records.get(doc["_id"])
        if mine is None or any(mine.get(k) != doc.get(k) for k in ("version", "sha256", "created_at")):
            objects += 1
            size += int(doc.get("size") or 0)
            oldest = doc["updated_at"] if oldest is None else min(oldest, doc["updated_at"])
    return objects, size, oldest


def status_of(store: microblob.Store, dst: microblob.Store) -> tuple[int, int, Any]:
    (status,) = sync_status(store, dst)
    return status.pending_objects, status.pending_bytes, status.oldest_pending


def random_step(store: microblob.Store, rng: random.Random, ids: list[str], dsts: list[microblob.Store]) -> None:
    """One of: a new object, a new version (kept or not), a metadata-only version, a delete, a round."""
    roll = rng.random()
    if roll < 0.3 or not ids:
        ids.append(store.save_or_update_object(os.urandom(rng.randint(0, 3000)),
                                               save_data_in_collection=rng.random() < 0.3))
    elif roll < 0.55:
        store.save_or_update_object(os.urandom(rng.randint(1, 3000)), object_id=rng.choice(ids),
                                    control_version=rng.random() < 0.5)
    elif roll < 0.65:
        store.update_object_metadata(rng.choice(ids), tags=[str(rng.random())])
    elif roll < 0.78:
        store.delete_object(ids.pop(rng.randrange(len(ids))))
    elif roll < 0.85:  # deleted and saved again under the same id: a new life, version 0 again
        oid = rng.choice(ids)
        store.delete_object(oid)
        store.save_or_update_object(b"again", object_id=oid)
    else:
        sync(store, rng.choice(dsts), full=rng.random() < 0.2)


@pytest.mark.parametrize("seed", range(6))
def test_counts_are_exact_after_random_sequences(embedded_kind: str, tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    uri = tmp_path / "src.db" if embedded_kind == "lmdb" else "memory://"
    dsts = [microblob.connect(tmp_path / "a.db"), microblob.connect(tmp_path / "b.db")]
    store = microblob.connect(uri)
    ids: list[str] = []
    for _ in range(8):
        ids.append(store.save_or_update_object(os.urandom(100)))
    for dst in dsts:  # both recorded before the sequence: from here on both are counted
        sync(store, dst)
    for step in range(120):
        random_step(store, rng, ids, dsts)
        if step % 15 == 0:
            for dst in dsts:
                assert status_of(store, dst) == brute_force(store, dst), step
    for dst in dsts:
        assert status_of(store, dst) == brute_force(store, dst)
    if embedded_kind == "lmdb":
        store.close()
        store = microblob.connect(uri, create=False)
        for dst in dsts:
            assert status_of(store, dst) == brute_force(store, dst)
    for dst in dsts:  # what a round leaves pending is what it could not push: ids reused at the source
        sync(store, dst)
        (status,) = sync_status(store, dst)
        assert status_of(store, dst) == brute_force(store, dst)
        assert status.pending_objects == len({oid for oid, _why in status.problems})
        dst.close()
    store.close()


def test_a_copy_into_the_source_counts_as_pending(tmp_path: Path) -> None:
    """Objects brought in by `copy` (with their old timestamps) are pending at once: the watermark
    would have missed them until a full round."""
    other = microblob.connect("memory://")
    for _ in range(5):
        other.save_or_update_object(os.urandom(1000))
    with microblob.connect(tmp_path / "src.db") as store, microblob.connect(tmp_path / "dst.db") as dst:
        store.save_or_update_object(b"first")
        sync(store, dst)
        assert status_of(store, dst)[:2] == (0, 0)
        microblob.copy(other, store)
        assert status_of(store, dst) == brute_force(store, dst)
        assert status_of(store, dst)[:2] == (5, 5000)


def test_a_store_recorded_before_counting_is_counted_at_its_next_status(tmp_path: Path) -> None:
    """A destination record without the `counted` mark (a store synced by an older microblob) is
    counted from scratch once, then kept."""
    with microblob.connect(tmp_path / "src.db") as store, microblob.connect(tmp_path / "dst.db") as dst:
        for _ in range(4):
            store.save_or_update_object(os.urandom(500))
        sync(store, dst)
        store.save_or_update_object(os.urandom(700))
        state = store.internals.backend.collection("microblob.sync")
        state.update_one({}, {"$unset": {"counted": ""}})
        store.internals.backend.collection("microblob.sync_pending").delete_many({})
        assert status_of(store, dst) == brute_force(store, dst) == (1, 700, status_of(store, dst)[2])
        sync(store, dst)  # the round counts it again, and marks it
        assert state.find_one({})["counted"] is True
        store.save_or_update_object(os.urandom(300))
        assert status_of(store, dst) == brute_force(store, dst)


_CHILD = r"""
import os, random, sys, microblob
rng = random.Random(int(sys.argv[3]))
store = microblob.connect(sys.argv[1], create=False)
dst = microblob.connect(sys.argv[2], create=False)
ids = [d["_id"] for d in store.internals.objects.find({}, projection={"_id": 1})]
print("ready", flush=True)
while True:
    roll = rng.random()
    if roll < 0.4 or not ids:
        ids.append(store.save_or_update_object(os.urandom(rng.randint(0, 50_000))))
    elif roll < 0.7:
        store.save_or_update_object(os.urandom(rng.randint(1, 50_000)), object_id=rng.choice(ids),
                                    control_version=True)
    elif roll < 0.8:
        store.delete_object(ids.pop(rng.randrange(len(ids))))
    else:
        microblob.sync(store, dst)
"""


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_kill_9_between_saves_and_confirmations_leaves_the_counts_exact(tmp_path: Path, seed: int) -> None:
    src, dst = tmp_path / "src.db", tmp_path / "dst.db"
    with microblob.connect(src) as store:
        for _ in range(20):
            store.save_or_update_object(os.urandom(1000))
        sync(store, dst)
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(src), str(dst), str(seed)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    time.sleep(random.Random(seed).uniform(0.3, 1.5))
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    with microblob.connect(src, create=False) as store, microblob.connect(dst, create=False) as remote:
        assert status_of(store, remote) == by_records(store, remote)
        sync(store, remote)
        assert status_of(store, remote)[:2] == (0, 0) == brute_force(store, remote)[:2]


def test_saves_to_a_store_without_destinations_write_no_pending_records(tmp_path: Path) -> None:
    with microblob.connect(tmp_path / "src.db") as store:
        oid = store.save_or_update_object(b"x")
        store.save_or_update_object(b"y", object_id=oid)
        store.delete_object(oid)
        assert store.internals.backend.collection("microblob.sync_pending").count_documents({}) == 0


def evicted_by_walk(store: microblob.Store) -> tuple[int, int, int]:
    """(files, versions, bytes) evicted, found by reading every version: what the counters must say."""
    versions = 0
    files: dict[Any, int] = {}
    for coll in (store.internals.objects, store.internals.history):
        for doc in coll.iter_documents({}, projection={"data": 0}):
            if doc.get("evicted_to"):
                versions += 1
                files[doc["file_id"]] = int(doc.get("size") or 0)
    return len(files), versions, sum(files.values())


def evicted_of(store: microblob.Store) -> tuple[int, int, int]:
    (status,) = sync_status(store)
    return status.evicted_files, status.evicted_versions, status.evicted_bytes


@pytest.mark.parametrize("seed", range(4))
def test_evicted_counts_are_exact_after_random_evictions_saves_and_deletes(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    with microblob.connect(tmp_path / "src.db") as store, microblob.connect(tmp_path / "dst.db") as dst:
        ids = [store.save_or_update_object(os.urandom(rng.randint(1, 5000))) for _ in range(10)]
        sync(store, dst)
        evicted_any = False
        for step in range(60):
            roll = rng.random()
            if roll < 0.2:
                ids.append(store.save_or_update_object(os.urandom(rng.randint(1, 5000))))
            elif roll < 0.35 and ids:
                store.save_or_update_object(os.urandom(rng.randint(1, 5000)), object_id=rng.choice(ids),
                                            control_version=rng.random() < 0.5)
            elif roll < 0.5 and ids:  # a metadata-only version shares (possibly evicted) bytes
                store.update_object_metadata(rng.choice(ids), tags=["t"], control_version=rng.random() < 0.5)
            elif roll < 0.6 and ids:
                store.delete_object(ids.pop(rng.randrange(len(ids))))
            elif roll < 0.8:
                sync(store, dst)
            else:
                report = microblob.evict(store, max_size=rng.choice([0, 20_000, 60_000]))
                evicted_any = evicted_any or report.evicted_files > 0
            assert evicted_of(store) == evicted_by_walk(store), step
        assert evicted_any
    with microblob.connect(tmp_path / "src.db", create=False) as store:
        assert evicted_of(store) == evicted_by_walk(store)


def test_cli_sync_status_shows_pending_and_evicted(tmp_path: Path) -> None:
    from _inprocess_cli import run_cli

    with microblob.connect(tmp_path / "src.db") as store:
        store.save_or_update_object(b"z" * 3000)
        sync(store, tmp_path / "dst.db")
        microblob.evict(store, max_size=0)
        store.save_or_update_object(b"y" * 1500)
    done = run_cli(["sync", "status", str(tmp_path / "src.db")], cwd=tmp_path, env=dict(os.environ))
    out = done.stdout.decode()
    assert done.returncode == 0, done.stderr
    assert "1 object pending (1.5 KiB)" in out, out
    assert "evicted here: 1 version (1 file, 2.9 KiB freed)" in out, out


def test_counts_are_exact_on_every_backend(store: microblob.Store, tmp_path: Path) -> None:
    """The same counters on MongoDB and Mongita (no transaction there, so only a crash could skew them,
    and a full round counts them again)."""
    rng = random.Random(7)
    dst = microblob.connect(tmp_path / "dst.db")
    ids = [store.save_or_update_object(os.urandom(100)) for _ in range(5)]
    sync(store, dst)
    for step in range(40):
        random_step(store, rng, ids, [dst])
        if step % 10 == 0:
            assert status_of(store, dst) == brute_force(store, dst) == by_records(store, dst), step
    sync(store, dst, full=True)
    assert status_of(store, dst) == brute_force(store, dst) == by_records(store, dst)
    dst.close()
