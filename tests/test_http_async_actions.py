"""`async def` actions: they run like any action (typed input, JSON or Blob output, errors reported), on an
event loop of their own in a worker thread, never on the server's loop; a cancel request cancels their task
at its next await, and so does closing the server."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from test_http_server import wait_until

from microblob import Blob, Thing, thing_action
from microblob.things.thing import raise_if_cancelled


class Sensor(Thing):
    def __init__(self) -> None:
        self.started = threading.Event()
        self.saw_cancel = threading.Event()

    @thing_action
    async def average(self, samples: list[float], settle: float = 0.0) -> float:
        """The mean of `samples`, after waiting `settle` seconds (an await, not a blocked thread)."""
        await asyncio.sleep(settle)
        return sum(samples) / len(samples)

    @thing_action
    async def trace(self, size: int) -> Blob:
        await asyncio.sleep(0)
        return Blob.from_bytes(bytes(range(256)) * (size // 256), content_type="application/x-trace")

    @thing_action
    async def where(self) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        return {"thread": threading.current_thread().name, "loop": id(loop), "running": loop.is_running()}

    @thing_action
    async def forever(self) -> str:
        self.started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            self.saw_cancel.set()
            raise
        return "never"

    @thing_action
    async def checks_cancel(self) -> str:
        raise_if_cancelled()  # the cancel event reaches the coroutine's context too
        return "not cancelled"

    @thing_action
    async def broken(self) -> int:
        await asyncio.sleep(0)
        raise ValueError("no sensor attached")


@pytest.fixture
def sensor() -> Sensor:
    return Sensor()


@pytest.fixture
def client(make_server: Any, asgi: Any, sensor: Sensor) -> Any:
    return asgi(make_server({"sensor": sensor}))


def test_an_async_action_is_described_validated_and_run(client: Any) -> None:
    td = client.get("/sensor/").json()
    average = td["actions"]["average"]
    assert average["input"]["properties"]["samples"] == {"type": "array", "items": {"type": "number"}}
    assert average["output"] == {"type": "number"}
    assert average["description"].startswith("The mean of `samples`")
    done = client.post("/sensor/average", params={"wait": "20"}, json={"samples": [1, 2, 6], "settle": 0.01}).json()
    assert done["status"] == "completed" and done["output"] == 3.0
    bad = client.post("/sensor/average", json={"samples": "three"})
    assert bad.status_code == 422 and "samples" in bad.json()["detail"]


def test_an_async_action_returns_a_blob(client: Any) -> None:
    done = client.post("/sensor/trace", params={"wait": "20"}, json={"size": 4096}).json()
    assert done["status"] == "completed"
    r = client.get(done["output"]["url"])
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-trace"
    assert r.content == bytes(range(256)) * 16


def test_an_async_action_runs_on_a_loop_of_its_own_in_a_worker_thread(client: Any) -> None:
    first = client.post("/sensor/where", params={"wait": "20"}, json={}).json()["output"]
    assert first["thread"].startswith("microblob-action") and first["running"] is True
    assert first["thread"] != threading.current_thread().name
    # the server keeps answering while an async action awaits
    slow = client.post("/sensor/average", json={"samples": [1.0], "settle": 0.5}).json()
    assert client.get("/sensor/").status_code == 200
    assert client.get(slow["href"], params={"wait": "20"}).json()["output"] == 1.0


def test_cancelling_an_async_action_cancels_it_at_its_await(client: Any, sensor: Sensor) -> None:
    inv = client.post("/sensor/forever", json={}).json()
    assert sensor.started.wait(20)
    assert client.delete(inv["href"]).status_code == 202
    done = client.get(inv["href"], params={"wait": "20"}).json()  # not an hour
    assert done["status"] == "cancelled" and done["output"] is None
    assert sensor.saw_cancel.is_set()  # the coroutine got CancelledError at its await


def test_an_async_action_sees_the_cancel_event(client: Any) -> None:
    done = client.post("/sensor/checks_cancel", params={"wait": "20"}, json={}).json()
    assert done["status"] == "completed" and done["output"] == "not cancelled"


def test_an_async_action_error_is_reported(client: Any) -> None:
    done = client.post("/sensor/broken", params={"wait": "20"}, json={}).json()
    assert done["status"] == "error"
    assert done["error"] == {"type": "ValueError", "message": "no sensor attached"}


def test_closing_the_server_cancels_a_running_async_action(make_server: Any, asgi: Any, sensor: Sensor) -> None:
    server = make_server({"sensor": sensor})
    client = asgi(server)
    client.post("/sensor/forever", json={})
    assert sensor.started.wait(20)
    server.close()
    wait_until(sensor.saw_cancel.is_set)


def test_thing_client_calls_async_actions(thing_client: Any) -> None:
    sensor = thing_client(Sensor())
    assert sensor.average(samples=[2.0, 4.0]) == 3.0
    assert sensor.trace(size=512).data == bytes(range(256)) * 2
