"""``GET /objects/`` answers bounded pages: at most `max_page_size` objects (also for ``limit=0``), a
``Link: rel="next"`` cursor for the rest, a body streamed document by document."""

from __future__ import annotations

import base64
import json
import threading
import tracemalloc
from pathlib import Path
from typing import Any

import httpx
import pytest

import microblob


def _pages(client: httpx.Client, params: dict[str, Any]) -> list[list[dict[str, Any]]]:
    pages = []
    r = client.get("/objects/", params=params)
    while True:
        assert r.status_code == 200, r.text
        pages.append(r.json())
        following = r.links.get("next")
        if following is None:
            return pages
        assert "cursor=" in following["url"]
        r = client.get(following["url"])


@pytest.mark.parametrize("sort", [None, "-updated_at", "type,-created_at", '[["custom_metadata.n", -1]]'])
def test_pages_via_next_cover_everything_once(make_server: Any, live: Any, tmp_path: Path, sort: str | None) -> None:
    store = microblob.connect(tmp_path / "store.db")
    for i in range(23):
        store.save_or_update_object(b"x", object_id=f"o{i:02d}", type=("a", "b")[i % 2], custom_metadata={"n": i % 3})
    base = live(make_server({}, store=store, max_page_size=7))
    params = {"limit": 0, **({"sort": sort} if sort else {})}
    with httpx.Client(base_url=base, timeout=60) as client:
        pages = _pages(client, params)
        assert [len(p) for p in pages] == [7, 7, 7, 2]
        ids = [o["object_id"] for page in pages for o in page]
        assert len(ids) == len(set(ids)) == 23
        if sort is not None:  # the pages, one after the other, are the sorted listing
            spec = [(s.lstrip("-"), -1 if s.startswith("-") else 1) for s in sort.split(",")] \
                if not sort.startswith("[") else [tuple(x) for x in json.loads(sort)]
            expected = [o.object_id for o in store.blob_object_query(sort=[*spec, ("_id", 1)])]
            assert ids == expected
        # a filter is paged the same way
        filtered = _pages(client, {"filter": json.dumps({"type": "a"}), "limit": 5})
        assert sorted(o["object_id"] for p in filtered for o in p) == [f"o{i:02d}" for i in range(0, 23, 2)]
        assert [len(p) for p in filtered] == [5, 5, 2]


def test_limit_zero_and_large_limits_are_bounded(make_server: Any, live: Any) -> None:
    store = microblob.connect("memory://")
    for i in range(12):
        store.save_or_update_object(b"x", object_id=f"o{i:02d}")
    base = live(make_server({}, store=store, max_page_size=5))
    with httpx.Client(base_url=base, timeout=60) as client:
        for params in ({"limit": 0}, {}, {"limit": 10**6}, {"limit": 0, "skip": 3}):
            r = client.get("/objects/", params=params)
            assert r.status_code == 200 and len(r.json()) == 5 and "next" in r.links, (params, r.text)
        r = client.get("/objects/", params={"limit": 3})  # a smaller limit is the page size
        assert len(r.json()) == 3 and "next" in r.links
        r = client.get("/objects/", params={"skip": 10})  # the last page has no next
        assert len(r.json()) == 2 and "next" not in r.links


def test_the_default_page_size_is_1000(make_server: Any) -> None:
    assert make_server({}, store=microblob.connect("memory://")).max_page_size == 1000
    for bad in (0, -1, 1.5, "10", True):
        with pytest.raises(microblob.InvalidArgument):
            make_server({}, store=microblob.connect("memory://"), max_page_size=bad)


def test_bad_cursors_are_400_json(make_server: Any, live: Any) -> None:
    store = microblob.connect("memory://")
    for i in range(4):
        store.save_or_update_object(b"x", object_id=f"o{i}", type="t")
    base = live(make_server({}, store=store, max_page_size=2))
    with httpx.Client(base_url=base, timeout=60) as client:
        following = client.get("/objects/", params={"sort": "-updated_at"}).links["next"]["url"]
        good = httpx.URL(following).params["cursor"]
        forged = base64.urlsafe_b64encode(b'{"o": -1, "q": "x"}').decode()
        cases = [{"cursor": "not a cursor!"}, {"cursor": "e30"}, {"cursor": forged}, {"cursor": ""},
                 {"cursor": base64.urlsafe_b64encode(b"[1, 2]").decode()},
                 {"cursor": base64.urlsafe_b64encode(b"[" * 1100).decode()},  # RecursionError in json.loads
                 {"cursor": good},  # made for sort=-updated_at, used without it
                 {"cursor": good, "sort": "-updated_at", "filter": '{"type": "t"}'},
                 {"cursor": good, "sort": "-updated_at", "skip": 1}]
        for params in cases:
            r = client.get("/objects/", params=params)
            assert r.status_code == 400 and r.headers["content-type"] == "application/json", (params, r.text)
            assert r.json()["error"] in ("BadCursor", "BadRequest") and r.json()["detail"], r.text
        assert len(client.get(following).json()) == 2  # the real next link still works


def test_the_listing_is_streamed_in_bounded_memory(make_server: Any, live: Any, tmp_path: Path) -> None:
    """16 objects with 2 MiB of metadata each (32 MiB): the server never holds the whole page as one
    string (a JSON body built at once took 3 copies of it)."""
    store = microblob.connect(tmp_path / "store.db")
    for i in range(16):
        store.save_or_update_object(b"x", object_id=f"big{i:02d}", custom_metadata={"note": f"{i:02d}" * (1 << 20)})
    base = live(make_server({}, store=store))
    total = 0
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        with httpx.Client(base_url=base, timeout=120) as client, client.stream("GET", "/objects/") as r:
            assert r.status_code == 200 and "content-length" not in r.headers  # streamed, chunk by chunk
            for chunk in r.iter_raw(1 << 16):
                total += len(chunk)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert total > 32 << 20
    assert peak < 28 << 20, f"peak {peak / 2**20:.1f} MiB for a 32 MiB page"


def test_others_are_served_while_a_page_streams(make_server: Any, live: Any, tmp_path: Path) -> None:
    """A streamed page is read by a slow client; another client's request completes meanwhile."""
    store = microblob.connect(tmp_path / "store.db")
    for i in range(8):
        store.save_or_update_object(b"x", object_id=f"big{i}", custom_metadata={"note": "x" * (1 << 20)})
    base = live(make_server({}, store=store))
    started, done = threading.Event(), threading.Event()

    def slow_reader() -> None:
        with httpx.Client(base_url=base, timeout=60) as client, client.stream("GET", "/objects/") as r:
            chunks = r.iter_raw(1 << 14)
            next(chunks)
            started.set()
            done.wait(60)
            for _ in chunks:
                pass

    thread = threading.Thread(target=slow_reader)
    thread.start()
    try:
        assert started.wait(60)
        with httpx.Client(base_url=base, timeout=60) as client:
            assert client.get("/objects/big0").json()["object_id"] == "big0"
        assert thread.is_alive()
    finally:
        done.set()
        thread.join(60)
