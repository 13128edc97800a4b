"""Testing support for code that uses microblob: unit tests with no external services.

Installed with microblob as a pytest plugin (entry point `pytest11: microblob`), so these fixtures are
there in any test suite of a project that depends on microblob, nothing to import:

- `microblob_store`: a fresh, empty `memory://` store, closed after the test.
- `microblob_file_store`: a fresh store in a temporary LMDB file (`tmp_path / "microblob.db"`), closed
  after the test; for code that needs a real file (several processes, a CLI, a reopen).
- `thing_client`: a factory that serves Things in this process (no socket, no port) and returns a
  `ThingClient` for each: `camera = thing_client(Camera())`, or `thing_client({"camera": Camera(),
  "stage": Stage()}, store=microblob_store)` for a dict of clients of one server. Keyword arguments go
  to `ThingServer`.

    def test_capture_is_saved(microblob_store):
        oid = microblob_store.save_or_update_object(b"frame", type="image")
        assert microblob_store.get_blob_object(oid).data == b"frame"

Without pytest, the same things are context managers: `memory_store()`, `file_store(directory)`,
`serve_things(things)`. `InProcessTransport` / `in_process_client(app)` give a synchronous httpx client
over any ASGI app, served in this process.

This module is loaded by every pytest run in an environment where microblob is installed, so it imports
nothing heavy until a fixture is used.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from .http.inprocess import InProcessTransport, in_process_client
    from .store.core import Store

try:
    import pytest
except ImportError:  # pragma: no cover - the context managers work without pytest
    pytest = None  # type: ignore[assignment]

__all__ = [
    "InProcessServer",
    "InProcessTransport",
    "file_store",
    "in_process_client",
    "memory_store",
    "serve_things",
]

TEST_BASE_URL = "http://testserver"


def __getattr__(name: str) -> Any:
    # The transport pulls in httpx and asyncio machinery: only when asked for.
    if name in ("InProcessTransport", "in_process_client"):
        from .http import inprocess as _inprocess

        return getattr(_inprocess, name)
    raise AttributeError(f"module 'microblob.testing' has no attribute {name!r}")


@contextlib.contextmanager
def memory_store(**options: Any) -> Iterator[Store]:
    """A fresh, empty in-process store (`memory://`), closed on exit."""
    import microblob

    with microblob.connect("memory://", **options) as store:
        yield store


@contextlib.contextmanager
def file_store(directory: str | os.PathLike[str], name: str = "microblob.db", **options: Any) -> Iterator[Store]:
    """A store in the LMDB file `directory/name` (created if missing), closed on exit."""
    import microblob

    with microblob.connect(os.path.join(os.fspath(directory), name), **options) as store:
        yield store


class InProcessServer:
    """A `ThingServer` served in this process: `client(name)` gives a `ThingClient` for one of its Things,
    `http` is the underlying `httpx.Client` (for raw requests: `server.http.get("/things/")`)."""

    def __init__(self, things: Mapping[str, Any], *, base_url: str = TEST_BASE_URL, **server_options: Any) -> None:
        try:
            from .http.client import ThingClient
            from .http.server import ThingServer
        except ImportError as exc:
            raise ImportError(
                "serving Things needs microblob's HTTP layer (microblob.server.ThingServer and "
                f"microblob.client.ThingClient), which this installation of microblob lacks: {exc}"
            ) from exc
        import httpx

        from .http.inprocess import in_process_client

        self.names = list(things)
        self.app = ThingServer(things=dict(things), **server_options)
        headers = {}
        token = server_options.get("token")
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.base_url = base_url.rstrip("/")
        # Long enough for ThingClient's long polls (`wait`, 30 s by default): they are the app's to end.
        self.http = in_process_client(self.app, base_url=self.base_url, headers=headers,
                                      timeout=httpx.Timeout(30.0, read=120.0))
        self._client_class = ThingClient
        self._clients: list[Any] = []

    def url(self, name: str) -> str:
        return f"{self.base_url}/{name}/"

    def client(self, name: str, **options: Any) -> Any:
        """A `ThingClient` for the Thing served as `name`, talking to this server through `http`."""
        if name not in self.names:
            raise KeyError(f"no Thing named {name!r} on this server (it serves {', '.join(self.names)})")
        client = self._client_class.from_url(self.url(name), client=self.http, **options)
        self._clients.append(client)
        return client

    def close(self) -> None:
        """Close the clients, then the server (its lifespan shutdown runs)."""
        try:
            for client in self._clients:
                close = getattr(client, "close", None)
                if close is not None:
                    close()
        finally:
            self.http.close()

    def __enter__(self) -> InProcessServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


@contextlib.contextmanager
def serve_things(things: Mapping[str, Any], **server_options: Any) -> Iterator[InProcessServer]:
    """`with serve_things({"camera": Camera()}) as server: camera = server.client("camera")`."""
    server = InProcessServer(things, **server_options)
    try:
        yield server
    finally:
        server.close()


def thing_name(thing: Any) -> str:
    """The name a Thing is served under when none is given: its class name in lower case."""
    if isinstance(thing, str):  # "module:Class"
        return thing.rpartition(":")[2].rpartition(".")[2].lower()
    cls = thing if isinstance(thing, type) else type(thing)
    return cls.__name__.lower()


class ThingClientFactory:
    """What the `thing_client` fixture gives: call it with a Thing (instance, class or "module:Class") to
    get one `ThingClient`, or with a mapping of names to Things to get a dict of clients of one server."""

    def __init__(self) -> None:
        self.servers: list[InProcessServer] = []

    def __call__(self, things: Any, *, name: str | None = None, **server_options: Any) -> Any:
        if isinstance(things, Mapping):
            if name is not None:
                raise TypeError("name= is for a single Thing; a mapping already names its Things")
            server = self._serve(things, server_options)
            return {thing: server.client(thing) for thing in things}
        name = name or thing_name(things)
        return self._serve({name: things}, server_options).client(name)

    def _serve(self, things: Mapping[str, Any], server_options: dict[str, Any]) -> InProcessServer:
        server = InProcessServer(things, **server_options)
        self.servers.append(server)
        return server

    def close(self) -> None:
        errors = []
        while self.servers:
            try:
                self.servers.pop().close()
            except Exception as exc:  # close every server, then report
                errors.append(exc)
        if errors:
            raise errors[0]


if pytest is not None:

    @pytest.fixture
    def microblob_store() -> Iterator[Store]:
        """A fresh, empty `memory://` store, closed after the test."""
        with memory_store() as store:
            yield store

    @pytest.fixture
    def microblob_file_store(tmp_path: Any) -> Iterator[Store]:
        """A fresh store in the temporary LMDB file `tmp_path / "microblob.db"`, closed after the test."""
        with file_store(tmp_path) as store:
            yield store

    @pytest.fixture
    def thing_client() -> Iterator[ThingClientFactory]:
        """`thing_client(Camera())` -> a ThingClient served in this process (no socket); every server it
        started is shut down after the test."""
        factory = ThingClientFactory()
        yield factory
        factory.close()
