"""Whole reads check the stored sha256: damaged bytes raise IntegrityError instead of coming back as data.

Damage is made two ways: through the chunk store (the same length, one byte flipped: every backend),
and for LMDB by flipping a byte of the file itself, as a bad disk would. Ranged reads are checked for
chunk presence and length only (README, "Integrity").
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

import microblob
from microblob import Blob, BlobError, IntegrityError, Thing, ThingClient, thing_action

ROOT = Path(__file__).resolve().parents[1]
PAYLOAD = 350_000  # four chunks of the tests' 100 kB


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


def _damage_chunk(store: Any, file_id: Any, n: int = 1, at: int = 17) -> None:
    """Replace chunk n by the same bytes with one bit flipped: only the sha256 can tell."""
    chunks = store.files._chunks
    chunks.put(file_id, n, _flip(bytes(chunks.get(file_id, n)), at))


def _saved(store: Any, size: int = PAYLOAD, **kwargs: Any) -> tuple[Any, bytes]:
    data = os.urandom(size)
    oid = store.save_or_update_object(data, **kwargs)
    return store.get_blob_object(oid), data


def test_whole_reads_of_damaged_bytes_raise(store: Any, tmp_path: Path) -> None:
    obj, data = _saved(store)
    _damage_chunk(store, obj.file_id)
    with pytest.raises(IntegrityError, match="sha256"):
        _ = store.get_blob_object(obj.object_id).data
    target = tmp_path / "out.bin"
    target.write_bytes(b"what was there")
    with pytest.raises(IntegrityError, match="sha256"):
        store.get_blob_object(obj.object_id).save(target)
    assert target.read_bytes() == b"what was there"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".microblob-")] == []
    with store.get_blob_object(obj.object_id).open() as stream, pytest.raises(IntegrityError):
        while stream.read(10_000):  # small reads in order hash as they go, too
            pass
    with store.get_blob_object(obj.object_id).open() as stream, pytest.raises(IntegrityError):
        for _ in stream.chunks():
            pass
    with pytest.raises(IntegrityError):
        store.files.download_to_stream(obj.file_id, open(os.devnull, "wb"))  # noqa: SIM115


def test_ranged_reads_are_length_checked_only(store: Any) -> None:
    """A read that does not cover the file from its first byte to its last is not hashed: it gets the
    (damaged) bytes. The README says so; verify() finds the damage."""
    obj, data = _saved(store)
    _damage_chunk(store, obj.file_id, n=1, at=17)
    with obj.open() as stream:
        stream.seek(100_000)
        assert stream.read(100) == _flip(data, 100_017)[100_000:100_100]
        stream.seek(0)
        assert stream.read(PAYLOAD - 1) == _flip(data, 100_017)[: PAYLOAD - 1]  # stops short of the end


def test_intact_reads_pass_and_rereads_after_seek_are_fine(store: Any) -> None:
    obj, data = _saved(store)
    assert obj.data == data
    with store.get_blob_object(obj.object_id).open() as stream:  # obj keeps its bytes: read the store
        assert stream.read(5) == data[:5]
        stream.seek(0)
        assert stream.read() == data
        stream.seek(0)
        assert b"".join(stream.chunks()) == data


def test_a_reread_from_the_start_is_checked_again(store: Any) -> None:
    obj, _ = _saved(store)
    _damage_chunk(store, obj.file_id, n=3)
    with obj.open() as stream:
        stream.read(5)
        stream.seek(0)  # the hash starts over: the whole read that follows is checked
        with pytest.raises(IntegrityError):
            stream.read()


def test_damaged_inline_bytes_raise(store: Any) -> None:
    oid = store.save_or_update_object(b"small and inline", save_data_in_collection=True)
    assert store.get_blob_object(oid).data == b"small and inline"
    store._objects.update_one({"_id": oid}, {"$set": {"data": b"small and inlinf"}})
    with pytest.raises(IntegrityError, match="sha256"):
        _ = store.get_blob_object(oid).data


def test_a_flipped_byte_in_the_lmdb_file_is_caught(lmdb_path: Path) -> None:
    marker = hashlib.sha256(b"marker").digest() * 4
    data = os.urandom(200_000) + marker + os.urandom(200_000)
    with microblob.connect(lmdb_path, chunk_size=100_000) as store:
        oid = store.save_or_update_object(data)
        # the store stays open: the flip is seen through its map, as a disk error would be
        raw = lmdb_path.read_bytes()
        at = raw.index(marker)
        with open(lmdb_path, "r+b") as fh:
            fh.seek(at + 5)
            fh.write(bytes([raw[at + 5] ^ 0x80]))
        with pytest.raises(IntegrityError, match="sha256"):
            _ = store.get_blob_object(oid).data


def _run_cli(db: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if k not in ("MICROBLOB_URI", "MICROBLOB_TOKEN")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env["MICROBLOB_URI"] = str(db)
    return subprocess.run([sys.executable, "-m", "microblob", *args], capture_output=True, env=env,
                          cwd=db.parent, timeout=120)


def test_cli_get_of_damaged_bytes_exits_1_and_keeps_the_file(lmdb_path: Path, tmp_path: Path) -> None:
    with microblob.connect(lmdb_path, chunk_size=100_000) as store:
        obj, _ = _saved(store)
        _damage_chunk(store, obj.file_id)
    out = tmp_path / "out.bin"
    out.write_bytes(b"the old file")
    proc = _run_cli(lmdb_path, "get", obj.object_id, "-o", str(out))
    err = proc.stderr.decode()
    assert proc.returncode == 1, err
    assert err.count("\n") == 1 and "Traceback" not in err and "sha256" in err, err
    assert out.read_bytes() == b"the old file"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".microblob-")) == []


class Loader(Thing):
    def __init__(self, store: Any) -> None:
        self.store = store

    @thing_action
    def load(self, object_id: str) -> Blob:
        return Blob.from_object(self.store, object_id)


@pytest.fixture
def served(embedded_store: Any, make_server: Any, live: Any) -> tuple[Any, str]:
    server = make_server({"loader": Loader(embedded_store)}, store=embedded_store)
    return embedded_store, live(server)


def test_http_full_download_of_damaged_bytes_is_a_failed_transfer(served: tuple[Any, str]) -> None:
    store, url = served
    big, _ = _saved(store, size=3 * 1024 * 1024 + 5)  # past the first piece: the status is out when found
    _damage_chunk(store, big.file_id, n=25)
    healthy, healthy_data = _saved(store, size=2 * 1024 * 1024)
    with httpx.Client(base_url=url, timeout=60) as http:
        with http.stream("GET", f"/objects/{big.object_id}/data") as response:
            assert response.status_code == 200
            with pytest.raises(httpx.RemoteProtocolError):
                response.read()  # the connection is dropped before the last piece
        # the server stays up and serves the intact object whole
        assert http.get(f"/objects/{healthy.object_id}/data").content == healthy_data
        ranged = http.get(f"/objects/{big.object_id}/data", headers={"Range": "bytes=0-99"})
        assert ranged.status_code == 206 and len(ranged.content) == 100  # ranged: length-checked only
    with ThingClient.from_url(url + "loader/") as client:
        blob = client.load(object_id=big.object_id)
        assert "/blobs/" in blob.url
        with pytest.raises(BlobError, match="broke off"):
            _ = blob.data
        assert client.load(object_id=healthy.object_id).data == healthy_data


def test_http_small_damaged_object_answers_json_500(served: tuple[Any, str]) -> None:
    store, url = served
    small, _ = _saved(store, size=PAYLOAD)  # read whole before the status goes out
    _damage_chunk(store, small.file_id)
    with httpx.Client(base_url=url, timeout=60) as http:
        response = http.get(f"/objects/{small.object_id}/data")
        assert response.status_code == 500
        assert response.json()["error"] == "StoreDamaged" and "sha256" in response.json()["detail"]
        assert http.get(f"/objects/{small.object_id}").status_code == 200  # its metadata is intact


def test_copy_of_damaged_bytes_reports_them_and_copies_nothing_of_them(store_factory: Any) -> None:
    src, dst = store_factory("lmdb"), store_factory("memory")
    obj, _ = _saved(src)
    good, good_data = _saved(src)
    _damage_chunk(src, obj.file_id)
    report = microblob.copy(src, dst)
    assert [oid for oid, _ in report.problems] == [obj.object_id]
    assert "sha256" in report.problems[0][1]
    assert dst.get_blob_object(good.object_id).data == good_data
    with pytest.raises(microblob.ObjectNotFound):
        dst.get_blob_object(obj.object_id)
    freed = dst.gc()
    assert (freed.freed_files, freed.freed_orphan_chunks) == (0, 0)  # nothing of it was left behind
