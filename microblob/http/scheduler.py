"""A clock-driven timer thread: expiry and retention happen at their time, not on the next request.

Timers can be cancelled, and a cancelled timer lets go of its callback at once (so of whatever the callback
holds): under load, things forgotten early (an invocation the table's cap dropped, a link whose Blob was
collected) must not stay alive until their original deadline. Cancelled entries leave the heap lazily;
the heap is rebuilt when they are more than half of it, so it stays within twice the live timers and
cancelling is O(1) amortized.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable

__all__ = ["Scheduler", "Timer"]

log = logging.getLogger("microblob.server")
_COMPACT_MIN = 64  # below this many cancelled entries the heap is left alone


class Timer:
    """A scheduled callback; `cancel()` drops it (and the references it holds)."""

    __slots__ = ("_fn", "_scheduler", "deadline")

    def __init__(self, scheduler: Scheduler, deadline: float, fn: Callable[[], None]) -> None:
        self._scheduler = scheduler
        self.deadline = deadline
        self._fn: Callable[[], None] | None = fn

    @property
    def active(self) -> bool:
        """Neither run nor cancelled yet."""
        return self._fn is not None

    def cancel(self) -> None:
        self._scheduler._cancel(self)


class Scheduler:
    """Runs callbacks at deadlines of `clock` (monotonic by default) on one daemon thread, started on first
    use. Callbacks must be quick (drop references, update dicts); they run outside any request.

    `clock` may be replaced (tests): the thread still sleeps in real time, so after moving a fake clock
    on, call `run_due()` to run what is due now."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._heap: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._running = threading.Lock()  # held while callbacks run, so run_due() returns after them
        self._cancelled = 0  # cancelled entries still in the heap
        self._thread: threading.Thread | None = None
        self._closed = False

    def call_at(self, deadline: float, fn: Callable[[], None]) -> Timer:
        timer = Timer(self, deadline, fn)
        with self._cond:
            if self._closed:
                timer._fn = None
                return timer
            heapq.heappush(self._heap, (deadline, next(self._seq), timer))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="microblob-expiry", daemon=True)
                self._thread.start()
            self._cond.notify()
        return timer

    def _cancel(self, timer: Timer) -> None:
        with self._cond:
            if timer._fn is None:
                return
            timer._fn = None
            self._cancelled += 1
            if self._cancelled >= _COMPACT_MIN and 2 * self._cancelled > len(self._heap):
                self._heap = [entry for entry in self._heap if entry[2]._fn is not None]
                heapq.heapify(self._heap)
                self._cancelled = 0

    def __len__(self) -> int:
        """Timers neither run nor cancelled."""
        with self._cond:
            return len(self._heap) - self._cancelled

    def queued(self) -> int:
        """Heap entries, cancelled ones not yet dropped included (at most about twice `len()`)."""
        with self._cond:
            return len(self._heap)

    def _pop_due(self) -> Callable[[], None] | None:
        """The next due callback, taken off the heap (call with `_cond` held)."""
        while self._heap and self._heap[0][0] <= self.clock():
            _, _, timer = heapq.heappop(self._heap)
            fn, timer._fn = timer._fn, None
            if fn is None:
                self._cancelled -= 1
                continue
            return fn
        return None

    def _call(self, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception:
            log.exception("expiry callback failed")

    def run_due(self) -> int:
        """Run every callback due by `clock()` now, in this thread; returns how many ran."""
        ran = 0
        with self._running:
            while True:
                with self._cond:
                    fn = None if self._closed else self._pop_due()
                if fn is None:
                    return ran
                self._call(fn)
                ran += 1

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed and (not self._heap or self._heap[0][0] > self.clock()):
                    timeout = None if not self._heap else max(0.0, self._heap[0][0] - self.clock())
                    self._cond.wait(timeout)
                if self._closed:
                    return
            with self._running:
                with self._cond:
                    fn = None if self._closed else self._pop_due()
                if fn is not None:
                    self._call(fn)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            for _, _, timer in self._heap:
                timer._fn = None
            self._heap.clear()
            self._cancelled = 0
            self._cond.notify()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout=5)
