"""Per-call state of the Thing server stays bounded under sustained load, and expiry still happens (issue 14).

A real server (uvicorn on 127.0.0.1 in a thread, so its tables and objects can be counted here) is driven
thousands of calls past its `max_invocations` cap. What is counted is objects, not memory: the invocations,
Blobs and links alive (gc.get_objects), the server's own tables and the scheduler's timers. Time is the
scheduler's injectable clock, moved by hand and followed by `run_due()`, so nothing waits for real time.
`bench/soak_http.py` measures what these bounds buy (throughput and RSS over 15 minutes).
"""

from __future__ import annotations

import gc
import os
import threading
import weakref
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from microblob import Blob, Thing, thing_action, thing_property
from microblob.http.invocations import Invocation
from microblob.http.links import Link
from microblob.http.scheduler import Scheduler

SIZE = 1024
CAP = 50
CALLS = CAP + 5_000


class Clock:
    """A monotonic clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


class Frames(Thing):
    def __init__(self) -> None:
        super().__init__()
        self.still = Blob.from_bytes(b"s" * SIZE, "application/octet-stream")

    @thing_action
    def frame(self) -> Blob:
        return Blob.from_bytes(os.urandom(SIZE), "application/octet-stream")

    @thing_property
    def latest(self) -> Blob:
        return self.still

    @thing_action
    def note(self, text: str, hold: float = 0.0) -> int:
        if hold:
            self.release.wait(hold)
        return len(text)

    release = threading.Event()


_EARLIER: dict[int, weakref.ref[Any]] = {}  # by id, since Invocation is unhashable; the ref tells a reused id


def alive(kind: type) -> int:
    """Objects of `kind` alive now that were not alive when this test began: other tests in the same
    session may still hold Blobs or invocations of their own, and those are not this server's state."""
    gc.collect()
    return sum(1 for o in gc.get_objects() if type(o) is kind and not _was_alive(o))


def _was_alive(o: Any) -> bool:
    ref = _EARLIER.get(id(o))
    return ref is not None and ref() is o


@pytest.fixture(autouse=True)
def _count_from_here() -> None:
    _EARLIER.clear()
    gc.collect()
    _EARLIER.update((id(o), weakref.ref(o)) for o in gc.get_objects() if type(o) in (Blob, Invocation, Link))


@pytest.fixture
def served(make_server: Any, live: Any) -> Iterator[tuple[Any, Clock, httpx.Client]]:
    def make(**options: Any) -> tuple[Any, Clock, httpx.Client]:
        app = make_server({"cam": Frames()}, **options)
        clock = Clock()
        app.scheduler.clock = clock  # before any call: every deadline is on this clock
        http = httpx.Client(base_url=live(app), timeout=60)
        clients.append(http)
        return app, clock, http

    clients: list[httpx.Client] = []
    yield make  # type: ignore[misc]
    for http in clients:
        http.close()


def call(http: httpx.Client) -> dict[str, Any]:
    """POST the action (held until it ends), GET its Blob: the soak's one iteration."""
    inv = http.post("/cam/frame", params={"wait": "30"}, json={}).json()
    assert inv["status"] == "completed", inv
    r = http.get(inv["output"]["url"])
    assert r.status_code == 200 and len(r.content) == SIZE
    return inv


def test_thousands_of_calls_past_the_cap_leave_the_tables_at_their_caps(served: Any) -> None:
    app, _, http = served(max_invocations=CAP)
    app.links.max_tombstones = 200
    threads = 4
    with ThreadPoolExecutor(threads) as pool:
        base = str(http.base_url)

        def batch(n: int) -> None:
            with httpx.Client(base_url=base, timeout=60) as own:
                for _ in range(n):
                    call(own)

        per_thread = -(-CALLS // threads)
        list(pool.map(batch, [per_thread] * threads))
    assert per_thread * threads >= 5_000 + CAP
    # Nothing expired (the clock stood still): only the cap and the collected Blobs bound the state.
    assert alive(Invocation) == CAP  # those dropped by the cap are gone, not held by their timers
    assert alive(Blob) <= CAP + 1  # the table's outputs (and the Thing's own still frame)
    assert len(app.links) <= CAP + 200
    assert app.invocations.sizes() == {"invocations": CAP, "finished": CAP, "input_bytes": 2 * CAP}  # '{}' each
    sizes = app.links.sizes()
    assert sizes["live"] <= CAP  # the links of collected Blobs were buried at once
    assert sizes["tombstones"] == 200  # bounded by count
    assert len(app.links) == sizes["live"] + sizes["tombstones"]
    assert alive(Link) <= CAP + 200 + 1
    timers = len(app.scheduler)
    assert timers <= 2 * CAP + sizes["live"] + 1  # forget + release per invocation, one per link, one sweep
    assert app.scheduler.queued() <= 2 * timers + 64  # cancelled entries do not pile up in the heap
    # The table still works: the newest invocation and its Blob are served, the oldest are forgotten.
    newest = call(http)
    assert http.get(newest["href"]).json()["status"] == "completed"
    listed = http.get("/invocations/").json()
    assert len(listed) == CAP and listed[-1]["id"] == newest["id"]


def test_expiry_runs_on_the_clock_and_leaves_nothing(served: Any) -> None:
    app, clock, http = served(blob_ttl=10, retention=20)
    invs = [call(http) for _ in range(30)]
    urls = [inv["output"]["url"] for inv in invs]
    assert app.links.sizes() == {"live": 30, "tombstones": 0}
    assert len(app.scheduler) == 2 * 30 + 30  # forget and release per invocation, one per link
    clock.advance(10.5)
    assert app.scheduler.run_due() == 60  # every release and every link expiry
    gc.collect()
    assert all(http.get(u).status_code == 410 for u in urls)  # expired, said so
    assert app.links.sizes() == {"live": 0, "tombstones": 30}
    assert all(http.get(inv["href"]).json()["status"] == "completed" for inv in invs)  # still retained
    assert alive(Invocation) == 30 and alive(Blob) == 1  # their Blobs went; the Thing's still frame stays
    clock.advance(10)
    app.scheduler.run_due()
    assert all(http.get(inv["href"]).status_code == 404 for inv in invs)
    assert app.invocations.sizes() == {"invocations": 0, "finished": 0, "input_bytes": 0} and alive(Invocation) == 0
    assert len(app.scheduler) == 1  # the tombstones' one sweep
    clock.advance(app.links.tombstone_time)
    app.scheduler.run_due()
    assert all(http.get(u).status_code == 404 for u in urls)  # long gone
    assert len(app.links) == 0 and len(app.scheduler) == 0 and app.scheduler.queued() == 0


def test_deleting_an_invocation_cancels_its_timers(served: Any) -> None:
    app, _, http = served()
    invs = [call(http) for _ in range(10)]
    before = len(app.scheduler)
    for inv in invs:
        assert http.delete(inv["href"]).status_code == 204
    assert len(app.scheduler) <= before - 2 * 10  # forget and release of each went with it
    assert alive(Invocation) == 0 and app.links.sizes() == {"live": 0, "tombstones": 10}


def test_reading_the_same_blob_again_extends_one_link_with_one_timer(served: Any) -> None:
    app, clock, http = served(blob_ttl=10)
    first = http.get("/cam/latest").json()
    for _ in range(500):
        clock.advance(0.01)
        assert http.get("/cam/latest").json()["url"] == first["url"]  # the same link, extended
    assert app.links.sizes() == {"live": 1, "tombstones": 0}
    assert len(app.scheduler) == 1 and app.scheduler.queued() == 1
    clock.advance(10 - 5 + 0.01)  # past the first deadline, before the last one
    app.scheduler.run_due()
    assert http.get(first["url"]).status_code == 200
    assert len(app.scheduler) == 1  # the timer set itself again for the later deadline
    clock.advance(5)
    app.scheduler.run_due()
    assert http.get(first["url"]).status_code == 410
    assert app.links.sizes() == {"live": 0, "tombstones": 1}


def test_tombstones_are_bounded_by_time_as_well(served: Any) -> None:
    app, clock, http = served(blob_ttl=1)
    app.links.tombstone_time = 100
    old = [call(http)["output"]["url"] for _ in range(5)]
    clock.advance(60)
    app.scheduler.run_due()
    new = [call(http)["output"]["url"] for _ in range(5)]
    clock.advance(1.5)
    app.scheduler.run_due()
    assert app.links.sizes() == {"live": 0, "tombstones": 10}
    clock.advance(40)  # the first five are 100.5 s past their deadline, the others 40.5 s
    app.scheduler.run_due()
    assert [http.get(u).status_code for u in old + new] == [404] * 5 + [410] * 5
    assert app.links.sizes() == {"live": 0, "tombstones": 5}


def test_a_cancelled_timer_lets_go_of_its_callback_and_the_heap_is_compacted() -> None:
    clock = Clock()
    scheduler = Scheduler(clock)
    try:
        class Held:
            pass

        held = [Held() for _ in range(1000)]
        refs = [weakref.ref(h) for h in held]
        ran: list[int] = []
        timers = [scheduler.call_at(clock() + 60, lambda h=h, i=i: ran.append(i)) for i, h in enumerate(held)]
        del held
        for t in timers[:900]:
            t.cancel()
        gc.collect()
        assert sum(r() is None for r in refs) == 900  # cancelled: its callback's references are gone
        assert len(scheduler) == 100 and scheduler.queued() <= 2 * 100 + 64
        assert not timers[0].active and timers[999].active
        clock.advance(60)
        assert scheduler.run_due() == 100 and ran == list(range(900, 1000))
        assert len(scheduler) == 0 and scheduler.queued() == 0
        timers[0].cancel()  # cancelling again, or after it ran, does nothing
        timers[999].cancel()
        assert len(scheduler) == 0
    finally:
        scheduler.close()


def test_kept_inputs_are_bounded_in_bytes_not_only_in_count(served: Any) -> None:
    """Big request bodies are kept as invocation inputs for `retention` seconds: the table forgets its
    oldest finished invocations to keep their bytes under `max_input_bytes`, and refuses (503) a new one
    only while the running invocations' inputs alone would pass it."""
    app, _, http = served(max_invocations=1000)
    app.invocations.max_input_bytes = 3_050_000  # three bodies of a million characters
    text = "x" * 1_000_000
    done = [http.post("/cam/note", params={"wait": "30"}, json={"text": text}).json() for _ in range(10)]
    assert all(inv["output"] == len(text) for inv in done)
    sizes = app.invocations.sizes()
    assert sizes["invocations"] == 3 and 3_000_000 < sizes["input_bytes"] <= 3_050_000  # the newest three
    assert [inv["id"] for inv in http.get("/invocations/").json()] == [inv["id"] for inv in done[-3:]]
    assert http.get(done[0]["href"]).status_code == 404
    try:  # three running invocations hold the budget: a fourth is refused until one ends
        running = [http.post("/cam/note", params={"wait": "0"}, json={"text": text, "hold": 30}) for _ in range(3)]
        assert [r.status_code for r in running] == [201, 201, 201], [r.text for r in running]
        refused = http.post("/cam/note", params={"wait": "0"}, json={"text": text})
        assert refused.status_code == 503 and refused.json()["error"] == "TooManyInvocations"
        assert http.post("/cam/note", params={"wait": "30"}, json={"text": "small"}).json()["output"] == 5
    finally:
        Frames.release.set()
    for r in running:
        assert http.get(r.json()["href"], params={"wait": "30"}).json()["status"] == "completed"
    Frames.release.clear()
