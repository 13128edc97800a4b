"""GridFS-style chunked files: streams in, streams out, constant memory, crash-safe order.

Bytes go first (in bounded batches, one transaction each, so a 1 GiB upload never builds a 1 GiB
transaction), the files document last. While an upload runs, a lease document in `fs.pending` names the
file and the process writing it; `gc()` reclaims the chunks of files that have neither a files document
nor a live lease, which is exactly what a killed writer leaves behind.

Files documents carry the GridFS spec fields (`_id, length, chunkSize, uploadDate, filename, metadata`)
plus `sha256`, computed while streaming, so MongoDB tools read what microblob writes.
"""

from __future__ import annotations

import hashlib
import io
import operator
import os
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, BinaryIO

from .._exceptions import DuplicateKey, FileNotFound, IntegrityError, InvalidArgument, StoreClosed
from ..engine import codec as _codec
from ..engine.backend import DEFAULT_BATCH_BYTES, Backend, Filter, Sort, checked_chunk
from ..engine.ids import new_id

if TYPE_CHECKING:
    from concurrent.futures import Future, ThreadPoolExecutor

__all__ = ["DEFAULT_CHUNK_SIZE", "MAX_CHUNK_SIZE", "DownloadStream", "FilesBucket", "UploadStream"]

DEFAULT_CHUNK_SIZE = 255 * 1024  # GridFS's default: a chunk plus its document stays under 256 KiB
MAX_CHUNK_SIZE = 16 * 1024 * 1024 - 16 * 1024  # a chunk must fit in one MongoDB document
_COPY_SIZE = 1024 * 1024
_BACKGROUND_HASH = 256 * 1024  # below this, handing a piece to a worker thread costs more than hashing it


_EXECUTOR: ThreadPoolExecutor | None = None  # made on the first chunked upload
_EXECUTOR_LOCK = threading.Lock()


def _executor() -> ThreadPoolExecutor:
    global _EXECUTOR
    with _EXECUTOR_LOCK:
        if _EXECUTOR is None:
            from concurrent.futures import ThreadPoolExecutor  # with logging, ~3.5 ms: chunked writers only

            _EXECUTOR = ThreadPoolExecutor(max_workers=2, thread_name_prefix="microblob-hash")
        return _EXECUTOR


def _reset_executor_in_child() -> None:
    global _EXECUTOR, _EXECUTOR_LOCK
    _EXECUTOR, _EXECUTOR_LOCK = None, threading.Lock()  # the parent's worker threads do not exist here


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_executor_in_child)


class _Hasher:
    """sha256 of the chunks in order. A large upload hashes each batch on a worker thread while the
    caller commits it (hashlib releases the GIL), so the hash costs the save almost nothing."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self._pending: Future[None] | None = None

    def _wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def update(self, chunks: list[bytes | memoryview], *, background: bool = False) -> None:
        self._wait()  # keeps order, and at most one batch in flight
        if background:
            self._pending = _executor().submit(self._update_all, chunks)
        else:
            self._update_all(chunks)

    def _update_all(self, chunks: list[bytes | memoryview]) -> None:
        for chunk in chunks:
            self._hash.update(chunk)

    def hexdigest(self) -> str:
        self._wait()
        return self._hash.hexdigest()


def _process_token() -> str:
    """Who is writing: host, pid and the pid's start time (so a recycled pid is not mistaken for us)."""
    start = ""
    try:
        with open(f"/proc/{os.getpid()}/stat", "rb") as fh:
            start = fh.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        pass
    return f"{hostname()}:{os.getpid()}:{start}"


def hostname() -> str:
    """This host's name as leases record it (`socket` is imported here, by writers, not by `import microblob`)."""
    import socket

    return socket.gethostname()


def lease_is_live(token: str) -> bool:
    """True unless we can tell the process that took the lease is gone. Other hosts' leases count as
    live (we cannot see their processes); gc's caller decides on those by age."""
    try:
        host, pid_text, start = token.rsplit(":", 2)
        pid = int(pid_text)
    except ValueError:
        return False
    if host != hostname():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if start:
        try:
            with open(f"/proc/{pid}/stat", "rb") as fh:
                return fh.read().rsplit(b")", 1)[1].split()[19].decode() == start
        except (OSError, IndexError):
            return False
    return True


def check_file_id(file_id: Any) -> Any:
    """The id of a new file: a str (valid Unicode), a 64-bit int or bytes, as every backend can key it."""
    if isinstance(file_id, str) and 0 < len(file_id) <= 128 and "\x00" not in file_id and _encodable(file_id):
        return file_id
    if isinstance(file_id, int) and not isinstance(file_id, bool) and -(2**63) <= file_id < 2**63:
        return file_id
    if isinstance(file_id, bytes) and 0 < len(file_id) <= 64:
        return file_id
    raise InvalidArgument(
        f"a file id is a non-empty str (at most 128 chars), a 64-bit int or bytes (at most 64), not {file_id!r}"
    )


def _encodable(text: str) -> bool:
    try:
        return text.isascii() or bool(text.encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate
        return False


def check_lookup_id(file_id: Any) -> Any:
    """An id to look a file up by. Files written by other GridFS tools may have any BSON id, so only what
    can never be one is refused: None, arrays, and operator documents, which matched some other file
    (files.delete({"$gt": ""}) deleted whichever file came first, an object's bytes included)."""
    if file_id is None or isinstance(file_id, (list, tuple, set, frozenset, re.Pattern)) or (
        isinstance(file_id, Mapping) and any(isinstance(k, str) and k.startswith("$") for k in file_id)
    ):
        raise InvalidArgument(f"a file id cannot be {type(file_id).__name__} {file_id!r:.100}")
    return file_id


def check_sha256(file_id: Any, data: bytes, sha: Any) -> None:
    """IntegrityError unless `data` hashes to the files document's `sha256` (a file without one, as
    other GridFS tools write, is taken as it is)."""
    if isinstance(sha, str) and data and hashlib.sha256(data).hexdigest() != sha:
        raise IntegrityError(f"file {file_id!r} does not match its own sha256")


def _says_writable(destination: Any) -> bool:
    """False for a file object that says it cannot be written (opened for reading) or is closed; True
    for one without `writable()` (any object with a `write` method will do)."""
    writable = getattr(destination, "writable", None)
    if not callable(writable):
        return True
    try:
        return bool(writable())
    except ValueError:  # "I/O operation on closed file"
        return False


class UploadStream(io.RawIOBase):
    """A writable file object that stores what is written as chunks of one file.

    Nothing is visible to readers until `close()` publishes the files document; `abort()` (or an
    exception inside a `with` block) deletes what was written.
    """

    def __init__(
        self,
        bucket: FilesBucket,
        file_id: Any,
        filename: str,
        metadata: Mapping[str, Any] | None,
        chunk_size: int,
    ) -> None:
        super().__init__()
        self._bucket = bucket
        self.file_id = file_id
        self.filename = filename
        self.metadata = dict(metadata) if metadata else {}
        self.chunk_size = chunk_size
        self._buffer = bytearray()
        self._batch: list[bytes | memoryview] = []
        self._batch_bytes = 0
        self._next_chunk = 0  # number of the first chunk in self._batch
        self._length = 0
        self._hash = _Hasher()
        self._leased = False
        self._done = False
        self.document: dict[str, Any] | None = None

    # io interface
    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        if self._done:  # a ValueError, as io's own streams raise
            raise InvalidArgument("write to a closed upload stream")
        try:
            view = memoryview(data)
        except TypeError:
            raise InvalidArgument(f"an upload stream writes bytes-like data, not {type(data).__name__}") from None
        if not view.c_contiguous:  # e.g. memoryview(b)[::2]: cast() refuses it, so copy it once
            view = memoryview(view.tobytes())
        view = view.cast("B")
        # Chunks of an immutable bytes object can be views of it (no copy); anything else may be
        # reused by the caller after write() returns, so its chunks are copied.
        keep: Callable[[memoryview], bytes | memoryview] = (lambda v: v) if isinstance(data, bytes) else bytes
        n = len(view)
        self._length += n
        pos = 0
        size = self.chunk_size
        if self._buffer:
            take = min(size - len(self._buffer), n)
            self._buffer += view[:take]
            pos = take
            if len(self._buffer) == size:
                self._add_chunk(bytes(self._buffer))
                self._buffer.clear()
        while n - pos >= size:
            self._add_chunk(keep(view[pos : pos + size]))
            pos += size
        if pos < n:
            self._buffer += view[pos:]
        return n

    def _add_chunk(self, chunk: bytes | memoryview) -> None:
        self._batch.append(chunk)
        self._batch_bytes += len(chunk)
        if self._batch_bytes >= self._bucket.batch_bytes:
            self._flush_batch()

    def _flush_batch(self) -> None:
        """Commit the full chunks gathered so far in one transaction, under a lease, while the
        previous batch is hashed."""
        self._claim()
        batch = self._batch
        self._hash.update(batch, background=True)
        self._bucket._put_chunks(self.file_id, self._next_chunk, batch)
        self._next_chunk += len(batch)
        self._batch = []
        self._batch_bytes = 0

    def _claim(self) -> None:
        """Before the first chunk is written outside the transaction that publishes the file: the lease,
        then a check that no file has this id yet. Chunks under a taken id would overwrite that file's,
        and discarding them would delete its bytes. In this order a concurrent upload of the same id is
        seen either way: by its lease while it runs, by its files document (written before its lease
        goes) once it is done."""
        if self._leased:
            return
        self._bucket._take_lease(self.file_id)  # DuplicateKey while another upload of the id runs
        self._leased = True
        if self._bucket._files.find_one({"_id": self.file_id}, projection={"_id": 1}) is not None:
            self._leased = False
            self._bucket._pending.delete_one({"_id": self.file_id})
            raise DuplicateKey(f"fs.files: a file with _id {self.file_id!r} already exists")

    @property
    def length(self) -> int:
        return self._length

    def finish(self, then: Callable[[dict[str, Any]], Any] | None = None) -> Any:
        """Publish the file: last chunks and files document in one atomic unit, with `then(doc)` (the
        store's object write) inside the same unit, so a small save is a single transaction."""
        if self._done:
            raise InvalidArgument("upload stream already closed")
        if self._buffer:
            self._batch.append(bytes(self._buffer))
            self._buffer.clear()
        self._done = True
        self._hash.update(self._batch)
        doc = {
            "_id": self.file_id,
            "length": self._length,
            "chunkSize": self.chunk_size,
            "uploadDate": _codec.utcnow(),
            "filename": self.filename,
            "metadata": self.metadata,
            "sha256": self._hash.hexdigest(),
        }
        tail, first = self._batch, self._next_chunk
        bucket = self._bucket
        published: list[bool] = []

        def publish() -> Any:
            if tail:
                bucket._put_chunks(self.file_id, first, tail)
            bucket._files.insert_one(doc)
            published.append(True)
            result = then(doc) if then is not None else None
            if self._leased:
                bucket._pending.delete_one({"_id": self.file_id})
            return result

        try:
            if tail and not bucket._backend.transactional:
                self._claim()  # its chunks are written before the files document can refuse the id
            result = bucket._backend.atomic(publish, size_hint=sum(len(c) for c in tail))
        except BaseException:
            if published and not bucket._backend.transactional:
                # Without a transaction the files document stayed when `then` (the object write) failed:
                # it would name chunks that _discard() removes. (Never someone else's: only ours got here.)
                bucket._files.delete_one({"_id": self.file_id})
            self._discard()
            raise
        self._batch = []
        self.document = doc
        super().close()
        return result

    def close(self) -> None:
        if not self._done:
            self.finish()
        super().close()

    def abort(self) -> None:
        """Drop everything written so far; the file never becomes visible."""
        if self._done:
            return
        self._done = True
        self._discard()
        super().close()

    def _discard(self) -> None:
        self._buffer.clear()
        self._batch = []
        if self._next_chunk or self._leased:
            try:
                self._bucket._chunks.delete(self.file_id)
                self._bucket._pending.delete_one({"_id": self.file_id})
            except StoreClosed:
                pass  # gc() reclaims them once the lease is seen as dead

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            self.abort()
        else:
            self.close()

    def __del__(self) -> None:  # an upload dropped without close() is abandoned, not published
        try:
            if not self._done:
                self.abort()
        except Exception:
            pass


def _position(value: Any, name: str) -> int:
    """An int argument of a stream method (a size, an offset): what `operator.index` takes, bools refused."""
    if isinstance(value, bool):
        raise InvalidArgument(f"{name} must be an int, not {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise InvalidArgument(f"{name} must be an int, not {type(value).__name__}") from None


def _writable_view(buffer: Any) -> memoryview:
    try:
        view = memoryview(buffer)
    except TypeError:
        raise InvalidArgument(f"readinto needs a writable buffer, not {type(buffer).__name__}") from None
    if view.readonly:
        raise InvalidArgument(f"readinto needs a writable buffer; a {type(buffer).__name__} is read-only")
    return view.cast("B")


class DownloadStream(io.RawIOBase):
    """A readable, seekable file object over one file's chunks; `read(n)` fetches only the chunks it
    needs, and at most one chunk is cached.

    Reading the file whole, in order from its first byte (`read()`, `chunks()`, consecutive `read(n)`),
    hashes it as it goes and raises `IntegrityError` from the read that reaches the end if the bytes do
    not match the recorded sha256, before that last piece is handed out. Ranged reads (after a `seek`)
    are checked for chunk presence and length only.
    """

    def __init__(self, bucket: FilesBucket, doc: Mapping[str, Any]) -> None:
        super().__init__()
        self._bucket = bucket
        self.document = dict(doc)
        self.file_id = doc["_id"]
        self.length: int = int(doc["length"])
        self.chunk_size: int = int(doc["chunkSize"])
        self.filename: str | None = doc.get("filename")
        self.metadata: dict[str, Any] = doc.get("metadata") or {}
        self.upload_date = doc.get("uploadDate")
        self.sha256: str | None = doc.get("sha256")
        self._pos = 0
        self._cached_n = -1
        self._cached: bytes = b""
        # Bytes [0, _hashed) went through _digest in order; None once the check cannot apply.
        self._digest: _Hasher | None = _Hasher() if isinstance(self.sha256, str) and self.length else None
        self._hashed = 0
        if self.chunk_size <= 0 and self.length:
            raise IntegrityError(f"file {self.file_id!r} has chunkSize {self.chunk_size}")

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        self._check()
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._check()
        offset, whence = _position(offset, "offset"), _position(whence, "whence")
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self.length + offset
        else:
            raise InvalidArgument(f"whence must be 0, 1 or 2 (io.SEEK_SET, SEEK_CUR, SEEK_END), not {whence!r}")
        if pos < 0:
            raise InvalidArgument(f"negative seek position {pos}")
        self._pos = pos
        return pos

    def _check(self) -> None:
        if self.closed:  # a ValueError, as io's own streams raise
            raise InvalidArgument("I/O operation on closed file")

    def _chunk(self, n: int) -> bytes:
        if n == self._cached_n:
            return self._cached
        expected = min(self.chunk_size, self.length - n * self.chunk_size)
        try:
            data = checked_chunk(self.file_id, n, self._bucket._chunks.get(self.file_id, n), expected)
        except IntegrityError:
            self._raise_if_deleted()
            raise
        self._cached_n, self._cached = n, data
        return data

    def _raise_if_deleted(self) -> None:
        """A chunk can go missing under a reader without any damage: an update that keeps no history,
        or a delete, frees the replaced file (files document first, then its chunks) while someone who
        opened it earlier still reads. Then the file is gone, not corrupt: say so (NotFound)."""
        if not self._bucket.exists(self.file_id):
            raise FileNotFound(self.file_id, "was deleted while it was being read") from None

    def read(self, size: int | None = -1) -> bytes:
        self._check()
        if size is not None:
            size = _position(size, "size")
        if size is None or size < 0:
            size = self.length - self._pos
        size = max(0, min(size, self.length - self._pos))
        if size == 0:
            return b""
        n, offset = divmod(self._pos, self.chunk_size)
        if offset + size <= self.chunk_size and size <= self.chunk_size // 4:
            # small reads: keep the chunk, serve the next small reads from it
            chunk = self._chunk(n)
            piece = chunk[offset : offset + size]
            self._account(self._pos, piece)
            self._pos += size
            return piece
        # large reads: one copy from storage straight into the result, every chunk in one read scope
        parts = []
        pos, end = self._pos, self._pos + size
        while pos < end:
            n, offset = divmod(pos, self.chunk_size)
            expected = min(self.chunk_size, self.length - n * self.chunk_size)
            stop = min(expected, offset + end - pos)
            parts.append((n, offset, stop, expected))
            pos += stop - offset
        try:
            data = self._bucket._read_joined(self.file_id, parts)
        except IntegrityError:
            self._raise_if_deleted()
            raise
        self._account(self._pos, data)
        self._pos = end
        return data

    def _account(self, start: int, piece: bytes) -> None:
        """Feed a piece read at `start` to the whole-file hash if it continues the bytes hashed so far;
        at the end, compare. Large pieces hash on a worker thread (hashlib releases the GIL) while the
        caller uses them; only the last one is waited for."""
        digest = self._digest
        if start == 0 and self._hashed and digest is not None:  # read again from the top: start over
            digest = self._digest = _Hasher()
            self._hashed = 0
        if digest is None or start != self._hashed or not piece:
            return
        self._hashed += len(piece)
        if self._hashed < self.length:
            digest.update([piece], background=len(piece) >= _BACKGROUND_HASH)
            return
        self._digest = None
        digest.update([piece])
        if digest.hexdigest() != self.sha256:
            raise IntegrityError(f"file {self.file_id!r} does not match its own sha256")

    def readinto(self, buffer: Any) -> int:
        view = _writable_view(buffer)
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)

    def readall(self) -> bytes:
        return self.read(-1)

    def chunks(self) -> Iterator[bytes]:
        """The rest of the file, chunk by chunk, without re-slicing: the fast path for copying out."""
        self._check()
        while self._pos < self.length:
            n, offset = divmod(self._pos, self.chunk_size)
            chunk = self._chunk(n)
            piece = chunk[offset:] if offset else chunk
            self._account(self._pos, piece)
            self._pos += len(piece)
            self._cached_n, self._cached = -1, b""  # streaming: do not hold on to it
            yield piece


class FilesBucket:
    """`store.files`: a bucket with GridFS semantics over the backend's `fs.files` and chunk store."""

    def __init__(self, backend: Backend, *, batch_bytes: int = DEFAULT_BATCH_BYTES) -> None:
        self._backend = backend
        self._files = backend.collection("fs.files")
        self._pending = backend.collection("fs.pending")
        self._chunks = backend.chunks
        self.batch_bytes = batch_bytes
        self._token = _process_token()

    # --- writing -----------------------------------------------------------------------------------

    def open_upload_stream(
        self,
        filename: str,
        metadata: Mapping[str, Any] | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        file_id: Any = None,
    ) -> UploadStream:
        if not isinstance(filename, str):
            raise InvalidArgument(f"filename must be a str, not {type(filename).__name__}")
        if metadata is not None:
            if not isinstance(metadata, Mapping):
                raise InvalidArgument(f"metadata must be a mapping, not {type(metadata).__name__}")
            _codec.check_document(dict(metadata))
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or not 0 < chunk_size <= MAX_CHUNK_SIZE:
            raise InvalidArgument(f"chunk_size must be an int in 1..{MAX_CHUNK_SIZE}, not {chunk_size!r}")
        file_id = new_id() if file_id is None else check_file_id(file_id)
        return UploadStream(self, file_id, filename, metadata, chunk_size)

    def upload_from_stream(
        self,
        filename: str,
        source: BinaryIO | bytes | bytearray | memoryview,
        metadata: Mapping[str, Any] | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        file_id: Any = None,
    ) -> Any:
        upload = self.open_upload_stream(filename, metadata, chunk_size, file_id)
        with upload:
            copy_into(source, upload)
        return upload.file_id

    def _take_lease(self, file_id: Any) -> None:
        self._pending.insert_one({"_id": file_id, "owner": self._token, "started_at": _codec.utcnow()})

    def _read_joined(self, file_id: Any, parts: list[tuple[int, int, int, int]]) -> bytes:
        """The concatenation of `chunk[start:stop]` for each (n, start, stop, expected length)."""
        read_joined = getattr(self._chunks, "read_joined", None)
        if read_joined is not None:
            return read_joined(file_id, parts)
        pieces = []
        for n, start, stop, expected in parts:
            pieces.append(memoryview(checked_chunk(file_id, n, self._chunks.get(file_id, n), expected))[start:stop])
        return b"".join(pieces)

    def _put_chunks(self, file_id: Any, first: int, chunks: list[bytes | memoryview]) -> None:
        put_many = getattr(self._chunks, "put_many", None)
        if put_many is not None:
            put_many(file_id, first, chunks)
        else:
            for n, chunk in enumerate(chunks, first):
                self._chunks.put(file_id, n, chunk)

    # --- reading -----------------------------------------------------------------------------------

    def get_file(self, file_id: Any) -> dict[str, Any]:
        doc = self._files.find_one({"_id": check_lookup_id(file_id)})
        if doc is None:
            raise FileNotFound(file_id)
        return doc

    def open_download_stream(self, file_id: Any) -> DownloadStream:
        return DownloadStream(self, self.get_file(file_id))

    def read_small(self, file_id: Any, limit: int) -> bytes | None:
        """A file of at most `limit` bytes, whole and checked like a stream read to its end (chunk
        presence and lengths, then the sha256), from one read where the backend has snapshots; None if
        it is larger. For the many small objects an instrument saves, a stream's set-up cost more than
        their bytes."""
        found = self.read_small_unhashed(file_id, limit)
        if found is None:
            return None
        data, sha = found
        check_sha256(file_id, data, sha)
        return data

    def read_single_chunk(self, file_id: Any, size: int) -> bytes | None:
        """The bytes of a file of `size` (> 0) bytes that its first chunk holds whole, unhashed, from the
        caller's snapshot; None if that chunk is missing or of another length (read it the long way then).
        One key read instead of decoding the files document and joining its chunks: a small object's get.
        The caller checks the bytes against the sha256 it already holds, so nothing else is needed to
        trust them (a files document lost beside its chunks is damage `verify` reports)."""
        chunk = self._chunks.get(file_id, 0)
        return chunk if chunk is not None and len(chunk) == size else None

    def read_small_unhashed(self, file_id: Any, limit: int) -> tuple[bytes, Any] | None:
        """`read_small` without the sha256 check: (the bytes, the files document's sha256), for a caller
        that hashes them only if they are used (`check_sha256`). Chunk presence and lengths are checked."""
        with self._backend.snapshot():
            doc = self.get_file(file_id)
            length, chunk_size = int(doc["length"]), int(doc["chunkSize"])
            if length > limit:
                return None
            if chunk_size <= 0 and length:
                raise IntegrityError(f"file {file_id!r} has chunkSize {chunk_size}")
            parts = []
            for n in range(-(-length // chunk_size) if length else 0):
                expected = min(chunk_size, length - n * chunk_size)
                parts.append((n, 0, expected, expected))
            try:
                data = self._read_joined(file_id, parts) if parts else b""
            except IntegrityError:
                if not self.exists(file_id):  # freed under us by an update or a delete: gone, not damaged
                    raise FileNotFound(file_id, "was deleted while it was being read") from None
                raise
        return data, doc.get("sha256")

    def download_to_stream(self, file_id: Any, destination: BinaryIO) -> int:
        has_write = callable(getattr(destination, "write", None))
        if not has_write or isinstance(destination, io.TextIOBase) or not _says_writable(destination):
            raise InvalidArgument(
                f"destination must be a binary writable file object, not {type(destination).__name__}"
                f"{' (it is closed or opened for reading)' if has_write else ''}")
        with self.open_download_stream(file_id) as stream:
            written = 0
            for chunk in stream.chunks():
                destination.write(chunk)
                written += len(chunk)
            return written

    def find(self, filter: Filter | None = None, sort: Sort = None, skip: int = 0, limit: int = 0) -> list[dict]:
        return self._files.find(filter, sort=sort, skip=skip, limit=limit)

    def exists(self, file_id: Any) -> bool:
        return self._files.find_one({"_id": check_lookup_id(file_id)}, projection={"_id": 1}) is not None

    # --- removing ----------------------------------------------------------------------------------

    def delete(self, file_id: Any) -> None:
        """Files document first (the file disappears at once), then its chunks."""
        if not self._files.delete_one({"_id": check_lookup_id(file_id)}):
            raise FileNotFound(file_id)
        self._chunks.delete(file_id)

    def delete_many(self, file_ids: list[Any]) -> tuple[int, int]:
        """Delete files that exist; return (files deleted, bytes freed). Missing ids are skipped."""
        if not isinstance(file_ids, (list, tuple, set, frozenset)):  # a str would be its characters
            raise InvalidArgument(f"file_ids must be a list, tuple or set of ids, not {type(file_ids).__name__}")
        freed_files = freed_bytes = 0
        for file_id in file_ids:
            doc = self._files.find_one({"_id": check_lookup_id(file_id)}, projection={"length": 1})
            if doc is None:
                continue
            self._files.delete_one({"_id": file_id})
            self._chunks.delete(file_id)
            freed_files += 1
            freed_bytes += int(doc.get("length") or 0)
        return freed_files, freed_bytes


def check_readable(source: Any) -> None:
    """A closed file object fails on its first read() with a bare ValueError: refuse it up front."""
    if getattr(source, "closed", False) is True:
        raise InvalidArgument(f"the {type(source).__name__} to read from is closed")


def copy_into(source: Any, destination: Any) -> None:
    """Stream bytes, a binary file object or an iterable of byte strings into a writable, in 1 MiB reads.
    An error the source raises itself (a device unplugged mid-read) is the caller's and propagates as it is."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        destination.write(source)
        return
    read = getattr(source, "read", None)
    if read is None:
        if hasattr(source, "__iter__") and not isinstance(source, (str, Mapping)):
            for piece in source:
                if not isinstance(piece, (bytes, bytearray, memoryview)):
                    raise InvalidArgument(f"an iterable source must yield bytes, not {type(piece).__name__}")
                destination.write(piece)
            return
        raise InvalidArgument(f"cannot read bytes from a {type(source).__name__}")
    # Read pieces of the destination's chunk size: each read returns a fresh bytes object that
    # becomes a chunk as it is, without another copy.
    check_readable(source)
    size = getattr(destination, "chunk_size", None) or _COPY_SIZE
    while True:
        piece = read(size)
        if not piece:
            break
        if not isinstance(piece, (bytes, bytearray, memoryview)):
            raise InvalidArgument(f"source.read() must return bytes, not {type(piece).__name__}")
        destination.write(piece)
