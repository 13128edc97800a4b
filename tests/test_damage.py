"""Damaged pages of the LMDB file give errors from microblob's tree (IntegrityError), never lmdb's own
errors or a codec's; the server answers a JSON 500 that says the store is damaged, and stays up."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

import microblob

ROOT = Path(__file__).resolve().parents[1]
PAGE = 4096


def _make_store(path: Path) -> list[int]:
    """50 small objects, each with a marker in its metadata; returns the file offsets of o25's marker
    (copy-on-write leaves older copies in free pages: which one is live depends on the run)."""
    with microblob.connect(path) as store:
        for i in range(50):
            store.save_or_update_object(b"x" * 10, object_id=f"o{i}", custom_metadata={"note": f"DAMAGEME-{i:03d}"})
    raw = path.read_bytes()
    found = [m.start() for m in re.finditer(b"DAMAGEME-025", raw)]
    assert found
    return found


def _poke(path: Path, at: int, data: bytes) -> None:
    with open(path, "r+b") as fh:
        fh.seek(at)
        fh.write(data)


@pytest.fixture
def bad_utf8(lmdb_path: Path) -> Path:
    """o25's document no longer decodes: its marker string holds bytes that are not UTF-8."""
    for at in _make_store(lmdb_path):
        _poke(lmdb_path, at, b"\xff\xfe\xfd")
    return lmdb_path


_PROBE = """
import sys, microblob
store = microblob.connect(sys.argv[1], create=False)
try:
    store.get_blob_object("o25")
except microblob.IntegrityError:
    print("live")
"""


@pytest.fixture
def bad_page(lmdb_path: Path) -> Path:
    """The B-tree page holding o25 has a garbled header (flags, bounds): LMDB says MDB_CORRUPTED. Only
    the live copy of the page is garbled: a stale copy of its bytes may sit in a free page that LMDB has
    since reused for something else (the tables' catalog), and garbling that is other damage. Which copy
    is live is found by garbling each in a scratch copy of the file, in a child process."""
    candidates = _make_store(lmdb_path)
    original = lmdb_path.read_bytes()
    scratch = lmdb_path.with_name("probe.db")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    for at in candidates:
        scratch.write_bytes(original)
        _poke(scratch, at // PAGE * PAGE + 10, b"\xff" * 6)
        probe = subprocess.run([sys.executable, "-c", _PROBE, str(scratch)], capture_output=True, text=True,
                               env=env, timeout=120)
        if probe.stdout.strip() == "live":
            _poke(lmdb_path, at // PAGE * PAGE + 10, b"\xff" * 6)
            return lmdb_path
    raise AssertionError("no copy of o25's page is the live one")


@pytest.mark.parametrize("damage", ["bad_utf8", "bad_page"])
def test_reads_of_a_damaged_page_raise_integrity_error(damage: str, request: pytest.FixtureRequest) -> None:
    path: Path = request.getfixturevalue(damage)
    # In a child process: a damaged LMDB page must never be able to take the test run down with it.
    code = """
import sys, microblob
from microblob import IntegrityError
store = microblob.connect(sys.argv[1], create=False)
for name, call in [("get", lambda: store.get_blob_object("o25")), ("query", lambda: store.blob_object_query({})),
                   ("count", lambda: store.files.find({}))]:
    try:
        call()
        print(name, "no error")
    except IntegrityError as exc:
        print(name, "IntegrityError", "damaged" in str(exc))
    except Exception as exc:
        print(name, "OTHER", type(exc).__module__, type(exc).__name__)
print("o1", store.get_blob_object("o1").data == b"x" * 10)
"""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "get IntegrityError True", proc.stdout
    assert lines[1] == "query IntegrityError True", proc.stdout
    assert "OTHER" not in proc.stdout, proc.stdout
    assert lines[-1] == "o1 True"  # the rest of the store reads on


def test_server_answers_json_500_for_a_damaged_document_and_stays_up(
        bad_utf8: Path, make_server: Any, live: Any) -> None:
    with microblob.connect(bad_utf8, create=False) as store:
        url = live(make_server({}, store=store))
        with httpx.Client(base_url=url, timeout=60) as http:
            for path in ("/objects/o25", "/objects/o25/data", "/objects/"):
                response = http.get(path)
                assert response.status_code == 500, (path, response.text)
                body = response.json()
                assert body["error"] == "StoreDamaged" and "damaged" in body["detail"], body
            assert http.get("/objects/o1").json()["object_id"] == "o1"
            assert http.get("/objects/o1/data").content == b"x" * 10


def test_cli_ls_of_a_damaged_store_is_one_line(bad_utf8: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("MICROBLOB_URI", "MICROBLOB_TOKEN")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    proc = subprocess.run([sys.executable, "-m", "microblob", "--db", str(bad_utf8), "ls"], capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr and "damaged" in proc.stderr

