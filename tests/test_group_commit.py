"""Group commit (issue 16): writers that arrive while a commit is in flight share the next commit, each
still isolated from the others' failures and durable when its call returns.

The groups are made deterministic by a first writer that holds its transaction open until the others
are queued; the number of commits is read from the file's transaction id.
"""

from __future__ import annotations

import contextvars
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import microblob
from microblob.engine.group_commit import GroupCommit, WriteRequest
from microblob.engine.lmdb_kv import LmdbEngine

WAIT = 30.0


class Blocked:
    """A first writer holding the write transaction open, so the writers started meanwhile queue up."""

    def __init__(self, engine: LmdbEngine) -> None:
        self.engine = engine
        self.started = threading.Event()
        self.release = threading.Event()
        self.thread = threading.Thread(target=engine.write, args=(self._hold,))
        self.thread.start()
        assert self.started.wait(WAIT)

    def _hold(self, txn: Any) -> None:
        txn.put("meta", b"blocker", b"1")
        self.started.set()
        assert self.release.wait(WAIT)

    def queue(self, writers: list[Callable[[], Any]]) -> list[threading.Thread]:
        """Start `writers` and return once all of them wait for the next group."""
        threads = [threading.Thread(target=w) for w in writers]
        for t in threads:
            t.start()
        deadline = time.monotonic() + WAIT
        while self.engine.queued_writes() < len(writers):
            assert time.monotonic() < deadline, "the writers never queued"
            time.sleep(0.005)
        return threads

    def finish(self, threads: list[threading.Thread]) -> None:
        self.release.set()
        for t in [self.thread, *threads]:
            t.join(WAIT)
            assert not t.is_alive()


@pytest.fixture
def engine(lmdb_path: Path) -> Any:
    engine = LmdbEngine(lmdb_path)
    yield engine
    engine.close()


def read(engine: LmdbEngine, key: bytes) -> bytes | None:
    with engine.read() as txn:
        return txn.get("meta", key)


def test_writers_queued_behind_a_commit_share_one(engine: LmdbEngine) -> None:
    before = engine.last_txnid()
    blocked = Blocked(engine)
    results: dict[int, Any] = {}

    def writer(i: int) -> Callable[[], None]:
        def put(txn: Any) -> int:
            txn.put("meta", b"k%d" % i, b"v%d" % i)
            return i * 10
        return lambda: results.__setitem__(i, engine.write(put))

    threads = blocked.queue([writer(i) for i in range(8)])
    blocked.finish(threads)
    assert results == {i: i * 10 for i in range(8)}
    assert [read(engine, b"k%d" % i) for i in range(8)] == [b"v%d" % i for i in range(8)]
    assert engine.last_txnid() == before + 2  # the blocker's commit, then one for all eight


def test_a_failing_writer_takes_back_only_its_own_writes(engine: LmdbEngine) -> None:
    blocked = Blocked(engine)
    outcomes: dict[str, Any] = {}

    def writer(name: str, fail: bool) -> Callable[[], None]:
        def put(txn: Any) -> str:
            txn.put("meta", name.encode(), b"written")
            if fail:
                raise ValueError(f"{name} refuses")
            return name

        def run() -> None:
            try:
                outcomes[name] = engine.write(put)
            except ValueError as exc:
                outcomes[name] = exc
        return run

    threads = blocked.queue([writer("a", False), writer("b", True), writer("c", False)])
    blocked.finish(threads)
    assert outcomes["a"] == "a" and outcomes["c"] == "c"
    assert isinstance(outcomes["b"], ValueError) and str(outcomes["b"]) == "b refuses"
    assert (read(engine, b"a"), read(engine, b"b"), read(engine, b"c")) == (b"written", None, b"written")


def test_a_writer_that_needs_a_bigger_map_grows_it_and_the_group_still_commits(lmdb_path: Path) -> None:
    engine = LmdbEngine(lmdb_path, map_size=1024 * 1024)
    try:
        blocked = Blocked(engine)
        big = b"x" * (3 * 1024 * 1024)  # three times the whole map
        done: list[str] = []

        def writer(key: bytes, value: bytes) -> Callable[[], None]:
            def put(txn: Any) -> None:
                txn.put("chunks", key, value)
            return lambda: (engine.write(put, size_hint=len(value)), done.append(key.decode()))

        threads = blocked.queue([writer(b"small1", b"1"), writer(b"big", big), writer(b"small2", b"2")])
        blocked.finish(threads)
        assert sorted(done) == ["big", "small1", "small2"]
        assert engine.map_size() > 3 * 1024 * 1024
        with engine.read() as txn:
            assert txn.get("chunks", b"big") == big
            assert (txn.get("chunks", b"small1"), txn.get("chunks", b"small2")) == (b"1", b"2")
    finally:
        engine.close()


def test_each_writer_runs_in_its_own_context(engine: LmdbEngine) -> None:
    """The leader runs a follower's function on its own thread, with the follower's context variables."""
    var: contextvars.ContextVar[str] = contextvars.ContextVar("who", default="nobody")
    blocked = Blocked(engine)
    seen: dict[str, str] = {}

    def writer(name: str) -> Callable[[], None]:
        def run() -> None:
            var.set(name)
            seen[name] = engine.write(lambda txn: var.get())
        return run

    threads = blocked.queue([writer("first"), writer("second")])
    blocked.finish(threads)
    assert seen == {"first": "first", "second": "second"}


def test_a_nested_write_inside_a_grouped_writer_is_refused(engine: LmdbEngine) -> None:
    blocked = Blocked(engine)
    errors: list[BaseException] = []

    def nested() -> None:
        try:
            engine.write(lambda txn: engine.write(lambda inner: None))
        except RuntimeError as exc:
            errors.append(exc)

    threads = blocked.queue([nested])
    blocked.finish(threads)
    assert len(errors) == 1 and "nested write transaction" in str(errors[0])


def test_concurrent_updates_of_one_object_stay_contiguous(lmdb_path: Path) -> None:
    """Grouped compare-and-swap updates see each other's writes (nested transactions see the group's)."""
    with microblob.connect(lmdb_path) as store:
        oid = store.save_or_update_object(b"v0")
        threads = [threading.Thread(target=lambda: [store.save_or_update_object(b"u", object_id=oid,
                                                                              control_version=True)
                                                  for _ in range(25)]) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(WAIT)
        latest = store.get_blob_object(oid)
        assert latest.version == 200
        assert [h["version"] for h in store.get_object_history(oid)] == list(range(200, -1, -1))


def test_a_full_store_fails_only_the_writer_that_needs_the_room(lmdb_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """One writer of a group needs more than the map may grow to: it gets StoreFull, the others of its
    group succeed, and what committed before the failure is never run again."""
    from microblob.engine import lmdb_kv

    monkeypatch.setattr(lmdb_kv, "MAP_LIMIT", 2 * 1024 * 1024)
    engine = LmdbEngine(lmdb_path, map_size=1024 * 1024)
    try:
        blocked = Blocked(engine)
        outcomes: dict[str, Any] = {}

        def writer(name: str, size: int) -> Callable[[], None]:
            def put(txn: Any) -> None:
                runs = int(txn.get("meta", name.encode() + b"-runs") or b"0")
                txn.put("meta", name.encode() + b"-runs", str(runs + 1).encode())
                txn.put("chunks", name.encode(), b"x" * size)

            def run() -> None:
                try:
                    engine.write(put, size_hint=size)
                    outcomes[name] = "ok"
                except microblob.StoreFull as exc:
                    outcomes[name] = exc
            return run

        threads = blocked.queue([writer("a", 100), writer("huge", 3 * 1024 * 1024), writer("c", 100)])
        blocked.finish(threads)
        assert outcomes["a"] == "ok" and outcomes["c"] == "ok", outcomes
        assert isinstance(outcomes["huge"], microblob.StoreFull)
        with engine.read() as txn:
            assert (txn.get("meta", b"a-runs"), txn.get("meta", b"c-runs")) == (b"1", b"1")  # committed once
            assert txn.get("chunks", b"huge") is None and txn.get("meta", b"huge-runs") is None
    finally:
        engine.close()


class _SlowFirstSync:
    """The environment, with its first sync held until released: a group whose meta page is still being
    synced. Everything else goes to the real environment."""

    def __init__(self, env: Any) -> None:
        self._env = env
        self.syncing = threading.Event()
        self.release = threading.Event()
        self.synced = threading.Event()

    def sync(self, force: bool = False) -> None:
        if not self.syncing.is_set():
            self.syncing.set()
            assert self.release.wait(WAIT)
            self._env.sync(force)
            self.synced.set()
            return
        self._env.sync(force)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._env, name)


def test_the_next_group_commits_while_the_previous_one_syncs(engine: LmdbEngine) -> None:
    """A writer that arrives during a group's sync runs at once in the next group, and no writer returns
    before the sync of its own commit is over."""
    shared = engine._env()
    slow = _SlowFirstSync(shared.env)
    shared.env = slow
    try:
        returned: dict[str, bool] = {}

        def put(key: bytes) -> Callable[[], None]:
            def run() -> None:
                engine.write(lambda txn: txn.put("meta", key, b"1"))
                returned[key.decode()] = slow.synced.is_set()  # whether the first group's sync was over
            return run

        first = threading.Thread(target=put(b"first"))
        first.start()
        assert slow.syncing.wait(WAIT)
        second = threading.Thread(target=put(b"second"))
        second.start()
        second.join(WAIT)
        assert not second.is_alive(), "the second writer waited for the first group's sync"
        assert returned == {"second": False} and first.is_alive()  # committed and synced on its own
        assert read(engine, b"first") == b"1" and read(engine, b"second") == b"1"
        slow.release.set()
        first.join(WAIT)
        assert returned == {"second": False, "first": True}  # not before its own sync was over
    finally:
        slow.release.set()
        shared.env = slow._env


# --- the queue itself (GroupCommit), over real threads ----------------------------------------------

def _settle_all(batch: list[WriteRequest[Any]]) -> None:
    for r in batch:
        try:
            r.succeed(r.run(None))
        except Exception as exc:
            r.fail(exc)


def _queued(group: GroupCommit, n: int) -> None:
    deadline = time.monotonic() + WAIT
    while group.queued < n:
        assert time.monotonic() < deadline, "the writers never queued"
        time.sleep(0.002)


def _release_behind(group: GroupCommit, gate: threading.Event, first: threading.Thread,
                    writers: list[threading.Thread]) -> None:
    """Queue `writers` behind the commit `first` holds open until `gate`, let it go, and see every one
    of them return."""
    for w in writers:
        w.start()
    _queued(group, len(writers))
    gate.set()
    for t in [first, *writers]:
        t.join(WAIT)
        assert not t.is_alive(), "a writer was left waiting"


def test_many_writers_each_get_their_own_result_and_none_is_left_waiting() -> None:
    """16 threads x 200 requests through one queue: every request runs exactly once, each writer gets its
    own result back, and groups form (fewer commits than requests)."""
    group = GroupCommit()
    ran: list[int] = []
    commits = [0]

    def commit(batch: list[WriteRequest[Any]]) -> Callable[[], None]:
        commits[0] += 1
        time.sleep(0.001)  # a transaction, while which the other writers queue for the next group
        for r in batch:
            r.committed()

        def finish() -> None:
            time.sleep(0.0005)  # a sync, during which the next group may start
            _settle_all(batch)
        return finish

    results: dict[int, list[int]] = {}

    def writer(t: int) -> None:
        got = results.setdefault(t, [])
        for i in range(200):
            n = t * 1000 + i
            got.append(group.submit(WriteRequest(lambda _txn, n=n: ran.append(n) or n, 0, True), commit))

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(16)]  # 3,200 requests
    for th in threads:
        th.start()
    for th in threads:
        th.join(WAIT)
        assert not th.is_alive(), "a writer was left waiting"
    assert all(results[t] == [t * 1000 + i for i in range(200)] for t in range(16))
    assert sorted(ran) == sorted(t * 1000 + i for t in range(16) for i in range(200))
    assert commits[0] < 16 * 200 // 2


def test_when_a_commit_raises_the_others_of_its_group_run_in_the_next_one() -> None:
    """The leader's commit fails before settling anyone: the leader gets the error, and the writers queued
    with it are woken to lead (and succeed in) the next group rather than waiting forever."""
    group = GroupCommit()
    gate, entered = threading.Event(), threading.Event()
    calls: list[int] = []

    def commit(batch: list[WriteRequest[Any]]) -> None:
        calls.append(len(batch))
        if len(calls) == 1:
            entered.set()
            assert gate.wait(WAIT)
        if len(calls) == 2:
            raise OSError("the disk went away")
        _settle_all(batch)
        return None

    first = threading.Thread(target=group.submit, args=(WriteRequest(lambda _t: 0, 0, True), commit))
    first.start()
    assert entered.wait(WAIT)
    outcomes: dict[int, Any] = {}

    def writer(n: int) -> None:
        try:
            outcomes[n] = group.submit(WriteRequest(lambda _t, n=n: n, 0, True), commit)
        except OSError as exc:
            outcomes[n] = exc

    _release_behind(group, gate, first, [threading.Thread(target=writer, args=(n,)) for n in (1, 2, 3)])
    failed = [n for n, o in outcomes.items() if isinstance(o, OSError)]
    assert len(failed) == 1  # the leader of the failed group
    assert {n: o for n, o in outcomes.items() if n not in failed} == {n: n for n in (1, 2, 3) if n not in failed}
    assert calls[:2] == [1, 3] and sum(calls[2:]) == 2


def test_a_sync_that_raises_before_settling_fails_its_writers_instead_of_hanging() -> None:
    group = GroupCommit()
    gate, entered = threading.Event(), threading.Event()
    calls: list[int] = []

    def commit(batch: list[WriteRequest[Any]]) -> Callable[[], None] | None:
        calls.append(len(batch))
        if len(calls) == 1:
            entered.set()
            assert gate.wait(WAIT)
            _settle_all(batch)
            return None
        for r in batch:
            r.committed()

        def finish() -> None:
            raise OSError("fdatasync failed")
        return finish

    first = threading.Thread(target=group.submit, args=(WriteRequest(lambda _t: 0, 0, True), commit))
    first.start()
    assert entered.wait(WAIT)
    outcomes: list[BaseException] = []

    def writer() -> None:
        try:
            group.submit(WriteRequest(lambda _t: 1, 0, True), commit)
        except (OSError, RuntimeError) as exc:
            outcomes.append(exc)

    _release_behind(group, gate, first, [threading.Thread(target=writer) for _ in range(3)])
    assert calls == [1, 3]
    assert sorted(type(e).__name__ for e in outcomes) == ["OSError", "RuntimeError", "RuntimeError"]


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs signal.setitimer (POSIX)")
def test_a_writer_interrupted_while_queued_is_withdrawn_and_the_queue_goes_on() -> None:
    """The main thread, queued behind a commit in flight, is interrupted by a signal: its request is taken
    out of the queue (never run), and the writers behind it still get a leader."""
    group = GroupCommit()
    gate, entered = threading.Event(), threading.Event()
    ran: list[str] = []

    def commit(batch: list[WriteRequest[Any]]) -> None:
        if not entered.is_set():
            entered.set()
            assert gate.wait(WAIT)
        _settle_all(batch)
        return None

    first = threading.Thread(target=group.submit, args=(WriteRequest(lambda _t: ran.append("first"), 0, True), commit))
    first.start()
    assert entered.wait(WAIT)

    class Interrupted(Exception):
        pass

    def on_alarm(signum: int, frame: Any) -> None:
        raise Interrupted

    previous = signal.signal(signal.SIGALRM, on_alarm)
    behind = threading.Thread(target=lambda: group.submit(WriteRequest(lambda _t: ran.append("behind"), 0, True),
                                                          commit))
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        with pytest.raises(Interrupted):
            group.submit(WriteRequest(lambda _t: ran.append("interrupted"), 0, True), commit)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    behind.start()
    _queued(group, 1)
    gate.set()
    for t in (first, behind):
        t.join(WAIT)
        assert not t.is_alive()
    assert sorted(ran) == ["behind", "first"]
