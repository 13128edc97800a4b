"""The embedded default's file: one file, a small map that grows, processes and forks."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import microblob
from microblob import StorageError, StoreClosed


def test_one_data_file_plus_lock_files(lmdb_path: Path) -> None:
    """The data file, LMDB's `-lock` file and the `.open` lock every opener holds (compaction adds its gate,
    `.compact-lock`); nothing else."""
    with microblob.connect(lmdb_path) as store:
        store.save_or_update_object(b"x")
    assert sorted(p.name for p in lmdb_path.parent.iterdir()) == ["store.db", "store.db-lock", "store.db.open"]
    with microblob.connect(lmdb_path) as store:
        store.compact()
    assert sorted(p.name for p in lmdb_path.parent.iterdir()) == \
        ["store.db", "store.db-lock", "store.db.compact-lock", "store.db.open"]


def test_uri_forms_open_the_same_file(lmdb_path: Path) -> None:
    with microblob.connect(lmdb_path) as store:
        object_id = store.save_or_update_object(b"persisted")
    for uri in (str(lmdb_path), f"lmdb://{lmdb_path}", lmdb_path):
        with microblob.connect(uri) as store:
            assert store.get_blob_object(object_id).data == b"persisted"


def test_default_uri_is_env_or_cwd_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MICROBLOB_URI", raising=False)
    with microblob.connect() as store:
        store.save_or_update_object(b"x")
    assert (tmp_path / "microblob.db").exists()
    monkeypatch.setenv("MICROBLOB_URI", "memory://")
    with microblob.connect() as store:
        assert store.uri == "memory://"


def test_map_starts_small_and_grows_on_demand(lmdb_path: Path) -> None:
    with microblob.connect(lmdb_path, map_size=1024 * 1024) as store:
        engine = store.backend.engine
        assert engine.map_size() == 1024 * 1024
        store.files.batch_bytes = 32 * 1024 * 1024  # one transaction far larger than the map
        payload = os.urandom(40 * 1024 * 1024)
        object_id = store.save_or_update_object(payload)
        assert engine.map_size() >= 40 * 1024 * 1024
        assert store.get_blob_object(object_id).data == payload
    # a default open never reserves a huge map (32-bit devices cannot)
    with microblob.connect(lmdb_path) as store:
        assert store.backend.engine.map_size() <= os.path.getsize(lmdb_path) + 256 * 1024 * 1024


def _resident_bytes_of_map(path: Path) -> int:
    """Rss of this process's mappings of the data file, from /proc/self/smaps."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        fields = line.split()
        if fields and "-" in fields[0] and len(fields) >= 5 and ":" in fields[3]:  # a mapping's header line
            inside = len(fields) == 6 and fields[5] == os.path.realpath(path)
        elif inside and fields[0] == "Rss:":
            total += int(fields[1]) * 1024
    return total


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="needs /proc/self/smaps (Linux)")
def test_reading_keeps_the_map_out_of_rss_also_after_the_map_moved(lmdb_path: Path) -> None:
    """Pages read through the map are dropped from RSS every _TRIM_EVERY bytes, at the addresses the file
    is mapped at *now*: each growth maps it afresh, perhaps elsewhere."""
    from microblob.engine import lmdb_kv as _lmdb

    big = 96 * 1024 * 1024
    payload = os.urandom(big)
    with microblob.connect(lmdb_path, map_size=1024 * 1024) as store:
        shared = store.backend.engine._env()
        store.save_or_update_object(payload, object_id="big")  # grows (and remaps) the map a few times
        for remap in (False, True):
            if remap:  # as a write that needs room would: map the file afresh, maybe elsewhere
                generation = shared.map_generation
                shared.grow(2 * shared.env.info()["map_size"])
                assert shared.map_generation == generation + 1
            digest = hashlib.sha256()
            with store.get_blob_object("big").open() as stream:
                while piece := stream.read(1024 * 1024):
                    digest.update(piece)
            assert digest.hexdigest() == hashlib.sha256(payload).hexdigest()
            assert shared.mapped[0] == shared.map_generation  # looked up again after each remap
            assert shared.mapped[1] == _lmdb._mappings_of(shared.path)
            resident = _resident_bytes_of_map(lmdb_path)
            assert resident <= _lmdb._TRIM_EVERY + 8 * 1024 * 1024, f"{resident / 2**20:.0f} MiB of the map resident"


GROWER = """
import os, sys, microblob
store = microblob.connect(sys.argv[1])
store.save_or_update_object(os.urandom(150 * 1024 * 1024), object_id="big")
store.close()
"""


def test_another_process_growing_the_map_is_adopted(lmdb_path: Path, run_python: Callable) -> None:
    with microblob.connect(lmdb_path) as store:
        store.save_or_update_object(b"small", object_id="small")
        before = store.backend.engine.map_size()
        run_python(GROWER, str(lmdb_path))
        assert store.get_blob_object("big").size == 150 * 1024 * 1024  # read after the other grew it
        store.save_or_update_object(b"after", object_id="small")  # and write
        assert store.backend.engine.map_size() > before
        assert store.verify().ok


def test_many_stores_on_one_file_share_one_environment(lmdb_path: Path) -> None:
    a = microblob.connect(lmdb_path)
    b = microblob.connect(str(lmdb_path))
    assert a.backend.engine._env() is b.backend.engine._env()
    object_id = a.save_or_update_object(b"shared")
    a.close()
    assert b.get_blob_object(object_id).data == b"shared"  # closing one does not close the other
    b.close()


def test_closed_store_raises_store_closed(store: microblob.Store) -> None:
    object_id = store.save_or_update_object(b"x")
    obj = store.get_blob_object(object_id)
    store.close()
    assert store.closed
    with pytest.raises(StoreClosed):
        store.get_blob_object(object_id)
    with pytest.raises(StoreClosed):
        store.save_or_update_object(b"y")
    with pytest.raises(StoreClosed):
        obj.open()
    store.close()  # idempotent


def test_fork_child_must_reconnect(lmdb_path: Path) -> None:
    store = microblob.connect(lmdb_path)
    object_id = store.save_or_update_object(b"parent")
    pid = os.fork()
    if pid == 0:  # child: the inherited environment must not be used
        code = 1
        try:
            store.get_blob_object(object_id)
        except StorageError:
            with microblob.connect(lmdb_path) as child_store:
                code = 0 if child_store.get_blob_object(object_id).data == b"parent" else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert store.get_blob_object(object_id).data == b"parent"
    store.close()


def test_unusable_paths_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="directory"):
        microblob.connect(tmp_path)
    with pytest.raises(StorageError, match="does not exist"):
        microblob.connect(tmp_path / "missing-dir" / "x.db")
    with pytest.raises(microblob.InvalidArgument):
        microblob.connect("ftp://host/x")
    with pytest.raises(microblob.InvalidArgument):
        microblob.connect(tmp_path / "x.db", bogus_option=1)
    with pytest.raises(microblob.InvalidArgument):
        microblob.connect(42)  # type: ignore[arg-type]


def test_odd_uris_and_options_are_typed_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by tests/test_store_fuzz.py: each of these raised a bare ValueError/TypeError/OverflowError/
    UnicodeEncodeError, or opened another file than the one named."""
    monkeypatch.chdir(tmp_path)

    class BadPath(os.PathLike):
        def __fspath__(self) -> Any:
            return 5

    bad_uris: list[Any] = [
        "a\x00b.db", f"lmdb://{tmp_path}/%00.db", str(tmp_path / "\ud800.db"), str(tmp_path / "\udcff.db"),
        BadPath(), "lmdb://[::1", f"lmdb:///{tmp_path}/%ff.db", "lmdb://host/x.db", "://x.db",
    ]
    for uri in bad_uris:
        with pytest.raises(microblob.InvalidArgument):
            microblob.connect(uri)
    assert not Path("/x.db").exists()  # lmdb://host/x.db used to drop the host and open /x.db
    for options in ({"map_size": "big"}, {"map_size": -1}, {"map_size": 2**70}, {"map_size": True},
                    {"max_readers": -1}, {"max_readers": 2**70}, {"max_readers": 1.5}, {"sync": "no"},
                    {"metasync": None}):
        with pytest.raises(microblob.InvalidArgument):
            microblob.connect(tmp_path / "opts.db", **options)
    for chunk_size in (0, 1.5, True, 2**64):  # checked before the file is created (it was created, then refused)
        with pytest.raises(microblob.InvalidArgument, match="chunk_size"):
            microblob.connect(tmp_path / "chunks.db", chunk_size=chunk_size)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing was created on the way
    with microblob.connect(f"lmdb://localhost{tmp_path}/ok.db", sync=False, max_readers=8) as store:
        assert store.get_blob_object(store.save_or_update_object(b"x")).data == b"x"
    class BytesPath(os.PathLike):  # an os.PathLike may return bytes: it was refused as "not bytes"
        def __fspath__(self) -> bytes:
            return os.fsencode(tmp_path / "bytes.db")

    with microblob.connect(BytesPath()) as store:
        assert store.uri == str(tmp_path / "bytes.db")
    # map_size is the initial size: a tiny one raised a bare lmdb.MapFullError from open_db
    with microblob.connect(tmp_path / "tiny.db", map_size=6521) as store:
        assert store.get_blob_object(store.save_or_update_object(os.urandom(3_000_000))).size == 3_000_000


def _store_written_with_a_page_header_of(tmp_path: Path, header: int) -> Path:
    """A real store file whose two meta pages are rewritten with a `header`-byte page header, as LMDB
    lays them out on a machine of the other word size (12 bytes on 32-bit, 16 on 64-bit)."""
    path = tmp_path / "moved.db"
    with microblob.connect(path) as store:
        store.save_or_update_object(b"from the field", object_id="kept")
    raw = bytearray(path.read_bytes())
    page = os.sysconf("SC_PAGE_SIZE") if len(raw) % os.sysconf("SC_PAGE_SIZE") == 0 else 4096
    for start in (0, page):
        meta = raw[start + 16 : start + page]  # what follows this machine's 16-byte header
        raw[start + header : start + page] = meta[: page - header]
    path.write_bytes(bytes(raw))
    return path


@pytest.mark.skipif(sys.maxsize <= 2**32, reason="a 64-bit process reads the 32-bit layout here")
def test_a_store_of_the_other_word_size_says_so(tmp_path: Path) -> None:
    path = _store_written_with_a_page_header_of(tmp_path, 12)
    with pytest.raises(StorageError, match=r"written on a 32-bit machine.*not damaged"):
        microblob.connect(path)
    proc = subprocess.run([sys.executable, "-m", "microblob", "--db", str(path), "ls"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "32-bit machine" in proc.stderr, proc.stderr


def test_a_file_that_is_no_store_is_not_called_another_word_size(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(os.urandom(8192))
    with pytest.raises(StorageError) as info:
        microblob.connect(junk)
    assert "bit machine" not in str(info.value)


def test_the_map_grows_while_threads_keep_reading(lmdb_path: Path) -> None:
    """Readers take no lock on their way in: a growth must still wait for every open read, and readers
    arriving meanwhile must wait for it (a read across a remap would see unmapped memory)."""
    import threading

    with microblob.connect(lmdb_path, map_size=2 * 1024 * 1024) as store:
        small = {store.save_or_update_object(os.urandom(2000 + i)): None for i in range(20)}
        for object_id in small:
            small[object_id] = store.get_blob_object(object_id).data
        stop = threading.Event()
        problems: list[str] = []
        reads = [0]

        def read() -> None:
            while not stop.is_set():
                for object_id, expected in small.items():
                    try:
                        if store.get_blob_object(object_id).data != expected:
                            problems.append(f"{object_id}: wrong bytes")
                    except Exception as exc:  # noqa: BLE001 - any error is the failure being looked for
                        problems.append(f"{object_id}: {exc!r}")
                    reads[0] += 1

        readers = [threading.Thread(target=read) for _ in range(4)]
        for t in readers:
            t.start()
        sizes = [store.backend.engine.map_size()]
        try:
            for i in range(6):  # each save needs more room than the map has left: ~6 growths
                store.save_or_update_object(os.urandom((2 << i) * 1024 * 1024), object_id=f"big{i}")
                sizes.append(store.backend.engine.map_size())
        finally:
            stop.set()
            for t in readers:
                t.join(60)
        assert problems == []
        assert reads[0] > 0 and len(set(sizes)) >= 4
        assert store.backend.engine.map_size() > 64 * 1024 * 1024
        assert store.verify().ok
