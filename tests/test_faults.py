"""Environment faults: a full disk, a read-only filesystem, upload spools left by a killed server, and map
growth that the address space cannot hold.

The filesystems are real: each test mounts its own small tmpfs (the tests run as root, as CI does). A
mount that fails is a test failure, never a skip: these are the only tests of these paths.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from _tmpfs import Tmpfs

import microblob
from microblob import StorageError, StoreFull

ROOT = Path(__file__).resolve().parents[1]
MiB = 1024 * 1024


# A script, not a web page: it says so, as the CSRF check asks of an untyped POST body.
SCRIPT = {"X-Requested-With": "test"}


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MICROBLOB_URI", "MICROBLOB_TOKEN")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


def _cli(db: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "microblob", "--db", str(db), *args], capture_output=True,
                          text=True, env=_env(), timeout=timeout, cwd=db.parent)


def _one_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    return proc.stderr


@pytest.fixture
def small_fs(make_tmpfs: Callable[[str], Tmpfs]) -> Tmpfs:
    """A 6 MiB filesystem of the test's own."""
    return make_tmpfs("6m")


def _fill(store: Any) -> tuple[dict[str, bytes], BaseException]:
    """Save 400 kB objects until the disk refuses one; return what was saved and the error."""
    saved: dict[str, bytes] = {}
    for i in range(100):
        data = os.urandom(400_000)
        try:
            saved[store.save_or_update_object(data, object_id=f"o{i}")] = data
        except Exception as exc:  # noqa: BLE001 - the test looks at it
            return saved, exc
    raise AssertionError("a 6 MiB filesystem took 40 MB")


def test_disk_full_is_store_full_and_the_store_stays_consistent(small_fs: Tmpfs) -> None:
    db = small_fs.path / "store.db"
    with microblob.connect(db) as store:
        saved, error = _fill(store)
        assert isinstance(error, StoreFull), repr(error)
        assert "disk is full" in str(error)
        assert saved, "not one object fitted"
        for oid, data in saved.items():
            assert store.get_blob_object(oid).data == data
        assert store.verify().ok
        store.gc()  # what the refused upload left (chunks of batches committed before it failed)
    with microblob.connect(db, create=False) as store:
        assert {o.object_id for o in store.blob_object_query({})} == set(saved)
        assert store.verify().ok


def test_disk_full_over_http_is_json_507(small_fs: Tmpfs, make_server: Any, live: Any) -> None:
    with microblob.connect(small_fs.path / "store.db") as store:
        # An explicit cap above what fits (the default would refuse the body up front with 413): the
        # store itself runs out, and says so.
        url = live(make_server({}, store=store, max_upload=1024 * MiB))
        with httpx.Client(base_url=url, timeout=120, headers=SCRIPT) as http:
            first = http.post("/objects/", content=os.urandom(500_000))
            assert first.status_code == 201, first.text
            response = http.post("/objects/", content=os.urandom(12 * MiB))
            assert response.status_code == 507, response.text
            assert response.json()["error"] == "StoreFull"
            listed = http.get("/objects/")
            assert listed.status_code == 200 and [o["object_id"] for o in listed.json()] == [
                first.json()["object_id"]]


def test_disk_full_cli_put_is_one_line(small_fs: Tmpfs, tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(12 * MiB))
    db = small_fs.path / "store.db"
    err = _one_line(_cli(db, "put", str(big)))
    assert "the disk is full" in err
    assert _cli(db, "verify").returncode == 0


def test_upload_spool_on_a_full_disk_is_507_and_leaves_nothing(small_fs: Tmpfs, make_server: Any,
                                                               live: Any) -> None:
    url = live(make_server({}, upload_dir=str(small_fs.path), max_upload=64 * MiB))
    with httpx.Client(base_url=url, timeout=120, headers=SCRIPT) as http:
        response = http.post("/blobs", content=os.urandom(12 * MiB))
        assert response.status_code == 507, response.text
        assert response.json()["error"] == "StoreFull"
        assert list(small_fs.path.iterdir()) == []
        assert http.post("/blobs", content=b"small").status_code == 201  # room again


def test_read_only_filesystem_opens_read_only(small_fs: Tmpfs, tmp_path: Path) -> None:
    db = small_fs.path / "store.db"
    with microblob.connect(db) as store:
        oid = store.save_or_update_object(b"kept bytes", object_id="kept")
    small_fs.remount("ro")
    ls = _cli(db, "ls")
    assert ls.returncode == 0 and "kept" in ls.stdout, ls.stderr
    out = tmp_path / "out.bin"
    got = _cli(db, "get", oid, "-o", str(out))
    assert got.returncode == 0 and out.read_bytes() == b"kept bytes", got.stderr
    verified = _cli(db, "verify")
    assert verified.returncode == 0, verified.stderr
    assert "read-only" in _one_line(_cli(db, "put", "-", "--id", "new"))
    with microblob.connect(db, create=False) as store:
        assert store.get_blob_object("kept").data == b"kept bytes"
        with pytest.raises(StorageError, match="read-only"):
            store.save_or_update_object(b"x")


# --- upload spools -----------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_spools_of_a_server_killed_mid_upload_are_removed_at_start_up(tmp_path: Path, make_server: Any) -> None:
    spools = tmp_path / "spools"
    spools.mkdir()
    port = _free_port()
    code = ("import sys; from microblob import ThingServer; "
            f"ThingServer({{}}, upload_dir={str(spools)!r}).serve(port={port})")
    server = subprocess.Popen([sys.executable, "-c", code], env=_env(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=5)
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "the server did not start"
                time.sleep(0.05)
        with sock:
            sock.sendall(b"POST /blobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\n"
                         b"Content-Length: 10000000\r\n\r\n" + os.urandom(3 * MiB))
            while not list(spools.iterdir()) or list(spools.iterdir())[0].stat().st_size < MiB:
                assert time.monotonic() < deadline, "no spool appeared"
                time.sleep(0.05)
            os.kill(server.pid, signal.SIGKILL)
            server.wait(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    left = list(spools.iterdir())
    assert len(left) == 1 and left[0].name.startswith(f"microblob-upload-{server.pid}.")
    # a live process's spool (this one's, named as the server names its own) stays
    from microblob.http.spools import open_spool

    with open_spool(str(spools)) as mine:
        mine.write(b"in use")
    make_server({}, upload_dir=str(spools))
    assert [p.name for p in spools.iterdir()] == [os.path.basename(mine.name)]


def test_spool_owners_are_told_apart(tmp_path: Path, make_server: Any) -> None:
    """Stale: the owner is gone, or its pid now belongs to a process that started later; an old-style
    name once untouched for a day. Kept: a live owner's spools, a fresh old-style one."""
    from microblob.http import spools as _spools

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    try:
        start = _spools._start_time(sleeper.pid)
        names = {
            "live": f"microblob-upload-{sleeper.pid}.{start}-a",
            "recycled": f"microblob-upload-{sleeper.pid}.{int(start or 0) - 1}-b",
            "gone": f"microblob-upload-{gone.pid}.1-c",
            "legacy-old": "microblob-upload-x1y2z3",
            "legacy-new": "microblob-upload-q9w8e7",
            "unrelated": "something-else",
        }
        for name in names.values():
            (tmp_path / name).write_bytes(b"x")
        old = time.time() - _spools.LEGACY_AGE - 60
        os.utime(tmp_path / names["legacy-old"], (old, old))
        make_server({}, upload_dir=str(tmp_path))
        left = {p.name for p in tmp_path.iterdir()}
        assert left == {names["live"], names["legacy-new"], names["unrelated"]}
    finally:
        sleeper.kill()
        sleeper.wait()


# --- map growth --------------------------------------------------------------------------------------

_GROWTH = r"""
import os, re, resource, sys
import microblob
from microblob import StoreFull

db = sys.argv[1]
store = microblob.connect(db)
store.save_or_update_object(os.urandom(20 * 2**20), object_id="warm")  # the hash thread and its arena exist
vm = int(re.search(r"VmSize:\s+(\d+)", open("/proc/self/status").read()).group(1)) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + 40 * 2**20, resource.RLIM_INFINITY))

class Source:
    left = 100 * 2**20

    def read(self, n=-1):
        n = min(self.left, 2**20 if n < 0 else n)
        self.left -= n
        return os.urandom(n)

try:
    store.save_or_update_object(Source(), object_id="big")
    print("saved big")
except StoreFull as exc:
    print("StoreFull:", exc)
print("after:", store.save_or_update_object(b"small", object_id="small"))
print("warm intact:", len(store.get_blob_object("warm").data) == 20 * 2**20)
print("small intact:", store.get_blob_object("small").data == b"small")
print("objects:", sorted(o.object_id for o in store.blob_object_query({})))
"""


def test_map_growth_without_address_space_is_store_full_and_the_store_stays_usable(lmdb_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", _GROWTH, str(lmdb_path)], capture_output=True, text=True,
                          env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("StoreFull: ") and "cannot grow the map to" in lines[0], proc.stdout
    assert "not enough contiguous address space" in lines[0]
    assert lines[1:] == ["after: small", "warm intact: True", "small intact: True", "objects: ['small', 'warm']"]


def test_the_map_cap_is_json_507(lmdb_path: Path, make_server: Any, asgi: Any,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A 32-bit process caps the map at 1536 MiB; here the cap is the initial 64 MiB map."""
    from microblob.engine import lmdb_kv as _lmdb

    monkeypatch.setattr(_lmdb, "MAP_LIMIT", 64 * MiB)
    with microblob.connect(lmdb_path, map_size=64 * MiB) as store:
        client = asgi(make_server({}, store=store, max_upload=1024 * MiB))  # over the map: the store refuses
        response = client.post("/objects/", content=os.urandom(80 * MiB))
        assert response.status_code == 507, response.text
        assert response.json()["error"] == "StoreFull" and "store is full" in response.json()["detail"]
        assert client.post("/objects/", content=b"small").status_code == 201


def test_query_windows_beyond_a_machine_word_are_invalid_or_empty(embedded_store: Any) -> None:
    embedded_store.save_or_update_object(b"x")
    assert embedded_store.blob_object_query({}, skip=2**31) == []
    assert embedded_store.blob_object_query({}, skip=2**62, limit=2**62) == []
    with pytest.raises(microblob.InvalidArgument):
        embedded_store.blob_object_query({}, skip=2**63)


# --- the file changed under a running process (what README says) ------------------------------------

_TRUNCATE = r"""
import os, sys, microblob
store = microblob.connect(sys.argv[1])
store.save_or_update_object(os.urandom(3_000_000), object_id="a")
os.truncate(sys.argv[1], 8192)
print("truncated", flush=True)
store.get_blob_object("a").data
print("read on", flush=True)
"""

_DELETE = r"""
import os, sys, microblob
store = microblob.connect(sys.argv[1])
store.save_or_update_object(b"before", object_id="a")
os.unlink(sys.argv[1])
store.save_or_update_object(b"after", object_id="b")
print(sorted(o.object_id for o in store.blob_object_query({})), os.path.exists(sys.argv[1]), flush=True)
"""


def test_truncating_the_file_under_a_reader_is_sigbus(lmdb_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", _TRUNCATE, str(lmdb_path)], capture_output=True, text=True,
                          env=_env(), timeout=120)
    assert proc.returncode == -signal.SIGBUS, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stdout == "truncated\n"


def test_deleting_the_file_under_a_writer_loses_its_later_writes(lmdb_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", _DELETE, str(lmdb_path)], capture_output=True, text=True,
                          env=_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "['a', 'b'] False\n"  # it went on, on the deleted file
    with pytest.raises(microblob.StoreNotFound):
        microblob.connect(lmdb_path, create=False)  # and all of it is gone with the process
