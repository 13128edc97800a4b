"""`import microblob` and every CLI start stay close to a bare interpreter (issue 16): modules that only
some paths need (the `regex` engine, sockets, thread pools, uuid, the HTTP stack) load on first use.

Timings vary too much on a shared machine to assert; the modules a start loads do not. Each check runs
in a fresh interpreter and compares with what that interpreter loads doing nothing, so modules the
site's `.pth` files import do not count against us. The times are in bench/bench_import.py.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

LAZY = ("regex", "socket", "uuid", "concurrent.futures", "logging", "starlette", "httpx", "uvicorn", "anyio",
        "pydantic", "tqdm")
LIST_NEW = ("import sys; before = set(sys.modules)\n{code}\n"
            "import json; print(json.dumps(sorted(set(sys.modules) - before)))")


def loaded_by(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", LIST_NEW.format(code=code)], capture_output=True, text=True,
                         check=True).stdout
    return set(json.loads(out.splitlines()[-1]))


def heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in LAZY or m in LAZY)


def test_import_microblob_loads_only_the_store_path() -> None:
    assert heavy(loaded_by("import microblob")) == []


@pytest.mark.parametrize("argv", [["--version"], ["--help"]])
def test_cli_start_loads_no_lazy_module(argv: list[str]) -> None:
    code = f"import sys; sys.argv = ['microblob', *{argv!r}]\nfrom microblob.cli import main\ntry:\n" \
           "    main()\nexcept SystemExit:\n    pass"
    assert heavy(loaded_by(code)) == []


def test_lazy_modules_load_when_a_path_needs_them(tmp_path: object) -> None:
    """The deferred imports are real: a save, a $regex query and a chunked upload still work, and load
    what they need then (and only that)."""
    code = (
        "import io, microblob\n"
        f"store = microblob.connect({str(tmp_path / 's.db')!r})\n"  # type: ignore[operator]
        "oid = store.save_or_update_object(b'x' * 10, type='t', custom_metadata={'name': 'abc'})\n"
        "assert [o['object_id'] for o in store.query({'custom_metadata.name': {'$regex': '^a.c$'}})] == [oid]\n"
        "big = store.save_or_update_object(io.BytesIO(b'y' * (3 << 20)), type='t')\n"
        "assert store.get_blob_object(big).data == b'y' * (3 << 20)\n"
        "store.close()"
    )
    new = loaded_by(code)
    assert "regex" in new
    assert "uuid" not in new  # fresh ids come from os.urandom (engine/ids.py): no save needs the module


@pytest.mark.parametrize("code", [
    "import microblob",
    "import sys; sys.argv = ['microblob', '--version']\nfrom microblob.cli import main\ntry:\n    main()\n"
    "except SystemExit:\n    pass",
])
def test_the_object_model_loads_on_first_use_only(code: str) -> None:
    """`import microblob` and `microblob --version` load no store module, LMDB or msgpack: the public
    names resolve on first use (microblob.__getattr__)."""
    new = loaded_by(code)
    assert not {"microblob.store.core", "microblob.blob", "lmdb", "msgpack", "dataclasses"} & new, sorted(new)


def test_every_public_name_and_subpackage_resolves_in_a_fresh_process() -> None:
    code = ("import microblob\n"
            "names = [getattr(microblob, n) for n in microblob.__all__]\n"
            "assert microblob.store.core.Store is microblob.Store is microblob.store.Store\n"
            "assert microblob.engine.codec is not None and microblob.property is microblob.thing_property\n"
            "from microblob import *  # noqa: F403\n"
            "assert connect is microblob.connect and Blob is microblob.Blob  # noqa: F405")
    assert "microblob.store.core" in loaded_by(code)
