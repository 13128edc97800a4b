"""The ``/objects/`` routes: query, download (permanent, ranged), upload and delete store objects (the
browse page at ``/`` reads them, see `microblob.http.browse`).

Everything the store does blocks (disk, LMDB, MongoDB), so every store call runs in a worker thread;
bytes stream chunk by chunk through `BlobResponse`, uploads through a temporary file. A listing's
`$regex` matching has the server's `regex_budget` (`microblob.engine.regex`): `regex` releases the GIL while it
matches, so other clients are served meanwhile, and a pattern that backtracks gets a 400 QueryTimeout.
A listing is paged and streamed (`microblob.http.listing`): at most `max_page_size` objects, a
``Link: rel="next"`` cursor for the rest.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from .._exceptions import InvalidArgument, InvalidInput, MicroblobError, NotFound
from ..blob import Blob
from ..engine.regex import regex_budget
from ..store.objects import BlobObject
from ..store.syncing import sync_status
from .api import JSONResponse
from .listing import page_body, query_digest, read_cursor, tiebroken, write_cursor
from .responses import BlobResponse

if TYPE_CHECKING:
    from .server import ThingServer

__all__ = ["object_blob_input", "store_routes"]

_DATA_FIELDS = ("data",)
_LATEST_ATTEMPTS = 5  # tries to serve the latest version of an object being replaced meanwhile


def _plain(value: Any) -> Any:
    """Store metadata as JSON: dates as ISO 8601, NaN and infinities as the strings "NaN", "Infinity" and
    "-Infinity", other non-JSON values (ObjectIds, ...) as text."""
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=_dt.timezone.utc)
        return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items() if k not in _DATA_FIELDS}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        # The store takes NaN and infinities from Python (MongoDB does too), but JSON cannot hold them
        # and JSONResponse raises on them: one such object would break every listing that holds it.
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return None
    return str(value)


def _object_json(obj: Any, base: str) -> dict[str, Any]:
    doc = _plain(dict(obj))
    oid = quote(str(doc["object_id"]), safe="")
    doc["url"] = f"{base}objects/{oid}?version={doc['version']}"
    doc["data_url"] = f"{base}objects/{oid}/data?version={doc['version']}"
    doc["history_url"] = f"{base}objects/{oid}/history"
    return doc


def _int_param(request: Request, name: str, default: int | None = None, minimum: int = 0) -> int | None:
    from .api import ApiError

    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, f"{name} must be an integer, not {raw!r}") from None
    if value < minimum:
        raise ApiError(400, f"{name} must be >= {minimum}, not {value}")
    return value


def _json_param(request: Request, name: str) -> Any:
    from .api import parse_json

    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    return parse_json(raw, name)


def _parse_sort(raw: str | None) -> Any:
    """``sort=-created_at,version`` or JSON (``[["created_at", -1]]`` / ``{"created_at": -1}``)."""
    from .api import parse_json

    if not raw:
        return None
    if raw.lstrip().startswith(("[", "{")):
        value = parse_json(raw, "sort")
        if isinstance(value, list):
            return [tuple(v) if isinstance(v, list) else v for v in value]
        return value
    out = []
    for part in raw.split(","):
        part = part.strip()
        if part:
            out.append((part[1:], -1) if part.startswith("-") else (part.lstrip("+"), 1))
    return out


def _store_error(exc: MicroblobError) -> Exception:
    from .api import ApiError

    if isinstance(exc, NotFound):
        return ApiError(404, str(exc), type(exc).__name__)
    if isinstance(exc, InvalidArgument):
        return ApiError(400, str(exc), type(exc).__name__)
    return exc


def _budgeted(seconds: float | None, fn: Any, *args: Any, **kwargs: Any) -> Any:
    with regex_budget(seconds):  # set in the worker thread, where the filter is compiled
        return fn(*args, **kwargs)


async def _call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return await run_in_threadpool(fn, *args, **kwargs)
    except (NotFound, InvalidArgument) as e:
        raise _store_error(e) from None


def store_routes(server: ThingServer) -> list[Route]:
    store = server.store

    async def list_objects(request: Request) -> Response:
        from .api import ApiError

        flt = _json_param(request, "filter") or {}
        sort = _parse_sort(request.query_params.get("sort"))
        limit = _int_param(request, "limit", 100)
        skip = _int_param(request, "skip", 0)
        page = min(limit or server.max_page_size, server.max_page_size)
        digest = query_digest(flt, sort)
        cursor = request.query_params.get("cursor")
        try:
            if cursor is not None:
                if skip:
                    raise ApiError(400, "give either cursor or skip, not both")
                skip = read_cursor(cursor, digest)
            order = tiebroken(sort)
        except InvalidArgument as exc:
            raise _store_error(exc) from None
        # The page's ids first: the filter (and its regex budget) runs before the status goes out.
        found = await _call(_budgeted, server.regex_budget, store.query, flt, projection={"_id": 1}, sort=order,
                            skip=skip, limit=page + 1)
        ids = [doc["_id"] for doc in found[:page]]
        headers = {}
        if len(found) > page:
            following = request.url.remove_query_params(["skip", "cursor"])
            following = following.include_query_params(cursor=write_cursor(skip + page, digest))
            headers["link"] = f'<{following}>; rel="next"'
        base = str(request.base_url)

        async def fetch(batch: list[Any]) -> list[dict[str, Any]]:
            return await _call(store.query, {"_id": {"$in": batch}}, projection={"data": 0})

        def render(doc: dict[str, Any]) -> bytes:
            obj = BlobObject(store, doc)
            return json.dumps(_object_json(obj, base), ensure_ascii=False, allow_nan=False,
                              separators=(",", ":")).encode("utf-8")

        return StreamingResponse(page_body(ids, fetch, render), media_type="application/json", headers=headers)

    async def create_object(request: Request) -> Response:
        q = request.query_params
        ctype = request.headers.get("content-type") or None
        if ctype == "application/x-www-form-urlencoded":
            ctype = None  # what tools send when nobody chose a type
        custom = _json_param(request, "custom_metadata")
        tags = _json_param(request, "tags") if q.get("tags", "").startswith("[") else (
            [t for t in q.get("tags", "").split(",") if t] or None
        )
        control = q.get("control_version", "false").lower() in ("1", "true", "yes")
        path, _, _ = await server.receive_to_file(request)
        try:
            # The version this upload made (reading the latest back could find another writer's).
            obj = await _call(
                store.save_object, Path(path), object_id=q.get("object_id") or None,
                workflow_id=q.get("workflow_id") or None, task_id=q.get("task_id") or None,
                type=q.get("type") or None, custom_metadata=custom, control_version=control,
                content_type=ctype, tags=tags,
            )
        finally:
            await run_in_threadpool(server.discard_spool, path)
        payload = _object_json(obj, str(request.base_url))
        return JSONResponse(payload, status_code=201, headers={"Location": payload["url"]})

    async def get_object(request: Request) -> Response:
        oid = request.path_params["id"]
        if request.method == "DELETE":
            await _call(store.get_blob_object, oid)  # 404 for an unknown id
            await _call(store.delete_object, oid)
            return Response(status_code=204)
        obj = await _call(store.get_blob_object, oid, _int_param(request, "version"))
        return JSONResponse(_object_json(obj, str(request.base_url)))

    async def object_data(request: Request) -> Any:
        oid = request.path_params["id"]
        version = _int_param(request, "version")
        for attempt in range(_LATEST_ATTEMPTS):
            blob = await _call(Blob.from_object, store, oid, version)
            response = BlobResponse(blob, method=request.method, request_headers=request.headers,
                                    size=blob.size or 0, sha256=blob.known_sha256 or "",
                                    extra_headers={"cache-control": "private, max-age=0, must-revalidate"})
            try:
                # Read the first piece before the status goes out: an update that keeps no history
                # frees the bytes of the version it replaces, maybe just after we resolved it.
                await response.prepare()
            except NotFound as e:
                if version is None and attempt + 1 < _LATEST_ATTEMPTS:
                    continue  # "the latest" moved on: serve the new latest
                raise _store_error(e) from None
            return response
        raise AssertionError("unreachable")

    async def object_history(request: Request) -> Response:
        oid = request.path_params["id"]
        await _call(store.get_blob_object, oid)  # 404 for an unknown id, not []
        history = await _call(store.get_object_history, oid)
        return JSONResponse(_plain(history))

    async def sync_state(request: Request) -> Response:
        """Where this store syncs to and what is pending there, from its own records (no destination is
        asked): what `microblob sync status` prints, for the browse page."""
        return JSONResponse([s.as_dict() for s in await _call(sync_status, store)])

    return [
        Route("/sync/", sync_state, methods=["GET"]),
        Route("/objects/", list_objects, methods=["GET"]),
        Route("/objects/", create_object, methods=["POST"]),
        Route("/objects/{id}", get_object, methods=["GET", "DELETE"]),
        Route("/objects/{id}/data", object_data, methods=["GET", "HEAD"]),
        Route("/objects/{id}/history", object_history, methods=["GET"]),
    ]


def object_blob_input(server: ThingServer, object_id: str, query: str, field: str) -> Blob:
    """An action input naming ``/objects/{id}/data[?version=N]`` of this server's store."""
    raw = parse_qs(query).get("version", [None])[0]
    try:
        version = None if raw is None else int(raw)
    except ValueError:
        raise InvalidInput(field, f"version must be an integer, not {raw!r}") from None
    try:
        return Blob.from_object(server.store, object_id, version)
    except (NotFound, InvalidArgument) as e:
        raise InvalidInput(field, str(e)) from None
