"""Actions taking ``**kwargs``: every further named value is checked against the annotation (``**counts:
int``, with `Field` constraints) and a bad one is a 422 naming its key, before anything runs; unannotated
``**kwargs`` take any JSON value. The TD says so (``additionalProperties``), and the ThingClient's method
takes the same ``**kwargs``. Over the real Starlette app (in-process ASGI; a socket for the client)."""

from __future__ import annotations

from typing import Annotated, Any

import pytest
from pydantic import Field
from thing_fixtures import RAWBlob

from microblob import InvalidArgument, InvalidInput, RemoteInvalidInput, Thing, ThingClient, thing_action


class Counter(Thing):
    def __init__(self) -> None:
        self.ran: list[dict[str, Any]] = []

    @thing_action
    def tally(self, label: str, **counts: Annotated[int, Field(ge=0, description="a count")]) -> dict[str, int]:
        self.ran.append(counts)
        return {label: sum(counts.values()), **counts}

    @thing_action
    def anything(self, **values: Any) -> dict[str, Any]:
        self.ran.append(values)
        return values

    @thing_action
    def untyped(self, **values) -> int:  # type: ignore[no-untyped-def]  # unannotated, as users write it
        self.ran.append(values)
        return len(values)

    @thing_action
    def sizes(self, **frames: RAWBlob) -> dict[str, int]:
        return {k: len(v.data) for k, v in frames.items()}

    @thing_action
    def frame(self, size: int) -> RAWBlob:
        return RAWBlob.from_bytes(b"r" * size)


@pytest.fixture
def counter() -> Counter:
    return Counter()


@pytest.fixture
def client(make_server: Any, asgi: Any, counter: Counter) -> Any:
    return asgi(make_server({"counter": counter}))


def invoke(client: Any, action: str, body: Any) -> Any:
    return client.post(f"/counter/{action}", params={"wait": "30"}, json=body)


def test_annotated_kwargs_values_pass_when_they_fit(client: Any, counter: Counter) -> None:
    done = invoke(client, "tally", {"label": "all", "red": 2, "blue": 3}).json()
    assert done["status"] == "completed" and done["output"] == {"all": 5, "red": 2, "blue": 3}
    assert counter.ran == [{"red": 2, "blue": 3}]


@pytest.mark.parametrize(
    ("value", "says"),
    [("3", "valid integer"), (2.5, "valid integer"), (True, "valid integer"), (-1, "greater than or equal to 0 (ge=0)"),
     (None, "valid integer"), ([1], "valid integer")],
)
def test_a_kwargs_value_that_breaks_the_annotation_is_a_422_naming_its_key(
    client: Any, counter: Counter, value: Any, says: str
) -> None:
    r = invoke(client, "tally", {"label": "x", "red": 1, "green": value})
    assert r.status_code == 422
    body = r.json()
    assert body["field"] == "green" and body["detail"].startswith("green: ") and says in body["detail"]
    assert counter.ran == [] and client.get("/invocations/").json() == []  # nothing ran, nothing queued


def test_every_bad_kwargs_value_is_named(client: Any) -> None:
    detail = invoke(client, "tally", {"label": "x", "a": -1, "b": "no"}).json()["detail"]
    assert "a: " in detail and "b: " in detail


def test_declared_parameters_are_still_checked_beside_kwargs(client: Any) -> None:
    r = invoke(client, "tally", {"label": 5, "red": 1})
    assert r.status_code == 422 and r.json()["field"] == "label"
    assert invoke(client, "tally", {"red": 1}).json()["field"] == "label"  # still required


def test_unannotated_and_any_kwargs_take_any_json_value(client: Any, counter: Counter) -> None:
    values = {"n": 1, "s": "x", "f": 1.5, "none": None, "list": [1, {"a": [True]}], "obj": {"k": "v"}}
    assert invoke(client, "anything", values).json()["output"] == values
    assert invoke(client, "untyped", values).json()["output"] == len(values)
    assert counter.ran == [values, values]



@pytest.mark.parametrize("key", ["f0"])  # the name the first parameter's pydantic field had
def test_keys_shaped_like_field_names_are_values_like_any_other(client: Any, counter: Counter, key: str) -> None:
    """pydantic drops an input key equal to one of its model's own field names: neither a value nor an
    extra one. Those names are now random, so {"f0": 7} is a further argument, checked and passed on."""
    done = invoke(client, "tally", {"label": "x", key: 7}).json()
    assert done["status"] == "completed" and done["output"] == {"x": 7, key: 7}
    r = invoke(client, "tally", {"label": "x", key: "not a count"})
    assert r.status_code == 422 and r.json()["field"] == key
    r = invoke(client, "frame", {"size": 1, key: 40})  # no **kwargs: an unexpected field, not ignored
    assert r.status_code == 422 and r.json()["field"] == key
    assert counter.ran == [{key: 7}]

def test_self_is_never_a_further_argument(client: Any, counter: Counter) -> None:
    r = invoke(client, "anything", {"self": 1})
    assert r.status_code == 422 and r.json()["field"] == "self" and counter.ran == []


def test_the_td_describes_the_kwargs_values(client: Any) -> None:
    actions = client.get("/counter/").json()["actions"]
    assert actions["tally"]["input"]["additionalProperties"] == {"type": "integer", "minimum": 0,
                                                                 "description": "a count"}
    assert actions["tally"]["input"]["required"] == ["label"]
    assert "additionalProperties" not in actions["anything"]["input"]  # JSON Schema's default: anything
    assert actions["frame"]["input"]["additionalProperties"] is False


def test_blob_kwargs_resolve_links_of_this_server(client: Any) -> None:
    link = invoke(client, "frame", {"size": 7}).json()["output"]
    assert invoke(client, "sizes", {"a": link, "b": link}).json()["output"] == {"a": 7, "b": 7}
    r = invoke(client, "sizes", {"a": {"url": "http://elsewhere.example/blobs/x"}})
    assert r.status_code == 422 and r.json()["field"] == "a"


def test_kwargs_of_a_type_json_cannot_carry_refuse_the_server() -> None:
    from microblob import ThingServer

    class Raw(Thing):
        @thing_action
        def takes(self, **parts: bytes) -> None:
            pass

    with pytest.raises(InvalidArgument, match="Raw.takes: .*bytes cannot travel as JSON"):
        ThingServer({"raw": Raw()})


def test_python_callers_get_the_same_check() -> None:
    info = Counter.thing_actions()["tally"]
    assert info.coerce_input({"label": "x", "a": 1}) == {"label": "x", "a": 1}
    with pytest.raises(InvalidInput) as e:
        info.coerce_input({"label": "x", "a": -4})
    assert e.value.field == "a" and "ge=0" in str(e.value)


def test_the_thing_client_method_takes_kwargs(make_server: Any, live: Any, counter: Counter) -> None:
    base = live(make_server({"counter": counter}))
    with ThingClient.from_url(base + "counter/") as remote:
        assert remote.tally("sum", red=1, blue=2) == {"sum": 3, "red": 1, "blue": 2}
        with pytest.raises(RemoteInvalidInput, match=r"blue: .*\(ge=0\)"):
            remote.tally("sum", red=1, blue=-2)
        with pytest.raises(TypeError):
            remote.frame(size=1, extra=2)  # no **kwargs there: refused before anything is sent
        assert remote.anything(a=[1], b=None) == {"a": [1], "b": None}
    assert counter.ran == [{"red": 1, "blue": 2}, {"a": [1], "b": None}]


class Positional(Thing):
    @thing_action
    def scale(self, value: int, factor: int = 2, /, *, offset: int = 0) -> int:
        return value * factor + offset

    @thing_action
    def pair(self, a: int = 1, b: int = 10, /) -> list[int]:
        return [a, b]


def test_positional_only_parameters_are_named_inputs_passed_by_position(make_server: Any, asgi: Any) -> None:
    """JSON names every input; Python must still get `def f(self, x, /)`'s x by position."""
    http = asgi(make_server({"p": Positional()}))

    def run(action: str, body: dict[str, Any]) -> Any:
        r = http.post(f"/p/{action}", json=body, params={"wait": "10"})
        assert r.status_code in (200, 201), r.text
        inv = r.json()
        assert inv["status"] == "completed", inv
        return inv["output"]

    assert run("scale", {"value": 3}) == 6
    assert run("scale", {"value": 3, "factor": 5, "offset": 1}) == 16
    assert run("pair", {}) == [1, 10]
    assert run("pair", {"b": 7}) == [1, 7]  # the default fills the position left out before a given one
    r = http.post("/p/scale", json={"factor": 5}, params={"wait": "10"})
    assert r.status_code == 422 and "value" in r.text
