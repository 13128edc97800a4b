"""Versions (docs/ARCHITECTURE.md, "Objects and versions"): numbering, history, mixed modes, and concurrent writers."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest

import microblob
from microblob import VersionNotFound


def test_version_increments_whatever_control_version_is(store: microblob.Store) -> None:
    object_id = store.save_or_update_object(b"0")
    for i in range(1, 5):
        store.save_or_update_object(str(i).encode(), object_id=object_id, control_version=bool(i % 2))
    obj = store.get_blob_object(object_id)
    assert obj.version == 4 and obj.data == b"4"
    # versions 1 and 3 were saved with control_version, so 0 and 2 were archived when they were replaced
    versions = [h["version"] for h in store.get_object_history(object_id)]
    assert versions == [4, 2, 0]
    assert store.get_blob_object(object_id, version=2).data == b"2"
    with pytest.raises(VersionNotFound):
        store.get_blob_object(object_id, version=3)  # replaced without control_version: gone


def test_prev_version_always_names_a_readable_version(store: microblob.Store) -> None:
    object_id = store.save_or_update_object(b"0")
    store.save_or_update_object(b"1", object_id=object_id, control_version=True)  # archives 0
    store.save_or_update_object(b"2", object_id=object_id, control_version=False)  # overwrites 1
    obj = store.get_blob_object(object_id)
    assert obj.version == 2 and obj.prev_version == 0
    assert store.get_blob_object(object_id, version=obj.prev_version).data == b"0"
    assert store.verify().ok


def test_history_never_holds_two_entries_for_one_version(store: microblob.Store) -> None:
    object_id = store.save_or_update_object(b"0")
    store.update_object_metadata(object_id, custom_metadata={"x": 1})
    store.update_object_metadata(object_id, custom_metadata={"x": 2})
    entries = store.query({"object_id": object_id}, collection="object_history")
    assert sorted(e["version"] for e in entries) == [0, 1]


def test_history_documents_are_immutable_through_the_api(store: microblob.Store) -> None:
    object_id = store.save_or_update_object(b"0", custom_metadata={"k": "orig"})
    store.save_or_update_object(b"1", object_id=object_id, control_version=True, custom_metadata={"k": "new"})
    before = store.query({"object_id": object_id}, collection="object_history")
    store.update_object_metadata(object_id, custom_metadata={"k": "newer"})
    store.save_or_update_object(b"3", object_id=object_id, control_version=False)
    after = store.query({"object_id": object_id, "version": 0}, collection="object_history")
    assert after == [e for e in before if e["version"] == 0]


def test_exact_version_lookup_is_indexed(embedded_store: microblob.Store, count_reads: Callable) -> None:
    """Reading version N of a long history reads a handful of records, not the history. (On MongoDB the
    same lookups are by `_id`, which the server indexes; this counts the embedded engine's reads.)"""
    store = embedded_store
    object_id = store.save_or_update_object(b"v0")
    for i in range(1, 300):
        store.update_object_metadata(object_id, custom_metadata={"i": i})
    counts = count_reads(store)
    assert store.get_blob_object(object_id, version=7).custom_metadata == {"i": 7}
    assert store.get_blob_object(object_id, version=0).data == b"v0"
    assert counts["scanned"] == 0, counts
    assert counts["get"] <= 8, counts


def _assert_contiguous(store: microblob.Store, object_id: str, expected_latest: int) -> None:
    latest = store.get_blob_object(object_id)
    assert latest.version == expected_latest
    history = store.get_object_history(object_id)
    assert [h["version"] for h in history] == list(range(expected_latest, -1, -1))
    for entry in history[:-1]:
        assert entry["prev_version"] == entry["version"] - 1


def test_concurrent_threads_never_lose_a_version(store: microblob.Store) -> None:
    object_id = store.save_or_update_object(b"start")
    per_thread, threads = 25, 8
    errors: list[BaseException] = []
    saved: dict[int, bytes] = {}  # version -> the payload of the save_object call that wrote it

    def writer(n: int) -> None:
        try:
            for i in range(per_thread):
                payload = f"{n}-{i}".encode()
                obj = store.save_object(payload, object_id=object_id, control_version=True)
                assert obj.object_id == object_id and obj.size == len(payload)
                saved[obj.version] = payload
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    pool = [threading.Thread(target=writer, args=(n,)) for n in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert errors == []
    _assert_contiguous(store, object_id, per_thread * threads)
    assert sorted(saved) == list(range(1, per_thread * threads + 1))  # each call names its own version
    assert all(store.get_blob_object(object_id, version=v).data == data for v, data in saved.items())
    assert store.verify().ok


WRITER = """
import sys, threading, microblob
path, object_id, n, per = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
store = microblob.connect(path)
def work(t):
    for i in range(per):
        payload = (f"{n}-{t}-{i}-" * 5000).encode()   # chunked, > 1 chunk
        store.save_or_update_object(payload, object_id=object_id, control_version=True)
threads = [threading.Thread(target=work, args=(t,)) for t in range(2)]
for t in threads: t.start()
for t in threads: t.join()
store.close()
"""


def test_concurrent_processes_on_one_file_never_lose_a_version(lmdb_path: Path, run_python: Callable) -> None:
    import subprocess
    import sys

    with microblob.connect(lmdb_path) as store:
        object_id = store.save_or_update_object(b"start")
    procs, per = 4, 10
    import os

    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    children = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(lmdb_path), object_id, str(n), str(per)], env=env,
                         stderr=subprocess.PIPE)
        for n in range(procs)
    ]
    for child in children:
        _, err = child.communicate(timeout=300)
        assert child.returncode == 0, err.decode()
    with microblob.connect(lmdb_path) as store:
        _assert_contiguous(store, object_id, procs * 2 * per)
        report = store.verify()
        assert report.ok, report.damaged
        assert report.checked == procs * 2 * per + 1
