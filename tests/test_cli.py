"""The command line on a real store file: `python -m microblob` and the installed `microblob` console
script in subprocesses wherever the process boundary matters (both entry points, signals, terminals,
pipes, `serve`), and `microblob.cli.main` in this process for the rest (`cli`, tests/_inprocess_cli.py:
the same environment, working directory, streams and exit code a child would have).

Exit codes under test: 0 done; 1 the operation failed (missing object or version, invalid query,
unreadable or unwritable file, damage found by verify, bad store URI); 2 usage error (argparse errors,
malformed JSON or KEY=VALUE); 130 interrupted. Every failure is one line on stderr, never a traceback.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
import os
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from _inprocess_cli import run_cli
from conftest import sigint_as_default

import microblob

ROOT = Path(__file__).resolve().parents[1]
MiB = 1024 * 1024
BIG = 50 * MiB


# --- how to run the command line ------------------------------------------------------------------


@pytest.fixture(scope="session")
def console_script(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The `microblob` script pip generates from setup.cfg's entry point.

    In CI (`pip install -e '.[test]'`) it sits beside the interpreter running the tests. Elsewhere,
    install this checkout (no dependencies: they are already importable) into a scratch prefix; the
    script it generates runs this interpreter."""
    beside = Path(sys.executable).parent / "microblob"
    if beside.is_file():
        return str(beside)
    prefix = tmp_path_factory.mktemp("console-script")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--disable-pip-version-check",
         "--prefix", str(prefix), "--editable", str(ROOT)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, f"could not install the console script:\n{proc.stdout}\n{proc.stderr}"
    script = prefix / "bin" / "microblob"
    assert script.is_file(), f"pip made no {script}"
    return str(script)


def cli_env(**extra: str) -> dict[str, str]:
    """The caller's environment, this checkout first on the path, no store or token inherited."""
    env = {k: v for k, v in os.environ.items() if k not in ("MICROBLOB_URI", "MICROBLOB_TOKEN")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env.update(extra)
    return env


class Cli:
    """Runs one entry point with `MICROBLOB_URI` pointing at a fresh store file in `cwd`."""

    def __init__(self, argv0: list[str], cwd: Path) -> None:
        self.argv0 = argv0
        self.cwd = cwd
        self.db = cwd / "store.db"
        self.env = cli_env(MICROBLOB_URI=str(self.db))

    def cmd(self, *args: str) -> list[str]:
        return [*self.argv0, *args]

    def __call__(self, *args: str, input: bytes | None = None, stdin: Any = None, env: dict[str, str] | None = None,
                 timeout: float = 300) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(self.cmd(*args), input=input, stdin=stdin, capture_output=True, cwd=self.cwd,
                              env=self.env if env is None else env, timeout=timeout)

    def ok(self, *args: str, **kwargs: Any) -> str:
        """Run, insist on exit 0 and a silent stderr, return stdout as text."""
        proc = self(*args, **kwargs)
        assert proc.returncode == 0, f"{args}: exit {proc.returncode}\n{proc.stderr.decode()}"
        assert proc.stderr == b"", proc.stderr.decode()
        return proc.stdout.decode()

    def fails(self, code: int, *args: str, **kwargs: Any) -> str:
        """Run, insist on exit `code` with one line on stderr and no traceback; return that line."""
        proc = self(*args, **kwargs)
        err = proc.stderr.decode()
        assert proc.returncode == code, f"{args}: exit {proc.returncode}, wanted {code}\n{err}"
        assert "Traceback" not in err, err
        assert err.endswith("\n") and err.count("\n") == 1, f"not one line: {err!r}"
        assert err.startswith("microblob"), err
        return err.strip()

    def put(self, data: bytes, *args: str) -> str:
        return self.ok("put", "-", *args, input=data).strip()

    def process(self, *args: str, input: bytes | None = None, env: dict[str, str] | None = None,
                timeout: float = 300) -> subprocess.CompletedProcess[bytes]:
        """Run in a child process, whatever `__call__` does."""
        return Cli.__call__(self, *args, input=input, env=env, timeout=timeout)


class InProcessCli(Cli):
    """`Cli` whose calls run `microblob.cli.main` in this process (`cmd` still names the real command,
    for the tests that start a child themselves)."""

    def __call__(self, *args: str, input: bytes | None = None, stdin: Any = None, env: dict[str, str] | None = None,
                 timeout: float = 300) -> subprocess.CompletedProcess[bytes]:
        return run_cli(args, cwd=self.cwd, env=self.env if env is None else env, input=input, stdin=stdin)


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return InProcessCli([sys.executable, "-m", "microblob"], tmp_path)


@pytest.fixture(params=["python -m microblob", "console script"])
def any_cli(request: pytest.FixtureRequest, tmp_path: Path) -> Cli:
    if request.param == "console script":
        return Cli([request.getfixturevalue("console_script")], tmp_path)
    return Cli([sys.executable, "-m", "microblob"], tmp_path)


@pytest.fixture(scope="session")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    path = tmp_path_factory.mktemp("big") / "big.bin"
    data = os.urandom(BIG)
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for piece in iter(lambda: fh.read(MiB), b""):
            digest.update(piece)
    return digest.hexdigest()


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


# --- put / get round trips of 50 MiB, through both entry points ------------------------------------


def test_put_get_file_round_trip_50mib(any_cli: Cli, big_file: tuple[Path, str]) -> None:
    path, digest = big_file
    object_id = any_cli.ok("put", str(path)).strip()
    assert len(object_id) == 32
    out = any_cli.cwd / "out.bin"
    assert any_cli.ok("get", object_id, "-o", str(out)) == ""
    assert sha256_file(out) == digest
    shown = json.loads(any_cli.ok("show", object_id))
    assert (shown["size"], shown["sha256"], shown["storage"]) == (BIG, digest, "chunked")
    assert not [p for p in any_cli.cwd.iterdir() if p.name.startswith(".microblob-")]  # no temp file left


def test_put_stdin_get_stdout_round_trip_50mib(any_cli: Cli, big_file: tuple[Path, str]) -> None:
    path, digest = big_file
    # A real pipe on stdin (unknown size), and stdout captured through a pipe.
    proc = subprocess.Popen(any_cli.cmd("put", "-"), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=any_cli.cwd, env=any_cli.env)
    with open(path, "rb") as fh:
        out, err = proc.communicate(fh.read(), timeout=300)
    assert proc.returncode == 0 and err == b"", err.decode()
    object_id = out.decode().strip()
    got = any_cli("get", object_id)
    assert got.returncode == 0 and got.stderr == b"", got.stderr.decode()
    assert len(got.stdout) == BIG and hashlib.sha256(got.stdout).hexdigest() == digest
    assert any_cli("get", object_id, "-o", "-").stdout == got.stdout


def test_exit_codes_through_both_entry_points(any_cli: Cli) -> None:
    assert "no store at" in any_cli.fails(1, "ls")  # reading never creates the store
    assert any_cli.ok("put", "-", input=b"x")
    assert len(any_cli.ok("ls").splitlines()) == 2  # a header and the object
    assert "not found" in any_cli.fails(1, "get", "no-such-id")
    assert "invalid choice" in any_cli.fails(2, "frobnicate")
    assert any_cli(*("--help",)).returncode == 0


# --- every subcommand's happy path -----------------------------------------------------------------


def test_put_options_become_object_fields(cli: Cli) -> None:
    object_id = cli.put(
        b"payload", "--type", "image", "--task-id", "capture-1", "--workflow-id", "wf-7",
        "--content-type", "image/png", "--tag", "raw", "--tag", "day1",
        "--meta", "n=3", "--meta", "exposure=12.5", "--meta", "ok=true", "--meta", "who=Ada Lovelace",
        "--meta", 'stage={"x": 1, "y": [2, 3]}', "--meta", "empty=", "--meta", "eq=a=b", "--meta", "n=4",
    )
    doc = json.loads(cli.ok("show", object_id))
    assert doc["type"] == "image" and doc["task_id"] == "capture-1" and doc["workflow_id"] == "wf-7"
    assert doc["content_type"] == "image/png" and doc["tags"] == ["raw", "day1"]
    assert doc["custom_metadata"] == {"n": 4, "exposure": 12.5, "ok": True, "who": "Ada Lovelace",
                                      "stage": {"x": 1, "y": [2, 3]}, "empty": "", "eq": "a=b"}
    assert doc["version"] == 0 and doc["size"] == 7 and doc["sha256"] == hashlib.sha256(b"payload").hexdigest()


def test_put_json_inline_and_versions(cli: Cli) -> None:
    first = json_lines(cli.ok("put", "-", "--json", "--inline", "--id", "cfg", input=b"v0"))
    assert len(first) == 1 and first[0]["object_id"] == "cfg" and first[0]["storage"] == "inline"
    assert cli.put(b"v1", "--id", "cfg", "--version-control") == "cfg"
    assert cli.put(b"v2", "--id", "cfg") == "cfg"  # replaces v1 without archiving it
    history = json_lines(cli.ok("history", "cfg"))
    assert [h["version"] for h in history] == [2, 0]
    assert history[0]["prev_version"] == 0  # v1 was replaced without being archived: v2 points at v0
    assert cli.ok("get", "cfg", "-o", "-") == "v2"
    assert cli.ok("get", "cfg", "--version", "0", "-o", "-") == "v0"
    assert json.loads(cli.ok("show", "cfg", "--version", "0"))["storage"] == "inline"
    assert "has no version 1" in cli.fails(1, "get", "cfg", "--version", "1", "-o", "-")


def test_get_writes_a_file_atomically_and_overwrites(cli: Cli) -> None:
    object_id = cli.put(b"new bytes")
    target = cli.cwd / "target.bin"
    target.write_bytes(b"old content that is longer")
    assert cli.ok("get", object_id, "--output", str(target)) == ""
    assert target.read_bytes() == b"new bytes"


def test_ls_table_and_json_lines(cli: Cli) -> None:
    a = cli.put(b"x" * 3000, "--type", "image", "--task-id", "t1", "--workflow-id", "wf1",
                "--content-type", "image/png")
    b = cli.put(b"y" * (3 * MiB // 2), "--type", "dataset")
    lines = cli.ok("ls").splitlines()
    header = lines[0].split()
    assert header == ["object_id", "version", "type", "size", "content_type", "updated_at", "workflow/task"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert set(rows) == {a, b}
    assert rows[a][1:] == ["0", "image", "2.9", "KiB", "image/png", rows[a][6], "wf1/t1"]
    assert rows[b][1:5] == ["0", "dataset", "1.5", "MiB"] and rows[b][-1] == "-/-"
    dt.datetime.strptime(rows[a][6], "%Y-%m-%dT%H:%M:%SZ")

    docs = {d["object_id"]: d for d in json_lines(cli.ok("ls", "--json"))}
    assert set(docs) == {a, b}
    assert docs[a]["size"] == 3000 and docs[a]["custom_metadata"] == {} and docs[a]["workflow_id"] == "wf1"
    for field in ("created_at", "updated_at"):  # ISO 8601 with the UTC offset
        assert dt.datetime.fromisoformat(docs[a][field]).utcoffset() == dt.timedelta(0)

    assert [d["object_id"] for d in json_lines(cli.ok("ls", "--json", "--type", "dataset"))] == [b]
    assert [d["object_id"] for d in json_lines(cli.ok("ls", "--json", "--filter", '{"task_id": "t1"}'))] == [a]
    assert json_lines(cli.ok("ls", "--json", "--filter", '{"task_id": "t1"}', "--type", "dataset")) == []
    newest_first = [d["object_id"] for d in json_lines(cli.ok("ls", "--json", "--sort=-updated_at"))]
    assert newest_first == [b, a]
    assert [d["object_id"] for d in json_lines(cli.ok("ls", "--json", "--sort", "updated_at"))] == [a, b]
    assert len(json_lines(cli.ok("ls", "--json", "--limit", "1"))) == 1
    assert [d["object_id"] for d in json_lines(cli.ok("ls", "--json", "--sort=updated_at", "--skip", "1"))] == [b]
    assert cli.ok("ls", "--type", "nothing-of-this-type") == ""


def test_show_history_and_query_print_json(cli: Cli) -> None:
    object_id = cli.put(b"a", "--meta", "n=1", "--meta", "name=Ünïcødé")
    cli.put(b"bb", "--id", object_id, "--version-control", "--meta", "n=2")
    shown = json.loads(cli.ok("show", object_id))
    assert shown["version"] == 1 and shown["prev_version"] == 0 and shown["custom_metadata"] == {"n": 2}
    assert "data" not in shown
    assert json.loads(cli.ok("show", object_id, "--version", "0"))["custom_metadata"]["name"] == "Ünïcødé"

    history = json_lines(cli.ok("history", object_id))
    assert [(h["version"], h["size"]) for h in history] == [(1, 2), (0, 1)]
    assert all("data" not in h for h in history)

    inline = cli.put(b"inline bytes", "--inline", "--type", "note")
    found = json_lines(cli.ok("query", '{"type": "note"}'))
    assert [d["object_id"] for d in found] == [inline] and "data" not in found[0]  # bytes are not printed
    with_data = json_lines(cli.ok("query", '{"type": "note"}', "--projection", '{"data": 1}'))
    assert with_data == [{"_id": inline, "data": {"$binary": "aW5saW5lIGJ5dGVz"}}]
    older = json_lines(cli.ok("query", '{"custom_metadata.n": {"$lt": 2}}', "--collection", "object_history"))
    assert [(d["object_id"], d["version"]) for d in older] == [(object_id, 0)]
    ids = json_lines(cli.ok("query", "{}", "--projection", '{"object_id": 1, "_id": 0}', "--sort=-updated_at",
                            "--limit", "1"))
    assert ids == [{"object_id": inline}]
    files = json_lines(cli.ok("query", '{"length": 2}', "--collection", "fs.files"))
    assert len(files) == 1 and files[0]["sha256"] == hashlib.sha256(b"bb").hexdigest()


def test_rm_deletes_every_version(cli: Cli) -> None:
    object_id = cli.put(b"a")
    cli.put(b"b", "--id", object_id, "--version-control")
    keep = cli.put(b"keep")
    assert cli.ok("rm", object_id) == ""
    assert "not found" in cli.fails(1, "show", object_id)
    assert [d["object_id"] for d in json_lines(cli.ok("ls", "--json"))] == [keep]
    assert json_lines(cli.ok("query", "{}", "--collection", "object_history")) == []


def test_verify_ok_and_damaged(cli: Cli) -> None:
    good = cli.put(os.urandom(300_000))
    damaged = cli.put(os.urandom(300_000), "--id", "damaged-one")
    assert cli.ok("verify") == "checked 2 versions: ok\n"
    assert json_lines(cli.ok("verify", "--json")) == [{"ok": True, "checked": 2, "damaged": []}]

    with microblob.connect(cli.db) as store:  # flip one bit of the stored bytes
        file_id = store.get_blob_object(damaged).file_id
        chunk = store.backend.chunks.get(file_id, 0)
        store.backend.chunks.put(file_id, 0, bytes([chunk[0] ^ 1]) + chunk[1:])

    proc = cli("verify")
    assert proc.returncode == 1
    assert proc.stderr.decode() == "microblob: 1 damaged version: damaged-one v0\n"
    out = proc.stdout.decode().splitlines()
    reason = f"file {file_id!r} does not match its own sha256"
    assert out == [f"damaged: damaged-one v0: {reason}", "checked 2 versions: 1 damaged"]
    proc = cli("verify", "--json")
    assert proc.returncode == 1
    assert json.loads(proc.stdout) == {"ok": False, "checked": 2, "damaged": [
        {"object_id": "damaged-one", "version": 0, "reason": reason}]}
    assert len(cli("get", good).stdout) == 300_000


def test_gc_prints_what_it_freed(cli: Cli) -> None:
    keep = cli.put(os.urandom(200_000))
    assert cli.ok("gc") == "freed 0 files, 0 B (0 bytes), 0 orphan chunks, 0 stray history entries\n"
    with microblob.connect(cli.db) as store:  # a file whose object document was never written
        store.files.upload_from_stream("x", os.urandom(150_000), metadata={"microblob_object_id": "ghost"})
    assert cli.ok("gc") == "freed 1 file, 146.5 KiB (150000 bytes), 0 orphan chunks, 0 stray history entries\n"
    assert json_lines(cli.ok("gc", "--json")) == [{"freed_files": 0, "freed_bytes": 0, "freed_orphan_chunks": 0,
                                                  "freed_history_entries": 0}]
    assert len(cli("get", keep).stdout) == 200_000


# --- interrupted uploads leave nothing visible -----------------------------------------------------


def _start_put_and_feed(cli: Cli, n_bytes: int) -> subprocess.Popen[bytes]:
    """A `put -` that has read `n_bytes` from its stdin pipe and is waiting for more."""
    proc = subprocess.Popen(cli.cmd("put", "-"), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=cli.cwd, env=cli.env, preexec_fn=sigint_as_default)
    assert proc.stdin is not None
    piece = os.urandom(MiB)
    for _ in range(n_bytes // MiB):
        proc.stdin.write(piece)
    proc.stdin.flush()
    time.sleep(0.5)  # the last writes are in the child's hands; it is blocked reading more
    return proc


def test_killed_put_leaves_nothing_visible_and_gc_reclaims_it(cli: Cli) -> None:
    cli.put(b"existing")
    proc = _start_put_and_feed(cli, 40 * MiB)  # several 4 MiB batches: chunks are committed
    proc.kill()
    proc.wait(timeout=60)
    assert len(json_lines(cli.ok("ls", "--json"))) == 1
    report = json_lines(cli.ok("gc", "--json"))[0]
    assert report["freed_orphan_chunks"] > 0 and report["freed_bytes"] >= 16 * MiB
    assert cli.ok("verify") == "checked 1 version: ok\n"


def test_ctrl_c_during_put_exits_130_and_leaves_nothing(cli: Cli) -> None:
    proc = _start_put_and_feed(cli, 40 * MiB)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err.decode()
    assert err.decode() == "microblob: interrupted\n" and out == b""
    assert cli.ok("ls") == ""
    assert json_lines(cli.ok("gc", "--json"))[0]["freed_files"] == 0


def test_sigterm_during_put_exits_143_and_leaves_nothing(cli: Cli) -> None:
    proc = _start_put_and_feed(cli, 40 * MiB)
    proc.terminate()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err.decode()
    assert err.decode() == "microblob: terminated\n" and out == b""
    assert cli.ok("ls") == ""
    assert json_lines(cli.ok("gc", "--json"))[0]["freed_orphan_chunks"] == 0  # the upload cleaned up itself


def test_sigterm_during_get_leaves_no_partial_file(cli: Cli, big_file: tuple[Path, str]) -> None:
    object_id = cli.ok("put", str(big_file[0])).strip()
    out_dir = cli.cwd / "out"
    out_dir.mkdir()
    target = out_dir / "copy.bin"
    target.write_bytes(b"previous content")
    proc = subprocess.Popen(cli.cmd("get", object_id, "-o", str(target)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=cli.cwd, env=cli.env)
    deadline = time.monotonic() + 60

    def partly_written() -> bool:  # the temp file exists and has its first MiB (of 50)
        temps = [p for p in out_dir.iterdir() if p.name.startswith(".microblob-")]
        try:
            return bool(temps) and temps[0].stat().st_size >= MiB
        except FileNotFoundError:
            return False

    while not partly_written():
        assert proc.poll() is None and time.monotonic() < deadline, "get never started writing"
        time.sleep(0.0005)
    os.kill(proc.pid, signal.SIGSTOP)  # freeze it part way through the file, then ask it to stop
    proc.terminate()
    os.kill(proc.pid, signal.SIGCONT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err.decode()
    assert err.decode() == "microblob: terminated\n"
    assert [p.name for p in out_dir.iterdir()] == ["copy.bin"]  # no temp file left behind
    assert target.read_bytes() == b"previous content"


# --- errors: one line on stderr, the right exit code, no traceback ---------------------------------


FAILED_OPERATIONS = [
    (("get", "nope"), "object 'nope' not found"),
    (("get", "nope", "-o", "x.bin"), "object 'nope' not found"),
    (("show", "nope"), "object 'nope' not found"),
    (("history", "nope"), "object 'nope' not found"),
    (("rm", "nope"), "object 'nope' not found"),
    (("show", "OBJ", "--version", "5"), "has no version 5"),
    (("get", "OBJ", "--version", "5", "-o", "-"), "has no version 5"),
    (("put", "no-such-file.bin"), "cannot read no-such-file.bin: No such file or directory"),
    (("put", "."), "cannot read .: Is a directory"),
    (("get", "OBJ", "-o", "no-such-dir/x.bin"), "cannot write no-such-dir/x.bin: No such file or directory"),
    (("ls", "--filter", "[1, 2]"), "a filter must be a dict, not list"),
    (("ls", "--filter", '{"$gt": 1}'), "$gt"),
    (("query", '{"size": {"$frob": 1}}'), "$frob"),
    (("query", '"text"'), "a filter must be a dict, not str"),
    (("query", "{}", "--collection", "nope"), "collection must be one of"),
    (("query", "{}", "--projection", '{"a": 1, "b": 0}'), "projection"),
    (("put", "-", "--id", "a/b"), "contains '/'"),
    (("put", "-", "--content-type", "not a type"), "content_type"),
    (("put", "-", "--id", "x" * 600), "the limit is 512"),
    (("--db", "foo://somewhere", "ls"), "unknown store URI scheme 'foo'"),
    (("ls", "--db", "no-such-dir/store.db"), "no store at 'no-such-dir/store.db'"),
    (("ls", "--db", "typo.db"), "no store at 'typo.db'"),  # and no empty typo.db made (below)
    (("ls", "--db", "."), "is a directory"),
    (("ls", "--db", "not-a-store.txt"), "not-a-store.txt"),
]


@pytest.mark.parametrize(("args", "message"), FAILED_OPERATIONS, ids=[" ".join(a)[:40] for a, _ in FAILED_OPERATIONS])
def test_failed_operations_exit_1(cli: Cli, args: tuple[str, ...], message: str) -> None:
    (cli.cwd / "not-a-store.txt").write_text("this is not an LMDB file, it is long enough to be read " * 200)
    with microblob.connect(cli.db) as store:
        store.save_or_update_object(b"x", object_id="OBJ")
    line = cli.fails(1, *args, input=b"")
    assert line.startswith("microblob: ") and message in line, line
    assert not (cli.cwd / "typo.db").exists()  # reading commands never create a store


USAGE_ERRORS = [
    ((), "the following arguments are required: COMMAND"),
    (("frob",), "invalid choice: 'frob'"),
    (("ls", "--frob"), "unrecognized arguments: --frob"),
    (("put",), "the following arguments are required: FILE|-"),
    (("get",), "the following arguments are required: ID"),
    (("query",), "the following arguments are required: JSON"),
    (("put", "-", "--meta", "novalue"), "argument --meta: expected KEY=VALUE, not 'novalue'"),
    (("put", "-", "--meta", "=v"), "argument --meta: expected KEY=VALUE"),
    (("ls", "--filter", "{bad"), "argument --filter: not valid JSON"),
    (("query", "{'single': 'quotes'}"), "argument JSON: not valid JSON"),
    (("query", "{}", "--projection", "{"), "argument --projection: not valid JSON"),
    (("query", "[" * 20_000), "argument JSON: not valid JSON: JSON nested too deeply"),  # was a RecursionError
    (("ls", "--limit", "-1"), "argument --limit: must be >= 0, not -1"),
    (("ls", "--limit", "many"), "argument --limit: not an integer"),
    (("ls", "--sort=-"), "argument --sort: empty field name"),
    (("get", "OBJ", "--version", "x"), "argument --version: not an integer"),
    (("show", "OBJ", "--version", "-1"), "argument --version: must be >= 0"),
    (("ls", "--db"), "argument --db: expected one argument"),
]


@pytest.mark.parametrize(("args", "message"), USAGE_ERRORS, ids=[" ".join(a)[:40] or "(none)" for a, _ in USAGE_ERRORS])
def test_usage_errors_exit_2(cli: Cli, args: tuple[str, ...], message: str) -> None:
    line = cli.fails(2, *args, input=b"")
    assert message in line, line
    assert ": error: " in line and "--help" in line


def test_help_and_version(cli: Cli) -> None:
    text = cli.ok("--help")
    for name in ("serve", "put", "get", "ls", "show", "history", "query", "rm", "copy", "verify", "gc", "--db"):
        assert name in text
    assert "MICROBLOB_URI" in text and "Exit codes" in text
    assert cli.ok("put", "--help").startswith("usage: microblob put")
    assert cli.ok("--version") == f"microblob {microblob.__version__}\n"
    started = cli.process("--version")  # and from a cold start, as a user's first command
    version = f"microblob {microblob.__version__}\n".encode()
    assert (started.returncode, started.stdout, started.stderr) == (0, version, b"")


# --- where the store is: --db, $MICROBLOB_URI, ./microblob.db --------------------------------------


def test_store_location(cli: Cli, tmp_path: Path) -> None:
    env_uri = cli.env  # MICROBLOB_URI=<tmp>/store.db
    no_uri = cli_env()
    a = cli.put(b"in the MICROBLOB_URI store")
    b_path = tmp_path / "b.db"
    b = cli.ok("--db", str(b_path), "put", "-", input=b"in b").strip()
    c = cli.ok("put", "-", "--db", f"lmdb://{b_path}", input=b"also in b").strip()  # --db after the command
    assert [d["object_id"] for d in json_lines(cli.ok("ls", "--json", env=env_uri))] == [a]
    assert {d["object_id"] for d in json_lines(cli.ok("ls", "--json", "--db", str(b_path)))} == {b, c}
    d = cli.ok("put", "-", input=b"default", env=no_uri).strip()
    assert (tmp_path / "microblob.db").is_file()  # the embedded default, in the working directory
    assert [x["object_id"] for x in json_lines(cli.ok("ls", "--json", env=no_uri))] == [d]
    assert cli.ok("get", d, "-o", "-", "--db", "microblob.db", env=env_uri) == "default"


def test_server_and_cli_share_a_store_file(cli: Cli) -> None:
    """Another process holding the store open (as `serve` does) does not stop the CLI."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import microblob, sys, time; s = microblob.connect(sys.argv[1]); "
                               "s.save_or_update_object(b'held', object_id='held'); print('ready', flush=True); "
                               "time.sleep(60)", str(cli.db)],
        stdout=subprocess.PIPE, env=cli.env, cwd=cli.cwd)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"ready\n"
        object_id = cli.put(b"while held")
        assert {d["object_id"] for d in json_lines(cli.ok("ls", "--json"))} == {"held", object_id}
    finally:
        holder.kill()
        holder.wait()


# --- terminals, pipes and progress bars ------------------------------------------------------------


def run_with_tty(cmd: list[str], *, cwd: Path, env: dict[str, str], tty: str = "stderr",
                 size: tuple[int, int] | None = (30, 100), stdin: Any = subprocess.DEVNULL
                 ) -> tuple[int, bytes, bytes]:
    """Run with stderr (or stdout) on a pseudo-terminal of `size` (rows, cols; None: a 0x0 terminal
    such as a serial console reports). Returns (exit code, the other stream, what the terminal got)."""
    master, slave = os.openpty()
    if size is not None:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", size[0], size[1], 0, 0))
    streams = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, tty: slave}
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=stdin, **streams)
    os.close(slave)
    seen = bytearray()

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every writer of the terminal has closed it
                return
            if not data:
                return
            seen.extend(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    out, err = proc.communicate(timeout=300)
    reader.join(timeout=30)
    os.close(master)
    return proc.returncode, out if tty == "stderr" else err, bytes(seen)


@pytest.mark.parametrize("size", [(30, 100), None], ids=["100x30", "0x0"])
def test_progress_bars_on_a_terminal(cli: Cli, size: tuple[int, int] | None) -> None:
    source = cli.cwd / "src.bin"
    source.write_bytes(os.urandom(3 * MiB))
    code, out, tty = run_with_tty(cli.cmd("put", str(source)), cwd=cli.cwd, env=cli.env, size=size)
    assert code == 0
    object_id = out.decode().strip()
    text = tty.decode(errors="replace")
    assert "put src.bin" in text and "100%" in text and "3.00M/3.00M" in text, text

    with open(source, "rb") as fh:  # stdin: a bar too, sized from the redirected file
        code, out, tty = run_with_tty(cli.cmd("put", "-"), cwd=cli.cwd, env=cli.env, size=size, stdin=fh)
    assert code == 0 and "put stdin" in tty.decode(errors="replace") and "100%" in tty.decode(errors="replace")

    code, _, tty = run_with_tty(cli.cmd("get", object_id, "-o", "copy.bin"), cwd=cli.cwd, env=cli.env, size=size)
    text = tty.decode(errors="replace")
    assert code == 0 and f"get {object_id} v0" in text and "100%" in text, text
    assert (cli.cwd / "copy.bin").read_bytes() == source.read_bytes()


def test_no_progress_in_pipes(cli: Cli) -> None:
    source = cli.cwd / "src.bin"
    source.write_bytes(os.urandom(3 * MiB))
    object_id = cli.ok("put", str(source)).strip()  # ok() asserts stderr is empty
    cli.ok("put", "-", input=source.read_bytes())
    assert cli.ok("get", object_id, "-o", "x.bin") == ""
    assert len(cli("get", object_id).stdout) == 3 * MiB


def test_get_refuses_to_write_binary_to_a_terminal(cli: Cli) -> None:
    object_id = cli.put(b"\x00\x01binary")
    code, err, tty = run_with_tty(cli.cmd("get", object_id), cwd=cli.cwd, env=cli.env, tty="stdout")
    assert code == 2 and tty == b""
    assert err.decode() == ("microblob get: error: refusing to write binary data to a terminal; "
                            "give -o FILE, or -o - to insist\n")
    code, err, tty = run_with_tty(cli.cmd("get", object_id, "-o", "-"), cwd=cli.cwd, env=cli.env, tty="stdout")
    assert code == 0 and b"binary" in tty


def test_a_closed_pipe_stops_get_quietly(cli: Cli) -> None:
    object_id = cli.put(os.urandom(20 * MiB))
    proc = subprocess.Popen(cli.cmd("get", object_id), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=cli.cwd, env=cli.env)
    assert proc.stdout is not None and proc.stderr is not None
    assert len(proc.stdout.read(10)) == 10  # like `microblob get ID | head -c 10`
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 1
    assert err == b""


# --- serve: the store (and Things) over HTTP --------------------------------------------------------

LAB_THINGS = '''
from microblob import Blob, Thing, thing_action


class Greeter(Thing):
    @thing_action
    def greet(self, name: str) -> str:
        return f"hello {name}"

    @thing_action
    def snap(self) -> Blob:
        return Blob.from_bytes(b"a frame", "image/x-raw")
'''


class Served:
    """`microblob serve --port 0 ...` in a subprocess: its URL (parsed from its first line of stdout),
    its stderr in a file, and a way to stop it with a signal."""

    def __init__(self, cli: Cli, *args: str, env: dict[str, str] | None = None, port: str = "0") -> None:
        self.log = cli.cwd / f"serve-{time.monotonic_ns()}.err"
        with open(self.log, "wb") as err:
            self.proc = subprocess.Popen(cli.cmd("serve", "--port", port, *args), stdout=subprocess.PIPE,
                                         stderr=err, cwd=cli.cwd, env=cli.env if env is None else env)
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 60)
        line = self.proc.stdout.readline().decode() if ready else ""
        assert re.fullmatch(r"http://[^/\s]+:\d+/\n", line), f"no URL from serve: {line!r}\n{self.stderr()}"
        self.url = line.strip()
        self.port = int(self.url.rsplit(":", 1)[1].rstrip("/"))

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    def client(self, **kwargs: Any) -> httpx.Client:
        # A script, not a page: it says so, as the CSRF check asks of a POST without a binary type.
        headers = {"X-Requested-With": "test", **kwargs.pop("headers", {})}
        return httpx.Client(base_url=f"http://127.0.0.1:{self.port}/", timeout=60, headers=headers, **kwargs)

    def stop(self, sig: int = signal.SIGINT) -> int:
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=60)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def serve(cli: Cli) -> Iterator[Callable[..., Served]]:
    started: list[Served] = []

    def start(*args: str, entry: Cli | None = None, **kwargs: Any) -> Served:
        served = Served(entry or cli, *args, **kwargs)
        started.append(served)
        return served

    yield start
    for served in started:
        served.kill()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_serve_store_routes_then_stop_cleanly(cli: Cli, serve: Callable[..., Served], sig: int) -> None:
    payload = os.urandom(3 * MiB)
    object_id = cli.put(payload, "--type", "image", "--content-type", "image/png")
    server = serve()  # no --thing: it serves the store alone
    assert server.url.startswith("http://127.0.0.1:") and server.port > 0
    assert f"serving {cli.db}" in server.stderr() and server.url in server.stderr()
    with server.client() as http:
        listed = http.get("/objects/").json()
        assert [o["object_id"] for o in listed] == [object_id]
        got = http.get(f"/objects/{object_id}/data")
        assert got.status_code == 200 and got.content == payload and got.headers["content-type"] == "image/png"
        assert http.get(f"/objects/{object_id}/data", headers={"Range": "bytes=10-19"}).content == payload[10:20]
        assert http.get(f"/objects/{object_id}").json()["sha256"] == hashlib.sha256(payload).hexdigest()
        assert [h["version"] for h in http.get(f"/objects/{object_id}/history").json()] == [0]
        created = http.post("/objects/?type=note&task_id=upload-1", content=b"uploaded over HTTP")
        assert created.status_code == 201, created.text
        new_id = created.json()["object_id"]
        assert cli.ok("get", new_id, "-o", "-") == "uploaded over HTTP"  # the CLI reads what the server wrote
        cli.put(b"written by the CLI while serving", "--id", "from-cli")
        assert http.get("/objects/from-cli/data").content == b"written by the CLI while serving"
        assert http.delete(f"/objects/{new_id}").status_code == 204
        assert http.get(f"/objects/{new_id}").status_code == 404
        page = http.get("/")
        # the browse page renders in the browser from the JSON routes (tests/test_browse_page.py drives it)
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert "<title>microblob" in page.text
        assert object_id in {o["object_id"] for o in http.get("/objects/").json()}
        assert http.get("/things/").json() == {}
    assert server.stop(sig) == 0
    log = server.stderr()
    assert "Traceback" not in log and "Finished server process" in log
    assert '"GET /objects/ HTTP/1.1" 200' in log  # request lines go to stderr, stdout holds the URL only
    assert {d["object_id"] for d in json_lines(cli.ok("ls", "--json"))} == {object_id, "from-cli"}


def test_quickstart_then_serve_on_the_embedded_default(cli: Cli, serve: Callable[..., Served]) -> None:
    """`python examples/quickstart.py && python -m microblob serve`: no --db, no $MICROBLOB_URI, no
    --thing: the server serves ./microblob.db, which the quickstart filled."""
    env = cli_env()
    quickstart = subprocess.run([sys.executable, str(ROOT / "examples" / "quickstart.py")], cwd=cli.cwd, env=env,
                                capture_output=True, timeout=300)
    assert quickstart.returncode == 0, quickstart.stderr.decode()
    server = serve(env=env)
    assert "serving " in server.stderr() and "microblob.db" in server.stderr()
    with server.client() as http:
        ids = {o["object_id"] for o in http.get("/objects/").json()}
        assert "quickstart-image" in ids
        image = http.get("/objects/quickstart-image/data")
        assert image.headers["content-type"] == "image/png" and image.content.startswith(b"\x89PNG")
        assert "<title>microblob" in http.get("/").text
    assert server.stop() == 0


def test_serve_defaults() -> None:
    from microblob.cli import build_parser

    args = build_parser().parse_args(["serve"])
    assert (args.host, args.port, args.thing, args.token, args.insecure) == ("127.0.0.1", 5000, [], None, False)


def test_serve_things_from_flags_and_config(cli: Cli, serve: Callable[..., Served], console_script: str) -> None:
    (cli.cwd / "lab_things.py").write_text(LAB_THINGS)
    (cli.cwd / "things.json").write_text(json.dumps({"things": {"lobby": "lab_things:Greeter"}}))
    script = Cli([console_script], cli.cwd)  # the console script must find modules of the working directory
    server = serve("--thing", "greeter=lab_things:Greeter", "--config", "things.json", "--blob-ttl", "42",
                   entry=script)
    assert "and greeter, lobby" in server.stderr() or "and lobby, greeter" in server.stderr()
    with server.client() as http:
        assert set(http.get("/things/").json()) == {"greeter", "lobby"}
        assert "greet" in http.get("/greeter/").json()["actions"]
        done = http.post("/lobby/greet?wait=30", json={"name": "Ada"})
        assert done.status_code == 200 and done.json()["output"] == "hello Ada", done.text
        snap = http.post("/greeter/snap?wait=30", json={}).json()
        link = snap["output"]
        expires = dt.datetime.fromisoformat(link["expires_at"].replace("Z", "+00:00"))
        ttl = (expires - dt.datetime.now(dt.timezone.utc)).total_seconds()
        assert 30 < ttl <= 42, ttl  # --blob-ttl reached the server
        assert http.get(link["href"]).content == b"a frame"
        assert http.get("/").status_code == 200
    assert server.stop() == 0


def test_serve_upload_limits_reach_the_server(cli: Cli, serve: Callable[..., Served]) -> None:
    from test_http_server import wait_until
    from test_http_upload_limits import read_response, start_upload

    spools = cli.cwd / "spools"
    spools.mkdir()
    server = serve("--upload-idle-timeout", "5", "--max-uploads", "1", "--spool-budget", "1K",
                   env={**cli.env, "TMPDIR": str(spools)})
    with start_upload(server.url, "/objects/", 500) as trickler, server.client() as http:
        wait_until(lambda: len(list(spools.iterdir())) == 1)  # it holds the one place
        refused = http.post("/blobs", content=b"one too many")
        assert refused.status_code == 503 and refused.json()["error"] == "TooManyUploads", refused.text
        assert read_response(trickler)[0] == 408  # dropped once idle for 5 s
        over = http.post("/blobs", content=b"x" * 1025)
        assert over.status_code == 507 and over.json()["error"] == "SpoolBudgetExceeded", over.text
        assert http.post("/blobs", content=b"x" * 1024).status_code == 201
        assert len(list(spools.iterdir())) == 1 and http.get("/objects/").json() == []
    assert server.stop() == 0
    for bad in (["--max-uploads", "0"], ["--upload-idle-timeout", "0"], ["--spool-budget", "lots"]):
        line = cli.fails(2, "serve", "--port", "0", *bad)
        assert bad[0] in line and ("must be" in line or "not a size" in line), line


def test_serve_refuses_a_public_address_without_a_token(cli: Cli, serve: Callable[..., Served]) -> None:
    line = cli.fails(2, "serve", "--host", "0.0.0.0", "--port", "0")
    assert "refusing to serve on 0.0.0.0 without a token" in line and "--insecure" in line
    open_to_all = serve("--host", "0.0.0.0", "--insecure")
    assert open_to_all.url.startswith("http://0.0.0.0:")
    with open_to_all.client() as http:
        assert http.get("/objects/").status_code == 200
    assert open_to_all.stop() == 0
    with_token = serve("--host", "0.0.0.0", "--token", "s3cret")
    with with_token.client() as http:
        assert http.get("/objects/").status_code == 401
    assert with_token.stop(signal.SIGTERM) == 0
    env = dict(cli.env, MICROBLOB_TOKEN="from-env")
    with_env_token = serve("--host", "0.0.0.0", env=env)
    with with_env_token.client(headers={"Authorization": "Bearer from-env"}) as http:
        assert http.get("/objects/").status_code == 200


@pytest.mark.parametrize("how", ["--token", "MICROBLOB_TOKEN"])
def test_serve_requires_the_token_when_set(cli: Cli, serve: Callable[..., Served], how: str) -> None:
    object_id = cli.put(b"secret bytes")
    args, env = (("--token", "s3cret"), None) if how == "--token" else ((), dict(cli.env, MICROBLOB_TOKEN="s3cret"))
    server = serve(*args, env=env)
    assert "token required" in server.stderr()
    with server.client() as http:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            answer = http.get(f"/objects/{object_id}/data", headers=headers)
            assert answer.status_code == 401 and answer.json()["error"], answer.text
            assert http.post("/objects/", content=b"x", headers=headers).status_code == 401
        good = {"Authorization": "Bearer s3cret"}
        assert http.get(f"/objects/{object_id}/data", headers=good).content == b"secret bytes"
        assert http.get("/", headers=good).status_code == 200
    assert server.stop() == 0
    assert [d["object_id"] for d in json_lines(cli.ok("ls", "--json"))] == [object_id]  # 401s wrote nothing


def test_serve_max_upload(cli: Cli, serve: Callable[..., Served]) -> None:
    server = serve("--max-upload", "1K")
    with server.client() as http:
        assert http.post("/objects/", content=b"x" * 1024).status_code == 201
        assert http.post("/objects/", content=b"x" * 1025).status_code == 413
    assert server.stop() == 0
    assert len(json_lines(cli.ok("ls", "--json"))) == 1


def test_serve_allowed_host_and_cors_origin(cli: Cli, serve: Callable[..., Served]) -> None:
    server = serve("--allowed-host", "pi.lab.example", "--cors-origin", "http://localhost:8000")
    with httpx.Client(base_url=server.url, timeout=60) as http:
        assert http.get("/objects/", headers={"Host": "pi.lab.example"}).status_code == 200
        assert http.get("/objects/", headers={"Host": "evil.example"}).status_code == 421
        page = {"Origin": "http://localhost:8000", "Content-Type": "application/octet-stream"}
        assert http.post("/objects/", content=b"x", headers=page).status_code == 201
        other = {"Origin": "http://localhost:8001", "Content-Type": "application/octet-stream"}
        assert http.post("/objects/", content=b"x", headers=other).status_code == 403
    assert server.stop() == 0
    assert len(json_lines(cli.ok("ls", "--json"))) == 1
    for bad in (["--allowed-host", "http://x/"], ["--cors-origin", "localhost:8000"]):
        assert bad[1] in cli.fails(2, "serve", "--port", "0", *bad)


def _slow_upload(server: Served, body: bytes, stop: Callable[[], None]) -> httpx.Response | Exception:
    """POST /objects/ with `body` in 1 MiB pieces, 0.1 s apart, calling `stop` once the first is sent."""
    first_sent = threading.Event()

    def pieces() -> Iterator[bytes]:
        for n in range(0, len(body), MiB):
            yield body[n : n + MiB]
            first_sent.set()
            time.sleep(0.1)

    stopper = threading.Thread(target=lambda: (first_sent.wait(30), stop()))
    stopper.start()
    try:
        with server.client() as http:
            return http.post("/objects/?object_id=in-flight", content=pieces())
    except httpx.HTTPError as exc:
        return exc
    finally:
        stopper.join(60)


def test_serve_lets_an_upload_in_flight_finish_on_sigterm(cli: Cli, serve: Callable[..., Served]) -> None:
    server = serve()
    body = os.urandom(8 * MiB)
    codes: list[int] = []
    answer = _slow_upload(server, body, lambda: codes.append(server.stop(signal.SIGTERM)))
    assert codes == [0]
    # uvicorn stops accepting, lets the request in flight finish, then exits: the object is whole.
    assert isinstance(answer, httpx.Response) and answer.status_code == 201, answer
    shown = json.loads(cli.ok("show", "in-flight"))
    assert shown["size"] == len(body) and shown["sha256"] == hashlib.sha256(body).hexdigest()
    assert cli.ok("verify") == "checked 1 version: ok\n"


def test_serve_cuts_a_slow_upload_short_after_the_shutdown_timeout(cli: Cli, serve: Callable[..., Served]) -> None:
    cli.put(b"kept", "--id", "kept")
    server = serve("--shutdown-timeout", "0.3")
    codes: list[int] = []
    answer = _slow_upload(server, os.urandom(30 * MiB), lambda: codes.append(server.stop(signal.SIGTERM)))
    assert codes == [0]
    assert isinstance(answer, Exception) or answer.status_code >= 500, answer
    assert [d["object_id"] for d in json_lines(cli.ok("ls", "--json"))] == ["kept"]  # nothing half-saved
    assert cli.ok("verify") == "checked 1 version: ok\n"


def test_serve_killed_during_an_upload_leaves_nothing_visible(cli: Cli, serve: Callable[..., Served]) -> None:
    cli.put(b"kept", "--id", "kept")
    server = serve()
    answer = _slow_upload(server, os.urandom(30 * MiB), server.kill)
    assert isinstance(answer, Exception), answer
    assert [d["object_id"] for d in json_lines(cli.ok("ls", "--json"))] == ["kept"]
    assert cli.ok("verify") == "checked 1 version: ok\n"


def test_serve_errors(cli: Cli) -> None:
    (cli.cwd / "bad.json").write_text("{not json")
    (cli.cwd / "wrong.json").write_text('{"thing": {"a": "m:C"}}')
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        port = str(busy.getsockname()[1])
        assert "cannot listen on 127.0.0.1 port" in cli.fails(1, "serve", "--port", port)
    finally:
        busy.close()
    assert "cannot load a Thing" in cli.fails(1, "serve", "--port", "0", "--thing", "x=no_such_module:Thing")
    assert "cannot load a Thing" in cli.fails(1, "serve", "--port", "0", "--thing", "x=json:NoSuchClass")
    assert "is not a Thing" in cli.fails(1, "serve", "--port", "0", "--thing", "x=json:JSONDecoder")
    assert "cannot read missing.json" in cli.fails(1, "serve", "--port", "0", "--config", "missing.json")
    assert "bad.json is not valid JSON" in cli.fails(1, "serve", "--port", "0", "--config", "bad.json")
    assert 'expected {"things"' in cli.fails(1, "serve", "--port", "0", "--config", "wrong.json")
    assert "cannot name a Thing" in cli.fails(1, "serve", "--port", "0", "--thing", "objects=json:JSONDecoder")
    assert "expected NAME=MODULE:CLASS" in cli.fails(2, "serve", "--thing", "lab_things")
    assert "must be a TCP port" in cli.fails(2, "serve", "--port", "70000")
    assert "not a size" in cli.fails(2, "serve", "--max-upload", "lots")
    assert "must be > 0" in cli.fails(2, "serve", "--max-upload", "0")
    assert "seconds" in cli.fails(2, "serve", "--blob-ttl", "-1")
    assert "Name or service not known" in cli.fails(1, "serve", "--port", "0", "--host", "no-such-host.invalid",
                                                    "--insecure")


# --- copy: store to store -----------------------------------------------------------------------------


def test_copy_twice_copies_once(cli: Cli) -> None:
    image = cli.put(os.urandom(2 * MiB), "--type", "image", "--meta", "n=1")
    cli.put(os.urandom(MiB), "--id", image, "--version-control", "--meta", "n=2")
    note = cli.put(b"a small note", "--inline")
    dst = cli.cwd / "dst.db"
    out = cli.ok("copy", str(cli.db), str(dst))
    assert out.startswith("copied 2 objects (3 versions)"), out
    assert json_lines(cli.ok("ls", "--json", "--db", str(dst))) == json_lines(cli.ok("ls", "--json"))
    for object_id in (image, note):
        assert cli.ok("history", object_id, "--db", str(dst)) == cli.ok("history", object_id)
    assert cli("get", image, "--version", "0", "--db", str(dst)).stdout == cli("get", image, "--version", "0").stdout
    again = json_lines(cli.ok("copy", str(cli.db), f"lmdb://{dst}", "--json"))[0]
    assert again["objects_copied"] == 0 and again["bytes_copied"] == 0 and again["objects_skipped"] == 2
    assert cli.ok("copy", str(cli.db), str(dst)).startswith("nothing to copy")
    newer = cli.put(b"made after the first copy")
    report = json_lines(cli.ok("copy", str(cli.db), str(dst), "--json"))[0]
    assert (report["objects_copied"], report["objects_skipped"]) == (1, 2)
    assert cli.ok("get", newer, "-o", "-", "--db", str(dst)) == "made after the first copy"
    assert cli.ok("verify", "--db", str(dst)) == "checked 4 versions: ok\n"


def test_copy_since(cli: Cli) -> None:
    old = cli.put(b"old")
    time.sleep(0.05)
    since = dt.datetime.now(dt.timezone.utc)
    time.sleep(0.05)
    new = cli.put(b"new")
    dst = cli.cwd / "dst.db"
    stamp = since.isoformat().replace("+00:00", "Z")
    report = json_lines(cli.ok("copy", str(cli.db), str(dst), "--since", stamp, "--json"))[0]
    assert report["objects_copied"] == 1
    assert [d["object_id"] for d in json_lines(cli.ok("ls", "--json", "--db", str(dst)))] == [new]
    assert "not found" in cli.fails(1, "show", old, "--db", str(dst))


def test_copy_from_mongita_onto_the_embedded_default(cli: Cli) -> None:
    mongita = f"mongita://{cli.cwd / 'mongita-dir'}"
    object_id = cli.ok("put", "-", "--db", mongita, "--type", "dataset", input=b"kept in mongita").strip()
    assert cli.ok("copy", mongita, "microblob.db").startswith("copied 1 object")
    assert cli.ok("get", object_id, "-o", "-", env=cli_env()) == "kept in mongita"  # ./microblob.db


def test_copy_leaves_a_diverged_object_alone_and_exits_1(cli: Cli) -> None:
    dst = cli.cwd / "dst.db"
    cli.put(b"source life", "--id", "shared-id")
    cli.put(b"fine", "--id", "fine")
    cli.ok("put", "-", "--id", "shared-id", "--db", str(dst), input=b"another life at the destination")
    proc = cli("copy", str(cli.db), str(dst))
    assert proc.returncode == 1
    err = proc.stderr.decode()
    assert err.startswith("microblob: 1 object not copied: shared-id") and err.count("\n") == 1, err
    lines = proc.stdout.decode().splitlines()
    assert lines[0].startswith("left alone: shared-id: ") and "copied 1 object" in lines[-1]
    assert cli.ok("get", "shared-id", "-o", "-", "--db", str(dst)) == "another life at the destination"
    report = json.loads(cli("copy", str(cli.db), str(dst), "--json").stdout)
    assert report["problems"][0][0] == "shared-id"


def test_copy_progress_on_a_terminal(cli: Cli) -> None:
    cli.put(os.urandom(3 * MiB))
    code, out, tty = run_with_tty(cli.cmd("copy", str(cli.db), "dst.db"), cwd=cli.cwd, env=cli.env)
    text = tty.decode(errors="replace")
    assert code == 0 and "copy: 100%" in text and "3.00M/3.00M" in text, text
    assert out.decode().startswith("copied 1 object")
    assert cli("copy", str(cli.db), "dst2.db").stderr == b""  # silent in a pipe


def test_copy_errors(cli: Cli) -> None:
    cli.put(b"x")
    assert "--db does not apply" in cli.fails(2, "--db", "x.db", "copy", str(cli.db), "y.db")
    assert "unrecognized arguments: --db" in cli.fails(2, "copy", str(cli.db), "y.db", "--db", "x.db")
    assert "not an ISO 8601" in cli.fails(2, "copy", str(cli.db), "y.db", "--since", "yesterday")
    assert "required: DST" in cli.fails(2, "copy", str(cli.db))
    assert "same store" in cli.fails(1, "copy", str(cli.db), f"lmdb://{cli.db}")
    assert "no store at 'no-such-dir/a.db'" in cli.fails(1, "copy", "no-such-dir/a.db", "y.db")
    assert "no store at 'typo.db'" in cli.fails(1, "copy", "typo.db", "y.db")
    assert not (cli.cwd / "typo.db").exists() and not (cli.cwd / "y.db").exists()
    assert "unknown store URI scheme" in cli.fails(1, "copy", str(cli.db), "ftp://elsewhere/x")


def test_copy_to_mongodb_and_use_it_with_db(cli: Cli, request: pytest.FixtureRequest) -> None:
    """The Pi's file to the institute's MongoDB, then the same commands against it with --db."""
    server = request.getfixturevalue("mongo_server")
    uri = server.fresh_uri()
    try:
        payload = os.urandom(3 * MiB)
        object_id = cli.put(payload, "--type", "image")
        cli.put(b"v1", "--id", object_id, "--version-control")
        assert cli.ok("copy", str(cli.db), uri).startswith("copied 1 object (2 versions)")
        assert cli.ok("copy", str(cli.db), uri).startswith("nothing to copy")
        assert cli.ok("history", object_id, "--db", uri) == cli.ok("history", object_id)
        assert cli("get", object_id, "--version", "0", "--db", uri).stdout == payload
        other = cli.ok("put", "-", "--db", uri, input=b"written straight to MongoDB").strip()
        assert {d["object_id"] for d in json_lines(cli.ok("ls", "--json", "--db", uri))} == {object_id, other}
        assert cli.ok("verify", "--db", uri) == "checked 3 versions: ok\n"
        assert cli.ok("rm", other, "--db", uri) == ""
        assert "not found" in cli.fails(1, "show", other, "--db", uri)
    finally:
        server.drop(uri)


def test_verify_and_gc_show_progress_on_a_terminal(cli: Cli) -> None:
    for i in range(12):
        cli.put(os.urandom(300_000 + i), "--id", f"o{i}")
    code, out, tty = run_with_tty(cli.cmd("verify"), cwd=cli.cwd, env=cli.env)
    text = tty.decode(errors="replace")
    assert code == 0 and b"checked 12 versions: ok" in out and "verify" in text and "12/12" in text, text
    code, out, tty = run_with_tty(cli.cmd("gc"), cwd=cli.cwd, env=cli.env)
    text = tty.decode(errors="replace")
    assert code == 0 and out.startswith(b"freed 0 files") and "gc" in text and "12/12" in text, text
    assert cli.ok("verify").startswith("checked 12 versions")  # in a pipe: no bar, stderr empty


def test_verify_and_gc_progress_callbacks(tmp_path: Path) -> None:
    with microblob.connect(tmp_path / "p.db") as store:
        for i in range(5):
            store.save_or_update_object(os.urandom(200_000), object_id=f"o{i}")
        store.save_or_update_object(b"v1", object_id="o0", control_version=True)
        seen: list[int] = []
        assert store.verify(progress=seen.append).checked == 6 == sum(seen) == store.count_versions()
        seen.clear()
        store.files.upload_from_stream("user.bin", b"mine")
        assert store.gc(progress=seen.append).freed_files == 0 and sum(seen) == 7  # every files document
        with pytest.raises(microblob.InvalidArgument):
            store.verify(progress="yes")


def test_ls_with_nothing_to_list_says_so_on_a_terminal(cli: Cli) -> None:
    object_id = cli.put(b"one", "--type", "scan")
    code, _, tty = run_with_tty(cli.cmd("ls", "--type", "image"), cwd=cli.cwd, env=cli.env, tty="stdout")
    assert code == 0 and b"(no object matches)" in tty, tty
    assert cli.ok("ls", "--type", "image") == ""  # in a pipe: nothing, for scripts
    cli.ok("rm", object_id)
    code, _, tty = run_with_tty(cli.cmd("ls"), cwd=cli.cwd, env=cli.env, tty="stdout")
    assert code == 0 and b"(the store has no objects)" in tty, tty


def test_no_command_writes_over_a_store(cli: Cli, tmp_path: Path) -> None:
    """`export s.db s.db` wrote the bundle over the store it read, and `get ID -o s.db` the object's bytes:
    every object was gone, and both exited 0. A store, its lock file and any non-bundle file are refused."""
    object_id = cli.put(b"precious")
    notes = tmp_path / "notes.txt"
    notes.write_bytes(b"a file that is not a bundle")
    assert "is an embedded store" in cli.fails(1, "export", str(cli.db), str(cli.db))
    assert "is an embedded store" in cli.fails(1, "get", object_id, "-o", str(cli.db))
    assert "lock file of an embedded store" in cli.fails(1, "get", object_id, "-o", f"{cli.db}-lock")
    assert "not a microblob bundle" in cli.fails(1, "export", str(cli.db), str(notes))
    assert notes.read_bytes() == b"a file that is not a bundle"
    assert cli.ok("get", object_id) == "precious" and cli.ok("verify") == "checked 1 version: ok\n"
    bundle = tmp_path / "b.bundle"
    cli.ok("export", str(cli.db), str(bundle))
    cli.ok("export", str(cli.db), str(bundle))  # a bundle may be replaced by a newer one


def test_closed_standard_streams_and_odd_arguments_are_one_line_errors(cli: Cli) -> None:
    """Python sets a closed stdout or stdin to None: each use was an AttributeError traceback."""
    object_id = cli.put(b"x")

    def with_closed(fd: int, *args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(cli.cmd(*args), stdin=None if fd == 0 else subprocess.DEVNULL,
                              stdout=None if fd == 1 else subprocess.PIPE, stderr=subprocess.PIPE, cwd=cli.cwd,
                              env=cli.env, timeout=300, preexec_fn=lambda: os.close(fd))

    for args in (("ls",), ("show", object_id), ("get", object_id), ("info", "--json")):
        proc = with_closed(1, *args)
        err = proc.stderr.decode()
        assert proc.returncode == 1 and "stdout is closed" in err and "Traceback" not in err, (args, err)
    proc = with_closed(0, "put", "-")
    assert proc.returncode == 1 and "stdin is closed" in proc.stderr.decode(), proc.stderr.decode()
    # An undecodable --host, an empty module name, NaN: one line each, not a traceback or a stored NaN.
    assert "cannot listen on" in cli.fails(1, "serve", "--port", "0", "--insecure", "--host", "a..b")
    assert "cannot load a Thing" in cli.fails(1, "serve", "--port", "0", "--thing", "a=:x")
    assert "not valid JSON" in cli.fails(2, "query", '{"size": NaN}')
    nan_id = cli.put(b"y", "--meta", "k=NaN", "--meta", "big=1e999")
    assert json.loads(cli.ok("show", nan_id))["custom_metadata"] == {"k": "NaN", "big": "1e999"}  # kept as text
    env = {**cli.env, "MICROBLOB_URI": str(cli.cwd / "100%d.db")}  # argparse %-formats help strings
    assert "100%d.db" in cli.ok("ls", "--help", env=env)


def test_put_says_what_it_saved_when_stdout_fails(cli: Cli) -> None:
    """The save happened: an exit code alone would make a retrying script save it twice."""
    with open("/dev/full", "wb") as full:
        proc = subprocess.run(cli.cmd("put", "-"), input=b"z", stdout=full, stderr=subprocess.PIPE, cwd=cli.cwd,
                              env=cli.env, timeout=300)
    err = proc.stderr.decode()
    assert proc.returncode == 1 and err.startswith("microblob: saved ") and "No space left" in err, err
    saved = err.split()[2]
    assert cli.ok("get", saved) == "z"
