"""Blob links over ASGI: HEAD, Range, ETag, expiry by the clock, uploads and their limit, Blob inputs."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
from test_http_server import wait_until
from thing_fixtures import frame

import microblob
from microblob.store.validate import check_content_type


@pytest.fixture
def client(make_server: Any, asgi: Any, camera: Any) -> Any:
    return asgi(make_server({"camera": camera}))


def capture(client: Any, size: int, action: str = "capture_raw_image") -> dict[str, Any]:
    inv = client.post(f"/camera/{action}", params={"wait": "20"}, json={"size": size} if size >= 0 else {}).json()
    assert inv["status"] == "completed", inv
    return inv["output"]


def test_blob_json_shape(client: Any) -> None:
    out = capture(client, 100)
    assert set(out) == {"url", "content_type", "href", "media_type", "rel", "size", "sha256", "expires_at"}
    assert out["url"] == out["href"] and out["url"].startswith("http://testserver/blobs/")
    assert out["content_type"] == out["media_type"] == "image/x-raw"
    assert out["rel"] == "output" and out["size"] == 100
    assert out["sha256"] == hashlib.sha256(frame(100)).hexdigest()
    blob_id = out["url"].rsplit("/", 1)[1]
    assert len(blob_id) >= 22  # 16 random bytes, base64url: 128 bits


def test_get_and_head_headers(client: Any) -> None:
    out = capture(client, 5000)
    r = client.get(out["url"])
    assert r.content == frame(5000)
    assert r.headers["content-type"] == "image/x-raw"
    assert r.headers["content-length"] == "5000"
    assert r.headers["etag"] == f'"{out["sha256"]}"'
    assert r.headers["accept-ranges"] == "bytes"
    h = client.head(out["url"])
    assert h.status_code == 200 and h.content == b""
    assert h.headers["content-length"] == "5000" and h.headers["etag"] == r.headers["etag"]


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [("bytes=0-99", 0, 100), ("bytes=100-", 100, 5000), ("bytes=-10", 4990, 5000), ("bytes=4990-9999", 4990, 5000)],
)
def test_range_gives_206(client: Any, header: str, start: int, end: int) -> None:
    out = capture(client, 5000)
    r = client.get(out["url"], headers={"Range": header})
    assert r.status_code == 206
    assert r.content == frame(5000)[start:end]
    assert r.headers["content-range"] == f"bytes {start}-{end - 1}/5000"
    assert r.headers["content-length"] == str(end - start)


def test_unsatisfiable_range_is_416_and_multi_range_is_200(client: Any) -> None:
    out = capture(client, 100)
    r = client.get(out["url"], headers={"Range": "bytes=100-"})
    assert r.status_code == 416 and r.headers["content-range"] == "bytes */100"
    assert r.json()["error"] == "RangeNotSatisfiable"
    r = client.get(out["url"], headers={"Range": "bytes=0-1,5-6"})
    assert r.status_code == 200 and len(r.content) == 100
    empty = capture(client, 0)  # no last bytes of nothing: a 206 would say "bytes 0--1/0"
    for method in ("GET", "HEAD"):
        r = client.request(method, empty["url"], headers={"Range": "bytes=-5"})
        assert r.status_code == 416 and r.headers["content-range"] == "bytes */0", (method, r.headers)


def test_etag_revalidation_and_if_range(client: Any) -> None:
    out = capture(client, 100)
    etag = f'"{out["sha256"]}"'
    r = client.get(out["url"], headers={"If-None-Match": etag})
    assert r.status_code == 304 and r.content == b""
    r = client.get(out["url"], headers={"Range": "bytes=0-9", "If-Range": '"other"'})
    assert r.status_code == 200 and len(r.content) == 100
    r = client.get(out["url"], headers={"Range": "bytes=0-9", "If-Range": etag})
    assert r.status_code == 206 and len(r.content) == 10


def test_file_blob_streams_and_ranges(client: Any) -> None:
    size = 3 * (1 << 20) + 17
    out = capture(client, size, "file_frame")
    r = client.get(out["url"])
    assert len(r.content) == size
    assert hashlib.sha256(r.content).hexdigest() == out["sha256"] == r.headers["etag"].strip('"')
    r = client.get(out["url"], headers={"Range": f"bytes={(1 << 20) - 3}-{(1 << 20) + 2}"})
    assert r.status_code == 206 and len(r.content) == 6


def test_links_expire_by_the_clock(make_server: Any, asgi: Any, camera: Any) -> None:
    server = make_server({"camera": camera}, blob_ttl=0.3, retention=60)
    client = asgi(server)
    inv = client.post("/camera/capture_raw_image", params={"wait": "20"}, json={"size": 10}).json()
    url = inv["output"]["url"]
    assert client.get(url).status_code == 200
    link_id = url.rsplit("/", 1)[1]
    # Nobody asks: the timer alone releases the Blob (the link then answers 410).
    wait_until(lambda: server.links.get(link_id).expired)  # type: ignore[union-attr]
    assert server.links.get(link_id).blob() is None  # type: ignore[union-attr]
    r = client.get(url)
    assert r.status_code == 410 and r.json()["error"] == "BlobExpired"
    # the invocation itself is still retained (retention 60 s), its output link now dead
    assert client.get(inv["href"]).json()["status"] == "completed"


def test_per_action_ttl_overrides_the_server(make_server: Any, asgi: Any, camera: Any) -> None:
    client = asgi(make_server({"camera": camera}, blob_ttl=600))
    short = capture(client, -1, "short_lived")  # @thing_action(blob_ttl=0.3)
    long = capture(client, 10)
    wait_until(lambda: client.get(short["url"]).status_code == 410)
    assert client.get(long["url"]).status_code == 200


def test_nested_blobs_in_outputs(client: Any) -> None:
    inv = client.post("/camera/nested", params={"wait": "20"}, json={"n": 3}).json()
    frames = inv["output"]["frames"]
    assert [f["size"] for f in frames] == [10, 11, 12]
    assert [client.get(f["url"]).content for f in frames] == [frame(10), frame(11), frame(12)]
    inv = client.post("/camera/capture_with_note", params={"wait": "20"}, json={"note": "n"}).json()
    assert inv["output"]["note"] == "n"
    assert client.get(inv["output"]["image"]["url"]).content == frame(8)


def test_upload_then_use_as_input(client: Any, tmp_path: Path) -> None:
    data = os.urandom(300_000)
    r = client.post("/blobs", content=data, headers={"Content-Type": "image/x-raw"})
    assert r.status_code == 201
    up = r.json()
    assert r.headers["location"] == up["url"]
    assert up["size"] == len(data) and up["sha256"] == hashlib.sha256(data).hexdigest()
    assert up["content_type"] == "image/x-raw"
    assert client.get(up["url"]).content == data
    inv = client.post("/camera/blob_sha256", params={"wait": "20"}, json={"blob": {"url": up["url"]}}).json()
    assert inv["output"] == up["sha256"]
    # the relative path and the LabThings spelling work too
    rel = "/blobs/" + up["url"].rsplit("/", 1)[1]
    inv = client.post("/camera/blob_length", params={"wait": "20"}, json={"blob": {"href": rel}}).json()
    assert inv["output"] == len(data)


def test_output_blob_passed_back_as_input_is_the_same_object(client: Any, camera: Any) -> None:
    out = capture(client, 64)
    inv = client.post("/camera/convert_raw_to_jpeg", params={"wait": "20"}, json={"raw": out}).json()
    assert inv["status"] == "completed"
    jpeg = client.get(inv["output"]["url"])
    assert jpeg.headers["content-type"] == "image/jpeg"
    assert jpeg.content == b"\xff\xd8JPEG" + frame(64)[:16]


def test_upload_over_the_limit_is_413_and_leaves_nothing(make_server: Any, asgi: Any, tmp_path: Path) -> None:
    client = asgi(make_server({}, max_upload=1000, upload_dir=str(tmp_path)))
    r = client.post("/blobs", content=b"x" * 1001)
    assert r.status_code == 413 and r.json()["error"] == "PayloadTooLarge"
    assert list(tmp_path.iterdir()) == []
    assert client.post("/blobs", content=b"x" * 1000).status_code == 201


def test_streamed_upload_over_the_limit_is_413_and_leaves_nothing(make_server: Any, live: Any, tmp_path: Path) -> None:
    import httpx

    base = live(make_server({}, max_upload=100_000, upload_dir=str(tmp_path)))

    def body() -> Any:  # no Content-Length: chunked, so the server only finds out while reading
        for _ in range(30):
            yield b"y" * 10_000

    with httpx.Client() as c:
        r = c.post(base + "blobs", content=body(), headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 413 and "limit" in r.json()["detail"]
    wait_until(lambda: list(tmp_path.iterdir()) == [])


def test_expired_upload_file_is_removed(make_server: Any, asgi: Any, tmp_path: Path) -> None:
    import gc

    client = asgi(make_server({}, blob_ttl=0.2, upload_dir=str(tmp_path)))
    url = client.post("/blobs", content=b"abc").json()["url"]
    assert len(list(tmp_path.iterdir())) == 1
    wait_until(lambda: client.get(url).status_code == 410)
    wait_until(lambda: gc.collect() is not None and list(tmp_path.iterdir()) == [])


@pytest.mark.parametrize(
    "ref",
    [
        {"url": "http://169.254.169.254/latest/meta-data"},
        {"url": "http://testserver.evil.example/blobs/abc"},
        {"url": "https://testserver/blobs/abc"},  # another scheme is another origin
        {"url": "file:///etc/passwd"},
        {"url": "/etc/passwd"},
        {"url": "/blobs/does-not-exist"},
        {"url": "http://testserver/invocations/"},
        {"nothing": "here"},
        "http://127.0.0.1:1/x",
        42,
    ],
)
def test_blob_inputs_only_from_this_server(client: Any, ref: Any) -> None:
    r = client.post("/camera/blob_length", params={"wait": "5"}, json={"blob": ref})
    assert r.status_code == 422
    assert r.json()["field"] == "blob"


def test_expired_blob_as_input_is_422(make_server: Any, asgi: Any, camera: Any) -> None:
    client = asgi(make_server({"camera": camera}, blob_ttl=0.2))
    out = capture(client, 10)
    wait_until(lambda: client.get(out["url"]).status_code == 410)
    r = client.post("/camera/blob_length", json={"blob": out})
    assert r.status_code == 422 and "expired" in r.json()["detail"]


def test_bad_upload_content_type_is_415(client: Any) -> None:
    r = client.post("/blobs", content=b"x", headers={"Content-Type": "not a type"})
    assert r.status_code == 415


@pytest.mark.parametrize("ctype", [b"image/jp\xe9g", b"text/\xb5plain", b"a/b; x=\x7f"])
def test_upload_content_type_follows_the_store_rule(client: Any, ctype: bytes) -> None:
    """One media-type rule: a type the store refuses (letters no header can carry, control characters) is
    refused at upload too, not linked and then served back in a Content-Type header."""
    with pytest.raises(microblob.InvalidArgument):
        check_content_type(ctype.decode("latin-1"))
    r = client.post("/blobs", content=b"x", headers={"Content-Type": ctype})
    assert r.status_code == 415 and r.json()["error"] == "UnsupportedMediaType"


def test_upload_keeps_a_type_with_parameters(client: Any) -> None:
    r = client.post("/blobs", content=b"x", headers={"Content-Type": "text/plain; charset=utf-8"})
    assert r.status_code == 201 and r.json()["content_type"] == "text/plain; charset=utf-8"
