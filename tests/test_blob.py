"""The Blob value: constructors, no-copy access, streaming, atomic save, the content-type registry."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from thing_fixtures import JPEGBlob, RAWBlob

import microblob
from microblob import Blob, InvalidArgument
from microblob.blob import blob_class_for


def test_from_bytes_returns_the_same_object() -> None:
    data = b"x" * 1000
    blob = RAWBlob.from_bytes(data)
    assert blob.data is data
    assert blob.size == 1000
    assert blob.content_type == "image/x-raw"
    assert blob.sha256 == hashlib.sha256(data).hexdigest()


def test_bytearray_and_memoryview_are_not_copied() -> None:
    buf = bytearray(b"abcdef")
    blob = Blob.from_bytes(buf)
    assert blob.data is buf
    buf[0:1] = b"z"  # same object: the change is visible
    with blob.open() as f:
        assert f.read() == b"zbcdef"
    mv = memoryview(b"0123456789")[2:6]
    blob = Blob.from_bytes(mv)
    assert blob.data is mv and blob.size == 4
    with blob.open() as f:
        assert f.read(2) == b"23" and f.read() == b"45"


def test_from_bytes_rejects_text() -> None:
    with pytest.raises(InvalidArgument):
        Blob.from_bytes("text")  # type: ignore[arg-type]


def test_media_type_alias_and_registry() -> None:
    assert JPEGBlob.content_type == "image/jpeg"
    assert JPEGBlob.media_type == "image/jpeg"
    assert RAWBlob.media_type == "image/x-raw"
    blob = JPEGBlob.from_bytes(b"\xff\xd8")
    assert blob.media_type == "image/jpeg"
    assert blob_class_for("image/jpeg") is JPEGBlob
    assert blob_class_for("Image/JPEG; q=0.9") is JPEGBlob
    assert blob_class_for("application/x-unknown") is Blob
    assert blob_class_for(None) is Blob

    class AnotherJPEG(Blob):
        content_type = "image/jpeg"

    assert blob_class_for("image/jpeg") is JPEGBlob  # the first definition keeps its type


def test_content_type_must_match_the_class() -> None:
    with pytest.raises(InvalidArgument):
        JPEGBlob.from_bytes(b"", content_type="image/png")
    assert Blob.from_bytes(b"", content_type="text/plain").content_type == "text/plain"

    class AnyImage(Blob, register=False):
        content_type = "image/*"

    assert AnyImage.from_bytes(b"", content_type="image/png").content_type == "image/png"
    with pytest.raises(InvalidArgument):
        AnyImage.from_bytes(b"", content_type="text/plain")


def test_from_file_reads_lazily_and_once(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"0123456789" * 1000)
    blob = RAWBlob.from_file(path)
    assert blob.size == 10_000
    with blob.open() as f:
        f.seek(5)
        assert f.read(3) == b"567"
    first = blob.data
    assert first == path.read_bytes()
    assert blob.data is first  # read once
    assert blob.sha256 == hashlib.sha256(first).hexdigest()


def test_from_file_delete_removes_the_file_with_the_blob(tmp_path: Path) -> None:
    path = tmp_path / "tmp.bin"
    path.write_bytes(b"abc")
    blob = Blob.from_file(path, delete=True)
    view = blob.as_type(RAWBlob)  # shares the source
    del blob
    assert path.exists()
    del view
    import gc

    gc.collect()
    assert not path.exists()


def test_from_file_on_delete_runs_once_the_file_is_gone(tmp_path: Path) -> None:
    """What a server uses to give an upload's room back: called after the file is removed, once, and
    only when the last Blob over that file is gone."""
    import gc

    path = tmp_path / "upload.bin"
    path.write_bytes(b"abc")
    seen: list[bool] = []
    blob = Blob.from_file(path, delete=True, sha256=hashlib.sha256(b"abc").hexdigest(),
                          on_delete=lambda: seen.append(path.exists()))
    view = blob.as_type(RAWBlob)
    del blob
    gc.collect()
    assert seen == [] and path.exists()
    del view
    gc.collect()
    assert seen == [False]


def test_from_file_refused_leaves_the_file_to_the_caller(tmp_path: Path) -> None:
    import gc

    path = tmp_path / "upload.bin"
    path.write_bytes(b"abc")
    seen: list[str] = []
    with pytest.raises(InvalidArgument, match="JPEGBlob holds"):
        JPEGBlob.from_file(path, "text/plain", delete=True, on_delete=lambda: seen.append("released"))
    gc.collect()
    assert path.read_bytes() == b"abc" and seen == []
    with pytest.raises(InvalidArgument, match="on_delete"):
        Blob.from_file(path, on_delete=lambda: None)  # without delete=True nothing is removed to report
    with pytest.raises(InvalidArgument, match="on_delete"):
        Blob.from_file(path, delete=True, on_delete="not callable")  # type: ignore[arg-type]
    for truthy in ("False", 1, [0]):  # truthy, but not a yes: the file is not handed over
        with pytest.raises(InvalidArgument, match="delete must be True or False"):
            Blob.from_file(path, delete=truthy)  # type: ignore[arg-type]
    gc.collect()
    assert path.read_bytes() == b"abc"


def test_save_is_atomic_and_streams(tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(3 << 20))
    target = tmp_path / "out.bin"
    seen: list[tuple[int, int | None]] = []
    Blob.from_file(src).save(target, progress=lambda done, total: seen.append((done, total)))
    assert target.read_bytes() == src.read_bytes()
    assert seen[-1] == (3 << 20, 3 << 20)
    assert len(seen) >= 3  # reported while streaming, chunk by chunk
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".part")] == []


def test_failed_save_leaves_nothing(tmp_path: Path) -> None:
    class Broken(Blob, register=False):
        def open(self, progress=None):  # type: ignore[no-untyped-def, override]
            raise OSError("disk gone")

    with pytest.raises(OSError):
        Broken.from_bytes(b"abc").save(tmp_path / "x.bin")
    assert list(tmp_path.iterdir()) == []


def test_as_type_shares_bytes() -> None:
    data = b"raw bytes"
    generic = Blob.from_bytes(data)
    raw = generic.as_type(RAWBlob)
    assert isinstance(raw, RAWBlob) and raw.data is data
    assert raw.content_type == "image/x-raw"
    assert raw.as_type(RAWBlob) is raw


def test_missing_file_is_a_blob_error(tmp_path: Path) -> None:
    from microblob import BlobError

    with pytest.raises(BlobError):
        Blob.from_file(tmp_path / "nope")
    path = tmp_path / "gone.bin"
    path.write_bytes(b"abc")
    blob = Blob.from_file(path)
    path.unlink()  # removed after the Blob was made: every way of reading it says so
    for read in (lambda: blob.data, lambda: blob.size, lambda: blob.sha256, blob.open):
        with pytest.raises(BlobError, match="gone"):
            read()


def test_blob_arguments_are_checked() -> None:
    """Each wrong argument is an InvalidArgument when the Blob is made or asked, not an AttributeError,
    TypeError or an httpx error at the first read."""
    bad = [
        lambda: Blob(b"x", 5),  # type: ignore[arg-type]
        lambda: Blob(b"x", "not a type"),
        lambda: Blob(b"x", "text/plain\r\nX-Injected: 1"),
        lambda: Blob(b"x", "a/\ud800"),
        lambda: Blob.from_bytes(b"x", ["a"]),  # type: ignore[arg-type]
        lambda: Blob.from_url(5),  # type: ignore[arg-type]
        lambda: Blob.from_url(None),  # type: ignore[arg-type]
        lambda: Blob.from_url("ftp://host/file"),
        lambda: Blob.from_url("/relative/without/a/client"),
        lambda: Blob.from_url("http://127.0.0.1:1/x", size="5"),  # type: ignore[arg-type]
        lambda: Blob.from_url("http://127.0.0.1:1/x", size=-1),
        lambda: Blob.from_url("http://127.0.0.1:1/x", sha256="abc"),
        lambda: Blob.from_url("http://127.0.0.1:1/x", client="client"),  # type: ignore[arg-type]
        lambda: Blob.from_object("store", "id"),
        lambda: Blob(b"x").as_type(int),  # type: ignore[type-var]
        lambda: Blob(b"x").as_type("x"),  # type: ignore[arg-type]
        lambda: Blob(b"x").open(progress=5),  # type: ignore[arg-type]
    ]
    for make in bad:
        with pytest.raises(InvalidArgument):
            make()
    assert Blob(b"x", "image/*").content_type == "application/octet-stream"  # a wildcard: the generic type
    assert Blob(b"x", "text/plain; charset=utf-8").content_type == "text/plain; charset=utf-8"


def test_a_url_with_no_server_is_a_blob_error() -> None:
    import socket

    from microblob import BlobError

    with socket.socket() as sock:  # a port bound and not listening: the connection is refused
        sock.bind(("127.0.0.1", 0))
        blob = Blob.from_url(f"http://127.0.0.1:{sock.getsockname()[1]}/nothing")
        with pytest.raises(BlobError, match="cannot download"):
            assert blob.data is None  # never reached: the read raises


def test_read_only_accessors_cost_no_read(tmp_path: Path, microblob_store: microblob.Store) -> None:
    """What the HTTP layer asks of a Blob, answered without reading the bytes: the in-memory bytes
    themselves (no copy) or None, and the sha256 only when it is already known."""
    data = bytearray(b"abc")
    mem = Blob.from_bytes(data)
    assert mem.in_memory is data and mem.known_sha256 is None
    assert mem.sha256 == hashlib.sha256(data).hexdigest() and mem.known_sha256 == mem.sha256

    path = tmp_path / "f.bin"
    path.write_bytes(b"file bytes")
    digest = hashlib.sha256(b"file bytes").hexdigest()
    on_disk = Blob.from_file(path)
    assert on_disk.in_memory is None and on_disk.known_sha256 is None
    hashed = Blob.from_file(path, sha256=digest)  # hashed by whoever wrote it: not read again
    path.write_bytes(b"changed")  # so a read now would give another hash
    assert hashed.known_sha256 == digest and hashed.sha256 == digest

    oid = microblob_store.save_or_update_object(b"stored")
    stored = Blob.from_object(microblob_store, oid)
    assert stored.in_memory is None
    assert stored.known_sha256 == hashlib.sha256(b"stored").hexdigest()  # recorded with the object


def test_remote_blob_is_a_blob_made_without_the_http_stack() -> None:
    blob = Blob.from_url("http://127.0.0.1:9/x", content_type="image/jpeg", size=3, sha256="0" * 64)
    assert isinstance(blob, microblob.RemoteBlob) and isinstance(blob, Blob)
    assert blob.url == "http://127.0.0.1:9/x" and blob.size == 3 and blob.known_sha256 == "0" * 64
    assert blob.in_memory is None and blob.downloads == 0
