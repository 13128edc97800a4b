"""The official W3C WoT Thing Description 1.1 JSON Schema (tests/data/w3c-td, with its licence), and a
check that every Thing Description a test's server publishes is valid against it (conftest wires it in)."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import jsonschema

SCHEMA_PATH = Path(__file__).parent / "data" / "w3c-td" / "td-json-schema-validation.json"


@functools.cache
def validator() -> jsonschema.Draft7Validator:
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def td_errors(td: Any) -> list[str]:
    """Every way `td` breaks the TD 1.1 schema, as "path: message" (empty when it is valid)."""
    out = []
    for err in sorted(validator().iter_errors(td), key=lambda e: list(e.absolute_path)):
        where = "/".join(str(p) for p in err.absolute_path) or "(root)"
        out.append(f"{where}: {err.message[:300]}")
    return out


published_errors: list[str] = []
"""Errors of TDs served since the last check (filled by the wrapped `ThingServer.thing_description`)."""


def watch_thing_descriptions() -> None:
    """Wrap `ThingServer.thing_description` so each TD it serves is validated (before any server
    exists: routes bind the method when a server is built)."""
    from microblob.http.server import ThingServer

    original = ThingServer.thing_description
    if getattr(original, "__td_checked__", False):
        return

    async def checked(self: ThingServer, request: Any) -> Any:
        response = await original(self, request)
        if response.status_code == 200:
            td = json.loads(bytes(response.body))
            published_errors.extend(f"TD of {request.url.path}: {e}" for e in td_errors(td))
        return response

    checked.__td_checked__ = True  # type: ignore[attr-defined]
    ThingServer.thing_description = checked  # type: ignore[method-assign]
