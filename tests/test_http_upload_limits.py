"""Upload limits over real sockets: trickling bodies are dropped, uploads at once are capped, the spool
budget holds, and running out of file descriptors is a 503 to retry (`microblob.http.upload_limits`)."""

from __future__ import annotations

import gc
import json
import os
import select
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from test_http_server import wait_until
from thing_fixtures import Camera

import microblob

GUARD = 30.0  # seconds a client waits before calling the server hung (never reached when it works)


# A script, not a web page: it says so, as the CSRF check asks of an untyped POST body.
SCRIPT = {"X-Requested-With": "test"}


def _address(base: str) -> tuple[str, int]:
    parts = urlsplit(base)
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port


def start_upload(base: str, path: str, length: int, first: bytes = b"x",
                  ctype: str = "application/octet-stream") -> socket.socket:
    """A raw client that sends the request head and the first bytes of a `length`-byte body, then stops."""
    sock = socket.create_connection(_address(base), timeout=GUARD)
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {length}\r\n\r\n")
    sock.sendall(head.encode() + first)
    return sock


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Read until the server closes the connection; (status, headers, body)."""
    data = b""
    deadline = time.monotonic() + GUARD
    while True:
        if time.monotonic() > deadline:
            raise AssertionError(f"the server neither answered nor closed; got {data[:200]!r}")
        try:
            piece = sock.recv(65536)
        except ConnectionResetError:
            break
        except TimeoutError:
            continue
        if not piece:
            break
        data += piece
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 "), data[:200]
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def _json_error(body: bytes) -> str:
    payload = json.loads(body)
    assert set(payload) >= {"error", "detail"}
    return str(payload["error"])


@pytest.fixture
def spools(tmp_path: Path) -> Path:
    where = tmp_path / "spools"
    where.mkdir()
    return where


@pytest.fixture
def lmdb_store(tmp_path: Path) -> Iterator[microblob.Store]:
    with microblob.connect(tmp_path / "store.db") as store:
        yield store


@pytest.mark.parametrize("path", ["/blobs", "/objects/", "/camera/add"])
def test_a_body_that_stops_arriving_is_dropped_with_408_and_its_spool_removed(
        path: str, make_server: Any, live: Any, lmdb_store: microblob.Store, spools: Path) -> None:
    app = make_server({"camera": Camera()}, store=lmdb_store, upload_dir=str(spools), upload_idle_timeout=0.5)
    base = live(app)
    ctype = "application/json" if path == "/camera/add" else "application/octet-stream"
    first = b'{"a": 1, ' if path == "/camera/add" else b"x" * 100
    tricklers = [start_upload(base, path, 10_000, first, ctype) for _ in range(5)]
    for sock in tricklers:
        with sock:
            status, headers, body = read_response(sock)  # read to the end: the server closed it
        assert status == 408, body
        assert _json_error(body) == "RequestTimeout"
        assert headers.get("connection") == "close"
    assert os.listdir(spools) == []
    assert lmdb_store.blob_object_query({}) == []
    with httpx.Client(base_url=base, timeout=GUARD, headers=SCRIPT) as http:  # and the server still serves
        assert http.post("/blobs", content=b"fine").status_code == 201
        assert http.post("/camera/add", json={"a": 1}).json()["output"] == 3


def test_a_body_that_trickles_past_the_total_timeout_is_dropped(make_server: Any, live: Any,
                                                                spools: Path) -> None:
    app = make_server({}, upload_dir=str(spools), upload_idle_timeout=30, upload_timeout=1.0)
    base = live(app)
    with start_upload(base, "/blobs", 1_000_000) as sock:
        deadline = time.monotonic() + GUARD
        while not select.select([sock], [], [], 0.05)[0]:  # a byte every 50 ms: never idle for long
            assert time.monotonic() < deadline, "a 1 MB body at 20 bytes/s was still being received"
            sock.sendall(b"x")
        status, _, body = read_response(sock)
    assert status == 408, body
    assert "longer than" in json.loads(body)["detail"]
    assert os.listdir(spools) == []


def test_uploads_over_the_cap_get_503_with_retry_after_and_the_next_one_succeeds(
        make_server: Any, live: Any, lmdb_store: microblob.Store, spools: Path) -> None:
    app = make_server({"camera": Camera()}, store=lmdb_store, upload_dir=str(spools), max_uploads=3,
                      upload_idle_timeout=120)
    base = live(app)
    holders = [start_upload(base, "/blobs", 1_000_000) for _ in range(2)]
    wait_until(lambda: len(os.listdir(spools)) == 2)  # both are being received
    # A JSON body that trickles takes a place too (one that comes whole, as the call below, takes none).
    holders.append(start_upload(base, "/camera/add", 1000, b'{"a": 1', "application/json"))
    try:
        wait_until(lambda: app.uploads.stats()["uploads"] == 3)
        with httpx.Client(base_url=base, timeout=GUARD, headers=SCRIPT) as http:
            for path in ("/blobs", "/objects/"):
                refused = http.post(path, content=b"legitimate")
                assert refused.status_code == 503, refused.text
                assert refused.json()["error"] == "TooManyUploads"
                assert int(refused.headers["retry-after"]) >= 1
            assert len(os.listdir(spools)) == 2  # refused before spooling anything
            assert lmdb_store.blob_object_query({}) == []
            assert http.post("/camera/add", json={"a": 1}).json()["output"] == 3
    finally:
        for sock in holders:
            sock.close()
    wait_until(lambda: os.listdir(spools) == [])  # the holders went away: their spools with them
    wait_until(lambda: app.uploads.stats()["uploads"] == 0)  # and their places
    with httpx.Client(base_url=base, timeout=GUARD, headers=SCRIPT) as http:
        assert http.post("/blobs", content=b"legitimate").status_code == 201
        assert http.post("/objects/", content=b"legitimate").status_code == 201


def _body(n: int) -> Iterator[bytes]:
    """A body without Content-Length (chunked): the server learns its size only as it arrives."""
    for _ in range(n // 10_000):
        yield b"y" * 10_000


def test_the_spool_budget_refuses_an_upload_that_would_exceed_it_and_leaves_nothing(
        make_server: Any, live: Any, lmdb_store: microblob.Store, spools: Path) -> None:
    app = make_server({}, store=lmdb_store, upload_dir=str(spools), spool_budget=100_000, upload_ttl=600)
    base = live(app)
    with httpx.Client(base_url=base, timeout=GUARD, headers=SCRIPT) as http:
        kept = http.post("/blobs", content=b"k" * 60_000)
        assert kept.status_code == 201
        assert len(os.listdir(spools)) == 1  # a finished upload keeps its spool until it is consumed or expires
        for path in ("/blobs", "/objects/"):
            for body in (b"z" * 60_000, _body(60_000)):  # declared up front, then learnt as it arrives
                refused = http.post(path, content=body)
                assert refused.status_code == 507, refused.text
                assert refused.json()["error"] == "SpoolBudgetExceeded"
                assert len(os.listdir(spools)) == 1
        assert lmdb_store.blob_object_query({}) == []
        never = http.post("/blobs", content=b"n" * 100_001)  # could never fit: nothing to retry
        assert never.status_code == 507 and "retry-after" not in never.headers
        # What fits goes through, and a stored upload's spool is given back as soon as it is stored.
        assert http.post("/objects/", content=b"s" * 40_000).status_code == 201
        assert http.post("/objects/", content=_body(40_000)).status_code == 201
        assert http.get(kept.json()["url"]).content == b"k" * 60_000
        assert len(os.listdir(spools)) == 1


def test_an_expired_upload_gives_its_bytes_back_to_the_budget(make_server: Any, live: Any,
                                                              spools: Path) -> None:
    app = make_server({}, upload_dir=str(spools), spool_budget=100_000, upload_ttl=0.3)
    base = live(app)
    with httpx.Client(base_url=base, timeout=GUARD, headers=SCRIPT) as http:
        first = http.post("/blobs", content=b"a" * 90_000)
        assert first.status_code == 201
        wait_until(lambda: gc.collect() is not None and os.listdir(spools) == [])
        assert http.get(first.json()["url"]).status_code == 410
        assert http.post("/blobs", content=b"b" * 90_000).status_code == 201


_FD_SERVER = textwrap.dedent("""
    import json, os, resource, socket, sys, threading, time
    import uvicorn
    import microblob
    from microblob import ThingServer

    store = microblob.connect(sys.argv[1])
    app = ThingServer({}, store=store, upload_dir=sys.argv[2], **json.loads(sys.argv[3]))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="critical", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    open_now = len(os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (open_now + 256, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    fillers = []
    def fill(spare):
        while fillers:
            os.close(fillers.pop())
        try:
            while True:
                fillers.append(os.open("/dev/null", os.O_RDONLY))
        except OSError:
            pass
        for _ in range(spare):
            os.close(fillers.pop())
    fill(int(sys.argv[4]))  # 1: the accepted connection takes the last descriptor
    print(sock.getsockname()[1], flush=True)
    for line in sys.stdin:
        fill(int(line))
        print("ok", flush=True)
    server.should_exit = True
    thread.join()
""")


class FdServer:
    """The `_FD_SERVER` script in a subprocess: a ThingServer whose process has `spare` descriptors left.
    Its log goes to a file: asyncio logs every accept() that finds no descriptor, and a pipe nobody reads
    would fill and block the server's event loop."""

    def __init__(self, tmp_path: Path, spools: Path, spare: int, **options: Any) -> None:
        self.log = tmp_path / "server.log"
        with self.log.open("w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _FD_SERVER, str(tmp_path / "store.db"), str(spools), json.dumps(options),
                 str(spare)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True)
        assert self.proc.stdout is not None and self.proc.stdin is not None
        line = self.proc.stdout.readline()
        assert line.strip().isdigit(), self.log.read_text()[-2000:]
        self.base = f"http://127.0.0.1:{int(line)}"

    def spare(self, n: int) -> None:
        """Leave the server `n` free descriptors."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{n}\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "ok"

    def stop(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=GUARD)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        assert self.proc.returncode == 0, self.log.read_text()[-2000:]


def test_running_out_of_file_descriptors_on_an_upload_is_json_503(tmp_path: Path, spools: Path) -> None:
    server = FdServer(tmp_path, spools, spare=1)
    try:
        for path in ("/blobs", "/objects/"):
            response = httpx.post(server.base + path, content=b"x" * 1000, timeout=GUARD, headers=SCRIPT)
            assert response.status_code == 503, response.text
            assert response.json()["error"] == "TooManyOpenFiles"
            assert int(response.headers["retry-after"]) >= 1
        assert os.listdir(spools) == []
        for spare in (2, 3):  # the spool opens; what runs out later (the store, a module's data file) is a 503 too
            server.spare(spare)
            for path in ("/blobs", "/objects/"):
                response = httpx.post(server.base + path, content=b"x" * 1000, timeout=GUARD, headers=SCRIPT)
                assert response.status_code in (201, 503), response.text
                if response.status_code == 503:
                    assert response.json()["error"] == "TooManyOpenFiles"
        server.spare(64)  # descriptors come back: the same uploads go through
        for path in ("/blobs", "/objects/"):
            assert httpx.post(server.base + path, content=b"x" * 1000, timeout=GUARD, headers=SCRIPT).status_code == 201
    finally:
        server.stop()


def test_many_trickling_uploads_cannot_starve_a_server_of_descriptors(tmp_path: Path, spools: Path) -> None:
    """The attack itself: more trickling uploads than the process has descriptors for. The cap keeps
    all but `max_uploads` of them out at once, so the server keeps answering (503, never a 500 or a
    hang), and a legitimate upload goes through once the tricklers are gone."""
    server = FdServer(tmp_path, spools, spare=100, max_uploads=8, upload_idle_timeout=120)
    tricklers: list[socket.socket] = []
    try:
        for _ in range(150):  # 2 descriptors each (socket, spool) if all were let in: 300 > 100
            tricklers.append(start_upload(server.base + "/", "/blobs", 1_000_000))
        waiting = set(tricklers)  # the refused are answered and closed; the admitted stay open
        deadline = time.monotonic() + 4 * GUARD
        while len(waiting) > 8:
            assert time.monotonic() < deadline, f"{len(waiting)} uploads neither answered nor refused"
            for sock in select.select(list(waiting), [], [], 1.0)[0]:
                status, _, body = read_response(sock)
                assert status == 503, body
                assert _json_error(body) in ("TooManyUploads", "TooManyOpenFiles")
                waiting.discard(sock)
        assert len(os.listdir(spools)) <= 8
        legit = httpx.post(server.base + "/blobs", content=b"legitimate", timeout=GUARD, headers=SCRIPT)
        assert legit.status_code == 503 and legit.json()["error"] == "TooManyUploads", legit.text
    finally:
        for sock in tricklers:
            sock.close()
    try:
        wait_until(lambda: os.listdir(spools) == [])
        legit = httpx.post(server.base + "/blobs", content=b"legitimate", timeout=GUARD, headers=SCRIPT)
        assert legit.status_code == 201
    finally:
        server.stop()



@pytest.mark.parametrize("option", [{"max_uploads": 0}, {"spool_budget": -1}, {"spool_budget": 1.5},
                                    {"upload_idle_timeout": 0}, {"upload_timeout": float("inf")},
                                    {"upload_ttl": -1}, {"max_uploads": True}])
def test_upload_limits_must_be_positive(make_server: Any, option: dict[str, Any]) -> None:
    with pytest.raises(microblob.InvalidArgument, match=f"^{next(iter(option))} must be"):
        make_server({}, **option)
