"""Upload admission: how many request bodies may be spooled at once, how many bytes all live spools
may hold together, and how long a body may take (in all, and between two of its pieces).

Each upload holds a connection, a spool file and its descriptor while its body arrives, and its bytes
on disk until whatever it became is released. Without caps, clients trickling a byte now and then keep
all of that forever, until the process runs out of descriptors (every other request then fails) or the
disk fills. So: a body that sends nothing for `idle_timeout` seconds, or is still arriving after
`max_duration`, is dropped (408); at most `max_uploads` bodies are received at once (every upload, and
a JSON body that does not come whole in one piece; the next one is a 503 with Retry-After, before
anything is written); and the bytes of all live spools, finished ones
included until their file is removed, stay within `spool_budget` (an upload that would go over it is a
507, its partial spool removed).
"""

from __future__ import annotations

import contextlib
import errno
import math
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import anyio
from starlette.requests import ClientDisconnect

from .._exceptions import InvalidArgument

__all__ = ["UploadGate", "UploadLimits", "UploadRefused", "out_of_descriptors"]

GiB = 1024**3
RETRY_AFTER = "1"  # seconds: uploads in flight finish or time out on that scale


@dataclass(frozen=True)
class UploadLimits:
    """The caps on request bodies (see the module docstring); every one is configurable on
    `ThingServer` and `microblob serve`."""

    idle_timeout: float = 30.0
    max_duration: float = 3600.0
    max_uploads: int = 32
    spool_budget: int = 8 * GiB

    def __post_init__(self) -> None:
        for name, option in (("idle_timeout", "upload_idle_timeout"), ("max_duration", "upload_timeout")):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise InvalidArgument(f"{option} must be a finite number of seconds > 0, not {value!r}")
        for name in ("max_uploads", "spool_budget"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise InvalidArgument(f"{name} must be an integer > 0, not {value!r}")


class UploadRefused(Exception):
    """An upload the limits refuse: answered as JSON with `status`, and the connection closed (the
    rest of its body is not worth reading)."""

    def __init__(self, status: int, error: str, detail: str, retry: bool = False) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail = status, error, detail
        self.headers = {"Connection": "close"}
        if retry:
            self.headers["Retry-After"] = RETRY_AFTER


def out_of_descriptors(exc: BaseException) -> bool:
    """The process (EMFILE) or the system (ENFILE) has no file descriptor left."""
    return isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE)


class UploadGate:
    """Admits request bodies under `UploadLimits` and keeps the books: uploads being received, and
    the bytes each live spool holds against the budget (by spool path, until `release(path)`)."""

    def __init__(self, limits: UploadLimits) -> None:
        self.limits = limits
        self._lock = threading.Lock()  # release() runs in finalizers, on any thread
        self._active = 0
        self._used = 0
        self._held: dict[str, int] = {}

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        """One of the `max_uploads` places for a body being spooled, or a 503."""
        with self._lock:
            if self._active >= self.limits.max_uploads:
                raise UploadRefused(
                    503, "TooManyUploads",
                    f"{self._active} uploads are being received, the most this server takes at once; retry",
                    retry=True)
            self._active += 1
        try:
            yield
        finally:
            with self._lock:
                self._active -= 1

    def reserve(self, path: str, n: int) -> None:
        """Count `n` more bytes for the spool at `path`, or raise a 507 (the caller removes the spool
        and calls `release`)."""
        with self._lock:
            if self._used + n > self.limits.spool_budget:
                held = self._held.get(path, 0)
                budget = self.limits.spool_budget
                never = held + n > budget
                detail = (f"the upload is over the spool budget of {budget} bytes" if never else
                          f"the server holds {self._used} bytes of uploads, and this one would take it over "
                          f"its spool budget of {budget} bytes; retry once uploads are consumed or expire")
                raise UploadRefused(507, "SpoolBudgetExceeded", detail, retry=not never)
            self._used += n
            self._held[path] = self._held.get(path, 0) + n

    def release(self, path: str) -> None:
        """The spool at `path` is gone: give its bytes back to the budget (once; later calls do nothing)."""
        with self._lock:
            self._used -= self._held.pop(path, 0)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"uploads": self._active, "spools": len(self._held), "spooled_bytes": self._used,
                    "max_uploads": self.limits.max_uploads, "spool_budget": self.limits.spool_budget}

    async def chunks(self, request: Any, *, slot_if_partial: bool = False) -> AsyncIterator[bytes]:
        """The request body, piece by piece (read from the ASGI `receive` as `Request.stream` does, one
        wait per message); a 408 when no piece comes for `idle_timeout` seconds or the body is still
        arriving after `max_duration`. `slot_if_partial`: a body that does not come whole in its first
        message takes a `slot` until it is read (a small JSON body comes whole and takes none)."""
        idle, total = self.limits.idle_timeout, self.limits.max_duration
        deadline = time.monotonic() + total
        receive = request.receive
        with contextlib.ExitStack() as held:
            while True:
                left = deadline - time.monotonic()
                message = None
                with anyio.move_on_after(min(idle, max(left, 0.0))):
                    message = await receive()  # cancelled while waiting, uvicorn loses nothing
                if message is None:
                    if left <= idle:
                        raise UploadRefused(408, "RequestTimeout", f"the body took longer than {total:g} s")
                    raise UploadRefused(408, "RequestTimeout", f"no body bytes for {idle:g} s")
                if message["type"] == "http.disconnect":
                    raise ClientDisconnect()
                more = message.get("more_body", False)
                if slot_if_partial and more:
                    held.enter_context(self.slot())
                    slot_if_partial = False
                body = message.get("body", b"")
                if body:
                    yield body
                if not more:
                    return
