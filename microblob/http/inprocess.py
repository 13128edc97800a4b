"""A synchronous httpx transport that serves requests from an ASGI app in this process, no socket.

httpx's own `ASGITransport` is async-only. `InProcessTransport` runs the app on an asyncio event loop in a
background thread, for the transport's whole life (as uvicorn would: one loop, so tasks an app starts in one
request are still running at the next), runs the ASGI lifespan (startup when created, shutdown on close),
and hands each request to that loop. Any number of threads may send requests at once.

Responses are buffered whole before they are returned: fine for tests, wrong for endless streams (SSE).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable
from typing import Any

import httpx

from .browser_guard import CSRF_HEADER

__all__ = ["InProcessTransport", "in_process_client"]

ASGIApp = Callable[..., Any]
_LIFESPAN_TIMEOUT = 30.0


class InProcessTransport(httpx.BaseTransport):
    """`httpx.Client(transport=InProcessTransport(app), base_url="http://testserver")`: a sync client
    whose requests are served by `app` in this process.

    `raise_app_exceptions=True` re-raises an exception that escapes the app in the calling thread (a real
    server would answer 500; set it False to get that 500 instead). `lifespan=False` skips the ASGI
    lifespan protocol. The read timeout of a request (httpx's `timeout=`) is honoured: the app's handler
    is cancelled, as if the client had gone away, and `httpx.ReadTimeout` is raised."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        raise_app_exceptions: bool = True,
        lifespan: bool = True,
        root_path: str = "",
        client: tuple[str, int] = ("127.0.0.1", 50000),
    ) -> None:
        self.app = app
        self._state: dict[str, Any] = {}
        self._inner = httpx.ASGITransport(
            app=self._with_state, raise_app_exceptions=raise_app_exceptions, root_path=root_path, client=client
        )
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="microblob-in-process-asgi", daemon=True)
        self._thread.start()
        self._closed = False
        self._lifespan: _Lifespan | None = None
        if lifespan:
            self._lifespan = _Lifespan(app, self._state)
            try:
                self._call(self._lifespan.startup(), _LIFESPAN_TIMEOUT)
            except BaseException:
                self._stop_loop()
                raise

    async def _with_state(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        # What the lifespan put in its state is visible to every request (ASGI lifespan "state" extension).
        scope["state"] = dict(self._state)
        await self.app(scope, receive, send)

    def _call(self, coro: Any, timeout: float | None) -> Any:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if self._closed:
            raise RuntimeError("the in-process transport is closed")
        if threading.current_thread() is self._thread:  # would wait for the loop it is blocking
            raise RuntimeError("a synchronous request from the app's own event loop would deadlock; "
                               "call it from a thread (e.g. a sync action) or use an async client")
        request.read()  # its stream is now a ByteStream, which httpx's ASGI transport can iterate too
        timeout = (request.extensions.get("timeout") or {}).get("read")
        try:
            status, headers, body = self._call(self._handle(request), timeout)
        except concurrent.futures.TimeoutError:
            raise httpx.ReadTimeout(f"the app did not answer within {timeout} s", request=request) from None
        return httpx.Response(status, headers=headers, stream=httpx.ByteStream(body), request=request)

    async def _handle(self, request: httpx.Request) -> tuple[int, Any, bytes]:
        response = await self._inner.handle_async_request(request)
        body = b"".join([part async for part in response.aiter_raw()])  # raw: the client decodes
        return response.status_code, response.headers.raw, body

    def close(self) -> None:
        """Run the lifespan shutdown, cancel what the app left running, stop the loop thread."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._lifespan is not None:
                self._call(self._lifespan.shutdown(), _LIFESPAN_TIMEOUT)
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        async def cancel_leftovers() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            self._call(cancel_leftovers(), _LIFESPAN_TIMEOUT)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(_LIFESPAN_TIMEOUT)
            if not self._thread.is_alive():
                self._loop.close()


class _Lifespan:
    """The server side of the ASGI lifespan protocol. An app that does not speak it (raises on the
    lifespan scope) is run without it, as the spec says a server must."""

    def __init__(self, app: ASGIApp, state: dict[str, Any]) -> None:
        self.app = app
        self.state = state
        self.supported = True
        self._to_app: asyncio.Queue[dict[str, Any]] | None = None
        self._from_app: asyncio.Queue[dict[str, Any]] | None = None
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": self.state}
        assert self._to_app is not None and self._from_app is not None
        try:
            await self.app(scope, self._to_app.get, self._from_app.put)
        except Exception:
            self.supported = False
        finally:
            self._from_app.put_nowait({"type": "ended"})

    async def _exchange(self, message: str) -> None:
        assert self._to_app is not None and self._from_app is not None
        await self._to_app.put({"type": message})
        answer = await self._from_app.get()
        if answer["type"] == "ended":  # the app returned (or raised) without answering: no lifespan
            return
        if answer["type"].endswith(".failed"):
            raise RuntimeError(f"ASGI {message} failed: {answer.get('message', '')}")

    async def startup(self) -> None:
        self._to_app, self._from_app = asyncio.Queue(), asyncio.Queue()
        self._task = asyncio.ensure_future(self._run())
        await self._exchange("lifespan.startup")

    async def shutdown(self) -> None:
        if self._task is None or self._task.done() or not self.supported:
            return
        await self._exchange("lifespan.shutdown")
        await asyncio.wait({self._task}, timeout=_LIFESPAN_TIMEOUT)


def in_process_client(app: ASGIApp, base_url: str = "http://testserver", **client_options: Any) -> httpx.Client:
    """An `httpx.Client` served by `app` in this process. Close it (or use `with`) to run the app's
    lifespan shutdown. Options other than httpx.Client's: `raise_app_exceptions`, `lifespan`."""
    transport_options = {k: client_options.pop(k) for k in ("raise_app_exceptions", "lifespan") if k in client_options}
    host = httpx.URL(base_url).host
    if host and callable(getattr(app, "allow_host", None)):
        # A ThingServer refuses Host names that are not its own (a browser's page may have rebound them);
        # a client in this very process is no browser, and its base URL names the server.
        app.allow_host(host)
    # Nor does it need the CSRF check's proof: a page cannot reach an app inside this process.
    headers = httpx.Headers(client_options.pop("headers", None))
    headers.setdefault(CSRF_HEADER, "microblob")
    return httpx.Client(headers=headers, transport=InProcessTransport(app, **transport_options), base_url=base_url,
                        **client_options)
