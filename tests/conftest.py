"""Shared fixtures. Every store test takes `store`, parametrized over every backend: lmdb, memory,
mongita and mongodb. Tests that look inside the embedded KV engine take `embedded_store` (lmdb, memory).

MongoDB: `MICROBLOB_TEST_MONGODB_URI` (e.g. mongodb://host:27017) points the tests at a server you run;
otherwise a session fixture starts a wire-compatible test server, SecantusDB's `secantusd-py`, found
through `MICROBLOB_SECANTUSD`, `./.venv-secantus/bin/secantusd-py` or `PATH` (SecantusDB is GPL-2.0:
it lives only in a separate test virtualenv that `.ci/run` and tox create; microblob never imports
it). Without a server the MongoDB tests skip, unless `MICROBLOB_REQUIRE_MONGO=1` (set in CI), which
makes that a failure. The run's summary names the server the MongoDB tests used.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import _hypothesis_budget
import pytest
from _td_schema import published_errors, watch_thing_descriptions
from _tmpfs import Tmpfs

import microblob

ROOT = Path(__file__).resolve().parents[1]
watch_thing_descriptions()


@pytest.fixture(autouse=True)
def _thing_descriptions_are_valid() -> Iterator[None]:
    """Every Thing Description a test's server published must be valid W3C TD 1.1 (tests/_td_schema.py)."""
    published_errors.clear()
    yield
    errors, published_errors[:] = list(published_errors), []
    assert not errors, "invalid Thing Description:\n" + "\n".join(errors[:20])


EMBEDDED_BACKENDS = ["lmdb", "memory"]
ALL_BACKENDS = ["lmdb", "memory", "mongita", "mongodb"]
# Small chunks, so payloads of a few hundred KB already cross chunk and batch boundaries in every test.
TEST_CHUNK_SIZE = 100_000
SERVER_START_DEADLINE = 60.0


class MongoServer:
    """A MongoDB (or wire-compatible) server for the tests: its base URI and what it says it is."""

    def __init__(self, base_uri: str, description: str, process: subprocess.Popen | None = None) -> None:
        self.base_uri = base_uri.rstrip("/")
        self.description = description
        self.process = process

    def uri(self, database: str) -> str:
        base, _, query = self.base_uri.partition("?")
        return f"{base}/{database}" + (f"?{query}" if query else "")

    def fresh_uri(self) -> str:
        return self.uri(f"mbtest_{uuid.uuid4().hex[:12]}")

    def drop(self, uri: str) -> None:
        import pymongo

        with pymongo.MongoClient(uri, serverSelectionTimeoutMS=5000) as client:
            client.drop_database(client.get_default_database().name)


_MONGO_SERVER_USED: list[str] = []


def _secantusd() -> str | None:
    explicit = os.environ.get("MICROBLOB_SECANTUSD")
    if explicit:
        return explicit
    local = ROOT / ".venv-secantus" / "bin" / "secantusd-py"
    if local.exists():
        return str(local)
    return shutil.which("secantusd-py")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_ready(uri: str, deadline: float, process: subprocess.Popen | None) -> dict[str, Any]:
    import pymongo

    last: Exception | None = None
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the MongoDB test server exited with status {process.returncode}")
        try:
            with pymongo.MongoClient(uri, serverSelectionTimeoutMS=250, connectTimeoutMS=250) as client:
                status = client.admin.command("serverStatus")
                return {"process": status.get("process"), "version": status.get("version")}
        except pymongo.errors.PyMongoError as exc:
            last = exc
            time.sleep(0.05)
    raise RuntimeError(f"the MongoDB test server did not answer in time: {last}")


def _no_server(reason: str) -> None:
    if os.environ.get("MICROBLOB_REQUIRE_MONGO") == "1":
        pytest.fail(f"MICROBLOB_REQUIRE_MONGO=1 but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def mongo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MongoServer]:
    """A running server for the whole session: the one named by MICROBLOB_TEST_MONGODB_URI, or a
    SecantusDB started here at a free port and stopped (by its PID) at the end of the session."""
    try:
        import pymongo  # noqa: F401
    except ImportError:
        _no_server("pymongo is not installed (pip install -e '.[test]')")
    given = os.environ.get("MICROBLOB_TEST_MONGODB_URI")
    if given:
        info = _wait_ready(given, time.monotonic() + 30, None)
        server = MongoServer(given, f"{info['process']} {info['version']} at {given} (MICROBLOB_TEST_MONGODB_URI)")
        _MONGO_SERVER_USED.append(server.description)
        yield server
        return
    executable = _secantusd()
    if executable is None:
        _no_server("no MongoDB server: set MICROBLOB_TEST_MONGODB_URI, or install SecantusDB in .venv-secantus")
    port = _free_port()
    storage = tmp_path_factory.mktemp("secantus")
    log = open(storage.parent / "secantusd.log", "wb")  # noqa: SIM115 - closed at session end
    process = subprocess.Popen(
        [executable, "--host", "127.0.0.1", "--port", str(port), "--storage-path", str(storage / "data"),
         "--standalone", "--cache-size", "256M", "--log-level", "WARNING"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )
    base = f"mongodb://127.0.0.1:{port}"
    try:
        started = time.monotonic()
        info = _wait_ready(base, started + SERVER_START_DEADLINE, process)
        description = (f"{info['process']} {info['version']} (SecantusDB, a wire-compatible server, not a "
                       f"genuine mongod) at {base}, ready in {time.monotonic() - started:.1f}s")
        server = MongoServer(base, description, process)
        _MONGO_SERVER_USED.append(description)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.close()


@pytest.fixture
def make_tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Tmpfs]]:
    """`make_tmpfs("6m")` mounts a tmpfs of that size under the test's directory; unmounted afterwards."""
    mounted: list[Path] = []

    def make(size: str) -> Tmpfs:
        where = tmp_path / f"fs{len(mounted)}"
        where.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.fail(f"cannot mount a tmpfs (these tests need root): {proc.stderr.strip()}")
        mounted.append(where)
        return Tmpfs(where)

    yield make
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


class RestartableMongo:
    """A SecantusDB of one test's own on a fixed port and data directory, to stop and start again (a
    destination that goes away and comes back)."""

    def __init__(self, executable: str, storage: Path, log: Path) -> None:
        self.executable, self.storage, self.log = executable, storage, log
        self.port = _free_port()
        self.base_uri = f"mongodb://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [self.executable, "--host", "127.0.0.1", "--port", str(self.port), "--storage-path",
                 str(self.storage), "--standalone", "--cache-size", "64M", "--log-level", "WARNING"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        _wait_ready(self.base_uri, time.monotonic() + SERVER_START_DEADLINE, self.process)

    def kill(self) -> None:
        """kill -9: the server dies mid-write, as a power cut would take it."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None


@pytest.fixture
def restartable_mongo(tmp_path: Path) -> Iterator[RestartableMongo]:
    """A running SecantusDB the test may stop and start (same port, same data); stopped at the end."""
    try:
        import pymongo  # noqa: F401
    except ImportError:
        _no_server("pymongo is not installed (pip install -e '.[test]')")
    executable = _secantusd()
    if executable is None:
        _no_server("no SecantusDB to start and stop: install it in .venv-secantus (MICROBLOB_SECANTUSD)")
    server = RestartableMongo(executable, tmp_path / "secantus-data", tmp_path / "secantusd.log")
    server.start()
    yield server
    server.stop()


def open_store(kind: str, directory: Path, request: pytest.FixtureRequest | None = None) -> microblob.Store:
    if kind == "lmdb":
        return microblob.connect(directory / "store.db", chunk_size=TEST_CHUNK_SIZE)
    if kind == "memory":
        return microblob.connect("memory://", chunk_size=TEST_CHUNK_SIZE)
    if kind == "mongita":
        return microblob.connect(f"mongita://{directory / 'mongita'}", chunk_size=TEST_CHUNK_SIZE)
    if kind == "mongodb":
        assert request is not None, "mongodb stores need the mongo_server fixture"
        server: MongoServer = request.getfixturevalue("mongo_server")
        uri = server.fresh_uri()
        store = microblob.connect(uri, chunk_size=TEST_CHUNK_SIZE)
        request.addfinalizer(lambda: server.drop(uri))
        return store
    raise ValueError(kind)


@pytest.fixture(params=ALL_BACKENDS)
def backend_kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def store(backend_kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[microblob.Store]:
    s = open_store(backend_kind, tmp_path, request)
    yield s
    s.close()


@pytest.fixture(params=EMBEDDED_BACKENDS)
def embedded_kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def embedded_store(embedded_kind: str, tmp_path: Path) -> Iterator[microblob.Store]:
    """A store on the embedded KV engine (lmdb, memory), for tests that look inside the engine."""
    s = open_store(embedded_kind, tmp_path)
    yield s
    s.close()


@pytest.fixture
def store_factory(tmp_path: Path, request: pytest.FixtureRequest) -> Callable[[str], microblob.Store]:
    """Open a fresh store of any kind (closed at teardown); each call gets its own directory/database."""
    opened: list[microblob.Store] = []

    def make(kind: str) -> microblob.Store:
        directory = tmp_path / f"{kind}-{len(opened)}"
        directory.mkdir()
        s = open_store(kind, directory, request)
        opened.append(s)
        return s

    yield make  # type: ignore[misc]
    for s in opened:
        s.close()


@pytest.fixture
def lmdb_path(tmp_path: Path) -> Path:
    """A fresh path for the embedded default, for tests that need the file itself (processes, crashes)."""
    return tmp_path / "store.db"


@pytest.fixture
def run_python() -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run a Python snippet in a fresh interpreter with this checkout importable."""
    root = str(Path(__file__).resolve().parents[1])

    def run(code: str, *args: str, timeout: float = 300, check: bool = True,
            env_overrides: dict[str, str | None] | None = None) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ)
        for name, value in (env_overrides or {}).items():  # None removes the variable
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value
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
        counts = {"get": 0, "scanned": 0, "docs_get": 0, "index_entries": 0}
        engine = store.backend.engine
        original_read = engine.read

        class Counting:
            def __init__(self, txn: Any) -> None:
                self._txn = txn

            def get(self, table: str, key: bytes) -> Any:
                counts["get"] += 1
                counts["docs_get"] += table == "docs"
                return self._txn.get(table, key)

            def view(self, table: str, key: bytes) -> Any:
                counts["get"] += 1
                counts["docs_get"] += table == "docs"
                return self._txn.view(table, key)

            def scan(self, table: str, prefix: bytes = b"", *, values: bool = True) -> Iterator[Any]:
                for item in self._txn.scan(table, prefix, values=values):
                    if table == "docs":
                        counts["scanned"] += 1
                    yield item

            def range(self, table: str, lo: bytes, hi: Any, *, reverse: bool = False) -> Iterator[Any]:
                for item in self._txn.range(table, lo, hi, reverse=reverse):
                    counts["scanned" if table == "docs" else "index_entries"] += 1
                    yield item

            def count_range(self, table: str, lo: bytes, hi: Any, limit: Any = None) -> int:
                return self._txn.count_range(table, lo, hi, limit)

            def entries(self, table: str) -> Any:
                return self._txn.entries(table)

        @contextmanager
        def read() -> Iterator[Counting]:
            with original_read() as txn:
                yield Counting(txn)

        engine.read = read
        return counts

    return install


def pytest_configure(config: pytest.Config) -> None:
    """microblob's own pytest plugin (`microblob.testing`: `microblob_store`, `microblob_file_store`,
    `thing_client`) comes in through its `pytest11` entry point once microblob is installed (the README's
    `pip install -e '.[test]'`); from a checkout that is not installed, register it here.

    Locally, skips are summed up by reason in one line each (`pytest_terminal_summary`) instead of one
    `SKIPPED` line per test, which read like breakage; in CI, where a skip fails the run, every one is listed."""
    if os.environ.get("CI") and not {"s", "a", "A"} & set(config.option.reportchars):
        config.option.reportchars += "s"
    if not config.pluginmanager.has_plugin("microblob"):
        import microblob.testing

        config.pluginmanager.register(microblob.testing, "microblob")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """In CI a skipped test is a failure: whatever cannot run there must be fixed, not hidden."""
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # a pytest-xdist worker: hand the servers it used to the controller
        workeroutput["mongo_servers"] = list(_MONGO_SERVER_USED)
    if not os.environ.get("CI"):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if skipped and session.exitstatus == 0:
        reporter.write_line(f"CI: {len(skipped)} test(s) skipped; failing the run", red=True)
        session.exitstatus = 1


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    """pytest-xdist: the MongoDB servers a worker's tests used, for the summary the controller prints."""
    for description in getattr(node, "workeroutput", {}).get("mongo_servers", []):
        if description not in _MONGO_SERVER_USED:
            _MONGO_SERVER_USED.append(description)


# What the summary counts as "ran": (label, test of a report's nodeid and keywords).
_AREAS: list[tuple[str, Callable[[str, Any], bool]]] = [
    ("MongoDB", lambda nodeid, keywords: "mongodb" in nodeid),
    ("torch", lambda nodeid, keywords: "torch" in keywords),
    ("browse page (Chromium)", lambda nodeid, keywords: nodeid.startswith("tests/test_browse_page.py")),
]


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """Say what ran: which server the MongoDB tests used (CI runs SecantusDB, not a genuine mongod), how
    many MongoDB, torch and browser tests passed, and (locally) the skips grouped by reason."""
    if hasattr(config, "workeroutput"):  # a pytest-xdist worker: its controller prints the summary
        return
    stats = terminalreporter.stats
    passed = [r for r in stats.get("passed", []) if getattr(r, "when", "call") == "call"]
    counts = [f"{label} {sum(1 for r in passed if test(r.nodeid, r.keywords))}" for label, test in _AREAS]
    terminalreporter.write_line(f"passed: {len(passed)} tests, of which " + ", ".join(counts))
    if _MONGO_SERVER_USED:
        kinds = sorted({d.split(" at ")[0] for d in _MONGO_SERVER_USED})
        workers = f" ({len(_MONGO_SERVER_USED)} servers, one per worker)" if len(_MONGO_SERVER_USED) > 1 else ""
        terminalreporter.write_line(f"MongoDB tests ran against: {'; '.join(kinds)}{workers}")
    terminalreporter.write_line(_hypothesis_budget.describe())
    reasons: dict[str, int] = {}
    for report in stats.get("skipped", []):
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
        reason = reason.removeprefix("Skipped: ")
        reasons[reason] = reasons.get(reason, 0) + 1
    if reasons and not {"s", "a", "A"} & set(terminalreporter.reportchars):
        for reason, n in sorted(reasons.items(), key=lambda item: -item[1]):
            terminalreporter.write_line(f"skipped {n} test{'s' if n != 1 else ''}: {reason}", yellow=True)


# --- LabThings-FastAPI 0.3.0, in its own virtualenv ----------------------------------------------------

LABTHINGS_VERSION = "0.3.0"


def _labthings_python() -> str | None:
    """The Python of a virtualenv holding LabThings-FastAPI (it pins its own FastAPI and pydantic, so it
    never shares microblob's): `MICROBLOB_LABTHINGS_PYTHON`, else ./.venv-labthings (as `.ci/run` makes it)."""
    explicit = os.environ.get("MICROBLOB_LABTHINGS_PYTHON")
    if explicit:
        return explicit
    local = ROOT / ".venv-labthings" / "bin" / "python"
    return str(local) if local.exists() else None


@pytest.fixture(scope="session")
def labthings_python() -> str:
    """That Python, checked to import LabThings-FastAPI 0.3.0. Without it the interop tests skip, unless
    `MICROBLOB_REQUIRE_LABTHINGS=1` or `CI` is set (`.ci/run` sets both), which makes that a failure."""
    python = _labthings_python()
    reason = None
    if python is None:
        reason = ("no LabThings-FastAPI virtualenv: set MICROBLOB_LABTHINGS_PYTHON, or create ./.venv-labthings "
                  f"with labthings-fastapi=={LABTHINGS_VERSION} (as .ci/run does)")
    else:
        probe = "import importlib.metadata as m, labthings_fastapi; print(m.version('labthings-fastapi'))"
        try:
            done = subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=120)
            version = done.stdout.strip() if done.returncode == 0 else None
            detail = done.stderr.strip().splitlines()[-1:] if done.returncode else []
        except (OSError, subprocess.TimeoutExpired) as e:
            version, detail = None, [str(e)]
        if version != LABTHINGS_VERSION:
            reason = (f"{python} does not import labthings-fastapi=={LABTHINGS_VERSION} "
                      f"(found {version!r}{': ' + detail[0] if detail else ''})")
    if reason is not None:
        if os.environ.get("MICROBLOB_REQUIRE_LABTHINGS") == "1" or os.environ.get("CI"):
            pytest.fail(f"the LabThings interop tests must run here, but {reason}", pytrace=False)
        pytest.skip(reason)
    assert python is not None
    return python


# --- HTTP (ThingServer / ThingClient) --------------------------------------------------------------


@pytest.fixture
def camera() -> Any:
    from thing_fixtures import Camera

    return Camera()


@pytest.fixture
def make_server() -> Iterator[Callable[..., Any]]:
    """Build ThingServers that are closed (pool and expiry thread stopped) after the test."""
    from microblob.http.server import ThingServer

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
    """A sync httpx.Client served by a given app in this process (no socket), closed after the test."""
    from microblob.http.inprocess import in_process_client

    clients: list[Any] = []

    def make(app: Any) -> Any:
        client = in_process_client(app)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def live() -> Iterator[Callable[[Any], str]]:
    """Serve apps with uvicorn on 127.0.0.1 (free port) for the test; yields a function app -> base URL."""
    from contextlib import ExitStack

    from _live import live_server

    with ExitStack() as stack:
        yield lambda app: stack.enter_context(live_server(app))


def sigint_as_default() -> None:
    """`preexec_fn` for a child a test interrupts with SIGINT. An ignored signal stays ignored across exec,
    and pytest may itself run with SIGINT ignored (a background job of a non-interactive shell, some CI
    runners): the child would then never see the Ctrl-C the test sends it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def vm_status(pid: int | str = "self") -> dict[str, int]:
    """VmRSS / VmHWM (peak) of a process, in bytes, from /proc."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
    return out


REBOUND_NAME = "rebound.test"  # a name the browser below resolves to 127.0.0.1, as DNS rebinding would


@pytest.fixture(scope="module")
def rebinding_browser() -> Iterator[Any]:
    """A headless Chromium (see tests/_browser.py) that resolves REBOUND_NAME to 127.0.0.1: what a page's
    DNS rebinding achieves, without a DNS server. Fails in CI without Chromium, skips elsewhere."""
    from _browser import chromium, find_chromium

    found = find_chromium()
    if isinstance(found, str):
        if os.environ.get("CI"):
            pytest.fail(f"CI runs the browser tests, but {found}", pytrace=False)
        pytest.skip(found)
    with chromium((f"--host-resolver-rules=MAP {REBOUND_NAME} 127.0.0.1",)) as driver:
        yield driver
