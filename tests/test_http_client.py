"""ThingClient against a real uvicorn server on 127.0.0.1: signatures, long-poll, errors, remote Blobs."""

from __future__ import annotations

import hashlib
import inspect
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from thing_fixtures import JPEGBlob, RAWBlob, frame

import microblob
from microblob import (
    ActionError,
    Blob,
    BlobExpired,
    IntegrityError,
    InvocationCancelled,
    InvocationTimeout,
    RemoteBlob,
    RemoteInvalidInput,
    ThingClient,
    Unauthorized,
)


class Counting:
    """ASGI wrapper recording (method, path) of every request, so tests can prove what was (not) sent."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.requests: list[tuple[str, str]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            self.requests.append((scope["method"], scope["path"]))
        await self.app(scope, receive, send)

    def count(self, method: str, prefix: str) -> int:
        return sum(1 for m, p in self.requests if m == method and p.startswith(prefix))


@pytest.fixture
def served(make_server: Any, live: Any, camera: Any) -> tuple[Any, Counting, str]:
    app = Counting(make_server({"camera": camera}, max_workers=64))
    return camera, app, live(app)


@pytest.fixture
def cam(served: Any) -> Any:
    with ThingClient.from_url(served[2] + "camera") as client:  # no trailing slash: accepted
        yield client


def test_methods_have_the_actions_signatures(cam: Any) -> None:
    sig = inspect.signature(cam.add)
    assert list(sig.parameters) == ["a", "b", "timeout"]
    assert sig.parameters["a"].default is inspect.Parameter.empty
    assert sig.parameters["b"].default == 2
    assert sig.parameters["a"].annotation is int
    assert sig.parameters["timeout"].kind is inspect.Parameter.KEYWORD_ONLY
    assert inspect.signature(cam.convert_raw_to_jpeg).parameters["raw"].annotation is RAWBlob
    assert inspect.signature(cam.capture_raw_image).return_annotation is RAWBlob
    assert cam.capture_raw_image.__doc__ == "A raw frame of `size` bytes."
    with pytest.raises(TypeError):
        cam.add()  # missing argument: caught locally, like a local call
    with pytest.raises(TypeError):
        cam.add(1, 2, 3)


def test_calls_and_properties(cam: Any, served: Any) -> None:
    assert cam.add(40) == 42
    assert cam.add(a=1, b=1) == 2
    assert cam.configure({"gain": 1.5}, label="x") == {"gain": 1.5, "mode": "fast", "tags": [], "label": "x",
                                                        "scale": 1.0}
    assert cam.exposure == 0.5
    cam.exposure = 0.25
    assert served[0].exposure == 0.25 and cam.exposure == 0.25
    assert cam.model == "sim-1"
    with pytest.raises(AttributeError):
        cam.model = "other"


def test_calls_long_poll_instead_of_polling(cam: Any, served: Any) -> None:
    camera, app, _ = served
    threading.Timer(0.3, camera.release.set).start()
    before = len(app.requests)
    assert cam.wait_for_release() == "released"
    # one POST that the server holds until the end: no polling loop
    assert app.requests[before:] == [("POST", "/camera/wait_for_release")]


def test_long_poll_continues_past_the_wait_window(served: Any) -> None:
    camera, app, base = served
    cam = ThingClient.from_url(base + "camera/", wait=0.1)
    threading.Timer(0.5, camera.release.set).start()
    assert cam.wait_for_release() == "released"
    assert app.count("GET", "/invocations/") >= 1  # went on waiting with GET ?wait=


def test_timeout_raises_and_cancels(cam: Any, served: Any) -> None:
    with pytest.raises(InvocationTimeout) as e:
        cam.sleep(60, timeout=0.3)
    assert isinstance(e.value, TimeoutError)
    assert served[1].count("DELETE", "/invocations/") == 1
    from test_http_server import wait_until

    wait_until(lambda: [i["status"] for i in cam.http.get(served[2] + "invocations/").json()] == ["cancelled"])


def test_typed_errors_carry_the_servers_message(cam: Any) -> None:
    with pytest.raises(ActionError, match="lens cap on") as e:
        cam.fail("lens cap on")
    assert e.value.error == "ValueError"
    with pytest.raises(RemoteInvalidInput, match="settings.gain") as e2:
        cam.configure({"gain": "high"})
    assert e2.value.status == 422


def test_cancelled_invocation_raises(served: Any) -> None:
    camera, _, base = served
    cam = ThingClient.from_url(base + "camera/")
    result: dict[str, Any] = {}

    def call() -> None:
        try:
            cam.wait_for_release(60)
        except InvocationCancelled as e:
            result["error"] = e

    t = threading.Thread(target=call)
    t.start()
    with httpx.Client() as http:
        from test_http_server import wait_until

        inv = wait_until(lambda: [i for i in http.get(base + "invocations/").json() if i["status"] == "running"])
        assert http.delete(inv[0]["href"]).status_code == 202
        # Released only once the cancel took: released first, the action may return before it sees it.
        wait_until(lambda: http.get(inv[0]["href"]).json()["status"] == "cancelled")
    camera.release.set()
    t.join(30)
    assert isinstance(result.get("error"), InvocationCancelled)


def test_token(make_server: Any, live: Any, camera: Any) -> None:
    base = live(make_server({"camera": camera}, token="tok"))
    with pytest.raises(Unauthorized):
        ThingClient.from_url(base + "camera/")
    cam = ThingClient.from_url(base + "camera/", token="tok")
    raw = cam.capture_raw_image(10)
    assert raw.data == frame(10)
    assert cam.blob_length(RAWBlob.from_bytes(b"abc")) == 3  # upload carries the token


def test_remote_blob_is_lazy_typed_and_downloads_once(cam: Any, served: Any) -> None:
    app = served[1]
    raw = cam.capture_raw_image(2000)
    assert isinstance(raw, RAWBlob) and isinstance(raw, RemoteBlob)
    assert raw.content_type == "image/x-raw" and raw.size == 2000
    assert raw.expires_at is not None
    assert app.count("GET", "/blobs/") == 0  # nothing downloaded yet
    assert raw.data == frame(2000)
    assert raw.data is raw.data
    assert app.count("GET", "/blobs/") == 1 and raw.downloads == 1


def test_passing_a_remote_blob_back_sends_only_its_url(cam: Any, served: Any) -> None:
    app = served[1]
    raw = cam.capture_raw_image(4096)
    jpeg = cam.convert_raw_to_jpeg(raw)
    assert isinstance(jpeg, JPEGBlob)
    assert raw.downloads == 0
    assert app.count("GET", "/blobs/") == 0 and app.count("POST", "/blobs") == 0
    assert jpeg.data == b"\xff\xd8JPEG" + frame(4096)[:16]


def test_passing_a_local_blob_uploads_it(cam: Any, served: Any, tmp_path: Path) -> None:
    app = served[1]
    data = os.urandom(2_500_000)
    path = tmp_path / "local.raw"
    path.write_bytes(data)
    assert cam.blob_sha256(RAWBlob.from_file(path)) == hashlib.sha256(data).hexdigest()
    assert cam.blob_length(Blob.from_bytes(data[:100])) == 100
    assert app.count("POST", "/blobs") == 2


def test_nested_and_dataclass_outputs_hold_remote_blobs(cam: Any) -> None:
    out = cam.nested(2)
    assert [type(b) for b in out["frames"]] == [type(out["frames"][0])] * 2
    assert [b.data for b in out["frames"]] == [frame(10), frame(11)]
    cap = cam.capture_with_note("hello")
    assert cap["note"] == "hello" and isinstance(cap["image"], RAWBlob) and cap["image"].data == frame(8)


def test_save_and_open_stream_with_progress_and_verify(cam: Any, tmp_path: Path) -> None:
    size = 5 * (1 << 20) + 3
    raw = cam.file_frame(size)
    seen: list[tuple[int, int | None]] = []
    raw.save(tmp_path / "f.raw", progress=lambda d, t: seen.append((d, t)))
    data = (tmp_path / "f.raw").read_bytes()
    assert len(data) == size and hashlib.sha256(data).hexdigest() == raw.sha256
    assert seen[-1] == (size, size) and len(seen) > 2
    with raw.open() as f:
        assert f.read(10) == data[:10]
        assert len(f.read()) == size - 10
    assert raw.downloads == 2


def test_sha256_mismatch_is_detected(cam: Any, tmp_path: Path) -> None:
    raw = cam.capture_raw_image(1000)
    bad = RAWBlob.from_url(raw.url, sha256="0" * 64, size=1000)
    with pytest.raises(IntegrityError):
        bad.save(tmp_path / "x")
    assert not (tmp_path / "x").exists()
    assert [p for p in tmp_path.iterdir()] == []  # no partial file either
    with pytest.raises(IntegrityError), bad.open() as f:
        f.read()
    with pytest.raises(IntegrityError):
        _ = bad.data


def test_expired_remote_blob_raises_blob_expired(make_server: Any, live: Any, camera: Any) -> None:
    base = live(make_server({"camera": camera}, blob_ttl=0.2))
    cam = ThingClient.from_url(base + "camera/")
    raw = cam.capture_raw_image(10)
    from test_http_server import wait_until

    wait_until(lambda: httpx.get(raw.url).status_code == 410)
    with pytest.raises(BlobExpired):
        _ = raw.data


def test_from_url_blob_without_client(cam: Any) -> None:
    raw = cam.capture_raw_image(100)
    again = Blob.from_url(raw.url)
    assert again.data == frame(100)


def test_fifty_concurrent_invocations(served: Any) -> None:
    """50 actions block at a barrier that opens only when all 50 run at once: they run in parallel in
    the pool, and the event loop keeps serving while they block."""
    camera, _, base = served
    camera.barrier = threading.Barrier(50)
    cam = ThingClient.from_url(base + "camera/", client=httpx.Client(limits=httpx.Limits(max_connections=60),
                                                                        timeout=120))
    with ThreadPoolExecutor(50) as pool:
        results = list(pool.map(lambda i: cam.meet(i, timeout=120), range(50)))
    assert results == list(range(50))


def test_abandoned_download_does_not_break_the_server(cam: Any, served: Any) -> None:
    """A client that stops reading half way: the server stops streaming and goes on serving."""
    raw = cam.file_frame(8 << 20)
    with httpx.Client() as http, http.stream("GET", raw.url) as r:
        first = next(r.iter_raw())
        assert first
    assert cam.add(1) == 3
    assert hashlib.sha256(raw.data).hexdigest() == raw.sha256


@pytest.mark.parametrize(
    ("status", "body", "blob", "expected"),
    [
        (422, {"error": "InvalidInput", "detail": "x: bad"}, False, "RemoteInvalidInput"),
        (401, {"error": "Unauthorized", "detail": "token"}, False, "Unauthorized"),
        (404, {"error": "NotFound", "detail": "gone"}, False, "RemoteError"),
        (404, {"error": "NotFound", "detail": "gone"}, True, "BlobError"),
        (410, {"error": "Gone", "detail": "expired"}, True, "BlobExpired"),
        (500, ["not", "an", "object"], False, "RemoteError"),
        (502, None, True, "RemoteError"),
    ],
)
def test_one_decoder_for_error_answers(status: int, body: Any, blob: bool, expected: str) -> None:
    """The client and Blob downloads read the server's {"error", "detail"} answers the same way; a body
    that is not a JSON object (a proxy's page, a list) still gives a typed error with its text."""
    from microblob._blob_url import raise_for_response

    response = httpx.Response(status, json=body) if body is not None else httpx.Response(status, text="<html>")
    with pytest.raises(microblob.MicroblobError) as info:
        raise_for_response(response, "GET /x", blob=blob)
    assert type(info.value).__name__ == expected
    assert str(info.value).startswith("GET /x: ")
    if isinstance(body, dict):
        assert str(info.value) == f"GET /x: {body['detail']}"
        if not blob:
            assert info.value.status == status and info.value.error == body["error"]
