"""The source of a remote Blob: bytes behind a URL, downloaded lazily, streamed, checked against their sha256.

Kept apart from `blob.py` so that importing the Blob value does not import httpx: `blob.remote_blob`
imports this module the first time a Blob needs a URL. It sits below `blob.py` (it imports only the
sources), so the value layer has no import cycle.
"""

from __future__ import annotations

import hashlib
import io
import re
import threading
from collections.abc import Iterator
from typing import Any, BinaryIO

import httpx

from ._blob_sources import Progress, _Source
from ._exceptions import (
    BlobError,
    BlobExpired,
    IntegrityError,
    InvalidArgument,
    RemoteError,
    RemoteInvalidInput,
    Unauthorized,
)
from ._outfile import output_file

__all__ = ["default_client", "raise_for_response", "url_source"]

_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_default_client: httpx.Client | None = None
_default_lock = threading.Lock()


def default_client() -> httpx.Client:
    """One shared client for Blobs made with `from_url` and no client (connection reuse)."""
    global _default_client
    with _default_lock:
        if _default_client is None:
            _default_client = httpx.Client(timeout=httpx.Timeout(30.0, read=300.0))
        return _default_client


def raise_for_response(response: httpx.Response, what: str, *, blob: bool = False) -> None:
    """Turn a 4xx/5xx answer into a typed error carrying the server's message: the one reading of the
    server's ``{"error", "detail"}`` body, for the client and for Blob downloads alike. `blob=True` (a
    download): 410 is `BlobExpired`, 404 a `BlobError`."""
    status = response.status_code
    if status < 400:
        return
    response.read()  # a streamed download's error body
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        error, detail = body.get("error"), body.get("detail", response.text)
        if isinstance(detail, list):  # FastAPI's (LabThings') validation errors
            detail = _validation_detail(detail)
    else:
        error, detail = None, response.text or response.reason_phrase
    message = f"{what}: {detail}"
    if blob and status == 410:
        raise BlobExpired(message)
    if blob and status == 404:
        raise BlobError(message)
    if status == 422:
        raise RemoteInvalidInput(message, status=status, error=error)
    if status == 401:
        raise Unauthorized(message, status=status, error=error)
    raise RemoteError(message, status=status, error=error)


_FASTAPI_CONSTRAINTS = ("gt", "ge", "lt", "le", "multiple_of", "min_length", "max_length", "pattern")


def _validation_detail(errors: list[Any]) -> str:
    """FastAPI's list of pydantic errors in microblob's words: ``"steps: Input should be greater than or
    equal to 0 (ge=0)"``, the field named by its location without the ``body`` FastAPI puts first."""
    parts = []
    for err in errors[:5]:
        if not isinstance(err, dict):
            parts.append(str(err))
            continue
        loc = [str(p) for p in err.get("loc") or () if p != "body"]
        ctx = err.get("ctx") if isinstance(err.get("ctx"), dict) else {}
        limits = ", ".join(f"{k}={ctx[k]!r}" for k in _FASTAPI_CONSTRAINTS if k in ctx)
        msg = str(err.get("msg", "invalid")) + (f" ({limits})" if limits else "")
        parts.append(f"{'.'.join(loc) or 'value'}: {msg}")
    if len(errors) > 5:
        parts.append(f"and {len(errors) - 5} more")
    return "; ".join(parts) or "invalid input"


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
        """Stream the body, verifying length and sha256 at the end. A transfer that fails (no server there, a
        refused connection, a dropped one) is a BlobError."""
        try:
            yield from self._download(progress)
        except httpx.TransportError as exc:
            raise BlobError(f"{self.url}: cannot download ({type(exc).__name__}: {exc})") from None

    def _download(self, progress: Progress | None) -> Iterator[bytes]:
        with self._client().stream("GET", self.url) as r:
            raise_for_response(r, self.url, blob=True)
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
        with output_file(path) as out:
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


def url_source(url: str, client: httpx.Client | None, size: int | None, sha256: str | None) -> _Source:
    """The lazy, verified source of the bytes at `url` (`client` may carry auth headers). Checked here, so
    that a wrong argument is an InvalidArgument now, not an httpx error at the first read."""
    if not isinstance(url, (str, httpx.URL)):
        raise InvalidArgument(f"url must be a str, not {type(url).__name__}")
    try:
        scheme = httpx.URL(url).scheme
    except (httpx.InvalidURL, UnicodeError) as exc:
        raise InvalidArgument(f"url {url!r:.200} is not a URL ({exc})") from None
    if client is not None and not isinstance(client, httpx.Client):
        raise InvalidArgument(f"client must be an httpx.Client, not {type(client).__name__}")
    if scheme not in ("http", "https") and not (scheme == "" and client is not None):  # relative: the client's base
        raise InvalidArgument(f"url {url!r:.200} is not an http:// or https:// URL")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
        raise InvalidArgument(f"size must be an int >= 0 or None, not {size!r:.100}")
    if sha256 is not None and not (isinstance(sha256, str) and _SHA256.fullmatch(sha256)):
        raise InvalidArgument(f"sha256 must be 64 hex digits or None, not {sha256!r:.100}")
    return _RemoteSource(str(url), client, size, sha256.lower() if sha256 else None)
