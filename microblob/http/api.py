"""The HTTP error answered as JSON, the JSON response, and the request-JSON rule, shared by the server and
its store routes (below both, so neither imports the other back)."""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

from starlette import responses

from .._exceptions import InvalidQuery
from ..engine.query import check_depth
from ..store.validate import loads_plain_json

__all__ = ["ApiError", "JSONResponse", "error_response", "parse_json"]


class JSONResponse(responses.JSONResponse):
    """Starlette's, except that a string holding a lone surrogate is sent \\u-escaped instead of failing the
    whole response with a 500: a file name read with surrogateescape can reach an action's log lines, output
    or error, a property's value, and every listing of the invocations that hold it."""

    def render(self, content: Any) -> bytes:
        try:
            return super().render(content)
        except UnicodeEncodeError:
            return json.dumps(content, ensure_ascii=True, allow_nan=False, indent=None,
                              separators=(",", ":")).encode("ascii")


def _check_depth(value: Any, what: str) -> None:
    """Refuse JSON nested deeper than the store's documents may be (`_codec.MAX_DEPTH`, one rule with the
    query language's `check_depth`): a tree that deep would be stored (as an invocation's input) and then
    fail to serialise on every later listing, and recursive code may overflow on it."""
    try:
        check_depth(value, what)
    except InvalidQuery as exc:
        raise ApiError(400, str(exc)) from None


def parse_json(raw: bytes | str, what: str) -> Any:
    """Parse request JSON: 400 (not 500) for anything that is not plain, reasonably shallow JSON."""
    try:
        value = loads_plain_json(raw)
    except ValueError as e:
        raise ApiError(400, f"{what} is not valid JSON: {e}") from None
    if isinstance(value, (dict, list)):
        _check_depth(value, what)
    return value


class ApiError(Exception):
    """An HTTP error answered as ``{"error": error, "detail": detail}``."""

    def __init__(self, status: int, detail: str, error: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.error = error or HTTPStatus(status).phrase.replace(" ", "").replace("-", "")
        self.headers = headers


def error_response(status: int, error: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=headers)
