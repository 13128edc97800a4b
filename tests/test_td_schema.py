"""The Thing Descriptions microblob publishes are valid W3C TD 1.1 (the official JSON Schema, shipped in
tests/data/w3c-td with its licence). conftest checks every TD any test's server serves; these tests show
the check can fail, and cover the Blob-bearing schemas that once broke it."""

from __future__ import annotations

import copy
from typing import Any

from _td_schema import SCHEMA_PATH, td_errors
from thing_fixtures import Camera


def test_the_schema_ships_with_its_licence() -> None:
    licence = (SCHEMA_PATH.parent / "LICENSE.md").read_text(encoding="utf-8")
    assert "W3C Software and Document License" in licence


def test_a_served_td_with_blobs_is_valid(make_server: Any, asgi: Any) -> None:
    client = asgi(make_server({"camera": Camera()}))
    td = client.get("/camera/").json()
    assert td_errors(td) == []
    expires = td["actions"]["capture_raw_image"]["output"]["properties"]["expires_at"]
    assert "type" not in expires or isinstance(expires["type"], str)


def test_the_check_catches_a_type_list(make_server: Any, asgi: Any) -> None:
    client = asgi(make_server({"camera": Camera()}))
    td = copy.deepcopy(client.get("/camera/").json())
    td["actions"]["capture_raw_image"]["output"]["properties"]["expires_at"] = {"type": ["string", "null"]}
    errors = td_errors(td)
    assert errors and "expires_at" in errors[0]


def test_the_check_catches_a_missing_title() -> None:
    assert any("title" in e for e in td_errors({"@context": "https://www.w3.org/2022/wot/td/v1.1"}))
