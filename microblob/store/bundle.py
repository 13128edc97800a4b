"""`export_store(store, path)` / `import_store(path, store)`: a whole store as one portable file.

An LMDB file depends on the word size of the machine that wrote it (a 32-bit Raspberry Pi's store does
not open on a 64-bit one, and back), so moving data between machines goes through this bundle, which
depends on nothing but msgpack. Both directions reuse `copy`'s `_Copier`: export copies the store into a
destination that appends to the bundle; import copies from the bundle (its documents unpacked into a
scratch embedded store, its bytes read in place from the bundle) into the real destination. So import is
idempotent, resumable and leaves diverged objects alone exactly like `copy`, and memory stays flat for
any object size (a chunk batch at a time, plus 16 bytes per chunk for the index of where it sits).

The format (version 1), a stream written front to back:

    b"MICROBLOB-BUNDLE\\n"                       17 bytes of magic
    {"format": "microblob-bundle", "version": 1, "created_at": datetime, "source": uri, "microblob": "x.y"}
    ["chunk", file_id, n, bytes]               chunk n of a file, in order, before that file's document
    ["doc", collection, document]              workflows, fs.files, object_history, objects
    ...
    ["end", {"documents": N, "chunks": M}]
    sha256 of every byte above                 32 raw bytes, the last of the file

Each record is one msgpack value (datetimes as msgpack timestamps, as the embedded store keeps them), and
documents follow the embedded store's value rules. A file's chunks come before its `fs.files` document,
and an object's history entries and files before its `objects` document. File ids that are MongoDB
ObjectIds are written as their hex strings (as `copy` does into the embedded store). A reader must refuse
a version it does not know. Import reads the whole bundle once before it writes anything, checking the
magic, the version, every record's shape, every file's chunk sizes, length and sha256, the counts in the
end record and the trailing sha256: a damaged or truncated bundle raises IntegrityError and imports
nothing.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from array import array
from collections.abc import Iterator, Mapping
from typing import Any, BinaryIO

import msgpack

from .._exceptions import DuplicateKey, IntegrityError, InvalidArgument, InvalidDocument, StorageError
from .._outfile import refuse_store
from .._paths import check_path
from .._version import __version__
from ..engine import codec
from .copier import CopyReport, Progress, _Copier, _Skip
from .copying import _open

__all__ = ["BUNDLE_VERSION", "MAGIC", "export_store", "import_store"]

MAGIC = b"MICROBLOB-BUNDLE\n"
FORMAT = "microblob-bundle"
BUNDLE_VERSION = 1
_DIGEST = 32
# The largest record: a document (16 MiB at most) or a chunk (GridFS chunks are documents too) plus framing.
_MAX_RECORD = codec.MAX_DOCUMENT_SIZE + 1024 * 1024
_READ = 1024 * 1024
# The order documents are unpacked in at import (each collection's documents are independent).
_COLLECTIONS = ("workflows", "fs.files", "object_history", "objects")


def _pack(value: Any) -> bytes:
    return msgpack.packb(value, datetime=True, use_bin_type=True)


# --- export ----------------------------------------------------------------------------------------------


class _Writer:
    """The bundle file being written: every byte goes through the running sha256."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.digest = hashlib.sha256()
        self.documents = 0
        self.chunks = 0

    def write(self, raw: bytes) -> None:
        self.digest.update(raw)
        self.out.write(raw)

    def doc(self, collection: str, doc: Mapping[str, Any]) -> None:
        doc = dict(doc)
        try:
            codec.check_document(doc)
            raw = _pack(["doc", collection, doc])
        except (InvalidDocument, TypeError, ValueError, OverflowError) as exc:
            raise _Skip(f"{collection} {doc.get('_id')!r} cannot go into a bundle: {exc}") from None
        self.write(raw)
        self.documents += 1

    def chunk(self, file_id: Any, n: int, data: bytes | memoryview) -> None:
        self.write(_pack(["chunk", file_id, n, bytes(data)]))
        self.chunks += 1


class _SinkCollection:
    """A destination collection for `_Copier` that is always empty and appends what it is given."""

    def __init__(self, name: str, writer: _Writer) -> None:
        self.name = name
        self.writer = writer

    def find_one(self, *args: Any, **kwargs: Any) -> None:
        return None

    def find(self, *args: Any, **kwargs: Any) -> list[dict]:
        return []

    def insert_one(self, doc: Mapping[str, Any]) -> Any:
        self.writer.doc(self.name, doc)
        return doc.get("_id")

    def replace_one(self, *args: Any, **kwargs: Any) -> int:
        raise AssertionError("a bundle is written once: nothing in it is replaced")  # pragma: no cover

    def delete_one(self, *args: Any, **kwargs: Any) -> int:
        return 0


class _SinkChunks:
    def delete(self, file_id: Any) -> int:
        """A file abandoned half-way (damaged at the source): its chunks stay in the bundle, unreferenced
        (import ignores them)."""
        return 0


class _SinkInternals:
    """What `_Copier` uses of a destination's `StoreInternals`, appending to a bundle."""

    def __init__(self, writer: _Writer) -> None:
        self.writer = writer
        self.objects = _SinkCollection("objects", writer)
        self.history = _SinkCollection("object_history", writer)
        self.workflows = _SinkCollection("workflows", writer)
        self.file_docs = _SinkCollection("fs.files", writer)
        self.leases = _SinkCollection("fs.pending", writer)
        self.chunks = _SinkChunks()

    def take_lease(self, file_id: Any) -> None:
        """Nobody else writes to the bundle: no lease to take."""

    def put_chunks(self, file_id: Any, first: int, chunks: list[bytes | memoryview]) -> None:
        for n, data in enumerate(chunks, first):
            self.writer.chunk(file_id, n, data)

    def release_file(self, file_id: Any) -> None:  # pragma: no cover - only after a replace
        raise AssertionError("a bundle is written once")


class _SinkBackend:
    holds_object_ids = False  # ObjectId file ids become their hex strings, as in the embedded store


class _BundleSink:
    def __init__(self, writer: _Writer) -> None:
        self.internals = _SinkInternals(writer)
        self.backend = _SinkBackend()


def _check_replaceable(path: str) -> None:
    """An export replaces only a bundle, an empty file or nothing: `export s.db s.db` wrote the bundle over
    the store it read, and any other file named by mistake would be lost the same way."""
    refuse_store(os.path.realpath(path))
    if not os.path.isfile(path):  # nothing there (or a FIFO or device, which opening to read would block on)
        return
    try:
        with open(path, "rb") as fh:
            head = fh.read(len(MAGIC))
    except OSError as exc:
        raise StorageError(f"cannot write {path}: {exc.strerror or exc}") from None
    if head and head != MAGIC:
        raise InvalidArgument(f"{path} exists and is not a microblob bundle: export replaces only a bundle "
                              "(remove the file first to write there)")


def export_store(store: Any, path: str | os.PathLike[str], *, progress: Progress | None = None) -> CopyReport:
    """Write every object (with its whole history), workflow and file of `store` to the bundle `path`.

    `store`: a Store, or a URI/path (opened here, never created). The bundle is written to a temporary
    file beside `path`, synced and renamed into place, so `path` is either what it was or a complete
    bundle. Returns the `CopyReport` of what went in (`problems`: objects damaged at the source or that
    cannot be carried, left out).
    """
    path = check_path(path)
    if progress is not None and not callable(progress):
        raise InvalidArgument("progress must be callable(bytes_done, bytes_total)")
    _check_replaceable(path)
    source, close = _open(store, "store", create=False)
    try:
        directory = os.path.dirname(os.path.abspath(path))
        try:
            fd, tmp = tempfile.mkstemp(prefix=".microblob-export-", dir=directory)
        except OSError as exc:
            raise StorageError(f"cannot write {path}: {exc.strerror or exc}") from None
        try:
            with os.fdopen(fd, "wb") as out:
                writer = _Writer(out)
                writer.write(MAGIC)
                writer.write(_pack({"format": FORMAT, "version": BUNDLE_VERSION, "created_at": codec.utcnow(),
                                    "source": source.uri, "microblob": __version__}))
                report = _Copier(source, _BundleSink(writer), None, progress).run()  # type: ignore[arg-type]
                writer.write(_pack(["end", {"documents": writer.documents, "chunks": writer.chunks}]))
                out.write(writer.digest.digest())
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            raise StorageError(f"cannot write {path}: {exc.strerror or exc}") from None
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return report
    finally:
        if close:
            source.close()


# --- import ----------------------------------------------------------------------------------------------


class _HashingReader:
    """The bundle between its magic and its trailing digest, hashed as msgpack reads it."""

    def __init__(self, raw: BinaryIO, limit: int, digest: Any) -> None:
        self.raw = raw
        self.remaining = limit
        self.digest = digest

    def read(self, size: int = -1) -> bytes:
        size = self.remaining if size is None or size < 0 else min(size, self.remaining)
        data = self.raw.read(size)
        self.remaining -= len(data)
        self.digest.update(data)
        return data


class _BundleChunks:
    """`get(file_id, n)`: a chunk read in place from the bundle, at the offset the check found."""

    def __init__(self, raw: BinaryIO, index: dict[Any, tuple[array, array]]) -> None:
        self.raw = raw
        self.index = index

    def get(self, file_id: Any, n: int) -> bytes | None:
        entry = self.index.get(file_id)
        if entry is None or not 0 <= n < len(entry[0]):
            return None
        self.raw.seek(entry[0][n])
        return self.raw.read(entry[1][n])


class _BundleInternals:
    """What `_Copier` reads of a source: the documents of the scratch store, the chunks of the bundle."""

    def __init__(self, documents: Any, chunks: _BundleChunks) -> None:
        inner = documents.internals
        self.objects, self.history, self.workflows = inner.objects, inner.history, inner.workflows
        self.file_docs = inner.file_docs
        self.chunks = chunks


class _BundleSource:
    def __init__(self, documents: Any, chunks: _BundleChunks) -> None:
        self.internals = _BundleInternals(documents, chunks)
        self.backend = documents.backend
        self.uri = documents.uri


class _File:
    """A file's chunks as the check meets them: where each sits, how long it is, the running sha256."""

    __slots__ = ("offsets", "sizes", "digest", "length")

    def __init__(self) -> None:
        self.offsets, self.sizes = array("Q"), array("Q")
        self.digest = hashlib.sha256()
        self.length = 0


def _records(raw: BinaryIO, path: str, size: int) -> Iterator[tuple[Any, int]]:
    """Every record after the header, with the stream offset just past it; then checks the trailing sha256."""
    damaged = f"{path} is damaged"
    digest = hashlib.sha256(MAGIC)
    body = size - _DIGEST
    reader = _HashingReader(raw, body - len(MAGIC), digest)
    unpacker = msgpack.Unpacker(reader, raw=False, timestamp=3, strict_map_key=True, max_buffer_size=_MAX_RECORD,
                                read_size=_READ)
    try:
        try:
            header = next(unpacker)
        except StopIteration:
            raise IntegrityError(f"{path} is truncated: it ends before its header") from None
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise IntegrityError(f"{damaged}: no bundle header")
        version = header.get("version")
        if version != BUNDLE_VERSION or isinstance(version, bool):
            if isinstance(version, int) and not isinstance(version, bool) and version > BUNDLE_VERSION:
                raise InvalidArgument(f"{path} is a bundle of format {version}; this microblob ({__version__}) "
                                      f"reads format {BUNDLE_VERSION}: upgrade microblob to import it")
            raise IntegrityError(f"{damaged}: unknown bundle format {version!r}")
        for record in unpacker:
            yield record, len(MAGIC) + unpacker.tell()
    except (msgpack.UnpackException, ValueError, TypeError, OverflowError) as exc:
        if isinstance(exc, InvalidArgument):
            raise
        raise IntegrityError(f"{damaged}: {exc}") from None
    raw.seek(body)
    if raw.read(_DIGEST) != digest.digest():
        raise IntegrityError(f"{damaged}: its sha256 does not match")


def _file_matches(doc: Mapping[str, Any], found: _File | None) -> bool:
    """The chunks of a file add up to its document: sizes by chunkSize, the length, the sha256."""
    length, chunk_size = doc.get("length"), doc.get("chunkSize")
    if not isinstance(length, int) or not isinstance(chunk_size, int) or chunk_size < 1 or length < 0:
        return False
    found = found or _File()
    count = -(-length // chunk_size)
    if len(found.sizes) != count or found.length != length:
        return False
    if any(found.sizes[n] != chunk_size for n in range(count - 1)):
        return False
    return found.digest.hexdigest() == doc.get("sha256")


def _check(raw: BinaryIO, path: str, size: int, documents: Any) -> dict[Any, tuple[array, array]]:
    """Read the bundle once: check it whole, unpack its documents into `documents` (a scratch store) and
    return where each file's chunks are."""
    if size < len(MAGIC) + _DIGEST:
        raise IntegrityError(f"{path} is truncated")
    damaged = f"{path} is damaged"
    inner = documents.internals
    collections = {"workflows": inner.workflows, "fs.files": inner.file_docs, "object_history": inner.history,
                   "objects": inner.objects}
    open_files: dict[Any, _File] = {}
    index: dict[Any, tuple[array, array]] = {}
    counts = {"documents": 0, "chunks": 0}
    end: Any = None
    for record, offset in _records(raw, path, size):
        if end is not None:
            raise IntegrityError(f"{damaged}: records after its end")
        kind = record[0] if isinstance(record, list) and record else None
        if kind == "chunk" and len(record) == 4 and isinstance(record[2], int) and isinstance(record[3], bytes):
            _, file_id, n, data = record
            try:
                found = open_files.setdefault(file_id, _File())
            except TypeError:
                raise IntegrityError(f"{damaged}: a chunk of an unhashable file id") from None
            if n != len(found.offsets) or file_id in index:
                raise IntegrityError(f"{damaged}: chunk {n} of file {file_id!r} out of order")
            found.offsets.append(offset - len(data))  # the bytes are the record's last field
            found.sizes.append(len(data))
            found.digest.update(data)
            found.length += len(data)
            counts["chunks"] += 1
        elif kind == "doc" and len(record) == 3 and record[1] in collections and isinstance(record[2], dict):
            _, name, doc = record
            if name == "fs.files":
                file_id = doc.get("_id")
                try:
                    found = open_files.pop(file_id, None)
                except TypeError:
                    raise IntegrityError(f"{damaged}: a file with an unhashable id") from None
                if not _file_matches(doc, found):
                    raise IntegrityError(f"{damaged}: file {file_id!r} does not match its length and sha256")
                index[file_id] = (found.offsets, found.sizes) if found else (array("Q"), array("Q"))
            try:
                collections[name].insert_one(doc)
            except DuplicateKey:
                raise IntegrityError(f"{damaged}: {name} {doc.get('_id')!r} appears twice") from None
            except InvalidArgument as exc:
                raise IntegrityError(f"{damaged}: {name} {doc.get('_id')!r}: {exc}") from None
            counts["documents"] += 1
        elif kind == "end" and len(record) == 2:
            end = record[1]
        else:
            raise IntegrityError(f"{damaged}: a malformed record")
    if end is None:
        raise IntegrityError(f"{path} is truncated (no end record)")
    if end != counts:
        raise IntegrityError(f"{damaged}: it holds {counts}, its end record says {end}")
    return index


def import_store(path: str | os.PathLike[str], store: Any, *, progress: Progress | None = None) -> CopyReport:
    """Copy everything in the bundle `path` (made by `export_store`) into `store` (a Store, or a URI/path,
    created if new), as `copy` would: what the store holds already is skipped, so importing twice is a
    no-op. The whole bundle is checked first; a damaged one raises IntegrityError and imports nothing.
    Its documents are unpacked into a scratch store in the temporary directory ($TMPDIR) meanwhile
    (unsynced: it is thrown away at the end).
    """
    path = check_path(path)
    if progress is not None and not callable(progress):
        raise InvalidArgument("progress must be callable(bytes_done, bytes_total)")
    from .connect import connect

    try:
        raw = open(path, "rb")  # noqa: SIM115 - closed below; read in place while importing
    except FileNotFoundError:
        raise InvalidArgument(f"no bundle at {path}") from None
    except OSError as exc:
        raise StorageError(f"cannot read {path}: {exc.strerror or exc}") from None
    with raw:
        if raw.read(len(MAGIC)) != MAGIC:
            raise InvalidArgument(f"{path} is not a microblob bundle (one made by `microblob export`)")
        size = os.fstat(raw.fileno()).st_size
        with tempfile.TemporaryDirectory(prefix="microblob-import-") as scratch, \
                connect(os.path.join(scratch, "documents.db"), sync=False, metasync=False) as documents:
            index = _check(raw, path, size, documents)
            target, close = _open(store, "store", create=True)
            try:
                return _Copier(_BundleSource(documents, _BundleChunks(raw, index)),  # type: ignore[arg-type]
                               target, None, progress).run()
            finally:
                if close:
                    target.close()
