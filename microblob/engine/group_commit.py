"""Group commit: writers that arrive while a commit is being synced wait, then share the next commit.

A durable LMDB commit costs two disk flushes, ~0.5 ms here and several on an SD card, and LMDB takes
one writer at a time. One thread per writer therefore got one flush pair per save however many threads
wrote. Here the first writer to find no commit in flight becomes the leader: it takes every request
queued so far, runs them in one transaction (each in a nested transaction of its own, so one that fails
leaves the others' writes intact) and syncs once; meanwhile new arrivals queue for the next group. A
request returns only after the commit that holds it is on disk, so every save is as durable as before.

Requests run on the leader's thread inside a copy of their own thread's context (contextvars such as
the regex budget or the current workflow come along). Within one process only: another process's
writers meet LMDB's own lock, as before.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

__all__ = ["GroupCommit", "WriteRequest"]

T = TypeVar("T")

_PENDING, _SYNCING, _DONE = 0, 1, 2


class WriteRequest(Generic[T]):
    """One writer's transaction function and, once its group committed, its result or error."""

    __slots__ = ("fn", "size_hint", "durable", "_context", "_state", "_result", "_error", "_wake")

    def __init__(self, fn: Callable[[Any], T], size_hint: int, durable: bool) -> None:
        self.fn = fn
        self.size_hint = size_hint
        self.durable = durable
        self._context = contextvars.copy_context()
        self._state = _PENDING
        self._result: Any = None
        self._error: BaseException | None = None
        self._wake: threading.Condition | None = None  # its writer's, on the group's lock, while it waits

    def run(self, txn: Any) -> T:
        """Run the writer's function on `txn` in the writer's own context (on whichever thread leads)."""
        return self._context.run(self.fn, txn)

    def committed(self) -> None:
        """In a commit whose sync is still running: no leader may run it again, and it is not done yet."""
        self._state = _SYNCING

    def succeed(self, result: Any) -> None:
        self._result, self._error, self._state = result, None, _DONE

    def fail(self, error: BaseException) -> None:
        self._result, self._error, self._state = None, error, _DONE

    @property
    def done(self) -> bool:
        return self._state == _DONE

    def outcome(self) -> T:
        if self._error is not None:
            raise self._error
        return self._result


class GroupCommit:
    """The queue of one environment's writers and who leads the commit in flight.

    Each waiting writer sleeps on a condition of its own (over the one lock) and is woken only when it
    has something to do: its request settled, or leadership free with its request first in the queue.
    One shared condition woke all of them twice per group; with 8 writers that was ~14 wake-ups per
    commit fighting the leader for the GIL, which doubled the time a group's transaction took."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: list[WriteRequest[Any]] = []
        self._leading = False

    @property
    def queued(self) -> int:
        """Requests waiting for the next group (not those of the group in flight)."""
        with self._lock:
            return len(self._pending)

    def _wake_next_leader(self) -> None:
        """With the lock held and no leader: the first queued writer leads the next group."""
        if self._pending:
            first = self._pending[0]._wake
            if first is not None:
                first.notify()

    @staticmethod
    def _wake_settled(batch: list[WriteRequest[Any]]) -> None:
        """With the lock held: the writers of `batch` whose requests are done return."""
        for r in batch:
            if r._wake is not None and r._state == _DONE:
                r._wake.notify()

    def submit(
        self, request: WriteRequest[T],
        commit: Callable[[list[WriteRequest[Any]]], Callable[[], None] | None],
    ) -> T:
        """Queue `request` and wait until a group holding it committed; lead a group if none is in flight.

        `commit(batch)` runs the batch and settles every request of it with `succeed` or `fail`, or marks
        the committed ones `committed()` and returns a function that syncs and settles them: that runs
        after the next leader is let in, so the next group's transaction overlaps this group's sync (each
        request still returns only once its own commit is on disk). When `commit` raises, the requests it
        left unsettled go back to the queue for the next leader (each then meets the failure itself, or
        not); the leader gets its own request's outcome if that was settled, else the exception."""
        with self._lock:
            self._pending.append(request)
            if not request.done and (self._leading or request._state == _SYNCING):
                request._wake = threading.Condition(self._lock)
                try:
                    while not request.done and (self._leading or request._state == _SYNCING):
                        request._wake.wait()
                except BaseException:  # interrupted while queued: withdraw it (in a group in flight, it is written)
                    if request in self._pending:
                        self._pending.remove(request)
                        if not self._leading:
                            self._wake_next_leader()
                    raise
                finally:
                    request._wake = None
            if request.done:
                return request.outcome()
            self._leading = True
            batch, self._pending = self._pending, []
        error: Exception | None = None
        finish: Callable[[], None] | None = None
        try:
            finish = commit(batch)
        except Exception as exc:  # ours may be settled all the same: the others run again and meet it
            error = exc
        finally:
            with self._lock:
                self._leading = False
                unsettled = [r for r in batch if r._state == _PENDING and r is not request]
                self._pending[:0] = unsettled
                self._wake_settled(batch)
                self._wake_next_leader()
        if finish is not None:
            try:
                finish()
            finally:
                with self._lock:
                    for r in batch:  # never left waiting on a sync that raised before settling it
                        if r._state == _SYNCING:
                            r.fail(RuntimeError("the commit's sync ended without settling this write"))
                    self._wake_settled(batch)
        if request.done:
            return request.outcome()
        if error is not None:
            raise error
        raise RuntimeError("commit() returned without settling the leader's own request")
