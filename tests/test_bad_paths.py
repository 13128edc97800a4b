"""Every path a caller names (a bundle, a file to read or write, a sync destination, a Mongita directory) is
checked before anything is opened or recorded: a NUL, a lone surrogate, an empty string or a non-path is an
`InvalidArgument`, never the OS layer's bare ValueError, UnicodeEncodeError or TypeError."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import microblob
from microblob import InvalidArgument
from microblob.store.records import SYNC_DESTINATIONS

BAD_PATHS = ["", "a\x00b", "dir/\ud800.mb", 5, None, ["x"]]
BAD_IDS = ["empty", "nul", "surrogate", "int", "none", "list"]


def _callers(store: microblob.Store, tmp_path: Path) -> dict[str, Callable[[Any], Any]]:
    object_id = store.save_or_update_object(b"bytes")
    return {
        "export_store": lambda p: microblob.export_store(store, p),
        "import_store": lambda p: microblob.import_store(p, store),
        "sync": lambda p: microblob.sync(store, p),
        "sync_status": lambda p: microblob.sync_status(store, p),
        "evict destination": lambda p: microblob.evict(store, max_size=10, destination=p),
        "BlobObject.save": lambda p: store.get_blob_object(object_id).save(p),
        "Blob.save": lambda p: microblob.Blob(b"bytes").save(p),
        "Blob.from_file": lambda p: microblob.Blob.from_file(p),
    }


CALLERS = ["export_store", "import_store", "sync", "sync_status", "evict destination", "BlobObject.save",
           "Blob.save", "Blob.from_file"]
EVERY_DESTINATION = ("sync_status", "evict destination")  # where None is a valid call: every destination
CASES = [pytest.param(caller, bad, id=f"{caller}-{bad_id}") for caller in CALLERS
         for bad, bad_id in zip(BAD_PATHS, BAD_IDS, strict=True) if not (bad is None and caller in EVERY_DESTINATION)]


@pytest.mark.parametrize(("caller", "bad"), CASES)
def test_a_bad_path_is_an_invalid_argument_and_changes_nothing(
    store: microblob.Store, tmp_path: Path, caller: str, bad: Any
) -> None:
    call = _callers(store, tmp_path)[caller]
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(InvalidArgument):
        call(bad)
    assert sorted(os.listdir(tmp_path)) == before  # no temp file, bundle or store was made
    assert store.backend.collection(SYNC_DESTINATIONS).count_documents({}) == 0  # no destination recorded
    assert store.count_objects() == 1 and store.verify().ok


@pytest.mark.parametrize("bad", ["a\x00b", "\ud800"], ids=["nul", "surrogate"])
def test_a_bad_mongita_directory_is_an_invalid_argument(tmp_path: Path, bad: str) -> None:
    with pytest.raises(InvalidArgument, match="mongita"):
        microblob.connect(f"mongita://{tmp_path}/{bad}")
    assert os.listdir(tmp_path) == []


def test_a_directory_is_not_a_file_to_wrap(tmp_path: Path) -> None:
    with pytest.raises(microblob.BlobError, match="a directory"):
        microblob.Blob.from_file(tmp_path)
    with pytest.raises(microblob.BlobError, match="no such file"):
        microblob.Blob.from_file(tmp_path / "missing")


def test_bytes_and_pathlike_paths_still_work(store: microblob.Store, tmp_path: Path) -> None:
    object_id = store.save_or_update_object(b"bytes")
    store.get_blob_object(object_id).save(os.fsencode(tmp_path / "as-bytes"))
    microblob.Blob(b"blob").save(tmp_path / "as-path")
    assert (tmp_path / "as-bytes").read_bytes() == b"bytes"
    assert microblob.Blob.from_file(tmp_path / "as-path").data == b"blob"
