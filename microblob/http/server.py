"""`ThingServer`: a Starlette application serving Things, their invocations, Blob links and a store.

Routes (docs/ARCHITECTURE.md, "HTTP protocol"): ``GET /things/``, ``GET /{thing}/`` (Thing Description),
``POST /{thing}/{action}`` (``?wait=S`` or ``Prefer: wait=S``), ``GET|PUT /{thing}/{property}``, ``GET /invocations/``,
``GET|DELETE /invocations/{id}``, ``GET /invocations/{id}/output``, ``GET|HEAD /blobs/{id}``,
``POST /blobs``, the ``/objects/`` store routes, and ``GET /`` (the browse page, `microblob.http.browse`).
Every client mistake answers 4xx with ``{"error": type, "detail": message}``.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import importlib
import ipaddress
import logging
import math
import os
import re
import secrets
from collections.abc import AsyncIterator, Mapping, Sequence
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import anyio.to_thread
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from .._exceptions import (
    IntegrityError,
    InvalidArgument,
    InvalidInput,
    ObjectEvicted,
    StorageError,
    StoreClosed,
    StoreFull,
)
from ..blob import CHUNK_SIZE, Blob, blob_class_for
from ..blob import GENERIC_CONTENT_TYPE as _GENERIC
from ..engine.malloc import tune_malloc
from ..engine.regex import check_budget
from ..store.info import space, upload_cap
from ..store.validate import check_content_type
from ..things.schema import map_blobs, to_jsonable
from ..things.slots import connect_slots
from ..things.thing import Thing
from .api import ApiError, JSONResponse, error_response, parse_json
from .browser_guard import check_allowed_hosts, check_cors_origins, guard_middleware
from .invocations import Invocation, InvocationManager, OutputBlob, TooManyInvocations
from .links import BlobLinks, Link
from .listing import check_page_size
from .responses import BlobResponse
from .scheduler import Scheduler
from .spools import clean_stale_spools, open_spool
from .upload_limits import UploadGate, UploadLimits, UploadRefused, out_of_descriptors

__all__ = ["ApiError", "ThingServer"]

log = logging.getLogger("microblob.server")
RESERVED = frozenset({"things", "invocations", "blobs", "objects", "sync", "static", "favicon.ico"})
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
MAX_JSON = 16 * 1024 * 1024


def storage_error_status(exc: BaseException) -> tuple[int, str, str]:
    """(status, error, detail) for a failure of the store itself: 507 when it is full, 500 when its
    bytes are damaged, 503 for anything else the engine reports (closed, read-only, I/O errors)."""
    if isinstance(exc, StoreFull):
        return 507, "StoreFull", f"the store is full: {exc}"
    if isinstance(exc, IntegrityError):
        return 500, "StoreDamaged", f"the store is damaged: {exc}"
    if isinstance(exc, ObjectEvicted):  # the bytes live at the sync destination, which is away: retry later
        return 503, "ObjectEvicted", str(exc)
    return 503, type(exc).__name__, f"the store failed: {exc}"


def _spool_error(exc: OSError) -> ApiError:
    """The upload could not be spooled to disk: 507 when the disk is full, 503 otherwise."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return ApiError(507, f"no room to receive the upload: {exc.strerror}", "StoreFull")
    if out_of_descriptors(exc):
        return _no_descriptors(exc)
    return ApiError(503, f"cannot spool the upload: {exc.strerror or exc}", "StorageError")


def _no_descriptors(exc: OSError) -> ApiError:
    """A 503 the client may retry: descriptors come back as other requests finish."""
    return ApiError(503, f"the server is out of file descriptors ({exc.strerror}); retry", "TooManyOpenFiles",
                    {"Retry-After": "1", "Connection": "close"})


def _max_upload(value: int | None, store: Any) -> int:
    """The upload cap: the caller's, checked, or what fits in the store (`upload_cap`)."""
    if value is None:
        return upload_cap(space(store) if store is not None else None)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidArgument(f"max_upload must be a whole number of bytes >= 1, not {value!r}")
    return value


def _is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _bearer_token(header: bytes) -> bytes:
    """The credentials of an ``Authorization: Bearer ...`` header, or b"". RFC 9110 makes the scheme
    case-insensitive; the rest is taken exactly as sent (one space, no padding), so anything else
    (another scheme, no token, extra spaces) yields b"" or bytes no configured token equals."""
    scheme, _, token = header.partition(b" ")
    if scheme.lower() != b"bearer" or not token:
        return b""
    return token


class _TokenAuth:
    """Bearer-token check for every request except downloading a Blob link (ids are unguessable, and
    browsers and other tools must be able to follow links). The browse page (``GET /``) also accepts the
    token as ``?token=``, because a browser cannot send a header with the URL a person types."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.expected = token.encode() if token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.expected is None or scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        if scope["method"] in ("GET", "HEAD") and re.fullmatch(r"/blobs/[^/]+", path):
            await self.app(scope, receive, send)
            return
        got = _bearer_token(dict(scope.get("headers", [])).get(b"authorization", b""))
        page = scope["method"] in ("GET", "HEAD") and path == "/"
        if page and not got:
            # The browse page is opened by a browser, which cannot add a header to a typed-in URL: it
            # alone may carry the token as ?token=...; its JS then sends the header on every request.
            query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
            if "token" in query:
                got = query["token"].encode()
        if not secrets.compare_digest(got, self.expected):
            detail = "missing bearer token" if not got else "wrong bearer token"
            if page:
                detail += " (a browser opens this page as /?token=TOKEN)"
            resp = error_response(401, "Unauthorized", detail, {"WWW-Authenticate": 'Bearer realm="microblob"'})
            await resp(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _load_thing(spec: Any) -> Thing:
    if isinstance(spec, str):
        module, _, attr = spec.partition(":")
        if not attr:
            raise InvalidArgument(f"Thing {spec!r}: expected 'module:Class'")
        obj: Any = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
        spec = obj
    if isinstance(spec, type):
        spec = spec()
    if not isinstance(spec, Thing):
        raise InvalidArgument(f"{spec!r} is not a Thing")
    return spec


def _parse_wait(request: Request, max_wait: float) -> float:
    raw = request.query_params.get("wait")
    if raw is None:
        prefer = request.headers.get("prefer", "")
        m = re.search(r"(?:^|[,;\s])wait\s*=\s*\"?([^\s,;\"]+)", prefer)
        raw = m.group(1) if m else None
    if raw is None:
        return 0.0
    try:
        wait = float(raw)
    except ValueError:
        raise ApiError(400, f"wait must be a number of seconds, not {raw!r}") from None
    if not math.isfinite(wait) or wait < 0:
        raise ApiError(400, f"wait must be a number of seconds >= 0, not {raw!r}")
    return min(wait, max_wait)


class ThingServer(Starlette):
    """Serves Things (instances, classes or ``"module:Class"``) and, given one, a store, over HTTP.

    `blob_ttl`: seconds a Blob link lives after its invocation completes (per action:
    ``@thing_action(blob_ttl=...)``). `retention`: seconds a finished invocation is kept (at least as
    long as its links). `max_invocations`: the table's cap (oldest finished are forgotten first).
    `max_upload`: largest ``POST /blobs`` body (default 4 GiB, or the room left in `store` where that is
    less, as on a 32-bit Raspberry Pi: see `microblob.store.info.upload_cap`). `token`: a bearer token
    (default ``$MICROBLOB_TOKEN``).
    `regex_budget`: seconds of `$regex` matching one ``GET /objects/`` may spend (then 400 QueryTimeout;
    None: no limit). `max_page_size`: most objects one ``GET /objects/`` answers (then a next cursor).
    `allowed_hosts`: names besides its own (loopback, this machine's name, IP addresses) that the Host
    header may carry (``*.lab.example``; ``*``: any). `cors_origins`: pages (``http://host:port``) that
    may call the server from a browser; every other page is refused (see `microblob.http.browser_guard`).

    Uploads (``POST /blobs``, ``POST /objects/``; `microblob.http.upload_limits`): a body that sends nothing
    for `upload_idle_timeout` seconds, or takes longer than `upload_timeout`, is dropped (408; JSON
    bodies too); at most `max_uploads` are received at once (503 + Retry-After); all live spools hold at
    most `spool_budget` bytes (507). `upload_ttl`: seconds a ``POST /blobs`` upload lives unless an
    action takes it (default: `blob_ttl`, at most 60).

    Things that use other Things (`microblob.thing_slot`) are connected once all exist; `thing_slots`
    (``{"stage": {"camera": "left_camera"}}``) picks for the slots their defaults do not decide. A slot it
    cannot fill is a `ThingSlotError` here, before anything is served.
    """

    def __init__(
        self,
        things: Mapping[str, Any] | None = None,
        store: Any = None,
        *,
        blob_ttl: float = 300.0,
        retention: float = 300.0,
        max_invocations: int = 1000,
        max_upload: int | None = None,
        token: str | None = None,
        max_workers: int = 32,
        max_wait: float = 300.0,
        upload_dir: str | None = None,
        regex_budget: float | None = 5.0,
        max_page_size: int = 1000,
        allowed_hosts: Sequence[str] | None = None,
        cors_origins: Sequence[str] | None = None,
        upload_idle_timeout: float = UploadLimits.idle_timeout,
        upload_timeout: float = UploadLimits.max_duration,
        max_uploads: int = UploadLimits.max_uploads,
        spool_budget: int = UploadLimits.spool_budget,
        upload_ttl: float | None = None,
        thing_slots: Mapping[str, Mapping[str, Any]] | None = None,
        debug: bool = False,
    ) -> None:
        tune_malloc()  # freed Blob bytes go back to the OS; streaming buffers stay on the heap
        if token is None:
            token = os.environ.get("MICROBLOB_TOKEN") or None
        self.token = token
        self.allowed_hosts = list(check_allowed_hosts(allowed_hosts))
        self.cors_origins = list(check_cors_origins(cors_origins))
        self.store = store
        self.blob_ttl = float(blob_ttl)
        self.max_upload = _max_upload(max_upload, store)
        self.max_wait = float(max_wait)
        self.upload_dir = upload_dir
        self.regex_budget = check_budget(regex_budget)
        self.max_page_size = check_page_size(max_page_size)
        self.uploads = UploadGate(UploadLimits(idle_timeout=upload_idle_timeout, max_duration=upload_timeout,
                                               max_uploads=max_uploads, spool_budget=spool_budget))
        self.upload_ttl = min(self.blob_ttl, 60.0) if upload_ttl is None else float(upload_ttl)
        if not math.isfinite(self.upload_ttl) or self.upload_ttl < 0:
            raise InvalidArgument(f"upload_ttl must be a finite number of seconds >= 0, not {upload_ttl!r}")
        clean_stale_spools(upload_dir)  # what servers killed mid-upload left behind
        self.things: dict[str, Thing] = {}
        for name, spec in (things or {}).items():
            if not _NAME.fullmatch(name) or name in RESERVED:
                raise InvalidArgument(f"{name!r} cannot name a Thing (reserved, or not a URL segment)")
            self.things[name] = _load_thing(spec)
        connect_slots(self.things, thing_slots)  # every Thing exists now, so two may use each other
        self._schemas: dict[str, dict[str, Any]] = {n: self._describe(t) for n, t in self.things.items()}
        self._page: Any = None  # the browse page, built on first request
        self.scheduler = Scheduler()
        self.links = BlobLinks(self.scheduler)
        self.invocations = InvocationManager(
            self.links,
            self.scheduler,
            blob_ttl=self.blob_ttl,
            retention=float(retention),
            max_invocations=int(max_invocations),
            max_workers=int(max_workers),
        )
        routes = [
            Route("/", self.index, methods=["GET"]),
            Route("/things/", self.list_things, methods=["GET"]),
            Route("/invocations/", self.list_invocations, methods=["GET"]),
            Route("/invocations/{id}", self.invocation, methods=["GET", "DELETE"]),
            Route("/invocations/{id}/output", self.invocation_output, methods=["GET", "HEAD"]),
            Route("/blobs", self.upload_blob, methods=["POST"]),
            Route("/blobs/", self.upload_blob, methods=["POST"]),
            Route("/blobs/{id}", self.download_blob, methods=["GET", "HEAD"]),
        ]
        if store is not None:
            from .store_routes import store_routes

            routes += store_routes(self)
        routes += [
            Route("/{thing}/", self.thing_description, methods=["GET"]),
            Route("/{thing}/{name}", self.affordance, methods=["GET", "POST", "PUT"]),
        ]
        super().__init__(
            debug=debug,
            routes=routes,
            middleware=self._middleware(),
            exception_handlers={
                ApiError: self._api_error,
                HTTPException: self._http_error,
                InvalidInput: self._invalid_input,
                ClientDisconnect: self._disconnected,
                UploadRefused: self._api_error,
                OSError: self._os_error,
                IntegrityError: self._storage_error,
                StorageError: self._storage_error,
                StoreClosed: self._storage_error,
            },
            lifespan=self._lifespan,
        )

    # -- lifecycle --------------------------------------------------------------------------------

    @property
    def app(self) -> ThingServer:
        """The ASGI app: the server itself (LabThings' spelling, ``uvicorn.run(server.app)``)."""
        return self

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Any) -> AsyncIterator[None]:
        yield
        self.close()

    def close(self) -> None:
        """Stop the expiry timer and the action pool (running actions are asked to cancel), and release
        every Blob the server holds (outputs and uploads): temp files they own are deleted now."""
        self.invocations.shutdown()
        self.scheduler.close()
        self.links.drop_holds()

    def serve(
        self, host: str = "127.0.0.1", port: int = 5000, *, insecure: bool = False, **uvicorn_options: Any
    ) -> None:
        """Run with uvicorn. A non-loopback address needs a token unless `insecure=True`."""
        import uvicorn

        if not _is_loopback(host) and not self.token and not insecure:
            raise InvalidArgument(
                f"refusing to serve on {host} without a token: set token= (or MICROBLOB_TOKEN), or insecure=True"
            )
        self.allow_host(host)
        uvicorn.run(self, host=host, port=port, **uvicorn_options)

    def allow_host(self, host: str) -> None:
        """Accept `host` in the Host header too (the name the server was told to listen on is one of its
        names). Before the first request only: the middleware stack is built then."""
        name = check_allowed_hosts([host])[0]
        if name in self.allowed_hosts or name in ("0.0.0.0", "::", ""):
            return
        self.allowed_hosts.append(name)
        self.user_middleware = self._middleware()
        self.middleware_stack = None

    def _middleware(self) -> list[Middleware]:
        return guard_middleware(self.allowed_hosts, self.cors_origins, [Middleware(_TokenAuth, token=self.token)])

    # -- errors -----------------------------------------------------------------------------------

    async def _api_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, (ApiError, UploadRefused))
        return error_response(exc.status, exc.error, exc.detail, exc.headers)

    async def _os_error(self, request: Request, exc: Exception) -> Response:
        """Out of descriptors anywhere in a request (a spool, a store file, a module's data file): a
        503 to retry; any other OSError is a bug, answered as one."""
        assert isinstance(exc, OSError)
        if not out_of_descriptors(exc):
            raise exc
        log.warning("%s %s: %s", request.method, request.url.path, exc)
        return await self._api_error(request, _no_descriptors(exc))

    async def _http_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404:
            detail = f"no route for {request.method} {request.url.path}"
        else:
            detail = exc.detail or HTTPStatus(exc.status_code).phrase
        error = HTTPStatus(exc.status_code).phrase.replace(" ", "")
        return error_response(exc.status_code, error, detail, dict(exc.headers or {}))

    async def _invalid_input(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, InvalidInput)
        return JSONResponse(
            {"error": "InvalidInput", "detail": str(exc), "field": exc.field}, status_code=422
        )

    async def _storage_error(self, request: Request, exc: Exception) -> Response:
        """The store failed, not the request: a JSON 5xx naming why, and the server keeps serving."""
        status, error, detail = storage_error_status(exc)
        log.error("%s %s: %s", request.method, request.url.path, detail)
        return error_response(status, error, detail)

    async def _disconnected(self, request: Request, exc: Exception) -> Response:
        return Response(status_code=400)  # nobody is there to read it

    # -- helpers ----------------------------------------------------------------------------------

    def _thing(self, name: str) -> Thing:
        thing = self.things.get(name)
        if thing is None:
            raise ApiError(404, f"no Thing named {name!r}", "NotFound")
        return thing

    async def read_json(self, request: Request, *, empty: Any = ...) -> Any:
        """The request body as JSON (size-limited); `empty` is returned for an empty body."""
        return (await self._read_json_sized(request, empty))[0]

    async def _read_json_sized(self, request: Request, empty: Any) -> tuple[Any, int]:
        """`read_json`, and the body's size in bytes."""
        chunks, n = [], 0
        async with contextlib.aclosing(self.uploads.chunks(request, slot_if_partial=True)) as body:
            async for chunk in body:
                n += len(chunk)
                if n > MAX_JSON:
                    raise ApiError(413, f"JSON bodies are limited to {MAX_JSON} bytes", "PayloadTooLarge")
                chunks.append(chunk)
        body = b"".join(chunks)
        if not body.strip():
            if empty is ...:
                raise ApiError(400, "expected a JSON body")
            return empty, len(body)
        return parse_json(body, "the body"), len(body)

    def resolve_blob(self, request: Request, url: str, cls: type[Blob], field: str) -> Blob:
        """A Blob input given as a URL: only this server's own blob links and objects are accepted,
        and nothing is ever fetched (no SSRF)."""
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
        except ValueError as e:  # e.g. "http://[::1/x" (an unclosed IPv6 bracket)
            raise InvalidInput(field, f"{url!r} is not a valid URL: {e}") from None
        base = urlsplit(str(request.base_url))
        if (parts.scheme or parts.netloc) and (parts.scheme, parts.netloc.lower()) != (
            base.scheme,
            base.netloc.lower(),
        ):
            raise InvalidInput(field, f"{url!r} is not on this server; pass a link this server issued")
        root = base.path if base.path.endswith("/") else base.path + "/"
        path = parts.path
        if not path.startswith(root):
            raise InvalidInput(field, f"{url!r} is not a blob or object of this server")
        rel = path[len(root) :]
        m = re.fullmatch(r"blobs/([A-Za-z0-9_-]+)", rel)
        if m:
            link = self.links.get(m.group(1))
            if link is None:
                raise InvalidInput(field, f"no blob {m.group(1)!r} on this server")
            blob = link.blob()
            if blob is None:
                raise InvalidInput(field, f"blob {m.group(1)!r} has expired")
            return blob
        m = re.fullmatch(r"objects/([^/]+)/data", rel)
        if m and self.store is not None:
            from .store_routes import object_blob_input

            return object_blob_input(self, unquote(m.group(1)), parts.query, field)
        raise InvalidInput(field, f"{url!r} is not a blob or object of this server")

    def link_json(self, link: Link, base: str) -> dict[str, Any]:
        url = f"{base}blobs/{link.id}"
        return {
            "url": url,
            "content_type": link.content_type,
            "href": url,
            "media_type": link.content_type,
            "rel": "output",
            "size": link.size,
            "sha256": link.sha256,
            "expires_at": link.expires_at,
        }

    def _output_json(self, node: Any, base: str) -> Any:
        if isinstance(node, OutputBlob):
            if node.link is not None:
                return self.link_json(node.link, base)
            meta = dict(node.remote or {})
            return {"url": meta.get("url"), "content_type": meta.get("content_type"), "href": meta.get("url"),
                    "media_type": meta.get("content_type"), "rel": "output", "size": meta.get("size"),
                    "sha256": meta.get("sha256"), "expires_at": None}
        raise TypeError(f"unexpected {type(node).__name__} in an output")

    def invocation_json(self, inv: Invocation, base: str) -> dict[str, Any]:
        href = f"{base}invocations/{inv.id}"
        return {
            "id": inv.id,
            "thing": inv.thing,
            "action": inv.action,
            "status": inv.status,
            "href": href,
            "links": [
                {"rel": "self", "href": href},
                {"rel": "output", "href": f"{href}/output"},
                {"rel": "thing", "href": f"{base}{inv.thing}/"},
            ],
            "input": inv.input,
            "output": map_blobs(inv.output, lambda n: self._output_json(n, base)),
            "error": inv.error,
            "log": list(inv.log),
            "timeRequested": inv.time_requested,
            "timeStarted": inv.time_started,
            "timeCompleted": inv.time_completed,
        }

    def _describe(self, thing: Thing) -> dict[str, Any]:
        """The base-independent part of a Thing Description (built once; fails loudly on bad hints)."""
        actions = {}
        for name, info in type(thing).thing_actions().items():
            try:
                entry: dict[str, Any] = {"title": name, "input": info.input_schema(), "output": info.output_schema()}
            except TypeError as e:
                raise InvalidArgument(f"{type(thing).__name__}.{name}: {e}") from e
            if info.description:
                entry["description"] = info.description
            entry.update({"safe": False, "idempotent": False, "synchronous": False})
            entry["forms"] = [{"href": name, "op": "invokeaction", "htv:methodName": "POST",
                               "contentType": "application/json"}]
            actions[name] = entry
        props = {}
        for name, prop in type(thing).thing_properties().items():
            try:
                entry = {"title": name, **prop.schema()}
            except TypeError as e:
                raise InvalidArgument(f"{type(thing).__name__}.{name}: {e}") from e
            if prop.description:
                entry["description"] = prop.description
            entry["readOnly"] = prop.read_only
            ops = ["readproperty"] if prop.read_only else ["readproperty", "writeproperty"]
            entry["forms"] = [{"href": name, "op": ops, "contentType": "application/json"}]
            props[name] = entry
        doc = type(thing).__doc__
        td: dict[str, Any] = {"title": thing.title or type(thing).__name__}
        if doc and doc is not Thing.__doc__:
            td["description"] = doc.strip()
        td["properties"] = props
        td["actions"] = actions
        return td

    # -- routes: Things -----------------------------------------------------------------------------

    async def index(self, request: Request) -> Response:
        """The browse page (`microblob.http.browse`): static HTML and JS that read the JSON routes."""
        if self._page is None:
            from .browse import BrowsePage

            self._page = await run_in_threadpool(BrowsePage, self.store is not None)
        return Response(self._page.body, media_type="text/html; charset=utf-8", headers=self._page.headers)

    async def list_things(self, request: Request) -> Response:
        base = str(request.base_url)
        return JSONResponse({name: f"{base}{name}/" for name in self.things})

    async def thing_description(self, request: Request) -> Response:
        name = request.path_params["thing"]
        self._thing(name)
        base = str(request.base_url)
        if self.token:
            sec = {"bearer_sc": {"scheme": "bearer", "in": "header", "name": "Authorization"}}
        else:
            sec = {"nosec_sc": {"scheme": "nosec"}}
        td = {
            "@context": ["https://www.w3.org/2022/wot/td/v1.1", {"htv": "http://www.w3.org/2011/http#"}],
            "@type": "Thing",
            "id": f"urn:microblob:thing:{name}",
            "base": f"{base}{name}/",
            "securityDefinitions": sec,
            "security": list(sec),
            **self._schemas[name],
            "links": [{"rel": "collection", "href": f"{base}things/"},
                      {"rel": "invocations", "href": f"{base}invocations/"}],
        }
        return JSONResponse(td)

    async def affordance(self, request: Request) -> Response:
        thing_name, name = request.path_params["thing"], request.path_params["name"]
        thing = self._thing(thing_name)
        actions = type(thing).thing_actions()
        props = type(thing).thing_properties()
        if name in actions:
            if request.method != "POST":
                raise ApiError(405, f"{name!r} is an action: POST to invoke it", headers={"Allow": "POST"})
            return await self._invoke(request, thing_name, thing, name)
        if name in props:
            if request.method in ("GET", "HEAD"):  # the route allows HEAD with GET; it was a 405 here
                return await self._read_property(request, thing, name)
            if request.method == "PUT":
                return await self._write_property(request, thing, name)
            raise ApiError(405, f"{name!r} is a property: GET or PUT it", headers={"Allow": "GET, PUT"})
        raise ApiError(404, f"Thing {thing_name!r} has no action or property {name!r}", "NotFound")

    async def _invoke(self, request: Request, thing_name: str, thing: Thing, name: str) -> Response:
        info = type(thing).thing_actions()[name]
        wait = _parse_wait(request, self.max_wait)
        body, size = await self._read_json_sized(request, {})

        def validate() -> dict[str, Any]:
            return info.coerce_input(body, lambda url, cls, field: self.resolve_blob(request, url, cls, field))

        kwargs = await run_in_threadpool(validate)
        try:
            inv = self.invocations.submit(thing_name, thing, info, kwargs, body, size)
        except TooManyInvocations as e:
            raise ApiError(503, str(e), "TooManyInvocations", {"Retry-After": "1"}) from None
        done = await self.invocations.wait(inv, wait)
        base = str(request.base_url)
        payload = self.invocation_json(inv, base)
        headers = {"Location": payload["href"]}
        if wait:
            headers["Preference-Applied"] = f"wait={wait:g}"
        return JSONResponse(payload, status_code=200 if done else 201, headers=headers)

    async def _property_value_json(self, value: Any, request: Request) -> Any:
        def convert() -> Any:
            tree = to_jsonable(value, "value")
            return map_blobs(tree, lambda b: self.links.register(b, self.blob_ttl))

        tree = await run_in_threadpool(convert)
        base = str(request.base_url)
        return map_blobs(tree, lambda link: self.link_json(link, base))

    async def _read_property(self, request: Request, thing: Thing, name: str) -> Response:
        value = await run_in_threadpool(getattr, thing, name)
        return JSONResponse(await self._property_value_json(value, request))

    async def _write_property(self, request: Request, thing: Thing, name: str) -> Response:
        prop = type(thing).thing_properties()[name]
        if prop.read_only:
            raise ApiError(405, f"property {name!r} is read-only", headers={"Allow": "GET"})
        body = await self.read_json(request)

        def write() -> None:
            value = prop.coerce(body, name, lambda url, cls, field: self.resolve_blob(request, url, cls, field))
            setattr(thing, name, value)

        await run_in_threadpool(write)
        return Response(status_code=204)

    # -- routes: invocations ------------------------------------------------------------------------

    def _invocation(self, request: Request) -> Invocation:
        inv = self.invocations.get(request.path_params["id"])
        if inv is None:
            raise ApiError(404, f"no invocation {request.path_params['id']!r} (never existed or forgotten)", "NotFound")
        return inv

    async def list_invocations(self, request: Request) -> Response:
        base = str(request.base_url)
        thing, action = request.query_params.get("thing"), request.query_params.get("action")
        out = [
            self.invocation_json(i, base)
            for i in self.invocations.all()
            if (thing is None or i.thing == thing) and (action is None or i.action == action)
        ]
        return JSONResponse(out)

    async def invocation(self, request: Request) -> Response:
        inv = self._invocation(request)
        base = str(request.base_url)
        if request.method == "DELETE":
            if inv.done:
                self.invocations.forget(inv.id)
                return Response(status_code=204)
            self.invocations.cancel(inv)
            return JSONResponse(self.invocation_json(inv, base), status_code=202)
        wait = _parse_wait(request, self.max_wait)
        await self.invocations.wait(inv, wait)
        # Says the long-poll was honoured: a client polling a server that does not say so paces itself.
        headers = {"Preference-Applied": f"wait={wait:g}"} if wait else None
        return JSONResponse(self.invocation_json(inv, base), headers=headers)

    async def invocation_output(self, request: Request) -> Response:
        inv = self._invocation(request)
        if inv.status in ("pending", "running"):
            raise ApiError(409, f"invocation {inv.id} is {inv.status}; its output is not ready", "NotFinished")
        if inv.status == "error":
            assert inv.error is not None
            raise ApiError(409, f"the action failed: {inv.error['type']}: {inv.error['message']}", "ActionFailed")
        if inv.status == "cancelled":
            raise ApiError(409, f"invocation {inv.id} was cancelled", "InvocationCancelled")
        out = inv.output
        if isinstance(out, OutputBlob):
            if out.link is None:
                raise ApiError(409, "the output is a remote Blob; fetch it from its url", "RemoteBlob")
            return await self._send_link(request, out.link, out.link.id)
        return JSONResponse(map_blobs(out, lambda n: self._output_json(n, str(request.base_url))))

    # -- routes: blobs ------------------------------------------------------------------------------

    async def _send_link(self, request: Request, link: Link | None, link_id: str) -> Any:
        if link is None:
            raise ApiError(404, f"no blob {link_id!r}", "NotFound")
        blob = link.blob()
        if blob is None:
            raise ApiError(410, f"blob {link_id!r} has expired", "BlobExpired")
        return BlobResponse(blob, method=request.method, request_headers=request.headers, size=link.size or 0,
                            sha256=link.sha256)

    async def download_blob(self, request: Request) -> Any:
        link_id = request.path_params["id"]
        return await self._send_link(request, self.links.get(link_id), link_id)

    async def upload_blob(self, request: Request) -> Response:
        """Stream the body to a temporary file (size-limited, hashed as it arrives) and link it."""
        ctype = request.headers.get("content-type", _GENERIC).strip() or _GENERIC
        try:
            check_content_type(ctype)  # the store's rule: what becomes a Content-Type header must be safe in one
        except InvalidArgument:
            raise ApiError(415, f"{ctype!r} is not a media type") from None
        path, _, sha = await self.receive_to_file(request)
        try:
            # The spool counts against the budget until the Blob that owns its file is gone.
            release = functools.partial(self.uploads.release, path)
            try:
                blob = blob_class_for(ctype).from_file(path, ctype, delete=True, sha256=sha, on_delete=release)
            except InvalidArgument:
                blob = Blob.from_file(path, ctype, delete=True, sha256=sha, on_delete=release)
        except BaseException:
            await anyio.to_thread.run_sync(self.discard_spool, path)
            raise
        link = await anyio.to_thread.run_sync(lambda: self.links.register(blob, self.upload_ttl, hold=True))
        payload = self.link_json(link, str(request.base_url))
        payload["rel"] = "upload"
        return JSONResponse(payload, status_code=201, headers={"Location": payload["url"]})

    def discard_spool(self, path: str) -> None:
        """Remove a spool `receive_to_file` made and give its bytes back to the budget."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        self.uploads.release(path)

    async def receive_to_file(self, request: Request) -> tuple[str, int, str]:
        """Stream the request body to a temporary file: bounded memory, `max_upload` enforced (413,
        and the partial file is removed), sha256 computed as it arrives, under the upload limits
        (`UploadGate`: a slot while it arrives, its bytes counted against the spool budget until the
        caller calls `discard_spool` or `uploads.release`). Returns (path, size, sha256)."""
        declared = request.headers.get("content-length")
        n_declared = None
        if declared is not None:
            try:
                n_declared = int(declared)
            except ValueError:
                raise ApiError(400, f"bad Content-Length {declared!r}") from None
            if n_declared > self.max_upload:
                raise ApiError(413, f"{n_declared} bytes is over the upload limit of {self.max_upload}",
                               "PayloadTooLarge", {"Connection": "close"})
        with self.uploads.slot():
            return await self._spool_body(request, n_declared)

    async def _spool_body(self, request: Request, declared: int | None) -> tuple[str, int, str]:
        try:
            tmp = await anyio.to_thread.run_sync(open_spool, self.upload_dir)
        except OSError as exc:
            raise _spool_error(exc) from None
        sha = hashlib.sha256()
        size = 0
        pending: list[bytes] = []
        buffered = 0

        def write(data: bytes) -> None:
            sha.update(data)
            tmp.write(data)

        reserved = declared or 0
        try:
            if reserved:
                self.uploads.reserve(tmp.name, reserved)  # refused before a byte is written
            async with contextlib.aclosing(self.uploads.chunks(request)) as body:
                async for chunk in body:
                    size += len(chunk)
                    if size > self.max_upload:
                        raise ApiError(413, f"the upload is over the limit of {self.max_upload} bytes",
                                       "PayloadTooLarge", {"Connection": "close"})
                    if size > reserved:  # no Content-Length: counted as it arrives
                        self.uploads.reserve(tmp.name, size - reserved)
                        reserved = size
                    pending.append(chunk)
                    buffered += len(chunk)
                    if buffered >= CHUNK_SIZE:
                        data, pending, buffered = b"".join(pending), [], 0
                        await anyio.to_thread.run_sync(write, data)
            if pending:
                await anyio.to_thread.run_sync(write, b"".join(pending))
            await anyio.to_thread.run_sync(tmp.close)
        except BaseException as exc:
            with contextlib.suppress(OSError):  # closing flushes: on a full disk that fails again
                tmp.close()
            self.discard_spool(tmp.name)
            if isinstance(exc, OSError):
                raise _spool_error(exc) from None
            raise
        return tmp.name, size, sha.hexdigest()
