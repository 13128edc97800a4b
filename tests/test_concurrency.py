"""Concurrent writers in processes and threads on ONE LMDB file, while a server process reads (and writes) it.

4 writer processes x 4 threads (tests/_concurrency_writer.py) update the same shared objects with
`control_version=True` and create new ones; meanwhile `python -m microblob serve` runs on the same file,
HTTP clients in this test keep listing and reading objects, histories and bytes through it, and one more
client uploads updates of the same shared objects through it (`POST /objects/`). The writers write well
over the initial 64 MiB map, so the map grows while every process is running.

What it proves (docs/ARCHITECTURE.md, "Connecting", "Objects and versions", "Engine facts"): no writer thread,
writer process or the server fails; no update is lost (each shared object's versions are exactly 0..N, N+1
being the saves that returned, each version holding the bytes and tag of exactly one of those saves, the one
the writer read back); the history keeps every replaced version readable; every new object exists; `verify()`
is clean; every response the server gave during the writes was 200/201 and self-consistent (bytes match the
sha256 their metadata states, versions never go backwards; each 201 describes the upload's own version); and
the server followed the map's growth while serving.

The other tests pin down what the first one found, each beside concurrent writers: a reader whose bytes
are freed under it (an update without history, a delete) gets NotFound, never IntegrityError; the server
streams an object being replaced without history as 200 with one whole version or a clean 404 for a
named version, never an error; `verify()` reports no damage for versions replaced meanwhile; a thread
adopting a map resize makes no other thread fail or grow the map; `copy_to` follows another process's
map growth.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import select
import signal
import subprocess
import sys
import threading
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import httpx
import pytest
from _concurrency_writer import THREADS, payload, plan

import microblob
from microblob.blob import CHUNK_SIZE
from microblob.engine.lmdb_kv import INITIAL_MAP

ROOT = Path(__file__).resolve().parents[1]
WRITER = Path(__file__).with_name("_concurrency_writer.py")
PROCESSES = 4
ITERATIONS = 40  # saves per writer thread: 640 in all, ~130 MiB
HTTP_PROCESS = PROCESSES  # the (process, thread) the HTTP uploads' payloads are derived from
HTTP_ITERATIONS = 24
SHARED = [f"shared-{n}" for n in range(4)]
READERS = 2
DEADLINE = 120.0  # seconds any one process may take before the test gives up on it


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MICROBLOB_URI", "MICROBLOB_TOKEN")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _stop(proc: subprocess.Popen[bytes], sig: int) -> int:
    """Signal, wait, kill if it will not stop. Returns the exit code."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


class Server:
    """`python -m microblob serve --db DB --port 0` in a subprocess; its URL is its first stdout line."""

    def __init__(self, db: Path, log: Path) -> None:
        self.db = db
        self.log = log
        with open(log, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "microblob", "serve", "--db", str(db), "--host", "127.0.0.1", "--port", "0"],
                stdout=subprocess.PIPE, stderr=err, env=_env(), cwd=db.parent)
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 60)
        line = self.proc.stdout.readline().decode() if ready else ""
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/\n", line), f"no URL from serve: {line!r}\n{self.stderr()}"
        self.url = line.strip()

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    def mapped_bytes(self) -> int:
        """How much of the store file the server process maps now: LMDB maps its whole map size."""
        target = os.path.realpath(self.db)
        size = 0
        with open(f"/proc/{self.proc.pid}/maps") as maps:
            for line in maps:
                fields = line.split(maxsplit=5)
                if len(fields) == 6 and fields[5].strip() == target:
                    start, end = (int(x, 16) for x in fields[0].split("-"))
                    size = max(size, end - start)
        return size

    def close(self) -> None:
        _stop(self.proc, signal.SIGKILL)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


class Client(threading.Thread):
    """An HTTP client thread that runs `one_round` until told to stop and records what went wrong.

    Its requests are sequential, so each response reflects a state no older than the previous one's:
    a version it saw must never go backwards."""

    def __init__(self, server: Server, seed: int, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.random = random.Random(seed)
        self.stop_event = stop
        self.problems: list[str] = []
        self.requests = 0
        self.bytes_checked = 0
        self.seen: dict[str, int] = {}
        self.server_maps: set[int] = set()

    def request(self, http: httpx.Client, method: str, path: str, status: int = 200, **kwargs: Any) -> httpx.Response:
        response = http.request(method, path, **kwargs)
        self.requests += 1
        if response.status_code != status:
            raise AssertionError(
                f"{method} {path} {kwargs.get('params')}: {response.status_code} {response.text[:500]}")
        return response

    def saw(self, object_id: str, version: int, where: str) -> None:
        before = self.seen.get(object_id, -1)
        if version < before:
            raise AssertionError(f"{where}: {object_id} went back from version {before} to {version}")
        self.seen[object_id] = version

    def check_data(self, http: httpx.Client, object_id: str, version: int | None, sha256: str | None) -> None:
        params = {} if version is None else {"version": version}
        response = self.request(http, "GET", f"/objects/{object_id}/data", params=params)
        body = response.content
        etag = response.headers["etag"].strip('"')
        if _sha(body) != etag or len(body) != int(response.headers["content-length"]):
            raise AssertionError(f"{object_id} v{version}: served bytes do not match their own ETag/length")
        if sha256 is not None and etag != sha256:
            raise AssertionError(f"{object_id} v{version}: served sha256 {etag}, metadata says {sha256}")
        self.bytes_checked += len(body)

    def one_round(self, http: httpx.Client) -> None:
        raise NotImplementedError

    def run(self) -> None:
        with httpx.Client(base_url=self.server.url, timeout=60) as http:
            while not self.stop_event.is_set():
                try:
                    self.server_maps.add(self.server.mapped_bytes())
                    self.one_round(http)
                except Exception as exc:  # noqa: BLE001 - every failure is reported by the test
                    self.problems.append(f"{type(exc).__name__}: {exc}")
                    if len(self.problems) >= 20:
                        return


class Reader(Client):
    """Lists, reads objects, histories and bytes (latest, exact versions, older versions)."""

    def one_round(self, http: httpx.Client) -> None:
        listed = self.request(http, "GET", "/objects/", params={"filter": json.dumps({"type": "shared"}),
                                                                "limit": 0}).json()
        for doc in listed:
            self.saw(doc["object_id"], doc["version"], "list")
        if listed:
            oid = self.random.choice(listed)["object_id"]
            meta = self.request(http, "GET", f"/objects/{oid}").json()
            self.saw(oid, meta["version"], "object")
            self.check_data(http, oid, meta["version"], meta["sha256"])
            history = self.request(http, "GET", f"/objects/{oid}/history").json()
            versions = [h["version"] for h in history]
            if versions != list(range(versions[0], -1, -1)):
                raise AssertionError(f"{oid}: history versions {versions} are not contiguous")
            self.saw(oid, versions[0], "history")
            older = self.random.choice(history)
            self.check_data(http, oid, older["version"], older["sha256"])
            self.check_data(http, oid, None, None)  # the latest, whichever it is by now: self-consistent
        new = self.request(http, "GET", "/objects/", params={"filter": json.dumps({"type": "new"}),
                                                             "sort": "-created_at", "limit": 3}).json()
        for doc in new:
            if doc["version"] != 0:
                raise AssertionError(f"new object {doc['object_id']} has version {doc['version']}")
        if new:
            doc = self.random.choice(new)
            self.check_data(http, doc["object_id"], 0, doc["sha256"])


class Uploader(Client):
    """Saves through the server (`POST /objects/`) the way a writer thread does directly, and records
    every upload that returned 201 (the version it became is found by its tag afterwards)."""

    def __init__(self, server: Server, seed: int, stop: threading.Event) -> None:
        super().__init__(server, seed, stop)
        self.saves: list[dict[str, Any]] = []

    def one_round(self, http: httpx.Client) -> None:
        i = len(self.saves)
        if i >= HTTP_ITERATIONS:
            self.stop_event.wait(0.05)
            return
        step = plan(HTTP_PROCESS, 0, i)
        data = payload(HTTP_PROCESS, 0, i, step["size"])
        tag = f"{HTTP_PROCESS}-0-{i}"
        params = {"custom_metadata": json.dumps({"tag": tag}), "control_version": "true"}
        if step["create"]:
            params["type"] = "new"
        else:
            params.update(type="shared", object_id=SHARED[i % len(SHARED)])
        doc = self.request(http, "POST", "/objects/", 201, params=params, content=data,
                           headers={"content-type": "application/octet-stream"}).json()
        self.saves.append({"object_id": doc["object_id"], "version": None, "sha256": _sha(data), "tag": tag,
                           "size": len(data), "process": HTTP_PROCESS, "thread": 0, "i": i,
                           "create": step["create"], "inline": False})
        if "object_id" in params and doc["object_id"] != params["object_id"]:
            raise AssertionError(f"uploaded to {params['object_id']}, got back {doc['object_id']}")
        # The 201 describes the version this upload made, even if other writers saved newer ones since.
        if doc["sha256"] != _sha(data) or doc["custom_metadata"] != {"tag": tag}:
            raise AssertionError(f"upload {tag}: the 201 describes {doc['custom_metadata']} v{doc['version']}")
        self.saves[-1]["version"] = doc["version"]


@pytest.mark.slow
def test_writer_processes_and_threads_with_a_server_reading(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    server = Server(db, tmp_path / "serve.err")
    writers: list[subprocess.Popen[bytes]] = []
    stop = threading.Event()
    uploader = Uploader(server, 99, stop)
    clients: list[Client] = [Reader(server, seed, stop) for seed in range(READERS)] + [uploader]
    try:
        for client in clients:
            client.start()
        for p in range(PROCESSES):
            with open(tmp_path / f"writer-{p}.err", "wb") as err:
                writers.append(subprocess.Popen(
                    [sys.executable, str(WRITER), str(db), str(p), str(ITERATIONS), *SHARED],
                    stdout=subprocess.PIPE, stderr=err, env=_env()))
        reports = []
        for p, proc in enumerate(writers):
            out, _ = proc.communicate(timeout=DEADLINE)
            err = (tmp_path / f"writer-{p}.err").read_text(errors="replace")
            assert proc.returncode == 0 and err == "", f"writer {p}: exit {proc.returncode}\n{out[-3000:]!r}\n{err}"
            reports.append(json.loads(out))
        stop.set()  # the writers are done: each client ends the round it is in, on the final state
        for client in clients:
            client.join(timeout=DEADLINE)
            assert not client.is_alive()
        problems = [p for c in clients for p in c.problems]
        assert problems == [], "\n".join(problems)
        assert all(c.requests > 0 for c in clients)

        # Everything once more through the server, now that the file is past the map it started with.
        with httpx.Client(base_url=server.url, timeout=60) as http:
            served: dict[str, list[dict[str, Any]]] = {}
            for oid in SHARED:
                response = http.get(f"/objects/{oid}/history")
                assert response.status_code == 200, response.text
                served[oid] = response.json()
                for entry in served[oid]:
                    data = http.get(f"/objects/{oid}/data", params={"version": entry["version"]})
                    assert data.status_code == 200 and _sha(data.content) == entry["sha256"], (oid, entry["version"])
        server_maps = sorted(set().union(*(c.server_maps for c in clients)) | {server.mapped_bytes()})
        assert _stop(server.proc, signal.SIGINT) == 0
        log = server.stderr()
        assert "Traceback" not in log and "ERROR" not in log, log[-5000:]
        assert not re.search(r'" [45]\d\d', log), [line for line in log.splitlines() if re.search(r'" [45]\d\d', line)]
    finally:
        stop.set()
        for proc in writers:
            _stop(proc, signal.SIGKILL)
            if proc.stdout is not None:
                proc.stdout.close()
        server.close()

    saves = [s for report in reports for s in report["saves"]]
    assert len(saves) == PROCESSES * THREADS * ITERATIONS
    assert len(uploader.saves) == HTTP_ITERATIONS
    # Each recorded sha256 is the payload recomputed from (process, thread, i): the writers report honestly.
    for s in saves:
        step = plan(s["process"], s["thread"], s["i"])
        assert s["sha256"] == _sha(payload(s["process"], s["thread"], s["i"], step["size"])), s["tag"]
    saves += uploader.saves
    by_object: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for s in saves:
        by_object[s["object_id"]].append(s)

    # The map grew while everyone ran: the file is past the initial map, and the server, which started
    # on the initial map, followed while serving.
    assert db.stat().st_size > INITIAL_MAP
    assert server_maps[0] == INITIAL_MAP and server_maps[-1] > INITIAL_MAP, server_maps
    writer_maps = sorted({size for r in reports for size in r["map_sizes"]})
    assert writer_maps[-1] > INITIAL_MAP

    with microblob.connect(str(db)) as store:
        for oid in SHARED:
            mine = by_object[oid]
            history = store.get_object_history(oid)
            n = len(mine)
            # No lost update, no duplicate: the saves that returned are exactly versions 0..n-1, one each.
            assert [h["version"] for h in history] == list(range(n - 1, -1, -1)), oid
            assert Counter(h["custom_metadata"]["tag"] for h in history) == Counter(s["tag"] for s in mine)
            assert store.get_blob_object(oid).version == n - 1
            archived = store.query({"object_id": oid}, collection="object_history", projection={"version": 1})
            assert sorted(h["version"] for h in archived) == list(range(n - 1))
            assert [h["version"] for h in served[oid]] == [h["version"] for h in history]
            by_tag = {h["custom_metadata"]["tag"]: h for h in history}
            for s in mine:
                entry = by_tag[s["tag"]]
                if s["version"] is not None:  # the version the writer read back is the one its save got
                    assert entry["version"] == s["version"], (oid, s["tag"])
                assert entry["sha256"] == s["sha256"], (oid, s["tag"])
                assert entry["storage"] == ("inline" if s["inline"] else "chunked")
                assert _sha(store.get_blob_object(oid, entry["version"]).data) == s["sha256"], (oid, s["tag"])
        created = [s for s in saves if s["create"]]
        for s in created:
            obj = store.get_blob_object(s["object_id"])
            assert obj.version == 0 and obj.sha256 == s["sha256"] and obj.type == "new"
            assert obj.custom_metadata == {"tag": s["tag"]} and _sha(obj.data) == s["sha256"]
        assert len({s["object_id"] for s in created}) == len(created)
        assert store.count_objects({}) == len(SHARED) + len(created)
        report = store.verify()
        assert report.ok, report.damaged[:10]
        assert report.checked == len(saves)
        assert any(s["size"] > store.chunk_size for s in saves)

    total = sum(s["size"] for s in saves)
    readers = [c for c in clients if isinstance(c, Reader)]
    print(f"\n{len(saves)} saves ({len(uploader.saves)} over HTTP, {total / 2**20:.0f} MiB), versions per shared "
          f"object {[len(by_object[o]) for o in SHARED]}, {len(created)} new objects, "
          f"{sum(c.requests for c in readers)} HTTP reads ({sum(c.bytes_checked for c in readers) / 2**20:.0f} MiB "
          f"checked), file {db.stat().st_size / 2**20:.0f} MiB, map sizes (MiB) in the writers "
          f"{[m // 2**20 for m in writer_maps]}, in the server {[m // 2**20 for m in server_maps]}")


# --- updates that keep no history free the bytes they replace: readers of those bytes -------------


def test_a_reader_of_bytes_freed_under_it_gets_not_found(store: microblob.Store) -> None:
    """An update with control_version=False (or a delete) frees the replaced version's bytes, maybe while
    someone is reading them. That reader must learn the bytes are gone (NotFound), not that the store
    is damaged (IntegrityError)."""
    first = os.urandom(3 * store.chunk_size)
    store.save_or_update_object(first, object_id="u")
    stream = store.get_blob_object("u").open()
    assert stream.read(10) == first[:10]  # reading has begun: the first chunk is in hand
    store.save_or_update_object(b"replacement", object_id="u")
    with pytest.raises(microblob.NotFound, match="deleted while it was being read"):
        stream.read()
    stream.close()
    assert store.verify().ok

    store.save_or_update_object(b"small", object_id="u")
    small = store.get_blob_object("u")
    store.save_or_update_object(first, object_id="u")
    held = store.get_blob_object("u")
    store.delete_object("u")
    with pytest.raises(microblob.NotFound):
        _ = held.data
    if store.backend.transactional:  # a small version's bytes were read with its metadata, as inline ones
        assert small.data == b"small"
    else:
        with pytest.raises(microblob.NotFound):
            _ = small.data



def test_unversioned_updates_while_the_server_streams_them(tmp_path: Path) -> None:
    """GET /objects/{id}/data of an object that another process keeps replacing without history: each
    response is 200 with the bytes of one whole version (the latest when the request came), never an
    error; a request for an exact version gets it or a 404. Only a body over one read chunk can be cut
    short (its status was sent before its last bytes were freed): never a small one, and never with a
    traceback in the server's log."""
    db = tmp_path / "store.db"
    small, large = 900 * 1024, 5 * CHUNK_SIZE // 2
    with microblob.connect(str(db)) as store:
        store.save_or_update_object(os.urandom(large), object_id="u")
    server = Server(db, tmp_path / "serve.err")
    outcomes: Counter[str] = Counter()
    problems: list[str] = []
    done = threading.Event()

    def write() -> None:
        try:
            with microblob.connect(str(db)) as store:
                for i in range(200):
                    size = large if i % 3 == 0 else small - i
                    store.save_or_update_object(random.Random(i).randbytes(size), object_id="u")
        except Exception as exc:  # noqa: BLE001 - reported by the test
            problems.append(f"writer: {exc!r}")
        finally:
            done.set()

    def read(http: httpx.Client, params: dict[str, Any]) -> None:
        with http.stream("GET", "/objects/u/data", params=params) as response:
            if response.status_code == 404 and params:
                outcomes["404 for a replaced version"] += 1
                return
            if response.status_code != 200:
                problems.append(f"{params}: {response.status_code} {response.read()[:300]!r}")
                return
            length = int(response.headers["content-length"])
            try:
                body = response.read()
            except httpx.RemoteProtocolError:
                if length <= CHUNK_SIZE:
                    problems.append(f"{params}: a body of {length} bytes was cut short")
                outcomes["large body cut short"] += 1
                return
            if _sha(body) != response.headers["etag"].strip('"'):
                problems.append(f"{params}: the bytes do not match their ETag")
            outcomes["200 small" if length <= CHUNK_SIZE else "200 large"] += 1

    writer = threading.Thread(target=write)
    try:
        writer.start()
        with httpx.Client(base_url=server.url, timeout=60) as http:
            while not done.is_set() and len(problems) < 10:
                read(http, {})
                latest = http.get("/objects/u").json()["version"]
                read(http, {"version": latest})
        writer.join(timeout=DEADLINE)
        assert _stop(server.proc, signal.SIGINT) == 0
    finally:
        done.wait(timeout=DEADLINE)
        server.close()
    assert problems == [], "\n".join(problems)
    assert outcomes["200 small"] > 0 and outcomes["200 large"] > 0, outcomes
    log = server.stderr()
    assert "Traceback" not in log, log[-5000:]
    print(f"\n{dict(outcomes)}")


CHURN = """
import os, random, sys
import microblob
store = microblob.connect(sys.argv[1])
r = random.Random(int(sys.argv[2]))
for i in range(int(sys.argv[3])):
    object_id = f"c{r.randrange(4)}"
    op = r.random()
    if op < 0.6:  # replaced without history: the old bytes are freed
        store.save_or_update_object(r.randbytes(r.choice([100, 300_000])), object_id=object_id)
    elif op < 0.85:
        store.save_or_update_object(r.randbytes(1000), object_id=object_id, control_version=True)
    else:
        try:
            store.delete_object(object_id)
        except microblob.NotFound:
            pass
store.close()
"""


def test_verify_beside_writers_reports_no_damage(tmp_path: Path) -> None:
    """`verify()` (what `microblob verify` runs) while another process replaces and deletes objects: what
    a writer replaced or deleted while verify was reading it is not damage, and is not reported as such."""
    db = tmp_path / "store.db"
    reports = []
    with microblob.connect(str(db)) as store:
        churn = subprocess.Popen([sys.executable, "-c", CHURN, str(db), "1", "800"], env=_env(),
                                 stderr=subprocess.PIPE)
        try:
            while churn.poll() is None:
                reports.append(store.verify())
            _, err = churn.communicate(timeout=DEADLINE)
        finally:
            _stop(churn, signal.SIGKILL)
            if churn.stderr is not None:
                churn.stderr.close()
        assert churn.returncode == 0 and err == b"", err.decode()
        reports.append(store.verify())
    damaged = [d for r in reports for d in r.damaged]
    assert damaged == [], f"{len(damaged)} false reports in {len(reports)} runs, e.g. {damaged[:5]}"
    assert sum(r.checked for r in reports) > 0
    print(f"\n{len(reports)} verify runs beside the writer, {sum(r.checked for r in reports)} versions checked")


def test_map_size_writes_and_syncs_beside_a_thread_adopting_a_resize(tmp_path: Path) -> None:
    """A thread of this process adopting another process's map growth remaps the file; meanwhile other
    threads ask the map's size (`map_size()`), write (asking first how much room is left) and flush
    durable writes to disk. None of it may fail, and a write must not grow the map because the question
    failed."""
    from microblob.engine.lmdb_kv import LmdbEngine

    engine = LmdbEngine(tmp_path / "engine.db")
    shared = engine._env()
    start = engine.map_size()
    stop = threading.Event()
    errors: list[str] = []

    def adopt() -> None:  # what a reader thread does after MapResizedError
        while not stop.wait(0.0002):  # a breath between resizes, or they starve the writers
            shared.adopt_size()

    def ask_and_write(n: int) -> None:
        try:
            for i in range(1000):
                assert engine.map_size() >= start
                engine.write(lambda txn, i=i: txn.put("meta", f"k{n}-{i}".encode(), b"x" * 100),
                             size_hint=100, durable=i % 4 == 0)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(repr(exc))

    adopter = threading.Thread(target=adopt)
    askers = [threading.Thread(target=ask_and_write, args=(n,)) for n in range(2)]
    try:
        adopter.start()
        for t in askers:
            t.start()
        for t in askers:
            t.join()
    finally:
        stop.set()
        adopter.join()
    assert errors == []
    assert engine.map_size() == start  # 2,000 small writes never needed more room
    engine.close()


GROW = """
import sys
from microblob.engine.lmdb_kv import LmdbEngine
engine = LmdbEngine(sys.argv[1])
for i in range(80):
    engine.write(lambda txn, i=i: txn.put("chunks", b"c%d" % i, bytes([i]) * (1 << 20)), size_hint=1 << 20)
engine.close()
"""


def test_backup_copy_after_another_process_grew_the_map(tmp_path: Path) -> None:
    """`copy_to` (the engine's online backup) in a process whose map another process has outgrown: it
    adopts the growth like any read, and the copy holds everything."""
    from microblob.engine.lmdb_kv import LmdbEngine

    path = tmp_path / "engine.db"
    engine = LmdbEngine(path)
    try:
        engine.write(lambda txn: txn.put("meta", b"mine", b"x"))
        grow = subprocess.run([sys.executable, "-c", GROW, str(path)], capture_output=True, env=_env(),
                              timeout=DEADLINE)
        assert grow.returncode == 0 and grow.stderr == b"", grow.stderr.decode()
        assert path.stat().st_size > engine.map_size()  # this process's map is outgrown
        engine.copy_to(str(tmp_path / "backup.db"))
    finally:
        engine.close()
    backup = LmdbEngine(tmp_path / "backup.db")
    with backup.read() as txn:
        assert txn.get("meta", b"mine") == b"x"
        assert [txn.get("chunks", b"c%d" % i) == bytes([i]) * (1 << 20) for i in range(80)] == [True] * 80
    backup.close()
