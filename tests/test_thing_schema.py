"""Type hints → JSON Schema, and input validation that names the field."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Optional, Union

import pytest
from hypothesis import given
from hypothesis import strategies as st
from thing_fixtures import Camera, RAWBlob, Settings

from microblob import Blob, InvalidInput
from microblob.things.schema import coerce, schema_for


@pytest.mark.parametrize(
    ("hint", "schema"),
    [
        (int, {"type": "integer"}),
        (float, {"type": "number"}),
        (str, {"type": "string"}),
        (bool, {"type": "boolean"}),
        (None, {"type": "null"}),
        (list[int], {"type": "array", "items": {"type": "integer"}}),
        (dict[str, float], {"type": "object", "additionalProperties": {"type": "number"}}),
        (Optional[int], {"anyOf": [{"type": "integer"}, {"type": "null"}]}),  # noqa: UP045 - the old spelling
        (int | None, {"anyOf": [{"type": "integer"}, {"type": "null"}]}),
        (Union[int, str], {"anyOf": [{"type": "integer"}, {"type": "string"}]}),  # noqa: UP007 - the old spelling
        (Literal["a", "b"], {"enum": ["a", "b"], "type": "string"}),
        (Any, {}),
    ],
)
def test_schema_of_simple_hints(hint: Any, schema: dict[str, Any]) -> None:
    assert schema_for(hint) == schema


def test_schema_of_blob_and_dataclass() -> None:
    s = schema_for(RAWBlob)
    assert s["contentMediaType"] == "image/x-raw"
    assert s["properties"]["content_type"]["const"] == "image/x-raw"
    assert {"url", "href", "sha256", "size", "expires_at"} <= set(s["properties"])
    d = schema_for(Settings)
    assert d["required"] == ["gain"]
    assert d["properties"]["mode"] == {"enum": ["fast", "slow"], "type": "string", "default": "fast"}
    assert d["additionalProperties"] is False


def test_unsupported_hint_is_refused() -> None:
    with pytest.raises(TypeError):
        schema_for(bytes)
    with pytest.raises(TypeError):
        schema_for(dict[int, str])


def test_action_input_schema() -> None:
    info = Camera.thing_actions()["configure"]
    s = info.input_schema()
    assert list(s["properties"]) == ["settings", "label", "scale"]
    assert s["required"] == ["settings"]
    assert s["properties"]["scale"]["default"] == 1.0
    assert s["additionalProperties"] is False


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "settings"),
        ({"settings": {}}, "settings.gain"),
        ({"settings": {"gain": "high"}}, "settings.gain"),
        ({"settings": {"gain": 1, "mode": "medium"}}, "settings.mode"),
        ({"settings": {"gain": 1, "tags": ["a", 3]}}, "settings.tags[1]"),
        ({"settings": {"gain": 1, "colour": "red"}}, "settings.colour"),
        ({"settings": {"gain": 1}, "label": 5}, "label"),
        ({"settings": {"gain": 1}, "extra": 1}, "extra"),
        ({"settings": {"gain": True}}, "settings.gain"),
    ],
)
def test_invalid_input_names_the_field(body: dict[str, Any], field: str) -> None:
    info = Camera.thing_actions()["configure"]
    with pytest.raises(InvalidInput) as e:
        info.coerce_input(body)
    assert e.value.field == field
    assert field in str(e.value)


def test_valid_input_builds_python_values() -> None:
    info = Camera.thing_actions()["configure"]
    out = info.coerce_input({"settings": {"gain": 2, "tags": ["x"]}, "scale": 3})
    assert out["settings"] == Settings(gain=2.0, mode="fast", tags=["x"])
    assert isinstance(out["settings"].gain, float)
    assert out["scale"] == 3.0 and isinstance(out["scale"], float)


def test_blob_input_needs_a_resolver_and_a_matching_type() -> None:
    with pytest.raises(InvalidInput, match="not accepted"):
        coerce({"url": "/blobs/x"}, RAWBlob, "raw")
    with pytest.raises(InvalidInput, match="url"):
        coerce({"nourl": 1}, RAWBlob, "raw", lambda *a: Blob.from_bytes(b""))
    jpeg = Blob.from_bytes(b"", content_type="image/jpeg")
    with pytest.raises(InvalidInput, match="image/x-raw"):
        coerce({"url": "/blobs/x"}, RAWBlob, "raw", lambda *a: jpeg)
    generic = Blob.from_bytes(b"abc")  # untyped bytes may be used as any type
    got = coerce("/blobs/x", RAWBlob, "raw", lambda *a: generic)
    assert isinstance(got, RAWBlob) and got.data is generic.data


@dataclass
class Point:
    x: int
    y: int = 0


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=3), children, max_size=3),
    max_leaves=10,
)


@given(json_values)
def test_coerce_either_accepts_or_names_a_field(value: Any) -> None:
    """Any JSON value against a nested hint: a value of the right shape, or InvalidInput with a field."""
    hint = dict[str, list[Optional[Point]]]  # noqa: UP045 - typing.Optional must work
    try:
        out = coerce(value, hint, "arg")
    except InvalidInput as e:
        assert e.field.startswith("arg")
    else:
        assert isinstance(out, dict)
        for items in out.values():
            assert all(p is None or isinstance(p, Point) for p in items)
