"""A get of a small object on the embedded backends: its document and its bytes from one read
transaction, the bytes hashed only when asked for, and every problem with them still raised by `data`
(never by the get, so the metadata of a damaged object stays readable)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

import microblob
from microblob import FileNotFound, IntegrityError
from microblob.store.objects import PREFETCH


def _count_read_transactions(store: microblob.Store) -> dict[str, int]:
    engine = store.backend.engine
    original = engine.read
    counts = {"read": 0}

    @contextmanager
    def read() -> Iterator[Any]:
        counts["read"] += 1
        with original() as txn:
            yield txn

    engine.read = read
    return counts


def _flip_chunk(store: microblob.Store, file_id: Any) -> None:
    chunks = store.files._chunks
    data = bytes(chunks.get(file_id, 0))
    chunks.put(file_id, 0, bytes([data[0] ^ 1]) + data[1:])


@pytest.mark.parametrize("size", [1, 1024, PREFETCH])
def test_a_small_get_with_its_bytes_is_one_read_transaction(embedded_store: microblob.Store, size: int) -> None:
    payload = os.urandom(size)
    oid = embedded_store.save_or_update_object(payload, control_version=True)
    embedded_store.save_or_update_object(payload[::-1], object_id=oid, control_version=True)
    reads = _count_read_transactions(embedded_store)
    assert embedded_store.get_blob_object(oid).data == payload[::-1]
    assert reads["read"] == 1
    assert embedded_store.get_blob_object(oid, 0).data == payload  # a history version too
    assert reads["read"] == 2


def test_a_larger_get_reads_no_bytes_until_asked(embedded_store: microblob.Store) -> None:
    payload = os.urandom(PREFETCH + 1)
    oid = embedded_store.save_or_update_object(payload)
    reads = _count_read_transactions(embedded_store)
    obj = embedded_store.get_blob_object(oid)
    assert reads["read"] == 1 and obj._fetched is None
    assert obj.data == payload


def test_damaged_small_bytes_raise_from_data_not_from_the_get(embedded_store: microblob.Store) -> None:
    oid = embedded_store.save_or_update_object(os.urandom(1024), custom_metadata={"k": 1})
    obj = embedded_store.get_blob_object(oid)
    _flip_chunk(embedded_store, obj.file_id)
    damaged = embedded_store.get_blob_object(oid)  # the metadata is still there to read
    assert damaged.custom_metadata == {"k": 1} and damaged.size == 1024
    with pytest.raises(IntegrityError, match="sha256"):
        _ = damaged.data
    with pytest.raises(IntegrityError, match="sha256"):  # asked again: checked again, never cached
        _ = damaged.data


def test_a_small_object_whose_file_is_gone_raises_from_data(embedded_store: microblob.Store) -> None:
    oid = embedded_store.save_or_update_object(b"x" * 100)
    file_id = embedded_store.get_blob_object(oid).file_id
    embedded_store.files._files.delete_one({"_id": file_id})
    embedded_store.files._chunks.delete(file_id)
    obj = embedded_store.get_blob_object(oid)
    assert obj.size == 100
    with pytest.raises(FileNotFound):
        _ = obj.data


def test_a_one_chunk_get_trusts_the_objects_sha256_and_verify_still_sees_a_lost_files_document(
        embedded_store: microblob.Store) -> None:
    """The get reads the chunk alone (the object's sha256 proves the bytes); a files document lost beside
    its chunks is still damage, and `verify` says so."""
    payload = os.urandom(500)
    oid = embedded_store.save_or_update_object(payload)
    file_id = embedded_store.get_blob_object(oid).file_id
    embedded_store.files._files.delete_one({"_id": file_id})
    assert embedded_store.get_blob_object(oid).data == payload
    report = embedded_store.verify()
    assert [(o, v) for o, v, _ in report.damaged] == [(oid, 0)]


@pytest.mark.parametrize("cut", [1, -1])
def test_a_chunk_of_another_length_is_read_the_long_way(embedded_store: microblob.Store, cut: int) -> None:
    """A first chunk shorter or longer than the object (damage) is not taken for its bytes: the long way
    checks the files document's lengths and raises."""
    payload = os.urandom(300)
    oid = embedded_store.save_or_update_object(payload)
    file_id = embedded_store.get_blob_object(oid).file_id
    embedded_store.files._chunks.put(file_id, 0, payload[:cut] if cut < 0 else payload + b"!")
    with pytest.raises(IntegrityError):
        _ = embedded_store.get_blob_object(oid).data


def test_a_small_object_of_several_chunks_reads_whole(embedded_kind: str, tmp_path: Any) -> None:
    """Chunks smaller than the object (a store with small chunks, or a file copied from GridFS): the
    first chunk is not the whole, so the get joins them all, in the same single read."""
    store = microblob.connect(tmp_path / "store.db" if embedded_kind == "lmdb" else "memory://", chunk_size=256)
    try:
        payload = os.urandom(1000)
        oid = store.save_or_update_object(payload)
        assert store.files._chunks.count(store.get_blob_object(oid).file_id) == 4
        reads = _count_read_transactions(store)
        assert store.get_blob_object(oid).data == payload
        assert reads["read"] == 1
    finally:
        store.close()


def test_a_document_with_an_impossible_file_id_still_gets_and_raises_from_data(
        embedded_store: microblob.Store) -> None:
    """A damaged object document naming a file id no key can hold: the get still returns its metadata,
    and `data` raises a typed error."""
    oid = embedded_store.save_or_update_object(b"x" * 10)
    doc = embedded_store._objects.find_one({"_id": oid})
    embedded_store._objects.replace_one({"_id": oid}, {**doc, "file_id": "f" * 200})  # over 160 bytes
    obj = embedded_store.get_blob_object(oid)
    assert obj.size == 10
    with pytest.raises(microblob.MicroblobError):
        _ = obj.data
