"""Streaming a Blob over ASGI: HEAD, Range (206), ETag (its sha256), Content-Length, bounded memory.

The event loop never reads a file or a stored object itself: each chunk is read in a worker thread
and sent before the next is read, so memory stays at about one chunk per download.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import anyio
import anyio.to_thread
from starlette.types import Receive, Scope, Send

from .._exceptions import NotFound
from ..blob import CHUNK_SIZE, Blob

log = logging.getLogger("microblob.server")

__all__ = ["BlobResponse", "parse_range"]

_RANGE = re.compile(r"bytes=\s*(\d*)\s*-\s*(\d*)\s*")
# Slices of in-memory bytes are sent CHUNK_SIZE at a time like file reads: bigger slices would each be
# a fresh mapping (_malloc.MMAP_THRESHOLD), page-faulted in and unmapped again, for no gain.
_MEMORY_CHUNK = CHUNK_SIZE


def parse_range(header: str | None, size: int) -> tuple[int, int] | str | None:
    """The (start, end-exclusive) of a single `Range: bytes=` header; None to send everything
    (no header, several ranges, another unit), or "unsatisfiable"."""
    if not header:
        return None
    m = _RANGE.fullmatch(header.strip())
    if m is None:
        return None  # several ranges or other units: RFC 9110 lets us answer 200 with the whole body
    first, last = m.groups()
    if first == "" and last == "":
        return None
    # int() refuses strings of over 4300 digits (a ValueError), and any position of more
    # than 18 digits is past the end of every blob anyway: read those as "beyond the end".
    first, last = (s if len(s) <= 18 else "9" * 18 for s in (first, last))
    if first == "":  # suffix: the last N bytes
        n = int(last)
        if n == 0 or size == 0:  # no last bytes of nothing (RFC 9110 14.1.1): not a 206 of bytes 0--1
            return "unsatisfiable"
        return (max(0, size - n), size)
    start = int(first)
    end = size if last == "" else min(size, int(last) + 1)
    if start >= size or end <= start:
        return "unsatisfiable"
    return (start, end)


class BlobResponse:
    """An ASGI response that streams a Blob (or part of it)."""

    def __init__(
        self,
        blob: Blob,
        *,
        method: str,
        request_headers: Any,
        size: int,
        sha256: str,
        extra_headers: dict[str, str] | None = None,
    ) -> None:
        self.blob = blob
        self.head = method == "HEAD"
        etag = f'"{sha256}"'
        headers = {
            "content-type": blob.content_type,
            "etag": etag,
            "accept-ranges": "bytes",
            "cache-control": "private, max-age=0",
            # Stored bytes are user data served from the app's origin: an HTML or SVG object opened in a
            # browser must not run scripts as this origin (against the browse page or the JSON routes).
            "content-security-policy": "sandbox",
            "x-content-type-options": "nosniff",
        }
        headers.update(extra_headers or {})
        self.start, self.end, self.status = 0, size, 200
        inm = request_headers.get("if-none-match")
        if inm is not None and (inm.strip() == "*" or etag in [t.strip() for t in inm.split(",")]):
            self.status, self.end = 304, 0
        else:
            rng = request_headers.get("range")
            if_range = request_headers.get("if-range")
            if rng is not None and (if_range is None or if_range.strip() == etag):
                parsed = parse_range(rng, size)
                if parsed == "unsatisfiable":
                    self.status, self.end = 416, 0
                    headers["content-range"] = f"bytes */{size}"
                    headers["content-type"] = "application/json"
                elif parsed is not None:
                    self.start, self.end = parsed  # type: ignore[misc]
                    self.status = 206
                    headers["content-range"] = f"bytes {self.start}-{self.end - 1}/{size}"
        self.body_416 = b""
        if self.status == 416:
            self.body_416 = (
                b'{"error":"RangeNotSatisfiable","detail":"the range is outside the ' + str(size).encode() + b' bytes"}'
            )
            headers["content-length"] = str(len(self.body_416))
        elif self.status == 304:
            headers.pop("content-type")
        else:
            headers["content-length"] = str(self.end - self.start)
        self.headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        self._file: Any = None
        self._first: bytes | None = None

    @property
    def _streams(self) -> bool:
        return not (self.head or self.status in (304, 416) or self.end == self.start)

    async def prepare(self) -> None:
        """Open the bytes and read the first piece, before any status is sent: a failure here (the
        bytes are gone, say) can still become an error response instead of a body cut short, and a
        body that fits in that piece is read whole from one snapshot. Called by `__call__` if the
        route did not."""
        if self._file is not None or not self._streams or self.blob.in_memory is not None:
            return
        f = await anyio.to_thread.run_sync(self.blob.open)
        try:
            if self.start:
                await anyio.to_thread.run_sync(f.seek, self.start)
            self._first = await anyio.to_thread.run_sync(f.read, min(CHUNK_SIZE, self.end - self.start))
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(f.close)
            raise
        self._file = f

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.prepare()
        except BaseException:
            await self._close()
            raise
        await send({"type": "http.response.start", "status": self.status, "headers": self.headers})
        if not self._streams:
            await send({"type": "http.response.body", "body": b"" if self.head else self.body_416})
            return
        try:
            async with anyio.create_task_group() as tg:

                async def watch_disconnect() -> None:
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    tg.cancel_scope.cancel()  # stop reading chunks nobody will receive

                tg.start_soon(watch_disconnect)
                try:
                    await self._stream(send)
                except NotFound as exc:
                    # The bytes were freed after the status went out (an update that keeps no history,
                    # a delete): all that is left is to end the body short, which the client sees (fewer
                    # bytes than Content-Length). Not a bug, so one line in the log, no traceback.
                    log.warning("%s %s cut short: %s", scope.get("method"), scope.get("path"), exc)
                tg.cancel_scope.cancel()
        finally:
            await self._close()

    async def _close(self) -> None:
        f, self._file = self._file, None
        if f is not None:
            with anyio.CancelScope(shield=True):  # close even when the client went away mid-stream
                await anyio.to_thread.run_sync(f.close)

    async def _stream(self, send: Send) -> None:
        data = self.blob.in_memory
        if data is not None:
            mv = memoryview(data).cast("B")
            pos = self.start
            while pos < self.end:
                nxt = min(self.end, pos + _MEMORY_CHUNK)
                await send({"type": "http.response.body", "body": bytes(mv[pos:nxt]), "more_body": nxt < self.end})
                pos = nxt
            return
        f, chunk = self._file, self._first  # opened and first piece read by prepare()
        self._first = None
        left = self.end - self.start
        while left > 0:
            if chunk is None:
                chunk = await anyio.to_thread.run_sync(f.read, min(CHUNK_SIZE, left))
            if not chunk:
                raise OSError(f"{self.blob!r} ended {left} bytes early")
            left -= len(chunk)
            await send({"type": "http.response.body", "body": chunk, "more_body": left > 0})
            chunk = None
