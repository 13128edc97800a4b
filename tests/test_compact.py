"""`store.compact()` and `microblob compact`: the file shrinks in place, nothing is lost, and it is never done
behind the back of another opener (docs/ARCHITECTURE.md, "Compaction").

Everything is real: the LMDB file, other processes holding it open or opening it mid-compaction, and
children killed with SIGKILL at every step of a compaction and at random moments of it.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import microblob
from microblob import StorageError, StoreFull, StoreInUse, UnsupportedOperation
from microblob.engine import lmdb_compact

ROOT = Path(__file__).resolve().parents[1]
KiB = 1024
HANG = 120.0  # seconds: a child that says nothing for this long hangs


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MICROBLOB_URI", "MICROBLOB_TOKEN")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


def _payload(name: str, size: int) -> bytes:
    return random.Random(name).randbytes(size)


def _fill_then_delete_most(store: microblob.Store, n: int = 60, size: int = 40 * KiB) -> dict[str, bytes]:
    """n objects (some with archived versions), most deleted again; returns what must survive by id.
    A history version is keyed "id@v"."""
    kept: dict[str, bytes] = {}
    for i in range(n):
        oid = f"o{i}"
        store.save_or_update_object(_payload(f"{oid}/0", size), object_id=oid, type="frame",
                                    custom_metadata={"exposure_ms": i})
        if i % 10 == 0:
            store.save_or_update_object(_payload(f"{oid}/1", size), object_id=oid, control_version=True)
    for i in range(n):
        if i % 10 not in (0, 3):
            store.delete_object(f"o{i}")
    for i in range(0, n, 10):
        kept[f"o{i}"] = _payload(f"o{i}/1", size)
        kept[f"o{i}@0"] = _payload(f"o{i}/0", size)
        kept[f"o{i + 3}"] = _payload(f"o{i + 3}/0", size)
    return kept


def _check_kept(store: microblob.Store, kept: dict[str, bytes]) -> None:
    latest = {k: v for k, v in kept.items() if "@" not in k}
    assert store.count_objects() == len(latest)
    assert {o.object_id for o in store.blob_object_query({})} == set(latest)
    for key, data in kept.items():
        oid, _, version = key.partition("@")
        obj = store.get_blob_object(oid, int(version) if version else None)
        assert obj.data == data, key
    assert store.verify().ok


def _file_of(store: microblob.Store, kind: str, tmp_path: Path) -> Path:
    return tmp_path / "store.db" if kind == "lmdb" else tmp_path / "mongita" / "chunks.db"


# --- what compaction gives back, on every backend --------------------------------------------------------


def test_compact_gives_back_the_free_pages_and_keeps_everything(store: microblob.Store, backend_kind: str,
                                                                tmp_path: Path) -> None:
    store.create_index("custom_metadata.exposure_ms")
    kept = _fill_then_delete_most(store)
    if backend_kind in ("memory", "mongodb"):
        with pytest.raises(UnsupportedOperation, match="(?i)memory|mongodb"):
            store.compact()
        _check_kept(store, kept)
        return
    path = _file_of(store, backend_kind, tmp_path)
    before = path.stat().st_size
    report = store.compact()
    assert report.path == str(path)
    assert report.before_bytes == before
    assert report.after_bytes == path.stat().st_size
    assert report.reclaimed_bytes == before - report.after_bytes
    assert report.after_bytes < before * 0.5, report  # three quarters of the bytes were deleted
    assert not Path(lmdb_compact.temp_path(str(path))).exists()
    _check_kept(store, kept)
    assert [spec["name"] for spec in store.list_indexes() if spec["name"].startswith("custom")] == \
        ["custom_metadata.exposure_ms_1"]
    if backend_kind == "lmdb":
        assert store.explain({"custom_metadata.exposure_ms": 3})["index"] == "custom_metadata.exposure_ms_1"
    assert [o.object_id for o in store.blob_object_query({"custom_metadata.exposure_ms": 3})] == ["o3"]
    # The store goes on: writes after compaction land in the new file and survive a reopen.
    store.save_or_update_object(b"after", object_id="after")
    kept["after"] = b"after"
    again = store.compact()  # compacting a compact file changes little, and never loses anything
    assert again.after_bytes <= again.before_bytes + 64 * KiB
    store.close()
    from conftest import open_store

    with open_store(backend_kind, tmp_path) as reopened:
        _check_kept(reopened, kept)


def test_the_rebuilt_file_packs_pages_fuller_than_lmdbs_compacting_copy(lmdb_path: Path, tmp_path: Path) -> None:
    """Deleting 3 objects in 4 leaves LMDB's pages part full; its compacting copy keeps them so, the rebuild
    (every table appended in key order) fills them."""
    with microblob.connect(lmdb_path, sync=False) as store:
        coll = store.backend.collection("objects")
        store.backend.atomic(lambda: [coll.insert_one({"_id": f"d{i:05d}", "blob": _payload(str(i), 900)})
                                      for i in range(4000)])
        store.backend.atomic(lambda: [coll.delete_one({"_id": f"d{i:05d}"}) for i in range(4000) if i % 4])
        copy = tmp_path / "lmdb-compacting-copy.db"
        store.backend.engine.copy_to(str(copy), compact=True)
        report = store.compact()
        assert report.after_bytes < copy.stat().st_size * 0.75, (report, copy.stat().st_size)
        assert [d["_id"] for d in coll.find({}, sort=[("_id", 1)])] == [f"d{i:05d}" for i in range(0, 4000, 4)]
        assert all(d["blob"] == _payload(d["_id"][1:].lstrip("0") or "0", 900) for d in coll.find({}))


def test_a_file_with_tables_of_its_own_keeps_them_through_lmdbs_compacting_copy(lmdb_path: Path) -> None:
    import lmdb

    with microblob.connect(lmdb_path) as store:
        kept = _fill_then_delete_most(store)
    env = lmdb.open(str(lmdb_path), subdir=False, max_dbs=8)
    extra = env.open_db(b"someone-elses")
    with env.begin(write=True) as txn:
        txn.put(b"k", b"v", db=extra)
    env.close()
    with microblob.connect(lmdb_path) as store:
        assert store.compact().reclaimed_bytes > 0
        _check_kept(store, kept)
    env = lmdb.open(str(lmdb_path), subdir=False, max_dbs=8)
    with env.begin() as txn:
        assert txn.get(b"k", db=env.open_db(b"someone-elses", txn=txn, create=False)) == b"v"
    env.close()


def test_writes_and_reads_of_other_threads_wait_for_the_compaction_and_are_kept(
        lmdb_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A thread that writes while the same Store compacts waits, and its write is in the new file. The pause
    is where a lost write would hide: the copy is written (its snapshot taken) and the file not yet swapped,
    so a commit to the old file now would vanish with it."""
    store = microblob.connect(lmdb_path)
    kept = _fill_then_delete_most(store)
    copying, resume = threading.Event(), threading.Event()
    original = os.fsync
    compacting_thread: list[int] = []

    def paused_fsync(fd: int) -> None:
        original(fd)
        if threading.get_ident() in compacting_thread and not copying.is_set():  # the copy's own fsync
            copying.set()
            assert resume.wait(HANG)

    monkeypatch.setattr(os, "fsync", paused_fsync)
    result: dict[str, Any] = {}
    def compact() -> None:
        compacting_thread.append(threading.get_ident())
        result["report"] = store.compact()

    compactor = threading.Thread(target=compact)
    compactor.start()
    assert copying.wait(HANG)
    written = threading.Thread(target=lambda: result.setdefault(
        "saved", store.save_or_update_object(b"during", object_id="during")))
    written.start()
    written.join(0.2)
    assert written.is_alive()  # held back by the compaction (released right below either way)
    resume.set()
    compactor.join(HANG)
    written.join(HANG)
    assert result["saved"] == "during" and result["report"].reclaimed_bytes > 0
    kept["during"] = b"during"
    _check_kept(store, kept)
    store.close()
    with microblob.connect(lmdb_path) as reopened:
        _check_kept(reopened, kept)


# --- refused while another opener has the file -----------------------------------------------------------

_HOLDER = """
import sys, microblob
store = microblob.connect(sys.argv[1])
print("open", flush=True)
sys.stdin.readline()
print(len(store.get_blob_object("o3").data), store.count_objects(), flush=True)
store.close()
"""


def test_compaction_is_refused_while_another_process_has_the_store_open(lmdb_path: Path) -> None:
    with microblob.connect(lmdb_path) as store:
        kept = _fill_then_delete_most(store)
        holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(lmdb_path)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True, env=_env())
        try:
            assert holder.stdout is not None and holder.stdin is not None
            assert holder.stdout.readline().strip() == "open"
            stat = lmdb_path.stat()
            with pytest.raises(StoreInUse, match="another process or another Store has the file open"):
                store.compact()
            assert isinstance(StoreInUse("x"), StorageError)
            after = lmdb_path.stat()
            assert (after.st_ino, after.st_size, after.st_mtime_ns) == (stat.st_ino, stat.st_size, stat.st_mtime_ns)
            assert not Path(lmdb_compact.temp_path(str(lmdb_path))).exists()
            _check_kept(store, kept)
            holder.stdin.write("go\n")
            holder.stdin.flush()
            assert holder.stdout.readline().split() == [str(40 * KiB), str(len([k for k in kept if "@" not in k]))]
        finally:
            holder.stdin.close()  # type: ignore[union-attr]
            assert holder.wait(HANG) == 0
        report = store.compact()  # the holder is gone: now it goes through
        assert report.reclaimed_bytes > 0
        _check_kept(store, kept)


def test_compaction_is_refused_while_a_second_store_of_this_process_has_it_open(lmdb_path: Path) -> None:
    first = microblob.connect(lmdb_path)
    kept = _fill_then_delete_most(first)
    second = microblob.connect(lmdb_path)
    size = lmdb_path.stat().st_size
    for compactor in (first, second):
        with pytest.raises(StoreInUse, match="another Store"):
            compactor.compact()
    assert lmdb_path.stat().st_size == size
    _check_kept(second, kept)
    second.close()
    assert first.compact().after_bytes < size
    _check_kept(first, kept)
    first.close()


_COMPACT_ONCE = """
import sys, microblob
with microblob.connect(sys.argv[1]) as store:
    try:
        print("compacted", store.compact().reclaimed_bytes, flush=True)
    except microblob.StoreInUse as exc:
        print("refused", exc, flush=True)
"""


def test_a_refused_compaction_keeps_its_store_counted_as_an_opener(lmdb_path: Path) -> None:
    """On Linux a failed LOCK_SH -> LOCK_EX conversion drops the LOCK_SH: the refused Store must take it
    back, or a compaction by the next process would go through under this still-open Store."""
    mine = microblob.connect(lmdb_path)
    kept = _fill_then_delete_most(mine)
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(lmdb_path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=_env())
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        with pytest.raises(StoreInUse):
            mine.compact()  # refused: the holder has it open
    finally:
        holder.stdin.close()  # type: ignore[union-attr]
        assert holder.wait(HANG) == 0
    proc = subprocess.run([sys.executable, "-c", _COMPACT_ONCE, str(lmdb_path)], capture_output=True, text=True,
                          env=_env(), timeout=HANG)
    # Refused by the `.open` lock itself (LMDB's own lock on `-lock` would be the second line of defence).
    assert proc.stdout.startswith("refused") and "another process or another Store has the file open" in \
        proc.stdout, (proc.stdout, proc.stderr)
    _check_kept(mine, kept)
    mine.close()
    proc = subprocess.run([sys.executable, "-c", _COMPACT_ONCE, str(lmdb_path)], capture_output=True, text=True,
                          env=_env(), timeout=HANG)
    assert proc.stdout.startswith("compacted"), (proc.stdout, proc.stderr)


_FOREIGN = """
import sys, lmdb
env = lmdb.open(sys.argv[1], subdir=False, max_dbs=8)
print("open", flush=True)
sys.stdin.readline()
"""


def test_compaction_is_refused_while_a_process_outside_microblob_has_the_file_open(lmdb_path: Path) -> None:
    """A process that opened the file with plain LMDB (an older microblob, an LMDB tool) takes no `.open`
    lock, but holds LMDB's own lock on `-lock`: compaction sees it and changes nothing."""
    with microblob.connect(lmdb_path) as store:
        kept = _fill_then_delete_most(store)
    foreign = subprocess.Popen([sys.executable, "-c", _FOREIGN, str(lmdb_path)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True, env=_env())
    try:
        assert foreign.stdout is not None and foreign.stdout.readline().strip() == "open"
        with microblob.connect(lmdb_path) as store:
            inode, size = lmdb_path.stat().st_ino, lmdb_path.stat().st_size
            with pytest.raises(StoreInUse, match="outside microblob"):
                store.compact()
            assert (lmdb_path.stat().st_ino, lmdb_path.stat().st_size) == (inode, size)
            assert not Path(lmdb_compact.temp_path(str(lmdb_path))).exists()
            _check_kept(store, kept)  # the store was reopened on the old file and goes on
            store.save_or_update_object(b"still writable", object_id="w")
    finally:
        foreign.stdin.close()  # type: ignore[union-attr]
        foreign.wait(HANG)
    with microblob.connect(lmdb_path) as store:
        assert store.compact().reclaimed_bytes > 0
        _check_kept(store, {**kept, "w": b"still writable"})


_FORK_HOLDER = """
import os, sys, microblob
store = microblob.connect(sys.argv[1])
read, write = os.pipe()
ready_r, ready_w = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(write)
    os.write(ready_w, b"x")  # past fork(), so past the at-fork hooks that drop the inherited lock
    os.read(read, 1)  # lives on, without touching the store, until the parent says
    os._exit(0)
os.read(ready_r, 1)  # a loaded machine may run the child late: wait until it is past its hooks
store.close()
print("closed", flush=True)
sys.stdin.readline()
os.close(write)
os.waitpid(pid, 0)
"""


def test_a_forked_child_does_not_keep_its_parents_open_lock(lmdb_path: Path) -> None:
    """The child's copy of the `.open` descriptor shares the parent's lock: it is closed in the child at
    fork, so once the parent closes its store, nothing holds the file."""
    with microblob.connect(lmdb_path) as store:
        _fill_then_delete_most(store)
    parent = subprocess.Popen([sys.executable, "-c", _FORK_HOLDER, str(lmdb_path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=_env())
    try:
        assert parent.stdout is not None and parent.stdout.readline().strip() == "closed"
        with microblob.connect(lmdb_path) as store:
            assert store.compact().reclaimed_bytes > 0
    finally:
        parent.stdin.close()  # type: ignore[union-attr]
        assert parent.wait(HANG) == 0


# --- an open during the compaction waits and sees the compacted file ------------------------------------

_OPENER = """
import hashlib, logging, os, sys, microblob
logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(name)s %(message)s")
print("connecting", flush=True)
with microblob.connect(sys.argv[1]) as store:
    data = store.get_blob_object("o3").data
    print("opened", os.stat(sys.argv[1]).st_ino, store.count_objects(), hashlib.sha256(data).hexdigest(),
          store.verify().ok, flush=True)
"""


@pytest.mark.parametrize("pause_at", ["copying", "swapped"])
def test_a_process_opening_during_compaction_waits_and_sees_the_compacted_file(
        lmdb_path: Path, monkeypatch: pytest.MonkeyPatch, pause_at: str) -> None:
    store = microblob.connect(lmdb_path)
    kept = _fill_then_delete_most(store)
    paused, resume = threading.Event(), threading.Event()
    name = "create_temp" if pause_at == "copying" else "fsync_dir"  # before the copy / after the rename
    original = getattr(lmdb_compact, name)

    def pausing(*args: Any) -> Any:
        result = original(*args)
        paused.set()
        assert resume.wait(HANG)
        return result

    monkeypatch.setattr(lmdb_compact, name, pausing)
    result: dict[str, Any] = {}
    compactor = threading.Thread(target=lambda: result.setdefault("report", store.compact()))
    compactor.start()
    opener = None
    try:
        assert paused.wait(HANG)
        opener = subprocess.Popen([sys.executable, "-c", _OPENER, str(lmdb_path)], stdout=subprocess.PIPE,
                                  text=True, env=_env())
        assert opener.stdout is not None
        assert opener.stdout.readline().strip() == "connecting"
        line = opener.stdout.readline()
        assert "is being compacted" in line and "waiting" in line, line  # it waits on the lock ...
    finally:
        resume.set()
        compactor.join(HANG)
    assert result["report"].reclaimed_bytes > 0
    assert opener is not None and opener.stdout is not None
    lines = opener.stdout.read().splitlines()
    assert opener.wait(HANG) == 0
    assert any("compaction finished" in line for line in lines), lines  # ... and goes on once it is released
    opened = next(line for line in lines if line.startswith("opened")).split()
    expected = [str(lmdb_path.stat().st_ino), str(len([k for k in kept if "@" not in k])),
                hashlib.sha256(kept["o3"]).hexdigest(), "True"]
    assert opened[1:] == expected  # the new file (its inode), whole
    _check_kept(store, kept)
    store.close()


def test_an_open_gives_up_with_store_in_use_if_the_compaction_never_ends(lmdb_path: Path) -> None:
    import fcntl

    from microblob.engine.open_lock import OpenLock, open_lock_path

    with microblob.connect(lmdb_path) as store:
        store.save_or_update_object(b"x", object_id="x")
    fd = os.open(open_lock_path(str(lmdb_path)), os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # what a compaction holds (here: one that hangs)
        with pytest.raises(StoreInUse, match="still being compacted"):
            OpenLock(str(lmdb_path), wait=0.3)
    finally:
        os.close(fd)
    with microblob.connect(lmdb_path) as store:
        assert store.get_blob_object("x").data == b"x"


# --- leftovers, full disks, read-only stores --------------------------------------------------------------


def test_a_leftover_compacting_file_is_never_the_store_and_is_removed_by_the_next_compaction(
        lmdb_path: Path) -> None:
    with microblob.connect(lmdb_path) as store:
        kept = _fill_then_delete_most(store)
    leftover = Path(lmdb_compact.temp_path(str(lmdb_path)))
    leftover.write_bytes(b"half a copy a killed compaction left")
    with microblob.connect(lmdb_path) as store:
        _check_kept(store, kept)
        assert store.compact().reclaimed_bytes > 0
        assert not leftover.exists()
        _check_kept(store, kept)


class _Tmpfs:
    def __init__(self, path: Path) -> None:
        self.path = path

    def remount(self, *options: str) -> None:
        subprocess.run(["mount", "-o", ",".join(["remount", *options]), str(self.path)], check=True,
                       capture_output=True)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[_Tmpfs]:
    """A 4 MiB tmpfs of the test's own (mounting needs root, as in test_faults.py)."""
    where = tmp_path / "fs"
    where.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(where)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs (these tests need root): {proc.stderr.strip()}")
    try:
        yield _Tmpfs(where)
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def test_compaction_without_room_for_the_copy_is_store_full_and_changes_nothing(small_fs: _Tmpfs) -> None:
    db = small_fs.path / "store.db"
    with microblob.connect(db, sync=False) as store:
        kept = {}
        for i in range(3):
            kept[f"big{i}"] = _payload(f"big{i}", 400 * KiB)
            store.save_or_update_object(kept[f"big{i}"], object_id=f"big{i}")
        filler = small_fs.path / "filler"
        with open(filler, "wb") as fh:  # leave less room than the live data needs
            try:
                while True:
                    fh.write(b"\0" * 64 * KiB)
                    fh.flush()
            except OSError:
                pass
        inode, size = db.stat().st_ino, db.stat().st_size
        with pytest.raises(StoreFull, match="disk is full"):
            store.compact()
        assert (db.stat().st_ino, db.stat().st_size) == (inode, size)
        assert not Path(lmdb_compact.temp_path(str(db))).exists()
        _check_kept(store, kept)
        filler.unlink()
        assert store.compact().after_bytes <= size
        _check_kept(store, kept)


def test_compaction_of_a_read_only_store_is_a_clear_error(small_fs: _Tmpfs) -> None:
    db = small_fs.path / "store.db"
    with microblob.connect(db) as store:
        kept = _fill_then_delete_most(store, n=20, size=8 * KiB)
    small_fs.remount("ro")
    with microblob.connect(db, create=False) as store:
        with pytest.raises(StorageError, match="read-only"):
            store.compact()
        _check_kept(store, kept)
    proc = _cli(db, "compact")
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "read-only" in proc.stderr, proc.stderr


# --- kill -9 during compaction ------------------------------------------------------------------------------

_KILLED_AT_STEP = """
import os, signal, sys
import microblob
from microblob.engine import lmdb_compact

kill_at = int(sys.argv[2])
steps = [0]

def step(name, fn):
    def wrapped(*args, **kwargs):
        steps[0] += 1
        if steps[0] == kill_at:
            print("killed before", name, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        return fn(*args, **kwargs)
    return wrapped

store = microblob.connect(sys.argv[1])
for module, name in ((lmdb_compact, "create_temp"), (os, "fsync"), (os, "replace"), (lmdb_compact, "fsync_dir"),
                     (os, "ftruncate"), (os, "unlink"), (os, "close")):
    setattr(module, name, step(f"{module.__name__}.{name}", getattr(module, name)))
report = store.compact()
print("done", report.before_bytes, report.after_bytes, flush=True)
os._exit(0)
"""


def test_kill_9_at_every_step_of_a_compaction_leaves_a_whole_store(lmdb_path: Path) -> None:
    """The compacting child dies before each file operation of the compaction in turn (creating the copy,
    syncing it, closing it, the rename, the directory sync, emptying and removing the old lock file):
    every time, the next opener finds the old file or the new one, whole."""
    with microblob.connect(lmdb_path) as store:
        kept = _fill_then_delete_most(store)
    sizes: set[int] = set()
    kill_at = 1
    while True:
        with microblob.connect(lmdb_path) as store:  # new free pages for each round's compaction to drop
            store.save_or_update_object(_payload("churn", 200 * KiB), object_id="churn")
            store.delete_object("churn")
        before = lmdb_path.stat().st_size
        proc = subprocess.run([sys.executable, "-c", _KILLED_AT_STEP, str(lmdb_path), str(kill_at)],
                              capture_output=True, text=True, env=_env(), timeout=HANG)
        with microblob.connect(lmdb_path) as store:
            _check_kept(store, kept)
        sizes.add(lmdb_path.stat().st_size)
        if proc.returncode == 0:
            assert proc.stdout.startswith("done"), proc.stdout
            assert lmdb_path.stat().st_size < before
            break
        assert proc.returncode == -signal.SIGKILL, proc.stderr
        assert proc.stdout.startswith("killed before"), proc.stdout
        kill_at += 1
        assert kill_at < 40, "the compaction never finished"
    assert kill_at >= 7, f"only {kill_at - 1} steps were killed: the compaction took a path the test misses"
    with microblob.connect(lmdb_path) as store:
        store.compact()  # and a leftover copy, if any, is cleared
        assert not Path(lmdb_compact.temp_path(str(lmdb_path))).exists()
        _check_kept(store, kept)


_COMPACTOR = """
import sys, microblob
store = microblob.connect(sys.argv[1])
print("start", flush=True)
store.compact()
print("done", flush=True)
"""


def test_kill_9_at_random_moments_of_a_compaction_leaves_a_whole_store(lmdb_path: Path) -> None:
    rng = random.Random(os.environ.get("MICROBLOB_CRASH_SEED", "compaction"))
    with microblob.connect(lmdb_path, sync=False) as store:
        kept = _fill_then_delete_most(store, n=200, size=60 * KiB)

    def churn() -> None:
        with microblob.connect(lmdb_path, sync=False) as store:
            for i in range(8):
                store.save_or_update_object(_payload(f"churn{i}", 500 * KiB), object_id=f"churn{i}")
            for i in range(8):
                store.delete_object(f"churn{i}")

    def start() -> subprocess.Popen[str]:
        proc = subprocess.Popen([sys.executable, "-c", _COMPACTOR, str(lmdb_path)], stdout=subprocess.PIPE,
                                text=True, env=_env())
        assert proc.stdout is not None and proc.stdout.readline().strip() == "start"
        return proc

    churn()
    proc = start()  # one compaction left to finish says how long one takes here
    began = time.monotonic()
    assert proc.stdout is not None and proc.stdout.readline().strip() == "done"
    took = time.monotonic() - began
    assert proc.wait(HANG) == 0
    outcomes = {"killed": 0, "finished": 0}
    for _ in range(8):
        churn()
        proc = start()
        time.sleep(rng.uniform(0.0, took * 1.2))
        proc.kill()
        assert proc.stdout is not None
        outcomes["finished" if "done" in proc.stdout.read() else "killed"] += 1
        proc.wait(HANG)
        with microblob.connect(lmdb_path) as store:
            _check_kept(store, kept)
    print(f"compactions ({took:.2f} s each) killed at random: {outcomes}")


# --- the command line -----------------------------------------------------------------------------------


def _cli(db: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "microblob", "--db", str(db), *args], capture_output=True,
                          text=True, env=_env(), timeout=HANG, cwd=db.parent)


def test_cli_compact_prints_the_sizes_and_exits_0(lmdb_path: Path) -> None:
    import json

    with microblob.connect(lmdb_path) as store:
        kept = _fill_then_delete_most(store)
    before = lmdb_path.stat().st_size
    proc = _cli(lmdb_path, "compact")
    assert proc.returncode == 0, proc.stderr
    after = lmdb_path.stat().st_size
    assert proc.stdout.startswith(f"compacted {lmdb_path}: ") and " -> " in proc.stdout, proc.stdout
    assert f"({before - after:,} bytes)".replace(",", "") in proc.stdout.replace(",", ""), proc.stdout
    again = _cli(lmdb_path, "compact", "--json")
    assert again.returncode == 0, again.stderr
    report = json.loads(again.stdout)
    assert report["path"] == str(lmdb_path) and report["before_bytes"] == after
    assert report["after_bytes"] == lmdb_path.stat().st_size
    assert report["reclaimed_bytes"] == report["before_bytes"] - report["after_bytes"]
    with microblob.connect(lmdb_path) as store:
        _check_kept(store, kept)


def test_cli_compact_refused_exits_1_with_one_line(lmdb_path: Path) -> None:
    with microblob.connect(lmdb_path) as store:
        _fill_then_delete_most(store)
        size = lmdb_path.stat().st_size
        proc = _cli(lmdb_path, "compact")  # this process holds the store open
    assert proc.returncode == 1, proc.stdout
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("microblob: ") and "has the file open" in proc.stderr
    assert proc.stdout == "" and lmdb_path.stat().st_size == size
    memory = subprocess.run([sys.executable, "-m", "microblob", "--db", "memory://", "compact"],
                            capture_output=True, text=True, env=_env(), timeout=HANG)
    assert memory.returncode == 1 and memory.stderr.count("\n") == 1, memory.stderr
