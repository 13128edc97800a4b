"""Remote Blobs: bytes behind a URL, downloaded lazily, streamed, and checked against their sha256.

Kept apart from `blob.py` so the Blob value has no HTTP in it; `Blob.from_url` and the client both
come here.
"""

from __future__ import annotations

import hashlib
import io
import threading
import types
from collections.abc import Iterator
from typing import Any, BinaryIO, TypeVar

import httpx

from ._exceptions import BlobError, BlobExpired, IntegrityError, RemoteError
from .blob import Blob, Progress, _Source, atomic_writer

__all__ = ["RemoteBlob", "remote_blob"]

B = TypeVar("B", bound=Blob)
_default_client: httpx.Client | None = None
_default_lock = threading.Lock()


def default_client() -> httpx.Client:
    """One shared client for Blobs made with `from_url` and no client (connection reuse)."""
    global _default_client
    with _default_lock:
        if _default_client is None:
            _default_client = httpx.Client(timeout=httpx.Timeout(30.0, read=300.0))
        return _default_client


def _check(response: httpx.Response, url: str) -> None:
    if response.status_code < 400:
        return
    response.read()
    try:
        body = response.json()
        detail = body.get("detail", response.text)
    except ValueError:
        detail = response.text
    if response.status_code == 410:
        raise BlobExpired(f"{url}: {detail}")
    if response.status_code == 404:
        raise BlobError(f"{url}: {detail}")
    raise RemoteError(f"{url}: {detail}", status=response.status_code)


class _RemoteSource(_Source):
    def __init__(self, url: str, client: httpx.Client | None, size: int | None, sha256: str | None) -> None:
        self.url = url
        self.client = client
        self.size = size
        self.sha256 = sha256
        self.downloads = 0  # how many times the bytes were fetched (tests check "not at all")

    def _client(self) -> httpx.Client:
        return self.client or default_client()

    def _chunks(self, progress: Progress | None) -> Iterator[bytes]:
        """Stream the body, verifying length and sha256 at the end."""
        with self._client().stream("GET", self.url) as r:
            _check(r, self.url)
            self.downloads += 1
            total = int(r.headers["content-length"]) if "content-length" in r.headers else self.size
            # Hashing inline measured faster than a helper thread on 2 cores (the server needs the other).
            hasher = hashlib.sha256()
            done = 0
            try:
                for chunk in r.iter_raw():
                    hasher.update(chunk)
                    done += len(chunk)
                    if progress is not None:
                        progress(done, total)
                    yield chunk
            except httpx.TransportError as exc:
                # The server drops the connection when it finds the bytes it was sending damaged (or it
                # died): a failed transfer, never a short file taken for a whole one.
                raise BlobError(f"{self.url}: the transfer broke off after {done} bytes ({exc})") from None
            digest = hasher.hexdigest()
        if self.size is not None and done != self.size:
            raise IntegrityError(f"{self.url}: got {done} bytes, expected {self.size}")
        etag = r.headers.get("etag", "").strip('"') or None
        expected = self.sha256 or etag
        if expected is not None and digest != expected:
            raise IntegrityError(f"{self.url}: sha256 {digest} does not match {expected}")
        self.sha256, self.size = digest, done

    def open(self) -> BinaryIO:
        return io.BufferedReader(_StreamReader(self._chunks(None)), 1 << 20)  # type: ignore[return-value]

    def open_with_progress(self, progress: Progress | None) -> BinaryIO:
        return io.BufferedReader(_StreamReader(self._chunks(progress)), 1 << 20)  # type: ignore[return-value]

    def read_all(self) -> bytes:
        return b"".join(self._chunks(None))

    def save(self, path: str, progress: Progress | None) -> None:
        with atomic_writer(path) as out:
            for chunk in self._chunks(progress):
                out.write(chunk)


class _StreamReader(io.RawIOBase):
    """A read-only file object over an iterator of chunks (closing it closes the download)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks: Any = chunks
        self._buf = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self._buf:
            try:
                self._buf = memoryview(next(self._chunks))
            except StopIteration:
                return 0
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n

    def close(self) -> None:
        if not self.closed:
            self._chunks.close()
        super().close()


class RemoteBlob(Blob, register=False):
    """Mixin for Blobs whose bytes are at a URL: a remote `JPEGBlob` is a `RemoteBlob` *and* a `JPEGBlob`.

    Nothing downloads until `data` (once), `open()` or `save()` (streamed, sha256-checked)."""

    expires_at: str | None = None

    @property
    def downloads(self) -> int:
        """How many times the bytes were fetched from the server."""
        return self._source.downloads  # type: ignore[attr-defined]

    def open(self, progress: Progress | None = None) -> BinaryIO:
        if self._data is not None:
            return super().open(progress)
        return self._source.open_with_progress(progress)  # type: ignore[attr-defined]


_remote_classes: dict[type[Blob], type[Blob]] = {}


def _remote_class(cls: type[B]) -> type[B]:
    if issubclass(cls, RemoteBlob):
        return cls
    rc = _remote_classes.get(cls)
    if rc is None:
        rc = types.new_class(f"Remote{cls.__name__}", (RemoteBlob, cls), {"register": False})
        rc.__module__ = __name__
        _remote_classes[cls] = rc
    return rc  # type: ignore[return-value]


def remote_blob(
    cls: type[B],
    url: str,
    *,
    client: httpx.Client | None = None,
    content_type: str | None = None,
    size: int | None = None,
    sha256: str | None = None,
    expires_at: str | None = None,
) -> B:
    """A lazy Blob of class `cls` (made remote) for the bytes at `url`."""
    blob = _remote_class(cls)._with_source(_RemoteSource(url, client, size, sha256), content_type)
    blob.expires_at = expires_at  # type: ignore[attr-defined]
    return blob
