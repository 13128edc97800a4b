"""What a LabThings-FastAPI user writes, served by microblob: pydantic models in and out (with Blobs nested
in them), `Field` constraints enforced (422, nothing runs) and published in the Thing Description, data
properties and the ``@x.setter def _set_x`` pattern, `**kwargs`, `self.logger`, and cancellation that an
action catches. Over the real Starlette app (in-process ASGI, and a socket for the ThingClient)."""

from __future__ import annotations

import datetime as dt
import enum
import threading
from typing import Annotated, Any

import httpx
import pytest
from pydantic import BaseModel, Field
from thing_fixtures import JPEGBlob, RAWBlob
from typing_extensions import TypedDict  # pydantic needs this one before Python 3.12

from microblob import (
    Blob,
    InvalidArgument,
    InvalidInput,
    InvocationCancelled,
    RemoteInvalidInput,
    Thing,
    ThingClient,
    cancellable_sleep,
    thing_action,
    thing_property,
)


class Position(BaseModel):
    x: Annotated[float, Field(ge=-10, le=10, description="millimetres from the centre")]
    y: float = 0.0


class Snapshot(BaseModel):
    label: str
    image: RAWBlob
    thumbnails: list[JPEGBlob] = []
    taken_at: dt.datetime


class Mode(enum.Enum):
    FAST = "fast"
    SLOW = "slow"


class Exposure(TypedDict):
    gain: float
    mode: Mode


class Stage(Thing):
    """A motorised stage with a camera on it."""

    speed: int = thing_property(default=5, ge=1, le=100, description="steps per second")
    counter: int = thing_property(default=0, readonly=True)
    history: list[int] = thing_property(default_factory=list)

    def __init__(self) -> None:
        self._focus = 0.5
        self.moved: list[int] = []
        self.polite_started = threading.Event()

    @thing_property
    def focus(self) -> Annotated[float, Field(ge=0, le=1)]:
        """Focus, from 0 (near) to 1 (far)."""
        return self._focus

    @focus.setter
    def _set_focus(self, value: float) -> None:
        self._focus = value

    @thing_action
    def move(self, steps: Annotated[int, Field(ge=0, le=10, description="how many steps")]) -> int:
        """Move the stage; the hardware breaks beyond 10 steps."""
        self.moved.append(steps)
        self.counter += steps
        return self.counter

    @thing_action
    def go_to(self, target: Position) -> Position:
        return Position(x=target.x, y=target.y + 1)

    @thing_action
    def snapshot(self, label: str, thumbnails: int = 2) -> Snapshot:
        image = RAWBlob.from_bytes(label.encode() * 100)
        thumbs = [JPEGBlob.from_bytes(b"\xff\xd8" + bytes([i]) * 10) for i in range(thumbnails)]
        return Snapshot(label=label, image=image, thumbnails=thumbs, taken_at=dt.datetime(2026, 1, 2, 3, 4, 5))

    @thing_action
    def image_size(self, shot: Snapshot) -> dict[str, int]:
        """A Snapshot given back (its Blobs as links): the bytes resolve to the server's own Blobs."""
        return {"image": len(shot.image.data), "thumbnails": sum(len(t.data) for t in shot.thumbnails)}

    @thing_action
    def set_exposure(self, exposure: Exposure, at: dt.datetime) -> str:
        return f"{exposure['mode'].value}:{exposure['gain']}@{at.year}"

    @thing_action
    def claims_int(self) -> int:
        return 4.2  # type: ignore[return-value]  # the annotation lies; the server must not pass it on

    @thing_action
    def options(self, name: str, **kwargs: Any) -> dict[str, Any]:
        return {"name": name, **kwargs}

    @thing_action
    def chatty(self) -> str:
        self.logger.info("moving to the start")
        return "ok"

    @thing_action
    def polite(self) -> str:
        """Catches the cancel, parks the stage and reports where it stopped."""
        self.polite_started.set()
        try:
            for _ in range(6000):
                cancellable_sleep(0.01)
        except InvocationCancelled:
            return "parked"
        return "finished"

    @thing_action
    def stubborn(self) -> str:
        """Does not catch the cancel: reported cancelled."""
        self.polite_started.set()
        for _ in range(6000):
            cancellable_sleep(0.01)
        return "finished"


@pytest.fixture
def stage() -> Stage:
    return Stage()


@pytest.fixture
def client(make_server: Any, asgi: Any, stage: Stage) -> Any:
    return asgi(make_server({"stage": stage}))


def invoke(client: Any, action: str, body: Any) -> httpx.Response:
    return client.post(f"/stage/{action}", params={"wait": "30"}, json=body)


# -- constraints ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("steps", "constraint"), [(-3, "greater than or equal to 0"), (11, "less than or equal to 10")]
)
def test_a_field_constraint_is_a_422_and_nothing_runs(client: Any, stage: Stage, steps: int, constraint: str) -> None:
    r = invoke(client, "move", {"steps": steps})
    assert r.status_code == 422
    body = r.json()
    assert body["field"] == "steps" and constraint in body["detail"]
    assert stage.moved == [] and client.get("/invocations/").json() == []


def test_within_the_constraints_runs(client: Any, stage: Stage) -> None:
    r = invoke(client, "move", {"steps": 10})
    assert r.json()["status"] == "completed" and r.json()["output"] == 10
    assert stage.moved == [10]


def test_constraints_and_descriptions_are_in_the_td(client: Any) -> None:
    td = client.get("/stage/").json()
    steps = td["actions"]["move"]["input"]["properties"]["steps"]
    assert steps == {"type": "integer", "minimum": 0, "maximum": 10, "description": "how many steps"}
    x = td["actions"]["go_to"]["input"]["properties"]["target"]["properties"]["x"]
    assert x["minimum"] == -10 and x["maximum"] == 10 and x["description"] == "millimetres from the centre"
    assert td["properties"]["speed"]["minimum"] == 1 and td["properties"]["speed"]["maximum"] == 100
    assert td["properties"]["speed"]["description"] == "steps per second"
    assert td["properties"]["focus"]["maximum"] == 1


def test_a_nested_constraint_names_the_nested_field(client: Any) -> None:
    r = invoke(client, "go_to", {"target": {"x": 11}})
    assert r.status_code == 422 and r.json()["field"] == "target.x"
    assert "less than or equal to 10" in r.json()["detail"]


def test_a_return_value_that_breaks_its_annotation_fails_the_invocation(client: Any) -> None:
    done = invoke(client, "claims_int", {}).json()
    assert done["status"] == "error" and done["output"] is None
    assert done["error"]["type"] == "InvalidOutput" and "integer" in done["error"]["message"]


# -- pydantic models in and out, with nested Blobs --------------------------------------------------------


def test_basemodel_in_and_out(client: Any) -> None:
    done = invoke(client, "go_to", {"target": {"x": 1.5}}).json()
    assert done["status"] == "completed" and done["output"] == {"x": 1.5, "y": 1.0}


def test_blobs_nested_in_a_basemodel_output_are_links(client: Any) -> None:
    out = invoke(client, "snapshot", {"label": "cell"}).json()["output"]
    assert out["label"] == "cell" and out["taken_at"] == "2026-01-02T03:04:05"
    image = client.get(out["image"]["href"])
    assert image.status_code == 200 and image.content == b"cell" * 100
    assert image.headers["content-type"] == "image/x-raw"
    thumbs = [client.get(t["url"]).content for t in out["thumbnails"]]
    assert thumbs == [b"\xff\xd8" + bytes([i]) * 10 for i in range(2)]
    assert all(t["media_type"] == "image/jpeg" for t in out["thumbnails"])


def test_a_basemodel_output_given_back_as_input_resolves_its_blobs(client: Any) -> None:
    shot = invoke(client, "snapshot", {"label": "ab", "thumbnails": 3}).json()["output"]
    done = invoke(client, "image_size", {"shot": shot}).json()
    assert done["status"] == "completed" and done["output"] == {"image": 200, "thumbnails": 36}


def test_a_foreign_blob_link_in_a_model_is_refused_with_its_field(client: Any) -> None:
    shot = invoke(client, "snapshot", {"label": "ab"}).json()["output"]
    shot["thumbnails"][1] = {"href": "http://elsewhere.example/blobs/x", "media_type": "image/jpeg"}
    r = invoke(client, "image_size", {"shot": shot})
    assert r.status_code == 422 and r.json()["field"] == "shot.thumbnails[1]"
    assert "not on this server" in r.json()["detail"]


def test_typeddict_enum_and_datetime_inputs(client: Any) -> None:
    done = invoke(client, "set_exposure", {"exposure": {"gain": 2, "mode": "slow"}, "at": "2025-06-01T12:00:00Z"})
    assert done.json()["output"] == "slow:2.0@2025"
    bad = invoke(client, "set_exposure", {"exposure": {"gain": 2, "mode": "medium"}, "at": "2025-06-01T12:00:00Z"})
    assert bad.status_code == 422 and bad.json()["field"] == "exposure.mode"


def test_the_td_describes_models_inline(client: Any) -> None:
    td = client.get("/stage/").json()
    out = td["actions"]["snapshot"]["output"]
    assert out["type"] == "object" and "$defs" not in str(td) and "$ref" not in str(td)
    assert out["properties"]["image"]["contentMediaType"] == "image/x-raw"
    assert out["properties"]["thumbnails"]["items"]["contentMediaType"] == "image/jpeg"
    assert out["properties"]["taken_at"] == {"type": "string", "format": "date-time"}


# -- properties --------------------------------------------------------------------------------------------


def test_data_properties_read_write_and_validate(client: Any, stage: Stage) -> None:
    assert client.get("/stage/speed").json() == 5
    assert client.put("/stage/speed", json=50).status_code == 204
    assert stage.speed == 50 and client.get("/stage/speed").json() == 50
    r = client.put("/stage/speed", json=0)
    assert r.status_code == 422 and r.json()["field"] == "speed" and "greater than or equal to 1" in r.json()["detail"]
    assert stage.speed == 50
    assert client.put("/stage/speed", json="fast").status_code == 422


def test_a_readonly_data_property_is_405_over_http_but_python_may_set_it(client: Any, stage: Stage) -> None:
    assert client.put("/stage/counter", json=3).status_code == 405
    invoke(client, "move", {"steps": 4})
    assert client.get("/stage/counter").json() == 4
    td = client.get("/stage/").json()
    assert td["properties"]["counter"]["readOnly"] is True and td["properties"]["speed"]["readOnly"] is False
    assert td["properties"]["counter"]["default"] == 0


def test_each_thing_gets_its_own_default_factory_value() -> None:
    a, b = Stage(), Stage()
    a.history.append(1)
    assert b.history == [] and a.history == [1]


def test_the_setter_under_another_name_makes_the_property_writable(client: Any, stage: Stage) -> None:
    assert "_set_focus" not in Stage.thing_properties()
    assert client.put("/stage/focus", json=0.25).status_code == 204
    assert stage.focus == 0.25 and client.get("/stage/focus").json() == 0.25
    r = client.put("/stage/focus", json=2)
    assert r.status_code == 422 and "less than or equal to 1" in r.json()["detail"]
    assert client.get("/stage/").json()["properties"]["focus"]["readOnly"] is False


def test_a_data_property_needs_one_default() -> None:
    with pytest.raises(InvalidArgument):
        thing_property()
    with pytest.raises(InvalidArgument):
        thing_property(default=1, default_factory=int)


# -- kwargs, logger ----------------------------------------------------------------------------------------


def test_kwargs_actions_are_served_and_take_extra_arguments(client: Any) -> None:
    done = invoke(client, "options", {"name": "n", "colour": "red", "n": [1, 2]}).json()
    assert done["output"] == {"name": "n", "colour": "red", "n": [1, 2]}
    schema = client.get("/stage/").json()["actions"]["options"]["input"]
    assert schema["required"] == ["name"] and "additionalProperties" not in schema
    assert invoke(client, "options", {"colour": "red"}).json()["field"] == "name"


def test_self_logger_lands_in_the_invocation_log(client: Any) -> None:
    done = invoke(client, "chatty", {}).json()
    assert any(e["message"] == "moving to the start" and e["logger"].endswith("Stage") for e in done["log"])


# -- cancellation ------------------------------------------------------------------------------------------


def test_an_action_that_catches_the_cancel_is_completed_with_its_output(client: Any, stage: Stage) -> None:
    inv = client.post("/stage/polite", json={}).json()
    assert stage.polite_started.wait(20)
    assert client.delete(inv["href"]).status_code == 202
    done = client.get(inv["href"], params={"wait": "20"}).json()
    assert done["status"] == "completed" and done["output"] == "parked"
    assert client.get(inv["href"] + "/output").json() == "parked"


def test_an_action_that_lets_the_cancel_through_is_cancelled(client: Any, stage: Stage) -> None:
    inv = client.post("/stage/stubborn", json={}).json()
    assert stage.polite_started.wait(20)
    client.delete(inv["href"])
    done = client.get(inv["href"], params={"wait": "20"}).json()
    assert done["status"] == "cancelled" and done["output"] is None


# -- LabThings' spellings of the Blob and the server ------------------------------------------------------


def test_labthings_blob_spellings(tmp_path: Any, make_server: Any) -> None:
    blob = Blob.from_bytes(b"\x89PNG", media_type="image/png")
    assert blob.media_type == blob.content_type == "image/png" and blob.content == b"\x89PNG"
    (tmp_path / "f.raw").write_bytes(b"raw")
    assert RAWBlob.from_file(tmp_path / "f.raw", media_type="image/x-raw").content == b"raw"
    assert Blob.from_url("http://127.0.0.1:9/x", media_type="image/png").media_type == "image/png"
    with pytest.raises(InvalidArgument, match="disagree"):
        Blob.from_bytes(b"x", "image/png", media_type="image/jpeg")
    with pytest.raises(InvalidArgument):
        JPEGBlob.from_bytes(b"x", media_type="image/png")  # the class's type still rules
    server = make_server({"stage": Stage()})
    assert server.app is server  # `uvicorn.run(server.app)` serves it


# -- the ThingClient over a socket ---------------------------------------------------------------------------


def test_thing_client_round_trip_with_models_and_constraints(make_server: Any, live: Any, stage: Stage) -> None:
    base = live(make_server({"stage": stage}))
    with ThingClient.from_url(base + "stage/") as cam:
        shot = cam.snapshot(label="xy", thumbnails=1)
        image = shot["image"]  # the output is JSON; its links come back as Blobs
        assert isinstance(image, Blob) and image.data == b"xy" * 100
        with pytest.raises(RemoteInvalidInput, match="greater than or equal to 0"):
            cam.move(steps=-1)
        assert stage.moved == []


def test_thing_client_sends_both_href_and_url_for_a_blob(make_server: Any, live: Any, stage: Stage) -> None:
    base = live(make_server({"stage": stage}))
    with ThingClient.from_url(base + "stage/") as cam:
        raw = cam.snapshot(label="q", thumbnails=0)["image"]
        ref = cam._blob_ref(raw)  # what goes on the wire for a Blob argument
        assert ref["href"] == ref["url"] == raw.url and ref["media_type"] == "image/x-raw" and ref["rel"] == "output"
        local = cam._blob_ref(Blob.from_bytes(b"local bytes"))  # uploaded first, then linked
        assert local["href"] == local["url"] and httpx.get(local["href"]).content == b"local bytes"


def test_schema_errors_from_python_name_the_field() -> None:
    info = Stage.thing_actions()["move"]
    with pytest.raises(InvalidInput) as e:
        info.coerce_input({"steps": 99})
    assert e.value.field == "steps" and "le=10" in str(e.value)


# -- LabThings' own example Thing, as its users spell it ------------------------------------------------------

import microblob as lt  # noqa: E402 - the spelling under test


class ExampleThing(lt.Thing):
    """Written as LabThings' documentation writes an example Thing (our own restatement)."""

    @lt.action
    def anaction(
        self,
        repeats: Annotated[int, Field(description="how many times to try")],
        undocumented: int,
        title: Annotated[str, Field(description="a title")] = "Untitled",
        attempts: Annotated[list[str] | None, Field(description="names for each attempt")] = None,
    ) -> dict[str, str]:
        self.increment_counter()
        return {"end_result": "finished", "title": title}

    @lt.action
    def increment_counter(self) -> None:
        self.counter += 1

    @lt.action
    def action_with_only_kwargs(self, **kwargs: dict) -> None:
        pass

    counter: int = lt.property(default=0, readonly=True)
    foo: str = lt.property(default="Example")


def test_labthings_example_thing_is_served(make_server: Any, asgi: Any) -> None:
    client = asgi(make_server({"example": ExampleThing()}))
    td = client.get("/example/").json()
    props = td["actions"]["anaction"]["input"]["properties"]
    assert props["repeats"]["description"] == "how many times to try" and props["title"]["default"] == "Untitled"
    assert td["actions"]["anaction"]["input"]["required"] == ["repeats", "undocumented"]
    done = client.post("/example/anaction", params={"wait": "30"}, json={"repeats": 1, "undocumented": 2}).json()
    assert done["output"] == {"end_result": "finished", "title": "Untitled"}
    assert client.get("/example/counter").json() == 1
    assert client.put("/example/counter", json=5).status_code == 405
    assert client.put("/example/foo", json="bar").status_code == 204 and client.get("/example/foo").json() == "bar"
    kw = client.post("/example/action_with_only_kwargs", params={"wait": "30"}, json={"a": {"b": 1}}).json()
    assert kw["status"] == "completed"
