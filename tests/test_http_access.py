"""Who may do what over HTTP, and what a request can never make the server do (issue 5; docs/ARCHITECTURE.md, "HTTP
protocol").

- With a token, every route of the app (read from `app.routes`, so a new route cannot be forgotten; every
  method it allows and every one it does not; the store routes mounted) answers 401 with a JSON body
  without the token or with a wrong one, and has no effect. The only exceptions: downloading a Blob link
  (GET/HEAD /blobs/{id}: the id is the secret) and the browse page taking the token as ``/?token=``. With
  the token no route answers 401. Path tricks over a real socket do not reach a protected route.
- Blob link ids are unguessable: each comes from `secrets.token_urlsafe` with >= 16 bytes (128 bits); >= 22
  URL-safe characters; all distinct; every position varies.
- An expired link answers 410 and its bytes are released by the clock, with no request needed: the temp
  file of a file-backed Blob (an action's output or an upload) is deleted, and the Blob object (file,
  memory or store-backed) is collected; the link table keeps only a tombstone holding no Blob. Closing
  the server (its lifespan shutdown) releases every output and upload, so their temp files go then.
- A Blob input naming another host (loopback included), another scheme, or hiding one behind userinfo,
  fragment or backslash tricks is a 422, and the server connects nowhere: a real TCP listener on
  127.0.0.1 records any connection, over the ASGI client and over a real socket through `ThingClient`.
- An upload over the limit is a 413 and leaves nothing behind: no temp file, no link, and (POST /objects/)
  no object, file document, chunk or lease; `gc()` finds nothing to free.
- Stored ML models never go through pickle: tests/test_torch.py (`no_unpickling`: `pickle.load(s)`,
  `pickle.Unpickler` and `torch.load` made to fail while models load, and pickles refused unread).
"""

from __future__ import annotations

import gc
import os
import re
import secrets
import socket
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.routing import Route
from test_http_server import wait_until
from thing_fixtures import Camera, RAWBlob, frame

import microblob
from microblob import Blob, ThingClient, thing_action
from microblob.http.inprocess import in_process_client
from microblob.http.server import MAX_JSON

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
WRONG = ["Bearer wrong", f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", f"Bearer  {TOKEN}", TOKEN,
         f"Basic {TOKEN}", f"Bearer {TOKEN.upper()}"]
METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]
TOKEN_FREE = {("GET", "/blobs/{id}"), ("HEAD", "/blobs/{id}")}
ID_CHARS = re.compile(r"[A-Za-z0-9_-]{22,}")  # base64url of >= 16 bytes


class Frames(Camera):
    """The test camera plus outputs kept in a file, in memory and in a store, each watched by a weakref."""

    def __init__(self, frame_dir: Path, store: Any = None) -> None:
        super().__init__()
        self.frame_dir = frame_dir
        self.store = store
        self.made: list[weakref.ref[Blob]] = []

    def _keep(self, blob: RAWBlob) -> RAWBlob:
        self.made.append(weakref.ref(blob))
        return blob

    @thing_action(blob_ttl=0.5)
    def file_output(self, size: int = 1000) -> RAWBlob:
        path = self.frame_dir / f"frame-{len(self.made)}.raw"
        path.write_bytes(frame(size))
        return self._keep(RAWBlob.from_file(path, delete=True))

    @thing_action(blob_ttl=600)
    def lasting_file_output(self, size: int = 1000) -> RAWBlob:
        return self.file_output(size)

    @thing_action(blob_ttl=0.5)
    def memory_output(self, size: int = 1000) -> RAWBlob:
        return self._keep(RAWBlob.from_bytes(frame(size)))

    @thing_action(blob_ttl=0.5)
    def stored_output(self, object_id: str) -> RAWBlob:
        return self._keep(Blob.from_object(self.store, object_id).as_type(RAWBlob))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[microblob.Store]:
    (tmp_path / "store").mkdir()
    s = microblob.connect(tmp_path / "store" / "store.db")
    yield s
    s.close()


@pytest.fixture
def frames(tmp_path: Path, store: microblob.Store) -> Frames:
    (tmp_path / "frames").mkdir()
    thing = Frames(tmp_path / "frames", store)
    thing.release.set()
    return thing


@pytest.fixture
def uploads(tmp_path: Path) -> Path:
    path = tmp_path / "uploads"
    path.mkdir()
    return path


# --- the token -------------------------------------------------------------------------------------


def route_table(app: Any) -> list[tuple[str, set[str]]]:
    """(path template, allowed methods) of every route, in order; anything but a plain Route fails the test,
    so a Mount or WebSocket route added later gets a decision here instead of slipping through."""
    table: dict[str, set[str]] = {}
    for route in app.routes:
        assert isinstance(route, Route) and route.methods, f"{route!r}: teach test_http_access about it"
        table.setdefault(route.path, set()).update(route.methods)  # one path may have a route per method
    return list(table.items())


class Fill:
    """Concrete values for a route's path parameters: real ones where the server has them (so the
    authorized request reaches the handler), "x" for any parameter this test does not know yet."""

    def __init__(self, client: Any, store: microblob.Store) -> None:
        store.save_or_update_object(b"stored", object_id="obj", content_type="text/plain")
        inv = client.post("/camera/capture_raw_image", params={"wait": "20"}, json={"size": 10},
                          headers=AUTH).json()
        self.invocation = inv["id"]
        # an upload, so the link outlives a DELETE of that invocation
        self.blob = client.post("/blobs", content=b"bytes", headers=AUTH).json()["url"].rsplit("/", 1)[1]

    def path(self, template: str, method: str) -> str:
        values = {"thing": "camera", "name": "add" if method == "POST" else "exposure"}
        if template.startswith("/invocations/"):
            values["id"] = self.invocation
        elif template.startswith("/blobs/"):
            values["id"] = self.blob
        elif template.startswith("/objects/"):
            values["id"] = "obj"
        return re.sub(r"\{(\w+)(:\w+)?\}", lambda m: values.get(m.group(1), "x"), template)


def request_for(method: str, path: str) -> dict[str, Any]:
    """A well-formed request body for the routes that take one."""
    if method not in ("POST", "PUT"):
        return {}
    if path == "/camera/add":
        return {"json": {"a": 1}, "params": {"wait": "20"}}
    if path == "/camera/exposure":
        return {"json": 2.0}
    if path in ("/blobs", "/blobs/", "/objects/"):
        return {"content": b"uploaded", "headers": {"Content-Type": "text/plain"}}
    return {}


@pytest.fixture
def guarded(make_server: Any, asgi: Any, store: microblob.Store, uploads: Path) -> tuple[Any, Any]:
    app = make_server({"camera": Camera()}, store=store, token=TOKEN, upload_dir=str(uploads))
    return app, asgi(app)


def test_every_route_needs_the_token_except_blob_downloads(guarded: tuple[Any, Any], store: microblob.Store) -> None:
    app, client = guarded
    fill = Fill(client, store)
    table = route_table(app)
    assert {"/things/", "/invocations/{id}", "/blobs/{id}", "/objects/{id}/data", "/{thing}/{name}"} <= {
        p for p, _ in table}  # the store routes are mounted
    checked = 0
    for template, allowed in table:
        for method in METHODS:
            path = fill.path(template, method)
            kwargs = request_for(method, path)
            headers = kwargs.pop("headers", {})
            if (method, template) in TOKEN_FREE:
                for extra in ({}, {"Authorization": "Bearer wrong"}):
                    r = client.request(method, path, headers={**headers, **extra}, **kwargs)
                    assert r.status_code == 200, (method, path, extra, r.status_code)
                continue
            for wrong in [None, *WRONG]:
                auth = {} if wrong is None else {"Authorization": wrong}
                r = client.request(method, path, headers={**headers, **auth}, **kwargs)
                assert r.status_code == 401, (method, path, wrong, r.status_code, r.text)
                assert r.headers["content-type"] == "application/json"
                if method != "HEAD":  # a HEAD answer has the headers of the JSON body, not the body
                    body = r.json()
                    assert body["error"] == "Unauthorized" and body["detail"], (method, path)
                assert r.headers["www-authenticate"].startswith("Bearer")
                checked += 1
            # the token as a query parameter is the browse page's alone
            query = {"params": {**kwargs.get("params", {}), "token": TOKEN}}
            r = client.request(method, path, headers=headers, **{**kwargs, **query})
            expected_page = template == "/" and method in ("GET", "HEAD")
            assert (r.status_code == 200) if expected_page else (r.status_code == 401), (method, path, r.status_code)
            r = client.request(method, path, headers={**headers, **AUTH}, **kwargs)
            assert r.status_code != 401, (method, path, r.text)
            if method in allowed:
                assert r.status_code < 300 or r.status_code in (404, 405), (method, path, r.status_code, r.text)
            else:
                assert r.status_code in (404, 405), (method, path, r.status_code)
    print(f"{len(table)} routes, {checked} unauthorized requests, each 401 with a JSON body")
    assert checked >= len(table) * len(METHODS)


def test_refused_requests_have_no_effect(guarded: tuple[Any, Any], store: microblob.Store, uploads: Path) -> None:
    app, client = guarded
    Fill(client, store)
    exposure = client.get("/camera/exposure", headers=AUTH).json()
    invocations = client.get("/invocations/", headers=AUTH).json()
    links, files = len(app.links), os.listdir(uploads)
    for method, path, kwargs in [
        ("PUT", "/camera/exposure", {"json": 9.0}),
        ("POST", "/camera/add", {"json": {"a": 1}}),
        ("POST", "/blobs", {"content": b"x" * 100}),
        ("POST", "/objects/", {"content": b"x", "params": {"object_id": "new"}}),
        ("DELETE", "/objects/obj", {}),
        ("DELETE", f"/invocations/{invocations[0]['id']}", {}),
    ]:
        for wrong in ({}, {"Authorization": "Bearer wrong"}):
            assert client.request(method, path, headers=wrong, **kwargs).status_code == 401
    assert client.get("/camera/exposure", headers=AUTH).json() == exposure
    assert client.get("/invocations/", headers=AUTH).json() == invocations
    assert [o["object_id"] for o in client.get("/objects/", headers=AUTH).json()] == ["obj"]
    assert len(app.links) == links and os.listdir(uploads) == files


def test_the_browse_page_takes_the_token_in_its_url(guarded: tuple[Any, Any]) -> None:
    _, client = guarded
    assert client.get("/").status_code == 401
    assert client.get("/", params={"token": "wrong"}).status_code == 401
    assert client.get("/", params={"token": TOKEN}).status_code == 200
    assert client.head("/", params={"token": TOKEN}).status_code == 200
    # a wrong header is not rescued by a right query parameter, and the page is not a way into the rest
    assert client.get("/", params={"token": TOKEN}, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/things/", params={"token": TOKEN}).status_code == 401


RAW_TRICKS = [
    "/blobs/x/../../things/", "/blobs/%2e%2e/things/", "/blobs/..%2fthings%2f", "/blobs/x%2f..%2f..%2fthings%2f",
    "//things/", "/blobs/x/..", "/blobs/x?/../../things/", "/./things/", "/things/./", "/blobs/%2e%2e%2fthings%2f",
    "/blobs/x;/../../things/", "/blobs/%00/../../things/", "/BLOBS/x/../../things/", "/blobs//things/",
    "/blobs/x/../../objects/", "/blobs/x/../../invocations/", "/blobs/x/%2e%2e/%2e%2e/camera/exposure",
]


def raw_get(base: str, target: str) -> tuple[int, bytes]:
    """GET `target` exactly as written (no client-side normalisation of dot segments) over a socket."""
    url = httpx.URL(base)
    with socket.create_connection((url.host, url.port), timeout=20) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: {url.host}:{url.port}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def test_path_tricks_do_not_get_past_the_token(make_server: Any, live: Any, store: microblob.Store) -> None:
    """Over a real socket (uvicorn decodes the path as in production): a blob-looking prefix, dot segments
    and encoded slashes never reach a protected route without the token."""
    store.save_or_update_object(b"private bytes", object_id="private")
    base = live(make_server({"camera": Camera()}, store=store, token=TOKEN))
    for target in RAW_TRICKS:
        status, body = raw_get(base, target)
        assert status in (401, 404), (target, status, body)
        assert b"camera" not in body and b"private" not in body, (target, body)


# --- blob ids ----------------------------------------------------------------------------------------


def test_blob_ids_have_128_random_bits(make_server: Any, asgi: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    issued: dict[str, int] = {}
    real = secrets.token_urlsafe

    def spy(nbytes: int | None = None) -> str:
        value = real(nbytes)
        issued[value] = nbytes if nbytes is not None else 32
        return value

    monkeypatch.setattr(secrets, "token_urlsafe", spy)
    camera = Camera()
    client = asgi(make_server({"camera": camera}))
    ids = []
    for i in range(150):
        ids.append(client.post("/blobs", content=b"same bytes every time").json()["url"].rsplit("/", 1)[1])
        out = client.post("/camera/capture_raw_image", params={"wait": "20"}, json={"size": 1 + i % 3}).json()
        ids.append(out["output"]["url"].rsplit("/", 1)[1])
        ids.append(out["id"])  # invocation ids are made the same way
    assert len(set(ids)) == len(ids) == 450  # all distinct, even for identical bytes
    for blob_id in ids:
        assert ID_CHARS.fullmatch(blob_id), blob_id
        assert issued.get(blob_id, 0) >= 16, f"{blob_id} was not made by secrets.token_urlsafe(>=16)"
    # base64url of 16 bytes: 21 characters carry 6 random bits each, the 22nd 2; every position varies
    for position in range(21):
        assert len({blob_id[position] for blob_id in ids}) >= 48, position


# --- expiry releases the bytes -------------------------------------------------------------------------


def collected(ref: weakref.ref[Any]) -> bool:
    gc.collect()
    return ref() is None


@pytest.mark.parametrize("kind", ["file", "memory", "stored"])
def test_expired_links_answer_410_and_release_their_data(make_server: Any, asgi: Any, frames: Frames,
                                                        store: microblob.Store, tmp_path: Path, kind: str) -> None:
    app = make_server({"frames": frames}, store=store, retention=60)
    client = asgi(app)
    store.save_or_update_object(frame(1000), object_id="kept")
    body = {"object_id": "kept"} if kind == "stored" else {"size": 1000}
    inv = client.post(f"/frames/{kind}_output", params={"wait": "20"}, json=body).json()
    assert inv["status"] == "completed", inv
    url, blob_id = inv["output"]["url"], inv["output"]["url"].rsplit("/", 1)[1]
    assert client.get(url).content == frame(1000)
    ref = frames.made[-1]
    files = list((tmp_path / "frames").iterdir())
    assert len(files) == (1 if kind == "file" else 0)
    # The clock releases everything: no request is made until the bytes are gone.
    wait_until(lambda: collected(ref))
    # The file goes with the Blob's source, which the response that served it may hold a moment longer.
    wait_until(lambda: list((tmp_path / "frames").iterdir()) == [])
    for method in ("GET", "HEAD"):
        r = client.request(method, url)
        assert r.status_code == 410, (method, r.status_code)
    assert client.get(url).json()["error"] == "BlobExpired"
    assert client.get(inv["href"] + "/output").status_code == 410
    link = app.links.get(blob_id)
    assert link is not None and link.expired and link.strong is None and link.blob() is None  # a tombstone
    assert app.links.stats()["live"] == 0
    output = app.invocations.get(inv["id"]).output  # still retained (60 s), its Blob released
    assert output.blob is None
    assert store.get_blob_object("kept").data == frame(1000)  # a stored object is released, not deleted


def test_expired_upload_deletes_its_temp_file(make_server: Any, asgi: Any, uploads: Path) -> None:
    app = make_server({}, blob_ttl=0.5, upload_dir=str(uploads))
    client = asgi(app)
    out = client.post("/blobs", content=b"uploaded bytes", headers={"Content-Type": "text/plain"}).json()
    assert client.get(out["url"]).content == b"uploaded bytes"
    assert len(os.listdir(uploads)) == 1
    wait_until(lambda: gc.collect() is not None and os.listdir(uploads) == [])
    assert client.get(out["url"]).status_code == 410
    assert app.links.stats() == {"links": 1, "live": 0}


def test_closing_the_server_deletes_the_temp_files_its_outputs_own(make_server: Any, frames: Frames,
                                                                   uploads: Path, tmp_path: Path) -> None:
    """Closing the server (its lifespan shutdown) releases every output and upload it holds, so their
    temp files go then, not at interpreter exit (which SIGTERM under uvicorn skips)."""
    app = make_server({"frames": frames}, retention=600, upload_dir=str(uploads))
    with in_process_client(app) as client:  # leaving the block runs the ASGI lifespan shutdown
        inv = client.post("/frames/lasting_file_output", params={"wait": "20"}, json={"size": 10}).json()
        assert inv["status"] == "completed"
        client.post("/blobs", content=b"uploaded")
        assert len(os.listdir(tmp_path / "frames")) == 1 and len(os.listdir(uploads)) == 1
    assert os.listdir(tmp_path / "frames") == [] and os.listdir(uploads) == []
    assert app.invocations.all() == []


# --- no outbound requests -------------------------------------------------------------------------------


class Listener:
    """A real TCP listener on 127.0.0.1 that records every connection made to it."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.connections: list[tuple[str, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._accept()

    def _accept(self) -> None:
        try:
            conn, peer = self.sock.accept()
        except (TimeoutError, BlockingIOError):
            return
        self.connections.append(peer)
        conn.close()

    def close(self) -> list[tuple[str, int]]:
        """Stop, and return every connection, including any still queued in the kernel's backlog."""
        if self._stop.is_set():
            return self.connections
        self._stop.set()
        self._thread.join(10)
        self.sock.setblocking(False)
        for _ in range(64):
            self._accept()
        self.sock.close()
        return self.connections


@pytest.fixture
def listener() -> Iterator[Listener]:
    lis = Listener()
    yield lis
    lis.close()


def foreign_urls(port: int, server: str) -> list[str]:
    """Blob URLs that are not this server's: the listener under many spellings, other schemes, and URLs
    that mention this server (`server` is its host:port) while pointing elsewhere."""
    here = f"127.0.0.1:{port}"
    return [
        f"http://{here}/blobs/x", f"http://localhost:{port}/blobs/x", f"http://[::1]:{port}/blobs/x",
        f"https://{here}/blobs/x", f"http://{here}/objects/obj/data", f"http://2130706433:{port}/blobs/x",
        f"http://0x7f.1:{port}/blobs/x", f"http://127.1:{port}/blobs/x", f"//{here}/blobs/x",
        f"http://{server}@{here}/blobs/x", f"http://user:pass@{here}/blobs/x", f"http://{here}#@{server}/blobs/x",
        f"http://{here}\\@{server}/blobs/x", f"http://{here}?@{server}/blobs/x", f"http://{here}/{server}/blobs/x",
        f"ftp://{here}/blobs/x", f"gopher://{here}/_GET%20/", f"file://{here}/etc/passwd", "file:///etc/passwd",
        "data:text/plain,hello", f"ws://{here}/blobs/x", f"HTTP://{here}/blobs/x", f"http:/{here}/blobs/x",
        f"http://{server}/../{here}/blobs/x", f"https://{server}/blobs/x", f"http://{here}:80/blobs/x",
        "http://[::1/blobs/x", f"http://{server.split(':')[0]}:99999/blobs/x",
    ]


def test_blob_inputs_elsewhere_are_refused_without_any_connection(
    make_server: Any, asgi: Any, store: microblob.Store, listener: Listener
) -> None:
    store.save_or_update_object(b"stored", object_id="obj")
    client = asgi(make_server({"camera": Camera()}, store=store))
    for url in foreign_urls(listener.port, "testserver"):
        for value in (url, {"url": url}, {"href": url}):
            r = client.post("/camera/blob_length", params={"wait": "20"}, json={"blob": value})
            assert r.status_code == 422, (url, r.status_code, r.text)
            assert r.json()["field"] == "blob"
        r = client.put("/camera/exposure", json={"url": url})  # a non-Blob field: refused too, unfetched
        assert r.status_code == 422
    assert listener.close() == []


def test_blob_inputs_elsewhere_through_thing_client_over_a_socket(
    make_server: Any, live: Any, store: microblob.Store, listener: Listener
) -> None:
    store.save_or_update_object(b"stored", object_id="obj")
    base = live(make_server({"camera": Camera()}, store=store))
    server = base.split("/")[2]
    with ThingClient.from_url(base + "camera/") as client:
        for url in foreign_urls(listener.port, server):
            for value in (url, {"url": url}):
                with pytest.raises(microblob.RemoteInvalidInput, match="blob"):
                    client.blob_length(value)
        # the server's own links and objects are accepted (the refusals above are about where, not how)
        assert client.blob_length({"url": f"{base}objects/obj/data"}) == 6
        assert client.blob_length(Blob.from_bytes(b"12345")) == 5  # uploaded first, then its link sent
    assert listener.close() == []


# --- uploads over the limit -----------------------------------------------------------------------------


def store_is_empty(store: microblob.Store) -> None:
    assert store.count_objects() == 0
    assert list(store.files._files.find({})) == []
    assert list(store.files._pending.find({})) == []
    assert list(store.backend.chunks.file_ids()) == []
    report = store.gc()
    assert (report.freed_files, report.freed_bytes, report.freed_orphan_chunks) == (0, 0, 0)
    assert store.verify().checked == 0


def chunked(total: int, piece: int = 300) -> Iterator[bytes]:
    """A body with no Content-Length (chunked), so only the running count can stop it."""
    for start in range(0, total, piece):
        yield b"u" * min(piece, total - start)


@pytest.mark.parametrize("path", ["/blobs", "/objects/"])
def test_uploads_over_the_limit_are_413_and_leave_nothing(make_server: Any, asgi: Any, store: microblob.Store,
                                                        uploads: Path, path: str) -> None:
    app = make_server({}, store=store, max_upload=1000, upload_dir=str(uploads))
    client = asgi(app)
    for kwargs in ({"content": b"u" * 1001}, {"content": chunked(1001)}, {"content": chunked(50_000)}):
        r = client.post(path, params={"object_id": "big"}, **kwargs)
        assert r.status_code == 413, r.text
        assert r.json()["error"] == "PayloadTooLarge"
        assert os.listdir(uploads) == []
        assert len(app.links) == 0
        store_is_empty(store)
    # the limit is the limit: exactly max_upload bytes are taken
    r = client.post(path, params={"object_id": "fits"}, content=chunked(1000))
    assert r.status_code == 201, r.text


@pytest.mark.parametrize("path", ["/blobs", "/objects/"])
def test_uploads_over_the_limit_over_a_socket(make_server: Any, live: Any, store: microblob.Store, uploads: Path,
                                              path: str) -> None:
    app = make_server({}, store=store, max_upload=100_000, upload_dir=str(uploads))
    base = live(app)
    with httpx.Client(base_url=base, timeout=30) as http:
        binary = {"Content-Type": "application/octet-stream"}
        r = http.post(path, content=chunked(1_000_000, 65536), headers=binary)
        assert r.status_code == 413 and r.json()["error"] == "PayloadTooLarge"
        r = http.post(path, content=b"u" * 100_001, headers=binary)
        assert r.status_code == 413 and r.json()["error"] == "PayloadTooLarge"
    assert os.listdir(uploads) == []
    # a client that goes away halfway through an upload leaves nothing either
    url = httpx.URL(base)
    with socket.create_connection((url.host, url.port), timeout=20) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {url.host}\r\nContent-Type: application/octet-stream\r\n"
                     "Content-Length: 90000\r\n\r\n".encode()
                     + b"u" * 40_000)
        wait_until(lambda: len(os.listdir(uploads)) == 1)  # the server is writing it, waiting for the rest
    wait_until(lambda: os.listdir(uploads) == [])
    assert len(app.links) == 0
    store_is_empty(store)


def test_json_bodies_over_their_limit_are_413(make_server: Any, asgi: Any) -> None:
    client = asgi(make_server({"camera": Camera()}))
    r = client.post("/camera/add", content=b" " * (MAX_JSON + 1))
    assert r.status_code == 413 and r.json()["error"] == "PayloadTooLarge"
    assert client.get("/invocations/").json() == []
