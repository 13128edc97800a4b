"""Invocations: one run of an action, in a bounded thread pool, kept for a while and then forgotten.

Actions run in a pool, so the event loop stays free however slow they are: a plain method as it is, an
`async def` one on an event loop of its own in the worker thread (so it may await, and is cancelled at its
next await), never on the server's loop, which a blocking call inside it would freeze.
A finished invocation holds its output (and so its Blobs) strongly until its Blob links expire, and is
itself forgotten after the retention time, or earlier when the count cap needs room (oldest finished
first), or when a client DELETEs it.

The bookkeeping is O(1) per call and bounded by the cap: finished invocations are kept in finish order
(the cap forgets the front), and forgetting one cancels its timers, so nothing outlives the table.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as _dt
import inspect
import logging
import threading
import traceback
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from .._exceptions import InvocationCancelled, MicroblobError
from ..blob import Blob, RemoteBlob
from ..things.schema import map_blobs, to_jsonable
from ..things.thing import ActionInfo, _cancel_event
from .links import BlobLinks, Link, iso_utc, new_id
from .scheduler import Scheduler, Timer

__all__ = ["Invocation", "InvocationManager", "OutputBlob", "TooManyInvocations"]

log = logging.getLogger("microblob.server")
_tls = threading.local()
MAX_LOG = 1000


class TooManyInvocations(MicroblobError):
    """Every retained invocation is still running and the cap is reached."""


@dataclass
class OutputBlob:
    """A Blob in an invocation's output with its link; `blob` becomes None when the output is released."""

    blob: Blob | None
    link: Link | None  # None for remote Blobs (served from their own URL)
    remote: dict[str, Any] | None = None  # url, content_type, size, sha256 of a remote Blob


@dataclass
class Invocation:
    id: str
    thing: str
    action: str
    input: Any
    blob_ttl: float
    input_bytes: int = 0  # of the request body it was parsed from: what keeping it costs, roughly
    status: str = "pending"
    output: Any = None
    error: dict[str, str] | None = None
    log: list[dict[str, Any]] = field(default_factory=list)
    time_requested: str = ""
    time_started: str | None = None
    time_completed: str | None = None
    finished_at: float | None = None  # monotonic
    future: Future[None] | None = field(default=None, repr=False)
    cancel_event: threading.Event = field(default_factory=threading.Event, repr=False)
    waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = field(default_factory=list, repr=False)
    stop_async: Callable[[], Any] | None = field(default=None, repr=False)  # cancels a running async action

    @property
    def done(self) -> bool:
        return self.status in ("completed", "error", "cancelled")

    def release(self) -> None:
        """Drop the strong references to output Blobs (their links then answer 410)."""
        for node in _output_blobs(self.output):
            node.blob = None


def _output_blobs(tree: Any) -> list[OutputBlob]:
    out: list[OutputBlob] = []
    map_blobs(tree, lambda n: out.append(n) if isinstance(n, OutputBlob) else None)
    return out


def _now() -> str:
    return iso_utc(_dt.datetime.now(_dt.timezone.utc))


_capture_lock = threading.Lock()
_capturing = False


def _capture_action_logs() -> None:
    """Copy log records made while an action runs (in its worker thread) into its invocation's `log`.

    Done with a record factory rather than a root handler, so `logging.basicConfig()` in the
    application still works after microblob is imported."""
    global _capturing
    with _capture_lock:
        if _capturing:
            return
        previous = logging.getLogRecordFactory()

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            inv = getattr(_tls, "invocation", None)
            if inv is not None and len(inv.log) < MAX_LOG:
                inv.log.append({
                    "level": record.levelname,
                    "message": record.getMessage(),
                    "logger": record.name,
                    "timestamp": iso_utc(_dt.datetime.fromtimestamp(record.created, _dt.timezone.utc)),
                })
            return record

        logging.setLogRecordFactory(factory)
        _capturing = True


# Bytes of request bodies the table may keep as inputs (its count cap alone let 1,000 invocations of 16 MiB
# bodies hold 16 GiB for `retention` seconds): beyond it the oldest finished are forgotten first, and a new
# invocation is refused while the running ones' inputs alone fill it.
MAX_INPUT_BYTES = 64 * 1024 * 1024  # four bodies of the 16 MiB most: a Raspberry Pi has 1-8 GiB


class InvocationManager:
    """Submits actions to the pool and keeps the table of invocations."""

    def __init__(
        self,
        links: BlobLinks,
        scheduler: Scheduler,
        *,
        blob_ttl: float,
        retention: float,
        max_invocations: int,
        max_workers: int,
    ) -> None:
        self.links = links
        self.scheduler = scheduler
        self.blob_ttl = blob_ttl
        self.retention = retention
        self.max_invocations = max_invocations
        self.max_input_bytes = MAX_INPUT_BYTES
        self._input_bytes = 0  # of the inputs the table holds
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="microblob-action")
        self._lock = threading.Lock()
        self._invocations: dict[str, Invocation] = {}
        self._finished: OrderedDict[str, tuple[Timer, ...]] = OrderedDict()  # finish order -> its timers
        _capture_action_logs()

    def submit(
        self, thing_name: str, thing: Any, info: ActionInfo, kwargs: dict[str, Any], raw_input: Any,
        input_bytes: int = 0,
    ) -> Invocation:
        ttl = self.blob_ttl if info.blob_ttl is None else info.blob_ttl
        inv = Invocation(new_id(), thing_name, info.name, raw_input, ttl, input_bytes, time_requested=_now())
        with self._lock:
            self._make_room(input_bytes)
            self._invocations[inv.id] = inv
            self._input_bytes += input_bytes
        method = getattr(thing, info.func.__name__)
        inv.future = self._pool.submit(self._run, inv, method, kwargs, info)
        return inv

    def _make_room(self, input_bytes: int) -> None:
        def full() -> bool:
            return len(self._invocations) >= self.max_invocations or \
                self._input_bytes + input_bytes > self.max_input_bytes

        while full() and self._finished:
            oldest = next(iter(self._finished))
            self._forget_locked(self._invocations[oldest])
        if len(self._invocations) >= self.max_invocations:
            raise TooManyInvocations(f"{len(self._invocations)} invocations are still running (the cap)")
        if self._input_bytes + input_bytes > self.max_input_bytes:
            raise TooManyInvocations(f"the inputs of the running invocations hold {self._input_bytes} bytes: "
                                     f"{input_bytes} more would pass the {self.max_input_bytes} kept at once")

    def _run(self, inv: Invocation, method: Callable[..., Any], kwargs: dict[str, Any], info: ActionInfo) -> None:
        if inv.cancel_event.is_set():
            self._finish(inv, "cancelled")
            return
        inv.status, inv.time_started = "running", _now()
        token = _cancel_event.set(inv.cancel_event)
        _tls.invocation = inv
        try:
            args, named = info.bind(kwargs)
            result = method(*args, **named)
            if inspect.iscoroutine(result):
                result = _await_on_own_loop(result, inv)
            # An action that saw the cancel and still returned finished its work: that is `completed`.
            tree = to_jsonable(info.check_output(result))
            inv.output = map_blobs(tree, lambda b: self._link(b, inv.blob_ttl))
            self._finish(inv, "completed")
        except InvocationCancelled:
            inv.output = None
            self._finish(inv, "cancelled")
        except Exception as e:  # noqa: BLE001 - the action's failure is reported, not raised
            log.info("action %s/%s failed:\n%s", inv.thing, inv.action, traceback.format_exc())
            inv.error = {"type": type(e).__name__, "message": str(e)}
            inv.output = None
            self._finish(inv, "error")
        finally:
            _tls.invocation = None
            _cancel_event.reset(token)

    def _link(self, blob: Blob, ttl: float) -> OutputBlob:
        if isinstance(blob, RemoteBlob):
            meta = {"url": blob.url, "content_type": blob.content_type, "size": blob.size,
                    "sha256": blob.known_sha256}
            return OutputBlob(None, None, remote=meta)
        return OutputBlob(blob, self.links.register(blob, ttl))

    def _finish(self, inv: Invocation, status: str) -> None:
        inv.time_completed = _now()
        inv.finished_at = self.scheduler.clock()
        keep = max(self.retention, inv.blob_ttl if status == "completed" else 0.0)
        inv_id = inv.id
        with self._lock:
            inv.status = status
            waiters, inv.waiters = inv.waiters, []
            # Timers are armed before anyone is told: whoever sees the result sees its expiry scheduled.
            if self._invocations.get(inv_id) is inv and inv_id not in self._finished:  # else forgotten already
                forget = self.scheduler.call_at(inv.finished_at + keep, lambda: self.forget(inv_id, only_if_done=True))
                if status == "completed":
                    release = self.scheduler.call_at(inv.finished_at + inv.blob_ttl, inv.release)
                    self._finished[inv_id] = (forget, release)
                else:
                    self._finished[inv_id] = (forget,)
        for loop, event in waiters:
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # that loop has closed; nobody waits there any more
                pass

    def get(self, inv_id: str) -> Invocation | None:
        with self._lock:
            return self._invocations.get(inv_id)

    def all(self) -> list[Invocation]:
        with self._lock:
            return list(self._invocations.values())

    def cancel(self, inv: Invocation) -> None:
        """Ask a pending or running invocation to stop (a pending one never starts)."""
        _signal_cancel(inv)
        if inv.future is not None and inv.future.cancel():
            self._finish(inv, "cancelled")

    def forget(self, inv_id: str, only_if_done: bool = False) -> bool:
        with self._lock:
            inv = self._invocations.get(inv_id)
            if inv is None or (only_if_done and not inv.done):
                return False
            self._forget_locked(inv)
            return True

    def _forget_locked(self, inv: Invocation) -> None:
        if self._invocations.pop(inv.id, None) is not None:
            self._input_bytes -= inv.input_bytes
        for timer in self._finished.pop(inv.id, ()):
            timer.cancel()
        inv.release()

    def sizes(self) -> dict[str, int]:
        """How many invocations the table holds, and how many of them are finished."""
        with self._lock:
            return {"invocations": len(self._invocations), "finished": len(self._finished),
                    "input_bytes": self._input_bytes}

    async def wait(self, inv: Invocation, timeout: float) -> bool:
        """Wait (without blocking the loop) up to `timeout` s for the invocation to end."""
        if inv.done or timeout <= 0:
            return inv.done
        entry = (asyncio.get_running_loop(), asyncio.Event())
        with self._lock:
            if inv.done:
                return True
            inv.waiters.append(entry)
        try:
            await asyncio.wait_for(entry[1].wait(), timeout)
        except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
            pass
        finally:
            with self._lock:
                if entry in inv.waiters:
                    inv.waiters.remove(entry)
        return inv.done

    def shutdown(self) -> None:
        """Cancel what runs, stop the pool, forget every invocation and release its outputs.

        Releasing matters: a file-backed output Blob (`delete=True`) is deleted when it is collected, and
        under plain uvicorn (or `serve()`) SIGTERM ends the process right after the lifespan shutdown by
        re-raising the signal, so atexit and weakref finalizers never run: outputs still held here left
        their temp files on disk for good."""
        for inv in self.all():
            _signal_cancel(inv)
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            invocations, self._invocations = list(self._invocations.values()), {}
            finished, self._finished = self._finished, OrderedDict()
        for timers in finished.values():
            for timer in timers:
                timer.cancel()
        for inv in invocations:
            inv.release()


def _signal_cancel(inv: Invocation) -> None:
    """Tell a running action to stop: a plain one sees the event at its next check (raise_if_cancelled,
    cancellable_sleep); an async one has its task cancelled at its next await."""
    inv.cancel_event.set()
    stop = inv.stop_async
    if stop is not None:
        with contextlib.suppress(RuntimeError):  # its loop closed: the action has just ended
            stop()


def _await_on_own_loop(coro: Coroutine[Any, Any, Any], inv: Invocation) -> Any:
    """Run an `async def` action's coroutine to the end on a new event loop in this worker thread. A
    cancel request (InvocationManager.cancel) cancels its task at the next await."""

    async def main() -> Any:
        loop, task = asyncio.get_running_loop(), asyncio.current_task()
        assert task is not None
        inv.stop_async = lambda: loop.call_soon_threadsafe(task.cancel)
        try:
            if inv.cancel_event.is_set():  # set before stop_async was: cancel() did not see it
                raise InvocationCancelled("the invocation was cancelled")
            return await coro
        finally:
            inv.stop_async = None

    try:
        return asyncio.run(main())
    except asyncio.CancelledError:
        raise InvocationCancelled("the invocation was cancelled") from None
    finally:
        coro.close()  # never awaited if cancelled first: no "was never awaited" warning
