"""What a person at a terminal reads: `ls` refuses sort fields objects do not have, and an unreachable
MongoDB is one short line. (Times and sizes on the browse page follow the CLI's convention:
tests/test_browse_page.py; `ls` with nothing to list: tests/test_cli.py.)"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

import microblob
from microblob.cli import main

pytest.importorskip("pymongo")


def test_ls_refuses_a_sort_field_objects_do_not_have(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = str(tmp_path / "s.db")
    with microblob.connect(db) as store:
        for n in (2, 1, 3):
            store.save_or_update_object(b"x", object_id=f"o{n}", custom_metadata={"n": n})
    for bogus in ("-update_at", "bogus", "updated_at.x", "custom_metadat.n"):
        assert main(["ls", "--db", db, f"--sort={bogus}"]) == 2, bogus
        err = capsys.readouterr().err
        assert f"cannot sort by {bogus.lstrip('-')!r}" in err and "updated_at" in err and err.count("\n") == 1, err
    assert main(["ls", "--db", db, "--sort=-custom_metadata.n", "--json"]) == 0
    assert [line.split('"object_id": "')[1][:2] for line in capsys.readouterr().out.splitlines()] == ["o3", "o2", "o1"]
    assert main(["ls", "--db", db, "--sort=-updated_at,object_id", "--json"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3
    assert main(["ls", "--db", db, "--sort=object_type,-size"]) == 0  # Flowcept's layout has object_type
    assert main(["query", "{}", "--db", db, "--sort=whatever"]) == 0  # query sorts by anything, as MongoDB does


def test_copy_to_an_unreachable_mongodb_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as sock:  # a port that refuses: bound, never listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        with microblob.connect(str(tmp_path / "s.db")) as store:
            store.save_or_update_object(b"x")
        assert main(["copy", str(tmp_path / "s.db"), f"mongodb://127.0.0.1:{port}/lab"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and len(err) < 200, err
    assert err.startswith(f"microblob: MongoDB is unreachable: 127.0.0.1:{port}")
    assert "Topology" not in err and "configured timeouts" not in err


def test_unreachable_with_a_timeout_in_the_uri_is_one_line_too(tmp_path: Path) -> None:
    """A timeout the user gave (the connect-time cap then does not apply) ends in the same short message."""
    from microblob.engine import mongodb_backend

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        with pytest.raises(microblob.StorageError, match=r"^MongoDB is unreachable: 127\.0\.0\.1:\d+: "):
            mongodb_backend.MongoBackend(f"mongodb://127.0.0.1:{port}/lab?serverSelectionTimeoutMS=200")
