"""`ThingClient`: a Thing on a server, used like a local object (methods, attributes, Blobs).

`ThingClient.from_url(url)` reads the Thing Description and makes a class whose methods have the
actions' real signatures. Calls long-poll (the server holds the response until the action ends, up to
`wait` seconds at a time), so short actions cost one round trip and long ones no busy polling.
Blob outputs come back lazy; passing one back sends only its URL; passing a local Blob uploads it.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Iterator
from typing import Any, Literal, Union

import httpx

from .._blob_url import raise_for_response
from .._exceptions import (
    ActionError,
    InvocationCancelled,
    InvocationTimeout,
    RemoteError,
)
from ..blob import CHUNK_SIZE, Blob, RemoteBlob, blob_class_for, remote_blob
from ..things.schema import map_blobs, to_jsonable
from .browser_guard import CSRF_HEADER

__all__ = ["RemoteBlob", "ThingClient"]

class _Unset:
    def __repr__(self) -> str:
        return "<client default>"


_UNSET: Any = _Unset()


class _Omitted:
    """Default of an optional parameter whose server-side default is not JSON: it is simply not sent."""

    def __repr__(self) -> str:
        return "<server default>"


OMITTED: Any = _Omitted()
_POLL_FIRST, _POLL_MAX = 0.05, 1.0  # seconds between polls of a server that does not hold them (no long-poll)


def _annotation(schema: dict[str, Any]) -> Any:
    """A Python type for a JSON Schema, for signatures and help() only."""
    if "contentMediaType" in schema:
        return blob_class_for(schema["contentMediaType"])
    if "enum" in schema:
        return Literal[tuple(schema["enum"])]  # type: ignore[misc]
    if "anyOf" in schema:
        arms = tuple(_annotation(s) for s in schema["anyOf"])
        return Union[arms] if arms else Any  # noqa: UP007 - built at run time
    kind = schema.get("type")
    simple = {"integer": int, "number": float, "string": str, "boolean": bool, "null": type(None)}
    if kind in simple:
        return simple[kind]
    if kind == "array":
        return list[_annotation(schema.get("items", {}))]  # type: ignore[misc]
    if kind == "object":
        return dict[str, Any]
    return Any


def _is_blob_json(node: Any) -> bool:
    return isinstance(node, dict) and isinstance(node.get("url") or node.get("href"), str) and (
        "content_type" in node or "media_type" in node
    ) and ("sha256" in node or node.get("rel") == "output")


class ThingClient:
    """A remote Thing. Use `ThingClient.from_url`; `invoke`, `get_property`, `set_property` are the
    untyped calls that the generated methods and attributes use."""

    def __init__(
        self,
        thing_url: str,
        client: httpx.Client | None = None,
        *,
        token: str | None = None,
        timeout: float | None = None,
        wait: float = 30.0,
        description: dict[str, Any] | None = None,
    ) -> None:
        self.thing_url = thing_url if thing_url.endswith("/") else thing_url + "/"
        self._own_client = client is None
        self.http = client or httpx.Client(timeout=httpx.Timeout(30.0, read=wait + 60.0))
        if token:
            self.http.headers["Authorization"] = f"Bearer {token}"
        self.timeout = timeout
        self.wait = wait
        self.td = description if description is not None else self._fetch_td()
        self.root = self._server_root()

    def _fetch_td(self) -> dict[str, Any]:
        r = self.http.get(self.thing_url)
        raise_for_response(r, f"GET {self.thing_url}")
        return r.json()

    def _server_root(self) -> str:
        for link in self.td.get("links", []):
            if link.get("rel") == "collection" and str(link.get("href", "")).endswith("things/"):
                return str(link["href"])[: -len("things/")]
        return self.thing_url.rstrip("/").rsplit("/", 1)[0] + "/"

    @classmethod
    def from_url(
        cls,
        url: str,
        client: httpx.Client | None = None,
        *,
        token: str | None = None,
        timeout: float | None = None,
        wait: float = 30.0,
    ) -> ThingClient:
        """Read the Thing Description at `url` and return a client with one method per action
        (the action's signature, plus keyword-only `timeout`) and one attribute per property."""
        base = cls(url, client, token=token, timeout=timeout, wait=wait)
        sub = cls.subclass_for(base.td)
        obj = sub.__new__(sub)
        obj.__dict__.update(base.__dict__)
        return obj

    @classmethod
    def subclass_for(cls, td: dict[str, Any]) -> type[ThingClient]:
        ns: dict[str, Any] = {"__doc__": td.get("description") or f"Client for the Thing {td.get('title')!r}."}
        for name, action in td.get("actions", {}).items():
            if name.isidentifier() and not hasattr(ThingClient, name):
                ns[name] = _make_action(name, action)
        for name, prop in td.get("properties", {}).items():
            if name.isidentifier() and not hasattr(ThingClient, name) and name not in ns:
                ns[name] = _PropertyDescriptor(name, prop)
        title = "".join(ch for ch in str(td.get("title", "Thing")) if ch.isalnum()) or "Thing"
        return type(f"{title}Client", (cls,), ns)

    # -- calls ------------------------------------------------------------------------------------

    def invoke(self, action: str, /, *, timeout: float | None = _UNSET, **arguments: Any) -> Any:
        """Run an action and return its output (Blobs as lazy remote Blobs).

        Raises `RemoteInvalidInput` (422), `ActionError` (it ran and failed), `InvocationCancelled`,
        or `InvocationTimeout` after `timeout` seconds (the invocation is then cancelled)."""
        timeout = self.timeout if timeout is _UNSET else timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        body = {k: self._encode(v) for k, v in arguments.items() if v is not OMITTED}
        url = self.thing_url + action
        wait = self._wait(deadline)
        r = self.http.post(url, json=body, params={"wait": f"{wait:g}"}, timeout=self._poll_timeout(wait))
        raise_for_response(r, f"{action}")
        inv = r.json()
        polls = 0
        while inv["status"] in ("pending", "running"):
            if "preference-applied" not in r.headers:
                # The server answered at once instead of holding the request (LabThings does): pace the
                # polls, 50 ms doubling to 1 s (LabThings' own client: 50 ms, then 0.5 s), rather than spin.
                time.sleep(min(_POLL_FIRST * 2**polls, _POLL_MAX, max(0.0, self._wait(deadline))))
                polls = min(polls + 1, 8)
            wait = self._wait(deadline)
            if wait <= 0:
                self._cancel(inv)
                raise InvocationTimeout(f"{action}: no result within {timeout} s (cancelled on the server)")
            r = self.http.get(inv["href"], params={"wait": f"{wait:g}"}, timeout=self._poll_timeout(wait))
            raise_for_response(r, f"{action} (invocation {inv['id']})")
            inv = r.json()
        if inv["status"] == "completed":
            return self._decode(inv["output"])
        if inv["status"] == "cancelled":
            raise InvocationCancelled(f"{action}: the invocation was cancelled")
        err = inv.get("error") or {}
        raise ActionError(f"{action} failed: {err.get('type')}: {err.get('message')}", error=err.get("type"))

    def _wait(self, deadline: float | None) -> float:
        if deadline is None:
            return self.wait
        return max(0.0, min(self.wait, deadline - time.monotonic()))

    def _poll_timeout(self, wait: float) -> httpx.Timeout:
        """The client's timeouts, but reading long enough for the server to hold the answer `wait` s."""
        t = self.http.timeout
        read = None if t.read is None else max(t.read, wait + 30.0)
        return httpx.Timeout(connect=t.connect, read=read, write=t.write, pool=t.pool)

    def _cancel(self, inv: dict[str, Any]) -> None:
        try:
            self.http.delete(inv["href"])
        except httpx.HTTPError:
            pass  # best effort: the server forgets it after its retention time anyway

    def get_property(self, name: str) -> Any:
        r = self.http.get(self.thing_url + name)
        raise_for_response(r, f"read {name}")
        return self._decode(r.json())

    def set_property(self, name: str, value: Any) -> None:
        r = self.http.put(self.thing_url + name, json=self._encode(value))
        raise_for_response(r, f"write {name}")

    # -- values -----------------------------------------------------------------------------------

    def _encode(self, value: Any) -> Any:
        return map_blobs(to_jsonable(value, "argument"), self._blob_ref)

    def _blob_ref(self, blob: Blob) -> dict[str, Any]:
        url = blob.url
        if url is None or not url.startswith(self.root):
            url = self.upload(blob)["url"]  # not on that server yet: send the bytes first
        # Both spellings: microblob reads `url`; a LabThings server's BlobModel requires `href`,
        # `media_type` and rel="output" (and ignores the rest).
        return {"url": url, "href": url, "content_type": blob.content_type, "media_type": blob.content_type,
                "rel": "output"}

    def upload(self, blob: Blob) -> dict[str, Any]:
        """Stream a Blob to the server (``POST /blobs``) and return its link JSON."""
        # A text/plain upload would look like a page's form post to the server's CSRF check: say it is not.
        headers = {"Content-Type": blob.content_type, CSRF_HEADER: "microblob"}
        size = blob.size
        if size is not None:
            headers["Content-Length"] = str(size)

        def chunks() -> Iterator[bytes]:
            with blob.open() as f:
                while chunk := f.read(CHUNK_SIZE):
                    yield chunk

        r = self.http.post(self.root + "blobs", content=chunks(), headers=headers)
        if r.status_code in (404, 405):  # a server with no upload route (LabThings takes only its own Blobs)
            raise RemoteError(
                f"upload: the server at {self.root} takes no uploads (POST {self.root}blobs answered "
                f"{r.status_code}); pass it a Blob that server returned", status=r.status_code, error="NoUploads")
        raise_for_response(r, "upload")
        return r.json()

    def _decode(self, value: Any) -> Any:
        if _is_blob_json(value):
            url = value.get("url") or value.get("href")
            ctype = value.get("content_type") or value.get("media_type")
            return remote_blob(blob_class_for(ctype), url, client=self.http, content_type=ctype,
                               size=value.get("size"), sha256=value.get("sha256"),
                               expires_at=value.get("expires_at"))
        if isinstance(value, list):
            return [self._decode(v) for v in value]
        if isinstance(value, dict):
            return {k: self._decode(v) for k, v in value.items()}
        return value

    # -- lifecycle --------------------------------------------------------------------------------

    def close(self) -> None:
        if self._own_client:
            self.http.close()

    def __enter__(self) -> ThingClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.thing_url}>"


def _make_action(name: str, action: dict[str, Any]) -> Any:
    schema = action.get("input") or {}
    props: dict[str, Any] = schema.get("properties", {}) if isinstance(schema, dict) else {}
    required = set(schema.get("required", [])) if isinstance(schema, dict) else set()
    params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    for pname, pschema in props.items():
        if not pname.isidentifier():
            continue
        default = inspect.Parameter.empty if pname in required else pschema.get("default", OMITTED)
        if default is inspect.Parameter.empty and params[-1].default is not inspect.Parameter.empty:
            kind = inspect.Parameter.KEYWORD_ONLY  # a required parameter after optional ones
        params.append(inspect.Parameter(pname, kind, default=default, annotation=_annotation(pschema)))
    has_timeout = "timeout" in props
    if not has_timeout:
        params.append(inspect.Parameter("timeout", inspect.Parameter.KEYWORD_ONLY, default=_UNSET,
                                        annotation=Union[float, None]))  # noqa: UP007
    extra = schema.get("additionalProperties", True) if isinstance(schema, dict) else False
    var = "kwargs"
    while var in props:  # a parameter may itself be called `kwargs`
        var = "_" + var
    if extra is not False:  # the action takes `**kwargs`: so does its method (the server checks the values)
        params.append(inspect.Parameter(var, inspect.Parameter.VAR_KEYWORD,
                                        annotation=_annotation(extra) if isinstance(extra, dict) else Any))
    sig = inspect.Signature(params, return_annotation=_annotation(action.get("output") or {}))

    def method(self: ThingClient, *args: Any, **kwargs: Any) -> Any:
        bound = sig.bind(self, *args, **kwargs)
        arguments = dict(bound.arguments)
        del arguments["self"]
        if extra is not False:
            arguments.update(arguments.pop(var, {}))
        timeout = _UNSET if has_timeout else arguments.pop("timeout", _UNSET)
        return self.invoke(name, timeout=timeout, **arguments)

    method.__signature__ = sig  # type: ignore[attr-defined]
    method.__name__ = method.__qualname__ = name
    method.__doc__ = action.get("description") or f"Invoke the action {name!r} on the server."
    return method


class _PropertyDescriptor:
    """A Thing property as an attribute: reading GETs it, assigning PUTs it."""

    def __init__(self, name: str, schema: dict[str, Any]) -> None:
        self.name = name
        self.read_only = bool(schema.get("readOnly"))
        self.__doc__ = schema.get("description")

    def __get__(self, obj: ThingClient | None, owner: type) -> Any:
        if obj is None:
            return self
        return obj.get_property(self.name)

    def __set__(self, obj: ThingClient, value: Any) -> None:
        if self.read_only:
            raise AttributeError(f"property {self.name!r} is read-only")
        obj.set_property(self.name, value)
