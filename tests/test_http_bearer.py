"""The bearer-token check over a real socket:

- The ``Authorization`` scheme is case-insensitive (RFC 9110 §11.1): ``bearer``, ``BEARER`` and ``Bearer``
  all pass with the right token; a wrong token or another scheme is still 401.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from thing_fixtures import Camera

import microblob

TOKEN = "edge-token"


@pytest.fixture
def served(make_server: Any, live: Any, store: microblob.Store) -> str:
    store.save_or_update_object(b"payload", custom_metadata={"k": [1, 2]})
    return live(make_server({"camera": Camera()}, store=store, token=TOKEN))


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_the_bearer_scheme_is_case_insensitive(served: str, scheme: str) -> None:
    with httpx.Client(base_url=served, timeout=30) as http:
        assert http.get("/things/", headers={"Authorization": f"{scheme} {TOKEN}"}).status_code == 200
        assert http.get("/things/", headers={"Authorization": f"{scheme}  {TOKEN}"}).status_code == 401
        assert http.get("/things/", headers={"Authorization": f"{scheme} wrong"}).status_code == 401


@pytest.mark.parametrize("header", ["Basic edge-token", f"Bearer{TOKEN}", TOKEN, f"Bearer {TOKEN} x", ""])
def test_other_schemes_and_shapes_are_refused(served: str, header: str) -> None:
    with httpx.Client(base_url=served, timeout=30) as http:
        answer = http.get("/things/", headers={"Authorization": header})
        assert answer.status_code == 401
        assert answer.json()["error"] == "Unauthorized"


