"""The /objects/ routes and Blob.from_object, against every embedded store backend."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import pytest

from microblob import Blob, Thing, ThingClient, thing_action


class Inspector(Thing):
    def __init__(self, store: Any) -> None:
        self.store = store

    @thing_action
    def length(self, blob: Blob) -> int:
        return len(blob.data)

    @thing_action
    def load(self, object_id: str, version: int | None = None) -> Blob:
        return Blob.from_object(self.store, object_id, version)

    @thing_action
    def keep(self, blob: Blob, name: str) -> str:
        return self.store.save_or_update_object(blob, object_id=name, type="kept")


@pytest.fixture
def client(store: Any, make_server: Any, asgi: Any) -> Any:
    return asgi(make_server({"inspect": Inspector(store)}, store=store))


def test_blob_from_object_is_lazy_and_pinned(store: Any) -> None:
    oid = store.save_or_update_object(b"v0", content_type="text/plain")
    blob = Blob.from_object(store, oid)
    store.save_or_update_object(b"version one", object_id=oid, control_version=True)
    assert blob.content_type == "text/plain"
    assert blob.data == b"v0"  # the version current when the Blob was made
    assert blob.sha256 == hashlib.sha256(b"v0").hexdigest()
    assert Blob.from_object(store, oid).data == b"version one"
    with Blob.from_object(store, oid, version=0).open() as f:
        assert f.read() == b"v0"


def test_list_get_history_data(client: Any, store: Any) -> None:
    data = os.urandom(250_000)  # several store chunks
    oid = store.save_or_update_object(data, content_type="image/png", type="image", custom_metadata={"x": 1})
    store.save_or_update_object(data[::-1], object_id=oid, control_version=True)
    listed = client.get("/objects/").json()
    assert [o["object_id"] for o in listed] == [oid]
    assert listed[0]["version"] == 1 and listed[0]["custom_metadata"] == {"x": 1}
    meta = client.get(f"/objects/{oid}", params={"version": 0}).json()
    assert meta["version"] == 0 and meta["sha256"] == hashlib.sha256(data).hexdigest()
    r = client.get(meta["data_url"])
    assert r.content == data and r.headers["content-type"] == "image/png"
    assert r.headers["etag"] == f'"{meta["sha256"]}"' and r.headers["content-length"] == str(len(data))
    r = client.get(f"/objects/{oid}/data", headers={"Range": "bytes=100000-100009"})
    assert r.status_code == 206 and r.content == data[::-1][100000:100010]
    assert client.head(f"/objects/{oid}/data").headers["content-length"] == str(len(data))
    history = client.get(f"/objects/{oid}/history").json()
    assert [h["version"] for h in history] == [1, 0]


def test_query_sort_limit_skip(client: Any, store: Any) -> None:
    for i in range(5):
        store.save_or_update_object(b"x", object_id=f"o{i}", type="even" if i % 2 == 0 else "odd",
                                    custom_metadata={"i": i})
    got = client.get("/objects/", params={"filter": json.dumps({"type": "even"}), "sort": "-custom_metadata.i"})
    assert [o["object_id"] for o in got.json()] == ["o4", "o2", "o0"]
    got = client.get("/objects/", params={"sort": "custom_metadata.i", "limit": 2, "skip": 1})
    assert [o["object_id"] for o in got.json()] == ["o1", "o2"]


@pytest.mark.parametrize(
    ("path", "params", "status"),
    [
        ("/objects/", {"filter": "{not json"}, 400),
        ("/objects/", {"filter": json.dumps({"$where": "1"})}, 400),
        ("/objects/", {"limit": "-1"}, 400),
        ("/objects/missing", {}, 404),
        ("/objects/missing/data", {}, 404),
        ("/objects/missing/history", {}, 404),
        ("/objects/o/data", {"version": "7"}, 404),
        ("/objects/o/data", {"version": "x"}, 400),
        # found while checking tests/test_store_fuzz.py's classes: deep JSON raised RecursionError (a 500)
        ("/objects/", {"filter": "[" * 5_000}, 400),
        ("/objects/", {"filter": '{"a":' * 1_500 + "1" + "}" * 1_500}, 400),
        ("/objects/", {"filter": '{"a":' * 150 + "1" + "}" * 150}, 400),  # parses; deeper than 100 levels
        ("/objects/", {"sort": "[" * 5_000}, 400),
    ],
)
def test_store_errors_are_4xx_json(client: Any, store: Any, path: str, params: dict[str, str], status: int) -> None:
    store.save_or_update_object(b"x", object_id="o")
    r = client.get(path, params=params)
    assert r.status_code == status
    assert set(r.json()) >= {"error", "detail"}


def test_upload_and_delete(client: Any, store: Any) -> None:
    r = client.post("/objects/", params={"object_id": "up", "type": "image", "tags": "a,b",
                                          "custom_metadata": json.dumps({"k": "v"})},
                    content=b"\x89PNG data", headers={"Content-Type": "image/png"})
    assert r.status_code == 201
    meta = r.json()
    assert meta["object_id"] == "up" and meta["tags"] == ["a", "b"] and meta["custom_metadata"] == {"k": "v"}
    assert r.headers["location"] == meta["url"]
    assert store.get_blob_object("up").data == b"\x89PNG data"
    assert store.get_blob_object("up").content_type == "image/png"
    r = client.post("/objects/", params={"object_id": "up", "control_version": "true"}, content=b"v1")
    assert r.json()["version"] == 1
    assert client.delete("/objects/up").status_code == 204
    assert client.delete("/objects/up").status_code == 404
    assert client.get("/objects/up").status_code == 404


def test_objects_as_action_inputs_and_outputs(client: Any, store: Any) -> None:
    oid = store.save_or_update_object(b"stored bytes", content_type="text/plain")
    r = client.post("/inspect/length", params={"wait": "20"},
                    json={"blob": {"url": f"http://testserver/objects/{oid}/data"}})
    assert r.json()["output"] == 12
    r = client.post("/inspect/length", json={"blob": {"url": "/objects/nope/data"}})
    assert r.status_code == 422 and r.json()["field"] == "blob"
    out = client.post("/inspect/load", params={"wait": "20"}, json={"object_id": oid}).json()["output"]
    assert out["content_type"] == "text/plain" and client.get(out["url"]).content == b"stored bytes"


def test_client_blob_into_the_store(store: Any, make_server: Any, live: Any) -> None:
    base = live(make_server({"inspect": Inspector(store)}, store=store))
    client = ThingClient.from_url(base + "inspect/")
    oid = client.keep(Blob.from_bytes(b"from a client", content_type="text/plain"), "kept")
    obj = store.get_blob_object(oid)
    assert obj.data == b"from a client" and obj.content_type == "text/plain" and obj.type == "kept"


def test_index_page_is_the_browse_page_with_a_store(client: Any, store: Any) -> None:
    """With a store the browse page lists objects from `/objects/` (thumbnails, history, downloads: see
    tests/test_browse_page.py, which runs it in Chromium); the page itself holds no user data."""
    store.save_or_update_object(b"\x89PNG", object_id="pic", content_type="image/png")
    r = client.get("/")
    assert r.status_code == 200 and '<body data-store="yes">' in r.text
    assert "pic" not in r.text
    listed = client.get("/objects/", params={"sort": "-updated_at,object_id", "limit": "51", "skip": "0"}).json()
    assert [o["object_id"] for o in listed] == ["pic"]
