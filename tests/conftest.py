"""Shared fixtures. Every store test takes `store`, parametrized over every embedded backend."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import microblob

EMBEDDED_BACKENDS = ["lmdb", "memory"]
# Small chunks, so payloads of a few hundred KB already cross chunk and batch boundaries in every test.
TEST_CHUNK_SIZE = 100_000


def open_store(kind: str, directory: Path) -> microblob.Store:
    if kind == "lmdb":
        return microblob.connect(directory / "store.db", chunk_size=TEST_CHUNK_SIZE)
    if kind == "memory":
        return microblob.connect("memory://", chunk_size=TEST_CHUNK_SIZE)
    raise ValueError(kind)


@pytest.fixture(params=EMBEDDED_BACKENDS)
def backend_kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def store(backend_kind: str, tmp_path: Path) -> Iterator[microblob.Store]:
    s = open_store(backend_kind, tmp_path)
    yield s
    s.close()


@pytest.fixture
def lmdb_path(tmp_path: Path) -> Path:
    """A fresh path for the embedded default, for tests that need the file itself (processes, crashes)."""
    return tmp_path / "store.db"


@pytest.fixture
def run_python() -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run a Python snippet in a fresh interpreter with this checkout importable."""
    root = str(Path(__file__).resolve().parents[1])

    def run(code: str, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
        proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                              timeout=timeout, env=env)
        if check and proc.returncode != 0:
            raise AssertionError(f"subprocess failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc

    return run


@pytest.fixture
def count_reads() -> Callable[[microblob.Store], dict[str, int]]:
    """Wrap an embedded store's read transactions to count point reads and scanned documents, so a
    test can prove a lookup used an index (a structural check: no timings in tests)."""
    from contextlib import contextmanager

    def install(store: microblob.Store) -> dict[str, int]:
        counts = {"get": 0, "scanned": 0}
        engine = store.backend.engine
        original_read = engine.read

        class Counting:
            def __init__(self, txn: Any) -> None:
                self._txn = txn

            def get(self, table: str, key: bytes) -> Any:
                counts["get"] += 1
                return self._txn.get(table, key)

            def view(self, table: str, key: bytes) -> Any:
                counts["get"] += 1
                return self._txn.view(table, key)

            def scan(self, table: str, prefix: bytes = b"", *, values: bool = True) -> Iterator[Any]:
                for item in self._txn.scan(table, prefix, values=values):
                    if table == "docs":
                        counts["scanned"] += 1
                    yield item

        @contextmanager
        def read() -> Iterator[Counting]:
            with original_read() as txn:
                yield Counting(txn)

        engine.read = read
        return counts

    return install


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """In CI a skipped test is a failure: whatever cannot run there must be fixed, not hidden."""
    if not os.environ.get("CI"):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if skipped and session.exitstatus == 0:
        reporter.write_line(f"CI: {len(skipped)} test(s) skipped; failing the run", red=True)
        session.exitstatus = 1


# --- HTTP (ThingServer / ThingClient) --------------------------------------------------------------


@pytest.fixture
def camera() -> Any:
    from thing_fixtures import Camera

    return Camera()


@pytest.fixture
def make_server() -> Iterator[Callable[..., Any]]:
    """Build ThingServers that are closed (pool and expiry thread stopped) after the test."""
    from microblob.server import ThingServer

    made: list[Any] = []

    def make(things: Any = None, **options: Any) -> Any:
        server = ThingServer(things or {}, **options)
        made.append(server)
        return server

    yield make
    for server in made:
        server.close()


@pytest.fixture
def asgi() -> Iterator[Callable[[Any], Any]]:
    """An httpx.Client over httpx.ASGITransport for a given app (no socket), closed after the test."""
    import anyio.from_thread
    import httpx

    clients: list[Any] = []
    portals: list[Any] = []

    def make(app: Any) -> Any:
        # A sync client over the ASGI transport: run the app on an event loop in a background thread.
        cm = anyio.from_thread.start_blocking_portal()
        portal = cm.__enter__()
        portals.append(cm)
        transport = httpx.ASGITransport(app)

        class _SyncOverAsync(httpx.BaseTransport):
            def handle_request(self, request: httpx.Request) -> httpx.Response:
                async def call() -> httpx.Response:
                    body = request.read()
                    req = httpx.Request(request.method, request.url, headers=request.headers, content=body)
                    resp = await transport.handle_async_request(req)
                    content = await resp.aread()
                    return httpx.Response(resp.status_code, headers=resp.headers, content=content)

                return portal.call(call)

        client = httpx.Client(transport=_SyncOverAsync(), base_url="http://testserver")
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()
    for cm in portals:
        cm.__exit__(None, None, None)


@pytest.fixture
def live() -> Iterator[Callable[[Any], str]]:
    """Serve apps with uvicorn on 127.0.0.1 (free port) for the test; yields a function app -> base URL."""
    from contextlib import ExitStack

    from _live import live_server

    with ExitStack() as stack:
        yield lambda app: stack.enter_context(live_server(app))


def vm_status(pid: int | str = "self") -> dict[str, int]:
    """VmRSS / VmHWM (peak) of a process, in bytes, from /proc."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
    return out
