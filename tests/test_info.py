"""`microblob info`, serve's start-up line and the room-aware `serve --max-upload` default.

A 32-bit process maps at most 1536 MiB of LMDB file; these tests lower `MAP_LIMIT` to stand for such a
store without writing 1.5 GiB.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

import microblob
from microblob.cli import _space_line, main
from microblob.engine import lmdb_kv
from microblob.store.info import DEFAULT_MAX_UPLOAD, MIN_MAX_UPLOAD, room, space, store_info, upload_cap

MiB = 1024 * 1024


def test_info_counts_and_space(store_factory: Callable, capsys: pytest.CaptureFixture[str]) -> None:
    store = store_factory("lmdb")
    oid = store.save_or_update_object(b"a" * 300_000)
    store.save_or_update_object(b"b" * 1000, object_id=oid, control_version=True)
    with microblob.Workflow(name="w", store=store):
        store.save_or_update_object(b"inline", save_data_in_collection=True)
    info = store_info(store)
    assert (info.objects, info.history_versions, info.workflows, info.files) == (2, 1, 1, 2)
    assert info.file_bytes == 301_000
    found = info.space
    assert found is not None and found.map_limit == lmdb_kv.MAP_LIMIT
    assert found.used <= found.file_size == os.path.getsize(store.uri) and found.used <= found.map_size
    assert 0 < found.room <= found.map_limit - found.used
    assert main(["info", "--db", store.uri, "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["objects"] == 2 and printed["space"]["map_limit"] == lmdb_kv.MAP_LIMIT
    assert main(["info", "--db", store.uri]) == 0
    out = capsys.readouterr().out
    assert "objects:   2 (and 1 older version), 1 workflow" in out and "files:     2, 293.9 KiB" in out
    assert "map limit:" in out and "room left:" in out


def test_info_in_memory_has_no_file_and_mongita_counts_its_chunk_file(store_factory: Callable) -> None:
    memory = store_factory("memory")
    memory.save_or_update_object(b"x")
    info = store_info(memory)
    assert info.space is None and room(memory) is None and info.objects == 1
    mongita = store_factory("mongita")
    mongita.save_or_update_object(b"y" * 5000)
    found = space(mongita)
    assert found is not None and found.file_size == os.path.getsize(Path(mongita.uri.removeprefix("mongita://"))
                                                                    / "chunks.db")


def test_info_on_no_store_or_a_closed_one(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          store_factory: Callable) -> None:
    assert main(["info", "--db", str(tmp_path / "none.db")]) == 1
    assert "no store at" in capsys.readouterr().err and not (tmp_path / "none.db").exists()
    store = store_factory("lmdb")
    store.close()
    with pytest.raises(microblob.StoreClosed):
        store_info(store)


def test_max_upload_default_is_what_fits(store_factory: Callable, monkeypatch: pytest.MonkeyPatch) -> None:
    store = store_factory("lmdb")
    roomy = space(store)
    assert upload_cap(roomy) == DEFAULT_MAX_UPLOAD  # a 64-bit store on a disk with room
    assert "uploads up to 4.0 GiB" in _space_line(store.uri, roomy, DEFAULT_MAX_UPLOAD, False)
    monkeypatch.setattr(lmdb_kv, "MAP_LIMIT", 1536 * MiB)  # as on a 32-bit Raspberry Pi
    store.save_or_update_object(b"x" * (5 * MiB))
    pi = space(store)
    assert pi is not None and pi.map_limit == 1536 * MiB
    limit = upload_cap(pi)
    assert limit == pi.room == 1536 * MiB - pi.used < DEFAULT_MAX_UPLOAD
    line = _space_line(store.uri, pi, limit, False)
    assert "of a 1.5 GiB map limit" in line and "(the room left; --max-upload sets it)" in line
    assert "room left" not in _space_line(store.uri, pi, 100 * MiB, True)  # the user chose it
    monkeypatch.setattr(lmdb_kv, "MAP_LIMIT", pi.used)  # full: still a usable (small) limit, not 0
    assert upload_cap(space(store)) == MIN_MAX_UPLOAD
    assert upload_cap(None) == DEFAULT_MAX_UPLOAD  # MongoDB: the server's business


def test_a_thing_server_built_in_python_caps_uploads_at_what_fits(store_factory: Callable,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from microblob import ThingServer

    store = store_factory("lmdb")
    assert ThingServer({}, store=store).max_upload == DEFAULT_MAX_UPLOAD
    assert ThingServer({}).max_upload == DEFAULT_MAX_UPLOAD  # no store: nothing says less
    monkeypatch.setattr(lmdb_kv, "MAP_LIMIT", 64 * MiB)
    small = space(store)
    assert small is not None and ThingServer({}, store=store).max_upload == small.room < 64 * MiB
    assert ThingServer({}, store=store, max_upload=2 * MiB).max_upload == 2 * MiB  # the caller's choice wins
    for bad in (0, -1, 1.5, "4G", True):
        with pytest.raises(microblob.InvalidArgument, match="max_upload"):
            ThingServer({}, store=store, max_upload=bad)


SERVE_SMALL_MAP = """
import sys
from microblob.engine import lmdb_kv
lmdb_kv.MAP_LIMIT = 16 * 1024 * 1024   # a store that maps 16 MiB at most, as a 32-bit one maps 1536
from microblob.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_serve_says_where_the_store_stands_and_refuses_what_cannot_fit(tmp_path: Path) -> None:
    db = tmp_path / "pi.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MICROBLOB_")}
    fill = ("from microblob.engine import lmdb_kv; lmdb_kv.MAP_LIMIT = 16 << 20; import microblob; "
            f"s = microblob.connect({str(db)!r}); s.save_or_update_object(bytes(6 << 20)); s.close()")
    subprocess.run([sys.executable, "-c", fill], env=env, check=True, timeout=120)
    server = subprocess.Popen([sys.executable, "-c", SERVE_SMALL_MAP, "serve", "--db", str(db), "--port", "0"],
                              env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert server.stdout is not None
        url = server.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), url
        r = httpx.post(url + "blobs", content=b"z" * (12 * MiB), headers={"X-Requested-With": "test"}, timeout=60)
        assert r.status_code == 413 and "over the upload limit" in r.json()["detail"], r.text
        r = httpx.post(url + "blobs", content=b"z" * 1000, headers={"X-Requested-With": "test"}, timeout=60)
        assert r.status_code == 201, r.text
    finally:
        server.terminate()
        _, err = server.communicate(timeout=60)
    line = next(x for x in err.splitlines() if x.startswith(f"microblob: store {db}:"))
    assert "of a 16.0 MiB map limit" in line and "(the room left; --max-upload sets it)" in line, line
