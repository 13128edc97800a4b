"""`export_store` / `import_store` (and `microblob export` / `import`): a store as one portable bundle,
from and into every backend, idempotent, checked whole before anything is written, in bounded memory."""

from __future__ import annotations

import hashlib
import io
import os
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import msgpack
import pytest
from test_copy import assert_same, populate

import microblob
from microblob import IntegrityError, InvalidArgument
from microblob.cli import main
from microblob.store import bundle as bundle_module

BACKENDS = ["lmdb", "memory", "mongita", "mongodb"]
MAGIC = bundle_module.MAGIC


def _is_empty(store: microblob.Store) -> bool:
    inner = store.internals
    return all(c.find_one({}) is None for c in (inner.objects, inner.history, inner.workflows, inner.file_docs,
                                                inner.leases))


@pytest.mark.parametrize("src_kind", BACKENDS)
def test_round_trip_from_every_backend(store_factory: Callable, tmp_path: Path, src_kind: str) -> None:
    src = store_factory(src_kind)
    populate(src)
    path = tmp_path / "store.mbb"
    exported = microblob.export_store(src, path)
    assert exported.ok and (exported.objects_copied, exported.files_copied, exported.workflows_copied) == (3, 4, 1)
    assert path.read_bytes().startswith(MAGIC) and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    dst = store_factory("lmdb")
    imported = microblob.import_store(path, dst)
    assert imported.as_dict() == exported.as_dict()
    assert_same(src, dst)
    again = microblob.import_store(path, dst)
    assert not again.copied_anything and again.objects_skipped == 3 and again.files_skipped == 4
    assert_same(src, dst)


@pytest.mark.parametrize("dst_kind", BACKENDS)
def test_round_trip_into_every_backend(store_factory: Callable, tmp_path: Path, dst_kind: str) -> None:
    src = store_factory("lmdb")
    populate(src)
    microblob.export_store(src.uri, tmp_path / "store.mbb")
    dst = store_factory(dst_kind)
    assert microblob.import_store(str(tmp_path / "store.mbb"), dst).copied_anything
    assert_same(src, dst)
    assert not microblob.import_store(tmp_path / "store.mbb", dst).copied_anything


def test_import_adds_only_what_is_new_and_leaves_diverged_objects(store_factory: Callable, tmp_path: Path) -> None:
    """Like copy: export again after more saves, import again, and only the new versions travel; an object
    changed independently at the destination is left alone and reported."""
    src, dst = store_factory("lmdb"), store_factory("lmdb")
    ids = populate(src)
    microblob.export_store(src, tmp_path / "a.mbb")
    microblob.import_store(tmp_path / "a.mbb", dst)
    src.save_or_update_object(b"v5" * 1000, object_id="versioned", control_version=True)
    src.save_or_update_object(b"src side", object_id=ids["big"], control_version=True)
    dst.save_or_update_object(b"dst side", object_id=ids["big"], control_version=True)
    microblob.export_store(src, tmp_path / "a.mbb")
    report = microblob.import_store(tmp_path / "a.mbb", dst)
    assert [object_id for object_id, _ in report.problems] == [ids["big"]]
    assert report.objects_copied == 1 and report.objects_skipped == 1  # versioned; inline unchanged
    assert dst.get_blob_object("versioned").data == b"v5" * 1000
    assert dst.get_blob_object(ids["big"]).data == b"dst side"


@pytest.fixture
def good_bundle(store_factory: Callable, tmp_path: Path) -> bytes:
    src = store_factory("lmdb")
    populate(src)
    microblob.export_store(src, tmp_path / "good.mbb")
    return (tmp_path / "good.mbb").read_bytes()


@pytest.mark.parametrize("where", [i / 40 for i in range(40)] + [1.0])
def test_a_damaged_bundle_imports_nothing(good_bundle: bytes, store_factory: Callable, tmp_path: Path,
                                          where: float) -> None:
    """One flipped byte anywhere after the magic (header, documents, chunk bytes, framing, the digest) is
    an IntegrityError, and the destination is left exactly as empty as it was."""
    offset = min(len(good_bundle) - 1, len(MAGIC) + int(where * (len(good_bundle) - len(MAGIC))))
    damaged = bytearray(good_bundle)
    damaged[offset] ^= 0x40
    (tmp_path / "bad.mbb").write_bytes(damaged)
    dst = store_factory("lmdb")
    with pytest.raises(IntegrityError, match="bad.mbb"):
        microblob.import_store(tmp_path / "bad.mbb", dst)
    gc = dst.gc()
    assert _is_empty(dst) and gc.freed_files == gc.freed_orphan_chunks == 0
    with pytest.raises(IntegrityError):  # given as a path, the store is not even created
        microblob.import_store(tmp_path / "bad.mbb", tmp_path / "new.db")
    assert not (tmp_path / "new.db").exists()


@pytest.mark.parametrize("keep", [0.0, 0.001, 0.3, 0.7, 0.999])
def test_a_truncated_bundle_imports_nothing(good_bundle: bytes, store_factory: Callable, tmp_path: Path,
                                            keep: float) -> None:
    cut = good_bundle[:len(MAGIC) + int(keep * (len(good_bundle) - len(MAGIC)))]
    (tmp_path / "cut.mbb").write_bytes(cut)
    dst = store_factory("lmdb")
    with pytest.raises(IntegrityError, match="cut.mbb"):
        microblob.import_store(tmp_path / "cut.mbb", dst)
    assert _is_empty(dst)


def _resealed(body: bytes) -> bytes:
    return body + hashlib.sha256(body).digest()


def _records(good: bytes) -> list:
    return list(msgpack.Unpacker(io.BytesIO(good[len(MAGIC):-32]), raw=False, timestamp=3))


def _rebuilt(records: list) -> bytes:
    return _resealed(MAGIC + b"".join(msgpack.packb(r, datetime=True, use_bin_type=True) for r in records))


def test_a_consistent_but_forged_bundle_is_refused(good_bundle: bytes, store_factory: Callable, tmp_path: Path) -> None:
    """With a recomputed trailing digest, a changed chunk still fails its file's sha256, a dropped chunk its
    length, a dropped record the end counts, and a record of another shape is malformed."""
    records = _records(good_bundle)
    chunk_at = next(i for i, r in enumerate(records) if isinstance(r, list) and r[0] == "chunk")
    forged_chunk = [*records[:chunk_at], ["chunk", *records[chunk_at][1:3], b"X" + records[chunk_at][3][1:]],
                    *records[chunk_at + 1:]]
    dropped_chunk = records[:chunk_at] + records[chunk_at + 1:]
    doc_at = next(i for i, r in enumerate(records) if isinstance(r, list) and r[:2] == ["doc", "objects"])
    dropped_doc = records[:doc_at] + records[doc_at + 1:]
    odd = [*records[:doc_at], ["doc", "objects", "not a document"], *records[doc_at + 1:]]
    extra = [*records, ["doc", "objects", {"_id": "late"}]]
    cases = {"does not match its length and sha256": [forged_chunk, dropped_chunk],
             "end record says": [dropped_doc], "malformed record": [odd], "records after its end": [extra]}
    dst = store_factory("lmdb")
    for message, variants in cases.items():
        for variant in variants:
            (tmp_path / "forged.mbb").write_bytes(_rebuilt(variant))
            with pytest.raises(IntegrityError, match=message):
                microblob.import_store(tmp_path / "forged.mbb", dst)
    assert _is_empty(dst)
    (tmp_path / "same.mbb").write_bytes(_rebuilt(records))  # the rebuilding itself is faithful
    assert microblob.import_store(tmp_path / "same.mbb", dst).ok


def test_not_a_bundle_and_other_formats(good_bundle: bytes, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello\n")
    with pytest.raises(InvalidArgument, match="not a microblob bundle"):
        microblob.import_store(tmp_path / "notes.txt", tmp_path / "x.db")
    with pytest.raises(InvalidArgument, match="no bundle at"):
        microblob.import_store(tmp_path / "missing.mbb", tmp_path / "x.db")
    with pytest.raises(InvalidArgument, match="path must be"):
        microblob.import_store(3, tmp_path / "x.db")  # type: ignore[arg-type]
    # A well-formed bundle of a format this version does not know: the remedy, not "damaged".
    for version, error, message in ((2, InvalidArgument, "format 2.*upgrade microblob"),
                                    (0, IntegrityError, "unknown bundle format 0")):
        body = good_bundle[:-32].replace(b"\xa7version\x01", b"\xa7version" + bytes([version]), 1)
        assert body != good_bundle[:-32]
        (tmp_path / "other.mbb").write_bytes(_resealed(body))
        with pytest.raises(error, match=message):
            microblob.import_store(tmp_path / "other.mbb", tmp_path / "x.db")
    assert not (tmp_path / "x.db").exists()


def test_export_replaces_the_file_atomically(store_factory: Callable, tmp_path: Path) -> None:
    """An export that fails half way leaves the old bundle as it was and no temporary file."""
    src = store_factory("lmdb")
    populate(src)
    path = tmp_path / "kept.mbb"
    microblob.export_store(src, path)  # the previous bundle (export replaces only a bundle)
    previous = path.read_bytes()

    def boom(done: int, total: int) -> None:
        if done:
            raise OSError(28, "No space left on device")

    with pytest.raises(microblob.StorageError, match="No space left on device"):
        microblob.export_store(src, path, progress=boom)
    assert path.read_bytes() == previous
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".microblob-export-")]
    with pytest.raises(microblob.StoreNotFound):
        microblob.export_store(tmp_path / "nothing.db", tmp_path / "x.mbb")
    assert not (tmp_path / "nothing.db").exists() and not (tmp_path / "x.mbb").exists()


def test_memory_stays_flat(tmp_path: Path) -> None:
    """A 64 MiB object goes out and back in with Python allocations far below its size."""
    with (tmp_path / "big.bin").open("wb") as out:  # written 1 MiB at a time, never held whole
        for _ in range(64):
            out.write(os.urandom(1 << 20))
    with microblob.connect(str(tmp_path / "a.db")) as src:
        oid = src.save_or_update_object(tmp_path / "big.bin", object_id="big")
    tracemalloc.start()
    try:
        microblob.export_store(tmp_path / "a.db", tmp_path / "a.mbb")
        _, export_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        microblob.import_store(tmp_path / "a.mbb", tmp_path / "b.db")
        _, import_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert export_peak < 24 << 20 and import_peak < 24 << 20, (export_peak, import_peak)
    with microblob.connect(str(tmp_path / "a.db")) as a, microblob.connect(str(tmp_path / "b.db")) as b:
        assert a.get_blob_fingerprint(oid) == b.get_blob_fingerprint(oid) and b.verify().ok


def test_cli_export_import(store_factory: Callable, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = store_factory("lmdb")
    populate(src)
    assert main(["export", src.uri, str(tmp_path / "s.mbb")]) == 0
    assert "copied 3 objects" in capsys.readouterr().out
    assert main(["import", str(tmp_path / "s.mbb"), str(tmp_path / "new.db")]) == 0
    assert "copied 3 objects" in capsys.readouterr().out
    assert main(["import", str(tmp_path / "s.mbb"), str(tmp_path / "new.db")]) == 0
    assert capsys.readouterr().out.startswith("nothing to copy")
    with microblob.connect(str(tmp_path / "new.db"), create=False) as dst:
        assert_same(src, dst)
    raw = bytearray((tmp_path / "s.mbb").read_bytes())
    raw[len(raw) // 2] ^= 1
    (tmp_path / "bad.mbb").write_bytes(raw)
    assert main(["import", str(tmp_path / "bad.mbb"), str(tmp_path / "other.db")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is damaged" in err and not (tmp_path / "other.db").exists()
    assert main(["export", str(tmp_path / "nothing-here.db"), str(tmp_path / "x.mbb")]) == 1
    assert "no store at" in capsys.readouterr().err and not (tmp_path / "x.mbb").exists()
    assert main(["export", "--db", src.uri, src.uri, str(tmp_path / "y.mbb")]) == 2


def test_gridfs_bucket_files_travel_under_their_hex_id(store_factory: Callable, tmp_path: Path) -> None:
    """Files pymongo's GridFSBucket wrote (ObjectId ids, 64 KiB chunks, no sha256) go into the bundle under
    the id's hex string, as copy stores them in the embedded store, and come back byte for byte."""
    gridfs = pytest.importorskip("gridfs")
    src, dst = store_factory("mongodb"), store_factory("lmdb")
    payload = os.urandom(300_000)
    oid = gridfs.GridFSBucket(src.backend.database).upload_from_stream(
        "scope.tif", io.BytesIO(payload), chunk_size_bytes=64 * 1024)
    assert microblob.export_store(src, tmp_path / "g.mbb").files_copied == 1
    assert microblob.import_store(tmp_path / "g.mbb", dst).files_copied == 1
    doc = dst.files.get_file(str(oid))
    assert doc["filename"] == "scope.tif" and doc["chunkSize"] == 64 * 1024
    with dst.files.open_download_stream(str(oid)) as stream:
        assert stream.read() == payload
