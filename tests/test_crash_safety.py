"""Crash safety of the embedded store: writers killed with SIGKILL at random moments (docs/ARCHITECTURE.md, "Data
flow of a save").

What this proves, on a real LMDB file written by real processes: after a writer is killed at any moment
(mid chunked upload, between commit batches, inside the publishing transaction, while freeing replaced
bytes, inside `delete_object` or `gc`, while opening the file), the next process
- opens the store, and `verify()` finds nothing damaged;
- sees every version whose save returned in the writer, byte for byte (the latest, and the older ones
  that `control_version=True` archived), and nothing else: each object is in the state of the last
  operation that returned, or of the one that was running when the kill landed, never in between;
- sees no partial object: every visible version's bytes, size, sha256, storage, `prev_version` and
  metadata are exactly those the writer meant for that version, and the history holds exactly the
  versions the plan archived (no extra entry after a crash followed by a non-versioned overwrite);
- gets back, from `gc()`, exactly the files and chunks interrupted writes left behind (what it frees is
  predicted before it runs), after which the bytes stored are exactly the bytes referenced.
Kills accumulate on one file, so every round also reopens a file that has crashed many times before.
In half the rounds this process holds the file open across the kill (as a server would while a CLI
writes): the dead writer's lock and reader slot are then recovered with the file still open, and a
thread reading every object meanwhile must only ever see whole versions.

How: the writer's operations are a pure function of (object id, life, version) (`plan`, `payload`), so
this process recomputes what each version must hold. Writers report on stdout "start ..." before an
operation and "done ..." right after it returns. Starting 100+ Python interpreters costs ~0.3 s each
here (imports), so writer processes are forked from one "zygote" interpreter that imported microblob
but never opened a store; each writer then opens the file itself with `microblob.connect(path)`.

A failure names its round and seed: `MICROBLOB_CRASH_SEED=<seed>` replays the same plan and kill schedule
(where exactly a kill lands still depends on timing); `MICROBLOB_CRASH_ROUNDS=<n>` runs longer.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import math
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import microblob
from microblob import FileNotFound, IntegrityError, ObjectNotFound

ROOT = Path(__file__).resolve().parents[1]
CHUNK = 16_000  # small chunks: a payload of a few hundred KB spans many chunks ...
BATCH = 3 * CHUNK  # ... and several commit batches (the store commits chunks BATCH bytes at a time)
OBJECT_IDS = [f"obj-{n}" for n in range(6)]
ROUNDS = int(os.environ.get("MICROBLOB_CRASH_ROUNDS", "120"))
DELETE_P = 0.04  # per step, for an object that exists: keeps histories (and the checks) short
GC_P = 0.02  # the writer runs gc() itself now and then, so kills land inside gc too
HANG = 120.0  # seconds without a line from the zygote or its writer: something hangs (a busy machine: a few)

State = tuple[int, int] | None  # (life, version) of an object's latest, or None: no such object


# --- what the writer does: a pure function of (object id, life, version) ------------------------------


@dataclasses.dataclass(frozen=True)
class Op:
    kind: str  # "inline" (save_data_in_collection=True) | "chunked" | "meta" (update_object_metadata)
    control_version: bool
    size: int  # bytes of the payload (0 for "meta": it keeps the previous version's bytes)


def plan(object_id: str, life: int, version: int) -> Op:
    """The operation that makes `version` of this life of `object_id`."""
    rng = random.Random(f"plan/{object_id}/{life}/{version}")
    r = rng.random()
    kind = "meta" if version > 0 and r < 0.15 else "inline" if r < 0.45 else "chunked"
    control_version = rng.random() < 0.6
    s = rng.random()
    if kind == "meta" or s < 0.1:
        size = 0
    elif s < 0.3:
        size = rng.randint(1, 300)
    elif s < 0.45:
        size = rng.choice([CHUNK - 1, CHUNK, CHUNK + 1, BATCH, BATCH + 1, 2 * BATCH])
    elif s < 0.65:
        size = rng.randint(301, 3 * CHUNK)
    else:
        size = rng.randint(2 * BATCH + 1, 5 * BATCH)  # 3 to 5 commit batches when chunked
    return Op(kind, control_version, size)


def payload(object_id: str, life: int, version: int) -> bytes:
    """The bytes a data operation saves as `version` (deterministic, different for every version)."""
    size = plan(object_id, life, version).size
    return random.Random(f"payload/{object_id}/{life}/{version}").randbytes(size)


def data_version(object_id: str, life: int, version: int) -> int:
    """The version whose save wrote the bytes `version` holds (a "meta" version shares them)."""
    while plan(object_id, life, version).kind == "meta":
        version -= 1
    return version


def is_big_upload(op: Op) -> bool:
    return op.kind == "chunked" and op.size > BATCH


# --- the writer: runs in a process forked from the zygote ------------------------------------------------


def _emit(text: str) -> None:
    """One line on stdout with a single write(2): whole lines reach the parent, even around a kill."""
    os.write(1, (text.replace("\n", " | ")[:3900] + "\n").encode())


class _ReportingReader:
    """A binary file object over a payload that reports each read: the parent uses these lines to kill
    the writer in the middle of a chunked upload (between batches, or in its last transaction)."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def read(self, n: int = -1) -> bytes:
        _emit(f"w read {self._pos}")
        end = len(self._data) if n < 0 else self._pos + n
        piece = self._data[self._pos : end]
        self._pos += len(piece)
        return piece


def _writer(path: str, run: int, seed: str, map_size: int | None) -> None:
    # map_size: a map smaller than the file (as on a 32-bit device) makes the first write grow it.
    store = microblob.connect(path, chunk_size=CHUNK, **({"map_size": map_size} if map_size else {}))
    store.files.batch_bytes = BATCH
    _emit("w ready")
    rng = random.Random(f"{seed}/writer/{run}")
    created = 0
    deadline = time.monotonic() + 300  # only if the test and the zygote are gone
    while time.monotonic() < deadline:
        object_id = rng.choice(OBJECT_IDS)
        if rng.random() < GC_P:
            _emit("w start-gc")
            store.gc()
            _emit("w done-gc")
            continue
        try:
            current = store.get_blob_object(object_id)
        except ObjectNotFound:
            current = None
        if current is not None and rng.random() < DELETE_P:
            life = current.custom_metadata["life"]
            _emit(f"w start-delete {object_id} {life}")
            store.delete_object(object_id)
            _emit(f"w deleted {object_id} {life}")
            continue
        if current is None:  # a new object, or a deleted id used again: a new life
            life, version = run * 1000 + created, 0
            created += 1
        else:
            life, version = current.custom_metadata["life"], current.version + 1
        op = plan(object_id, life, version)
        meta = {"life": life, "v": version}
        _emit(f"w start {object_id} {life} {version}")
        if op.kind == "meta":
            store.update_object_metadata(object_id, custom_metadata=meta, control_version=op.control_version)
            data = payload(object_id, life, data_version(object_id, life, version))
        else:
            data = payload(object_id, life, version)
            source: Any = _ReportingReader(data) if is_big_upload(op) else data
            store.save_or_update_object(
                source, object_id=object_id, custom_metadata=meta, type="crash-test",
                save_data_in_collection=op.kind == "inline", control_version=op.control_version,
            )
        _emit(f"w done {object_id} {life} {version} {hashlib.sha256(data).hexdigest()}")
    _emit("w finished")


def _zygote() -> None:
    """Fork a writer per "spawn" command; reap it on "reap" (a zombie would still hold its upload
    leases, and gc rightly leaves a live process's uploads alone). Stdin closed: kill what is left."""
    import microblob.engine.kvdocs
    import microblob.engine.lmdb_kv  # noqa: F401 - connect() imports them on first use: once here, not per writer

    children: set[int] = set()
    for raw in sys.stdin.buffer:
        command = json.loads(raw)
        if command["op"] == "spawn":
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    _writer(command["path"], command["run"], command["seed"], command["map_size"])
                    code = 0
                except BaseException:
                    _emit("w error " + traceback.format_exc()[-3800:])
                finally:
                    os._exit(code)
            children.add(pid)
            _emit(f"z spawned {pid}")
        elif command["op"] == "reap":
            pid = command["pid"]
            _, status = os.waitpid(pid, 0)
            children.discard(pid)
            _emit(f"z reaped {pid} {os.waitstatus_to_exitcode(status)}")
    for pid in children:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


class Zygote:
    """The zygote process, seen from the test: spawn a writer, kill it, collect what it reported."""

    def __init__(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")  # this checkout's microblob
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--zygote"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._pump = threading.Thread(target=self._read_stdout, daemon=True)
        self._pump.start()
        self.live: set[int] = set()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self._lines.put(raw.decode())
        self._lines.put(None)

    def _command(self, **command: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(command) + "\n").encode())
        self.proc.stdin.flush()

    def next_line(self) -> str:
        """The next line, without its newline. The writer never stops talking until it is killed, so
        silence means a hang: a writer blocked forever after an earlier crash, or a stuck zygote."""
        try:
            line = self._lines.get(timeout=HANG)
        except queue.Empty:
            raise AssertionError(f"no line from the zygote or its writer in {HANG} s (a hang)") from None
        if line is None:
            raise AssertionError(f"the zygote process exited (status {self.proc.wait()})")
        return line.rstrip("\n")

    def spawn(self, path: Path, run: int, seed: str, map_size: int | None, lines: list[str]) -> int:
        self._command(op="spawn", path=str(path), run=run, seed=seed, map_size=map_size)
        while True:
            line = self.next_line()
            if line.startswith("z spawned "):
                pid = int(line.split()[2])
                self.live.add(pid)
                return pid
            lines.append(line)  # the writer may speak before the zygote says it forked it

    def kill(self, pid: int, lines: list[str]) -> int:
        """SIGKILL the writer, wait until it is reaped; returns its exit code (-9 when the kill did it).
        Everything it wrote before dying is in the pipe ahead of the "reaped" line, so `lines` is whole."""
        os.kill(pid, signal.SIGKILL)
        self._command(op="reap", pid=pid)
        while True:
            line = self.next_line()
            if line.startswith(f"z reaped {pid} "):
                self.live.discard(pid)
                return int(line.split()[3])
            lines.append(line)

    def close(self) -> None:
        for pid in self.live:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.proc.stdin is not None:
            self.proc.stdin.close()  # the zygote kills and reaps what is left, then exits
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._pump.join(timeout=5)


# --- one round: start a writer, kill it at a random moment ----------------------------------------------


def _wait_for(zygote: Zygote, lines: list[str], done: Any) -> bool:
    """Collect lines until done(line) is true (True) or the writer stopped by itself (False: the test
    fails on its exit code). Lines that arrived already (the writer may speak before the zygote
    reports the fork) count first."""
    if any(done(line) for line in lines):
        return True
    while True:
        line = zygote.next_line()
        lines.append(line)
        if line.startswith("w error") or line == "w finished":
            return False
        if done(line):
            return True


def _run_writer(zygote: Zygote, path: Path, run: int, seed: str, rng: random.Random) -> tuple[str, list[str], int]:
    """One kill point. Returns (how the kill was timed, the writer's lines, its exit code)."""
    lines: list[str] = []
    mode = rng.choices(["open", "delay", "upload"], weights=[1, 5, 4])[0]
    map_size = 1024 * 1024 if rng.random() < 0.3 else None  # the writer grows the map as it writes
    pid = zygote.spawn(path, run, seed, map_size, lines)
    if mode == "open":  # while it opens the file (or creates it, and its indexes, in the first round)
        delay = rng.uniform(0, 0.03)
        how = f"spawn+{delay:.4f}s"
        time.sleep(delay)
    elif mode == "delay":  # anywhere in its stream of operations
        delay = rng.uniform(0, 0.25)
        how = f"ready+{delay:.4f}s"
        if _wait_for(zygote, lines, lambda line: line == "w ready"):
            time.sleep(delay)
    else:  # inside a chunked upload: after its k-th read, between or inside commit batches, or publishing
        reads = {"n": 0, "k": 0, "of": 0}

        def landed(line: str) -> bool:
            words = line.split()
            if words[:2] == ["w", "start"] and is_big_upload(op := plan(words[2], int(words[3]), int(words[4]))):
                reads["of"] = math.ceil(op.size / CHUNK) + 1  # the last read returns b"": then it publishes
                reads["n"], reads["k"] = 0, rng.randint(1, reads["of"])
            elif words[:2] == ["w", "read"] and reads["k"]:
                reads["n"] += 1
                return reads["n"] >= reads["k"]
            elif words[:2] == ["w", "done"] and reads["k"]:
                return True
            return False

        _wait_for(zygote, lines, landed)
        how = f"upload, read {reads['k']} of {reads['of']}"
    code = zygote.kill(pid, lines)
    return how + (", 1 MiB map" if map_size else ""), lines, code


# --- what the parent expects, and the checks --------------------------------------------------------------


class Expected:
    """Expected bytes and their sha256, per (object id, life, data version); cached."""

    def __init__(self) -> None:
        self._sha: dict[tuple[str, int, int], str] = {}

    def sha(self, object_id: str, life: int, version: int) -> str:
        key = (object_id, life, data_version(object_id, life, version))
        if key not in self._sha:
            self._sha[key] = hashlib.sha256(payload(*key)).hexdigest()
        return self._sha[key]


def expected_history(object_id: str, life: int, latest: int) -> set[int]:
    """Versions readable in this life: the latest, and each one a versioned operation replaced."""
    return {latest} | {v - 1 for v in range(1, latest + 1) if plan(object_id, life, v).control_version}


def expected_prev(object_id: str, life: int, version: int) -> int | None:
    prev = None
    for v in range(1, version + 1):
        prev = v - 1 if plan(object_id, life, v).control_version else prev
    return prev


def apply_lines(lines: list[str], model: dict[str, State], expected: Expected) -> tuple[Any, int]:
    """Advance the model by what the writer reported; return (the operation in flight at the kill, or
    None, and how many operations returned). Also checks the writer saw the state the model holds."""
    pending: Any = None
    returned = 0
    for line in lines:
        words = line.split()
        if words[:2] == ["w", "error"]:
            raise AssertionError(f"the writer failed: {line}")
        if words[:2] == ["w", "start"]:
            object_id, life, version = words[2], int(words[3]), int(words[4])
            before = model[object_id]
            assert before == ((life, version - 1) if version else None), (line, before)
            pending = ("save", object_id, (life, version))
        elif words[:2] == ["w", "done"]:
            object_id, life, version, sha = words[2], int(words[3]), int(words[4]), words[5]
            assert pending == ("save", object_id, (life, version)), (line, pending)
            assert sha == expected.sha(object_id, life, version), line
            model[object_id], pending = (life, version), None
            returned += 1
        elif words[:2] == ["w", "start-delete"]:
            object_id, life = words[2], int(words[3])
            assert model[object_id] is not None and model[object_id][0] == life, (line, model[object_id])
            pending = ("delete", object_id, None)
        elif words[:2] == ["w", "deleted"]:
            assert pending is not None and pending[:2] == ("delete", words[2]), (line, pending)
            model[words[2]], pending = None, None
            returned += 1
        elif words[:2] == ["w", "start-gc"]:
            pending = ("gc", None, None)
        elif words[:2] == ["w", "done-gc"]:
            pending = None
            returned += 1
    return pending, returned


def landed_in(lines: list[str], pending: Any) -> str:
    """Where the kill landed, for the summary."""
    if "w ready" not in lines:
        return "opening the store"
    if pending is None:
        return "between operations"
    if pending[0] != "save":
        return {"delete": "delete_object", "gc": "gc"}[pending[0]]
    object_id, (life, version) = pending[1], pending[2]
    op = plan(object_id, life, version)
    kind = {"inline": "inline save", "chunked": "chunked save", "meta": "metadata update"}[op.kind]
    return f"{kind} ({'multi-batch upload, ' if is_big_upload(op) else ''}control_version={op.control_version})"


def check_objects(store: microblob.Store, model: dict[str, State], pending: Any, expected: Expected) -> None:
    """Each object is in the state its last returned operation left, or the one of the operation the
    kill interrupted; every readable version holds exactly what the plan says. Updates `model`."""
    present: dict[str, int] = {}
    for object_id in OBJECT_IDS:
        try:
            latest = store.get_blob_object(object_id)
        except ObjectNotFound:
            actual: State = None
        else:
            actual = (latest.custom_metadata["life"], latest.version)
        allowed = [model[object_id]]
        if pending is not None and pending[1] == object_id:
            allowed.append(pending[2])
        assert actual in allowed, f"{object_id}: found {actual}, expected one of {allowed}"
        model[object_id] = actual
        if actual is None:
            assert store.get_object_history(object_id) == []
            continue
        life, last = actual
        present[object_id] = life
        versions = expected_history(object_id, life, last)
        history = store.get_object_history(object_id)
        assert [h["version"] for h in history] == sorted(versions, reverse=True), object_id
        for entry in history:
            version = entry["version"]
            obj = store.get_blob_object(object_id, version)
            source = data_version(object_id, life, version)
            op = plan(object_id, life, source)
            where = f"{object_id} life {life} v{version}"
            assert obj.version == version and obj.custom_metadata == {"life": life, "v": version}, where
            assert obj.prev_version == expected_prev(object_id, life, version), where
            assert (obj.storage, obj.size, obj.sha256) == (op.kind, op.size, expected.sha(object_id, life, version))
            assert (obj.file_id is None) == (op.kind == "inline"), where
            assert entry["sha256"] == obj.sha256 and entry["size"] == obj.size, where
            if version == last:  # the latest: byte for byte against a fresh copy of the intended payload
                assert obj.data == payload(object_id, life, source), where
            else:
                assert hashlib.sha256(obj.data).hexdigest() == obj.sha256, where
    # Nothing else is visible either: no stray object, no history entry the plan did not archive.
    assert sorted(doc["_id"] for doc in store.query({}, projection={"_id": 1})) == sorted(present)
    raw_history = store.query({}, collection="object_history", projection={"object_id": 1, "version": 1})
    assert sorted((d["object_id"], d["version"]) for d in raw_history) == sorted(
        (object_id, v)
        for object_id, life in present.items()
        for v in expected_history(object_id, life, model[object_id][1]) - {model[object_id][1]}
    )


def stored_chunks(store: microblob.Store) -> dict[Any, list[int]]:
    """What the chunk table really holds: file id -> the length of each of its chunks, in key order."""
    import msgpack

    out: dict[Any, list[int]] = {}
    with store.backend.engine.read() as txn:
        for key, value in txn.scan("chunks", b""):
            file_id = msgpack.unpackb(key[:-4], raw=False)
            out.setdefault(file_id, []).append(len(value))
    return out


def referenced_files(store: microblob.Store) -> set[Any]:
    return {
        doc["file_id"]
        for collection in ("objects", "object_history")
        for doc in store.query({"storage": "chunked"}, collection=collection, projection={"file_id": 1})
    }


def check_gc(store: microblob.Store) -> tuple[int, int]:
    """Predict what gc must free (files no version references, chunks no file owns), run it, and check
    that afterwards the chunks stored are exactly those of the referenced files. Returns what it freed."""
    files = {doc["_id"]: doc for doc in store.query({}, collection="fs.files")}
    referenced = referenced_files(store)
    assert referenced <= set(files)
    chunks = stored_chunks(store)
    unreferenced = [files[f] for f in files if f not in referenced]
    orphans = {f: sizes for f, sizes in chunks.items() if f not in files}
    report = store.gc()
    assert report.freed_files == len(unreferenced), (report, len(unreferenced))
    assert report.freed_orphan_chunks == sum(len(sizes) for sizes in orphans.values()), (report, orphans)
    assert report.freed_bytes == sum(d["length"] for d in unreferenced) + sum(map(sum, orphans.values())), report
    assert report.freed_history_entries == 0, report  # one transaction per write: nothing to leave behind
    after = store.verify()
    assert after.ok, after.damaged
    files = {doc["_id"]: doc for doc in store.query({}, collection="fs.files")}
    assert set(files) == referenced_files(store) == referenced
    chunks = stored_chunks(store)
    for file_id, doc in files.items():
        whole, tail = divmod(doc["length"], doc["chunkSize"])
        assert chunks.pop(file_id, []) == [doc["chunkSize"]] * whole + ([tail] if tail else []), file_id
    assert chunks == {}, f"chunks of no file are left: {list(chunks)}"
    assert store.backend.collection("fs.pending").find({}) == []  # every dead writer's lease is gone
    return report.freed_files, report.freed_orphan_chunks


def recover_dead_writer(store: microblob.Store) -> None:
    """Take and release the write lock once, as the next writer would. A writer killed after writing its
    commit's meta page but before publishing the new transaction id in the lock file leaves that commit
    invisible to readers of processes that keep the file open (they read the id from the lock file) until
    the next writer takes over the dead one's mutex and publishes it. Without this, the checks below
    could read the state before that commit and gc, a writer, the state after it."""
    store.backend.engine.write(lambda txn: None, durable=False)


class Bystander:
    """The store held open by this process while a writer runs, is killed and the next one starts (as a
    server holds the file while a CLI writes): the dead writer's lock and reader slot must then be
    recovered with the file still open. A thread reads the latest version of every object meanwhile:
    what a live reader sees must be whole too."""

    def __init__(self, path: Path, expected: Expected) -> None:
        self.store = microblob.connect(path)
        self.expected = expected
        self.errors: list[str] = []
        self.reads = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            for object_id in OBJECT_IDS:
                try:
                    self._read(object_id)
                except Exception as exc:
                    self.errors.append(f"{object_id}: {exc!r}")

    def _read(self, object_id: str) -> None:
        try:
            obj = self.store.get_blob_object(object_id)
        except ObjectNotFound:
            return
        life, version = obj.custom_metadata["life"], obj.version
        try:
            data = obj.data
        except (FileNotFound, IntegrityError):
            # Between reading the document and its chunks, a newer non-versioned save may have freed
            # them: fine if the object moved on, damage if it is still this version.
            try:
                again = self.store.get_blob_object(object_id)
            except ObjectNotFound:
                return
            if (again.custom_metadata["life"], again.version) != (life, version):
                return
            raise
        assert obj.custom_metadata["v"] == version, (object_id, obj.custom_metadata, version)
        where = (object_id, life, version)
        assert hashlib.sha256(data).hexdigest() == self.expected.sha(object_id, life, version), where
        self.reads += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def close(self) -> None:
        self.stop()
        self.store.close()


@pytest.fixture
def zygote() -> Iterator[Zygote]:
    z = Zygote()
    try:
        yield z
    finally:
        z.close()


@pytest.mark.slow
def test_sigkilled_writers_leave_no_partial_object(tmp_path: Path, zygote: Zygote) -> None:
    seed = os.environ.get("MICROBLOB_CRASH_SEED") or f"{random.randrange(10**9)}"
    print(f"crash harness: MICROBLOB_CRASH_SEED={seed} MICROBLOB_CRASH_ROUNDS={ROUNDS}")
    rng = random.Random(seed)
    path = tmp_path / "crash.db"
    model: dict[str, State] = dict.fromkeys(OBJECT_IDS)
    expected = Expected()
    kills = returned = freed_files = freed_chunks = 0
    landed: collections.Counter[str] = collections.Counter()
    live_reads = 0
    for run in range(ROUNDS):
        # Half the rounds, this process keeps the file open throughout; the others reopen it after the kill.
        bystander = Bystander(path, expected) if run and rng.random() < 0.5 else None
        try:
            how, lines, code = _run_writer(zygote, path, run, seed, rng)
            if bystander is not None:
                bystander.stop()
        except BaseException:
            if bystander is not None:
                bystander.close()
            raise
        context = (f"round {run} (MICROBLOB_CRASH_SEED={seed}), kill at {how}"
                   f"{' with the file held open' if bystander else ''}, last lines {lines[-4:]}")
        try:
            if bystander is not None:
                assert bystander.errors == [], f"a live reader saw: {bystander.errors[:5]}"
                live_reads += bystander.reads
            assert code == -signal.SIGKILL, f"the writer ended with {code} before it was killed"
            kills += 1
            pending, n = apply_lines(lines, model, expected)
            returned += n
            landed[landed_in(lines, pending)] += 1
            with microblob.connect(path) as store:  # a fresh open of the file, unless the bystander holds it
                recover_dead_writer(store)
                report = store.verify()
                assert report.ok, report.damaged
                check_objects(store, model, pending, expected)
                if rng.random() < 0.6 or run == ROUNDS - 1:  # other rounds: orphans pile up for later
                    files, chunks = check_gc(store)
                    freed_files += files
                    freed_chunks += chunks
        except AssertionError as exc:
            raise AssertionError(f"{context}: {exc}") from exc
        finally:
            if bystander is not None:
                bystander.close()
    print(f"crash harness: {kills} kill points, {returned} operations returned, gc freed {freed_files} "
          f"files and {freed_chunks} orphan chunks; {live_reads} whole reads by live readers; final state {model}")
    for where, count in sorted(landed.items(), key=lambda item: -item[1]):
        print(f"  {count:4} kills in {where}")


# --- index builds killed mid-way ------------------------------------------------------------------------

_BUILDER = """
import sys, microblob
store = microblob.connect(sys.argv[1])
print("start", flush=True)
store.create_index("custom_metadata.k")
print("done", flush=True)
"""
INDEXED_DOCS = 20_000


def _index_entries(store: microblob.Store, name: str) -> int:
    """Its entries, not its per-value counters (the keys under the COUNTER marker)."""
    from microblob.engine.index_keys import COUNTER, successor
    from microblob.engine.kvdocs import _pack

    prefix = _pack("objects") + _pack(name)
    counters = prefix + COUNTER
    with store.backend.engine.read() as txn:
        return txn.count_range("index", prefix, successor(prefix)) - txn.count_range("index", counters,
                                                                                       successor(counters))


def test_sigkilled_index_build_leaves_no_index_or_a_whole_one(tmp_path: Path) -> None:
    """create_index over existing documents is one transaction: a writer killed at any moment of the
    build leaves either no trace of the index or all of it, and the next open plans with what is there."""
    path = tmp_path / "indexed.db"
    with microblob.connect(path, sync=False) as store:
        coll = store.backend.collection("objects")

        def load() -> None:
            for i in range(INDEXED_DOCS):
                coll.insert_one({"_id": f"o{i}", "type": "t", "custom_metadata": {"k": i % 97}})

        store.backend.atomic(load)
    rng = random.Random(os.environ.get("MICROBLOB_CRASH_SEED", "index-build"))
    outcomes: collections.Counter[str] = collections.Counter()
    name = "custom_metadata.k_1"
    # One build left to finish says how long a build takes here: the kills then land all over it.
    proc = subprocess.Popen([sys.executable, "-c", _BUILDER, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "start"
    began = time.monotonic()
    assert proc.stdout.readline().strip() == "done"
    build = time.monotonic() - began
    proc.wait()
    with microblob.connect(path) as store:
        store.drop_index(name)
    for round_ in range(10):
        proc = subprocess.Popen([sys.executable, "-c", _BUILDER, str(path)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "start"
        time.sleep(rng.uniform(0.0, build * 1.1))
        proc.kill()
        rest = proc.stdout.read()
        proc.wait()
        with microblob.connect(path) as store:
            present = name in [spec["name"] for spec in store.list_indexes()]
            entries = _index_entries(store, name)
            if present:
                outcomes["complete" if "done" in rest else "complete, killed after commit"] += 1
                assert entries == INDEXED_DOCS, f"round {round_}: the index has {entries} entries"
                assert store.explain({"custom_metadata.k": 5})["index"] == name
                assert store.count_objects({"custom_metadata.k": 5}) == len(range(5, INDEXED_DOCS, 97))
                store.drop_index(name)
            else:
                outcomes["absent"] += 1
                assert entries == 0, f"round {round_}: {entries} entries of an index that does not exist"
                assert store.explain({"custom_metadata.k": 5})["plan"] == "COLLSCAN"
            assert store.count_objects() == INDEXED_DOCS
            assert len(store.query({"custom_metadata.k": 5})) == len(range(5, INDEXED_DOCS, 97))
    print(f"index builds ({build:.2f} s each) killed: {dict(outcomes)}")


if __name__ == "__main__" and sys.argv[1:] == ["--zygote"]:
    _zygote()
