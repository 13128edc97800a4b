"""The files bucket (docs/ARCHITECTURE.md, "Data flow of a save"): GridFS semantics, streaming, batching, crash-safe
order."""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable
from pathlib import Path

import pytest

import microblob
from microblob import DuplicateKey, FileNotFound, IntegrityError, InvalidArgument


def test_upload_download_round_trip_with_gridfs_fields(store: microblob.Store) -> None:
    payload = os.urandom(1_000_000)
    file_id = store.files.upload_from_stream("scan.tif", io.BytesIO(payload), metadata={"lab": "B2"},
                                             chunk_size=100_000)
    doc = store.files.get_file(file_id)
    assert {"_id", "length", "chunkSize", "uploadDate", "filename", "metadata", "sha256"} <= set(doc)
    assert doc["length"] == len(payload) and doc["chunkSize"] == 100_000
    assert doc["filename"] == "scan.tif" and doc["metadata"] == {"lab": "B2"}
    assert doc["sha256"] == hashlib.sha256(payload).hexdigest()
    assert store.backend.chunks.count(file_id) == 10
    out = io.BytesIO()
    assert store.files.download_to_stream(file_id, out) == len(payload)
    assert out.getvalue() == payload
    assert [f["_id"] for f in store.files.find({"filename": "scan.tif"})] == [file_id]


def test_upload_stream_is_invisible_until_closed_and_abort_leaves_nothing(store: microblob.Store) -> None:
    store.files.batch_bytes = 64 * 1024  # force several committed batches
    upload = store.files.open_upload_stream("partial", chunk_size=16 * 1024)
    upload.write(os.urandom(300_000))
    assert store.backend.chunks.count(upload.file_id) > 0  # batches were committed...
    assert not store.files.exists(upload.file_id)  # ...but the file is not visible
    upload.abort()
    assert store.backend.chunks.count(upload.file_id) == 0
    assert store.query({}, collection="fs.files") == []
    with pytest.raises(ValueError):
        upload.write(b"more")


def test_exception_inside_with_block_aborts(store: microblob.Store) -> None:
    with pytest.raises(RuntimeError), store.files.open_upload_stream("x") as upload:
        upload.write(b"data" * 100_000)
        raise RuntimeError("source failed")
    assert not store.files.exists(upload.file_id)
    assert list(store.backend.chunks.file_ids()) == []


def test_failing_source_leaves_no_object_and_no_chunks(store: microblob.Store) -> None:
    class Broken(io.RawIOBase):
        def __init__(self) -> None:
            self.sent = 0

        def readable(self) -> bool:
            return True

        def readinto(self, buf):  # type: ignore[no-untyped-def]
            if self.sent > 40_000_000:
                raise OSError("device unplugged")
            n = len(buf)
            buf[:n] = b"\x01" * n
            self.sent += n
            return n

    with pytest.raises(OSError, match="unplugged"):
        store.save_or_update_object(Broken(), object_id="camera-frame")
    with pytest.raises(microblob.ObjectNotFound):
        store.get_blob_object("camera-frame")
    assert list(store.backend.chunks.file_ids()) == []
    assert store.query({}, collection="fs.files") == []


def test_reads_touch_only_the_chunks_they_need(store: microblob.Store) -> None:
    payload = os.urandom(10 * 50_000)
    file_id = store.files.upload_from_stream("f", payload, chunk_size=50_000)
    fetched: list[int] = []
    chunks = store.backend.chunks
    get, read_joined = chunks.get, chunks.read_joined

    def spy_get(fid, n):  # type: ignore[no-untyped-def]
        fetched.append(n)
        return get(fid, n)

    def spy_joined(fid, parts):  # type: ignore[no-untyped-def]
        fetched.extend(n for n, *_ in parts)
        return read_joined(fid, parts)

    chunks.get, chunks.read_joined = spy_get, spy_joined  # type: ignore[method-assign]
    with store.files.open_download_stream(file_id) as stream:
        stream.seek(7 * 50_000 + 10)
        assert stream.read(100) == payload[350_010:350_110]
        assert fetched == [7]
        assert stream.read(100) == payload[350_110:350_210]
        assert fetched == [7]  # small sequential reads are served from the chunk already fetched
        stream.seek(49_990)
        assert stream.read(20) == payload[49_990:50_010]  # spans chunks 0 and 1
        assert fetched == [7, 0, 1]
        stream.seek(120_000)
        assert stream.read(100_000) == payload[120_000:220_000]  # chunks 2, 3 and 4
        assert fetched == [7, 0, 1, 2, 3, 4]
        stream.seek(0, io.SEEK_END)
        assert stream.read(10) == b""
        assert stream.tell() == len(payload)


def test_stream_is_a_regular_binary_file_object(store: microblob.Store) -> None:
    payload = os.urandom(123_456)
    file_id = store.files.upload_from_stream("f", payload, chunk_size=10_000)
    with store.files.open_download_stream(file_id) as stream:
        buffered = io.BufferedReader(stream, buffer_size=7_000)
        assert buffered.read(5) == payload[:5]
        assert buffered.read() == payload[5:]
        stream.seek(0)
        buf = bytearray(1000)
        assert stream.readinto(buf) == 1000 and bytes(buf) == payload[:1000]
    with pytest.raises(ValueError):
        stream.read(1)


def test_missing_or_short_chunk_is_an_integrity_error(store: microblob.Store) -> None:
    file_id = store.files.upload_from_stream("f", os.urandom(30_000), chunk_size=10_000)
    store.backend.chunks.put(file_id, 1, b"short")
    with store.files.open_download_stream(file_id) as stream, pytest.raises(IntegrityError, match="chunk 1"):
        stream.read()


def test_delete_and_missing_files(store: microblob.Store) -> None:
    file_id = store.files.upload_from_stream("f", b"abc")
    store.files.delete(file_id)
    with pytest.raises(FileNotFound):
        store.files.open_download_stream(file_id)
    with pytest.raises(FileNotFound):
        store.files.delete(file_id)
    assert store.backend.chunks.count(file_id) == 0


def test_bad_arguments(store: microblob.Store) -> None:
    with pytest.raises(InvalidArgument):
        store.files.open_upload_stream(123)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        store.files.open_upload_stream("f", chunk_size=0)
    with pytest.raises(InvalidArgument):
        store.files.open_upload_stream("f", metadata=["not", "a", "dict"])  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        store.files.upload_from_stream("f", "text is not bytes")  # type: ignore[arg-type]
    kept = [store.files.upload_from_stream(name, b"kept", file_id=name) for name in ("a", "b")]
    for not_a_list in ("abc", {"b": 1}, None, 5):  # a str would delete the files named by its letters
        with pytest.raises(InvalidArgument):
            store.files.delete_many(not_a_list)  # type: ignore[arg-type]
    assert all(store.files.exists(file_id) for file_id in kept)
    assert store.files.delete_many(("a", "missing")) == (1, 4)



@pytest.mark.parametrize("size", [100, 3 * 1024 * 1024], ids=["one transaction", "several batches"])
def test_an_upload_under_a_taken_file_id_leaves_that_file_whole(store: microblob.Store, size: int) -> None:
    """The id is refused before any chunk is written under it: writing and then discarding chunks of a
    taken id would overwrite and then delete the bytes of the file (or object) that has it."""
    store.files.batch_bytes = 1024 * 1024
    store.files.upload_from_stream("original", b"ORIGINAL", file_id="taken")
    object_id = store.save_or_update_object(b"precious")
    object_file = store.query({"_id": object_id})[0]["file_id"]
    for file_id in ("taken", object_file):
        with pytest.raises(DuplicateKey):
            store.files.upload_from_stream("copy", os.urandom(size), file_id=file_id)
        upload = store.files.open_upload_stream("aborted", file_id=file_id)
        try:
            upload.write(os.urandom(size))
        except DuplicateKey:
            pass  # refused at the first batch; a small write is refused when it is published
        upload.abort()
    assert store.files.open_download_stream("taken").read() == b"ORIGINAL"
    assert store.get_blob_object(object_id).data == b"precious"
    assert store.verify().ok
    # The refused uploads left no lease behind: the id is free for the next upload once its file goes.
    store.files.delete("taken")
    store.files.upload_from_stream("again", os.urandom(size), file_id="taken")
    assert store.files.get_file("taken")["length"] == size


def test_stream_method_arguments_are_checked(store: microblob.Store) -> None:
    """Wrong types reach neither memoryview nor slicing (bare TypeErrors before); a closed stream is an
    InvalidArgument, which is a ValueError as io's own streams raise."""
    file_id = store.files.upload_from_stream("f", b"0123456789")
    down = store.files.open_download_stream(file_id)
    for bad in (lambda: down.read("5"), lambda: down.read(2.5), lambda: down.read(True), lambda: down.seek("1"),
                lambda: down.seek(1.5), lambda: down.seek(-1), lambda: down.seek(0, 7), lambda: down.readinto(b"abc"),
                lambda: down.readinto(5)):
        with pytest.raises(InvalidArgument):
            bad()
    assert down.tell() == 0 and down.read(3) == b"012" and down.seek(-2, io.SEEK_END) == 8
    buffer = bytearray(4)
    assert down.readinto(buffer) == 2 and buffer[:2] == b"89"
    down.close()
    with pytest.raises(InvalidArgument, match="closed"):
        down.read()
    up = store.files.open_upload_stream("g")
    for bad_data in ("text", 5, None):
        with pytest.raises(InvalidArgument, match="bytes-like"):
            up.write(bad_data)  # type: ignore[arg-type]
    up.write(b"kept")
    up.close()
    for after_close in (lambda: up.write(b"x"), up.finish):
        with pytest.raises(InvalidArgument):
            after_close()
    assert store.files.open_download_stream(up.file_id).read() == b"kept"

def test_large_upload_commits_in_bounded_batches(store: microblob.Store) -> None:
    """A big upload is many transactions of at most `batch_bytes`, never one huge one."""
    store.files.batch_bytes = 1024 * 1024
    sizes: list[int] = []
    chunks = store.backend.chunks
    original = chunks.put_many

    def spy(file_id, first, batch):  # type: ignore[no-untyped-def]
        sizes.append(sum(len(c) for c in batch))
        return original(file_id, first, batch)

    chunks.put_many = spy  # type: ignore[method-assign]
    payload = os.urandom(10 * 1024 * 1024 + 5)
    object_id = store.save_or_update_object(payload)
    assert max(sizes) <= 1024 * 1024 + store.chunk_size
    assert sum(sizes) == len(payload) and len(sizes) >= len(payload) // (1024 * 1024 + store.chunk_size)
    assert store.get_blob_object(object_id).data == payload


KILLED_UPLOADER = """
import os, sys, microblob
store = microblob.connect(sys.argv[1])
store.files.batch_bytes = 256 * 1024
upload = store.files.open_upload_stream("doomed")
upload.write(os.urandom(2_000_000))          # several batches committed under a lease
sys.stdout.write(upload.file_id); sys.stdout.flush()
os._exit(9)                                   # die without publishing, like kill -9
"""


def test_gc_reclaims_chunks_of_a_killed_upload(lmdb_path: Path, run_python: Callable) -> None:
    with microblob.connect(lmdb_path) as store:
        kept = store.save_or_update_object(os.urandom(500_000))
    proc = run_python(KILLED_UPLOADER, str(lmdb_path), check=False)
    assert proc.returncode == 9
    doomed = proc.stdout.strip()
    with microblob.connect(lmdb_path) as store:
        assert store.backend.chunks.count(doomed) > 0
        assert store.query({"_id": doomed}, collection="fs.files") == []
        report = store.gc()
        assert report.freed_orphan_chunks > 0 and report.freed_bytes >= 1_000_000
        assert store.backend.chunks.count(doomed) == 0
        assert store.get_blob_object(kept).size == 500_000
        assert store.verify().ok
        assert store.gc().freed_orphan_chunks == 0


def test_gc_keeps_uploads_in_progress(store: microblob.Store) -> None:
    store.files.batch_bytes = 64 * 1024
    upload = store.files.open_upload_stream("live", chunk_size=16 * 1024)
    upload.write(os.urandom(200_000))
    assert store.gc().freed_orphan_chunks == 0  # the lease is ours and we are alive
    upload.close()
    with store.files.open_download_stream(upload.file_id) as stream:
        assert len(stream.read()) == 200_000


def test_a_save_refused_at_the_object_write_leaves_no_file(store: microblob.Store) -> None:
    """Found by tests/test_store_fuzz.py: on MongoDB (no transactions) a save whose object document was
    refused after its bytes were published left the files document behind, naming deleted chunks."""
    with pytest.raises(microblob.InvalidArgument):
        # each tag passes its check; the object document is over the 16 MiB limit
        store.save_or_update_object(b"bytes", tags=["x"] * 1_500_000)
    assert store.query({}) == []
    assert store.query({}, collection="fs.files") == []
    assert list(store.backend.chunks.file_ids()) == []
    assert store.gc().freed_files == 0


def test_file_ids_that_no_file_can_have(store: microblob.Store, tmp_path: Path) -> None:
    """Found by tests/test_store_fuzz.py: an operator document as a file id matched some other file, so
    files.delete({"$gt": ""}) deleted an object's bytes (verify() then reported the object damaged); ids
    beyond 64 bits or with lone surrogates raised a bare OverflowError/UnicodeEncodeError; a text or
    missing destination raised TypeError/AttributeError, one opened for reading io.UnsupportedOperation."""
    object_id = store.save_or_update_object(b"object bytes")
    user_file = store.files.upload_from_stream("user.bin", b"user bytes")
    for bad in ({"$gt": ""}, {"$ne": None}, {"$exists": True}, ["a"], ("a",), None, {"a", "b"}):
        for call in (store.files.delete, store.files.open_download_stream, store.files.exists,
                     store.files.get_file):
            with pytest.raises(InvalidArgument):
                call(bad)
    for bad in (2**64, -(2**70), "\ud800", "a\x00b", "", "f" * 129, b"", True, 1.5):
        with pytest.raises(InvalidArgument):
            store.files.upload_from_stream("f", b"x", file_id=bad)
    readable = tmp_path / "readable.bin"
    readable.write_bytes(b"")
    closed = io.BytesIO()
    closed.close()
    with open(readable, "rb") as opened_for_reading:
        for destination in (io.StringIO(), None, b"bytes", 5, opened_for_reading, closed):
            with pytest.raises(InvalidArgument, match="destination"):
                store.files.download_to_stream(user_file, destination)
    assert store.verify().ok
    assert store.get_blob_object(object_id).data == b"object bytes"
    assert store.files.open_download_stream(user_file).read() == b"user bytes"
    for good in (2**63 - 1, -(2**63), b"\x00" * 64, "f" * 128, "é😀"):
        assert store.files.upload_from_stream("f", b"ok", file_id=good) == good
        assert store.files.open_download_stream(good).read() == b"ok"
