"""`thing_slot`: Things that use other Things of the same server, spelled as in LabThings-FastAPI 0.3.0
(``camera: Camera = lt.thing_slot()``), connected when the ThingServer is built, and refused there with a
`ThingSlotError` when a slot cannot be filled. Over the real Starlette app (in-process ASGI)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional

import pytest

import microblob as lt
from microblob import Blob, InvalidArgument, ThingServer, ThingSlotError


class Camera(lt.Thing):
    """A camera; the stage takes frames through it."""

    def __init__(self, tag: str = "cam") -> None:
        self.tag = tag
        self.frames = 0

    @lt.action
    def capture(self, label: str = "frame") -> Blob:
        self.frames += 1
        return Blob.from_bytes(f"{self.tag}:{label}:{self.frames}".encode(), "image/png")


class Light(lt.Thing):
    def __init__(self) -> None:
        self.on = False

    @lt.action
    def switch(self, on: bool) -> bool:
        self.on = on
        return on


class Stage(lt.Thing):
    """Moves, then has the camera take a frame."""

    camera: Camera = lt.thing_slot()
    lights: Mapping[str, Light] = lt.thing_slot()
    spare: Optional[Camera] = lt.thing_slot(None)  # noqa: UP045 - the spelling LabThings' docs use

    def __init__(self) -> None:
        self.position = 0

    @lt.action
    def scan(self, steps: int) -> Blob:
        """Calls the other Things directly: a Blob passes through unchanged."""
        self.position += steps
        for light in self.lights.values():
            light.switch(True)
        return self.camera.capture(label=f"at-{self.position}")

    @lt.action
    def has_spare(self) -> bool:
        return self.spare is not None


def invoke(client: Any, thing: str, action: str, body: Any) -> dict[str, Any]:
    r = client.post(f"/{thing}/{action}", params={"wait": "30"}, json=body)
    assert r.status_code == 200, r.text
    return r.json()


def test_an_action_calls_another_thing_of_the_same_server(make_server: Any, asgi: Any) -> None:
    camera, stage, lamp = Camera("main"), Stage(), Light()
    client = asgi(make_server({"stage": stage, "camera": camera, "lamp": lamp}))
    done = invoke(client, "stage", "scan", {"steps": 3})
    assert done["status"] == "completed"
    assert client.get(done["output"]["url"]).content == b"main:at-3:1"
    assert stage.camera is camera and camera.frames == 1 and lamp.on is True
    assert dict(stage.lights) == {"lamp": lamp} and stage.spare is None
    assert invoke(client, "stage", "has_spare", {})["output"] is False


def test_a_slot_is_not_a_property_or_action_in_the_td(make_server: Any, asgi: Any) -> None:
    client = asgi(make_server({"stage": Stage(), "camera": Camera()}))
    td = client.get("/stage/").json()
    assert set(td["properties"]) == set() and set(td["actions"]) == {"scan", "has_spare"}
    assert client.get("/stage/camera").status_code == 404


def test_a_missing_thing_is_an_error_at_server_build(make_server: Any) -> None:
    with pytest.raises(ThingSlotError, match=r"Stage.camera needs a Camera, but the server serves no Camera"):
        make_server({"stage": Stage(), "lamp": Light()})


def test_two_candidates_for_one_slot_are_an_error_naming_both(make_server: Any) -> None:
    with pytest.raises(ThingSlotError, match=r"Stage.camera holds one Camera.*\['left', 'right'\]") as e:
        make_server({"stage": Stage(), "left": Camera(), "right": Camera()})
    assert isinstance(e.value, InvalidArgument)  # in the exception tree, under bad arguments


def test_the_server_option_picks_among_several(make_server: Any, asgi: Any) -> None:
    left, right, stage = Camera("L"), Camera("R"), Stage()
    client = asgi(make_server({"stage": stage, "left": left, "right": right},
                              thing_slots={"stage": {"camera": "right", "spare": "left"}}))
    assert client.get(invoke(client, "stage", "scan", {"steps": 1})["output"]["url"]).content == b"R:at-1:1"
    assert stage.spare is left and invoke(client, "stage", "has_spare", {})["output"] is True


def test_a_slot_named_by_default(make_server: Any) -> None:
    class Bench(lt.Thing):
        camera: Camera = lt.thing_slot("left")
        both: Mapping[str, Camera] = lt.thing_slot(["left", "right"])

    bench, left, right = Bench(), Camera(), Camera()
    make_server({"bench": bench, "left": left, "right": right})
    assert bench.camera is left and list(bench.both) == ["left", "right"]
    with pytest.raises(TypeError):
        bench.both["extra"] = Camera()  # type: ignore[index]  # the server's wiring is not edited in place


@pytest.mark.parametrize(
    ("slots", "message"),
    [
        ({"stage": {"camera": "nowhere"}}, r"names 'nowhere', but the server serves no Thing of that name"),
        ({"stage": {"camera": "lamp"}}, r"names 'lamp', a Light, not a Camera"),
        ({"stage": {"camera": None}}, r"needs a Camera, but it was given None"),
        ({"stage": {"lens": "cam"}}, r"names \['lens'\] on 'stage'"),
        ({"ghost": {"camera": "cam"}}, r"names the Thing 'ghost'"),
    ],
)
def test_a_bad_configured_target_is_an_error_at_server_build(
    make_server: Any, slots: dict[str, Any], message: str
) -> None:
    with pytest.raises(ThingSlotError, match=message):
        make_server({"stage": Stage(), "cam": Camera(), "lamp": Light()}, thing_slots=slots)


def test_two_things_may_use_each_other(make_server: Any) -> None:
    class Ping(lt.Thing):
        other: Pong = lt.thing_slot()

    class Pong(lt.Thing):
        other: Ping = lt.thing_slot()

    ping, pong = Ping(), Pong()
    make_server({"ping": ping, "pong": pong})
    assert ping.other is pong and pong.other is ping


def test_a_slot_of_its_own_class_does_not_pick_itself(make_server: Any) -> None:
    class Relay(lt.Thing):
        upstream: Optional[Relay] = lt.thing_slot()  # noqa: UP045

    first, second = Relay(), Relay()
    make_server({"first": first})
    assert first.upstream is None
    with pytest.raises(ThingSlotError, match="holds one Relay"):
        make_server({"first": first, "second": second, "third": Relay()})


def test_outside_a_server_a_slot_is_assigned_by_hand() -> None:
    stage = Stage()
    with pytest.raises(ThingSlotError, match="Stage.camera is not connected yet"):
        _ = stage.camera
    with pytest.raises(ThingSlotError, match="holds a Camera, not Light"):
        stage.camera = Light()
    camera = Camera("hand")
    stage.camera, stage.lights = camera, {}
    assert bytes(stage.scan(2).data) == b"hand:at-2:1"  # plain Python: the action runs directly


def test_a_slot_needs_a_thing_class_annotation(make_server: Any) -> None:
    class NoHint(lt.Thing):
        camera = lt.thing_slot()

    class NotAThing(lt.Thing):
        camera: int = lt.thing_slot()

    class BadMapping(lt.Thing):
        cameras: Mapping[int, Camera] = lt.thing_slot()

    with pytest.raises(ThingSlotError, match="needs an annotation"):
        make_server({"t": NoHint()})
    with pytest.raises(ThingSlotError, match="is not a Thing class"):
        make_server({"t": NotAThing()})
    with pytest.raises(ThingSlotError, match=r"Mapping\[str, SomeThing\]"):
        make_server({"t": BadMapping()})
    with pytest.raises(ThingSlotError, match="takes ..., None, a Thing's name or a list of names"):
        lt.thing_slot(3)


def test_a_refused_server_serves_nothing_and_leaves_no_threads() -> None:
    """The slots are checked before the server starts its pool or expiry timer."""
    import threading

    before = {t.ident for t in threading.enumerate()}
    with pytest.raises(ThingSlotError):
        ThingServer({"stage": Stage()})
    assert {t.ident for t in threading.enumerate()} <= before
