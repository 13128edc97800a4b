"""`mongita:///abs/dir`: documents kept in Mongita, chunk bytes in `dir/chunks.db` (LMDB).

For people who already keep data in Mongita. Mongita 1.2.0 (unmaintained since 2023) was measured here
(docs/ARCHITECTURE.md, "Engine facts"): no fsync, a kill -9 during inserts left the collection unreadable
in 25 of 30 trials, not process-safe, top-level `$or`/`$and` silently match nothing, a filter that names
`_id` ignores its other conditions (so `replace_one({"_id": x, "version": 3}, ...)` would replace whatever version is
there), and only eight filter operators. So Mongita is used for one thing only: to persist documents and
to fetch them back by `_id`.

Everything else is microblob's own: at first use of a collection its documents are loaded from Mongita
into an in-process document layer (the same `_kvdocs` code as `memory://`, with its indexes), every
filter, sort, projection and compare-and-swap runs there under one process-wide lock, and each atomic
unit's writes are then written through to Mongita in order (bytes, files document, object document).
Mongita keeps every document in RAM anyway; this keeps a second, msgpack-packed copy.

Index specs (the store's own and `create_index`'s) persist in the Mongita collection `_microblob_indexes`
(a name `mongita_name` never produces); the indexes themselves are rebuilt in-process at each open.

Limits, said plainly: one process at a time (enforced with an exclusive lock on `dir/microblob.lock`);
not crash-safe (a crash can lose the last writes or, inside Mongita, a whole collection). Move such data
onto the embedded default with `microblob.copy("mongita:///dir", "./microblob.db")`.

Names: Mongita refuses collection names with dots and keeps each collection in a directory named after
it, so names are mapped reversibly into `[A-Za-z0-9_-]`: letters, digits and inner underscores stay,
`.` becomes `--`, and every other character (a leading or trailing `_` too) becomes `-` plus the hex
of its UTF-8 bytes: `fs.files` <-> `fs--files`, `object_history` <-> `object_history`, `a-b` <-> `a-2db`.
`-` is never a hex digit, so the mapping is prefix-free and cannot collide.

Ids: a document whose `_id` is a non-empty str not starting with `~` keeps it in Mongita; any other
`_id` (an int, bytes, a datetime, or a str starting with `~`) is stored as `~` + the hex of its msgpack
key, since Mongita only takes str or ObjectId ids.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any, TypeVar

import msgpack

from .._exceptions import InvalidArgument, InvalidDocument, StorageError, StoreClosed
from .._paths import check_path
from . import codec as _codec
from .kv import KVTxn, MemoryEngine
from .kvdocs import KVBackend, KVChunkStore, KVCollection, _pack, _scalar, id_key, put_specs
from .lmdb_kv import LmdbEngine, Space

__all__ = ["MongitaBackend", "collection_name", "mongita_name"]

T = TypeVar("T")

_PLAIN = re.compile(r"[A-Za-z0-9_]")
_ESCAPED = re.compile(r"--|-[0-9a-f]{2}|[A-Za-z0-9_]")
_MAX_NAME = 64  # Mongita's limit on a mapped name
_HELD: set[str] = set()  # directories open in this process (flock would also refuse us)
_HELD_LOCK = threading.Lock()


def mongita_name(name: str) -> str:
    """A microblob collection name as a Mongita collection name (see the module docstring)."""
    out = []
    last = len(name) - 1
    for i, ch in enumerate(name):
        if ch == ".":
            out.append("--")
        elif _PLAIN.fullmatch(ch) and not (ch == "_" and i in (0, last)):
            out.append(ch)
        else:
            out.append("".join(f"-{b:02x}" for b in ch.encode("utf-8")))
    mapped = "".join(out)
    if not mapped or len(mapped) > _MAX_NAME:
        raise InvalidArgument(f"collection name {name!r} maps to {mapped!r}: Mongita needs 1..{_MAX_NAME} chars")
    return mapped


def collection_name(mapped: str) -> str:
    """The inverse of `mongita_name`."""
    pos = 0
    raw = bytearray()
    for match in _ESCAPED.finditer(mapped):
        if match.start() != pos:
            raise InvalidArgument(f"{mapped!r} is not a mapped collection name")
        token = match.group()
        if token == "--":
            raw += b"."
        elif token.startswith("-"):
            raw.append(int(token[1:], 16))
        else:
            raw += token.encode()
        pos = match.end()
    if pos != len(mapped):
        raise InvalidArgument(f"{mapped!r} is not a mapped collection name")
    return raw.decode("utf-8")


def _mongita_id(_id: Any) -> str:
    if isinstance(_id, str) and _id and not _id.startswith("~"):
        return _id
    ok, norm = _scalar(_id)
    if not ok or _id is None:
        raise InvalidArgument(f"_id must be a str, int, float, bytes or datetime, not {type(_id).__name__}")
    return "~" + _pack(norm).hex()


def _microblob_id(stored: Any) -> Any:
    if isinstance(stored, str) and stored.startswith("~"):
        return msgpack.unpackb(bytes.fromhex(stored[1:]), raw=False, timestamp=3)
    if isinstance(stored, str):
        return stored
    return str(stored)  # an ObjectId Mongita made for a document written without an _id


def _from_bson(value: Any) -> Any:
    """What Mongita's BSON decoding returns, as microblob's documents hold it (aware UTC datetimes,
    plain ints, ObjectIds as their hex)."""
    if isinstance(value, dict):
        return {k: _from_bson(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_from_bson(v) for v in value]
    if isinstance(value, _dt.datetime):
        return value.replace(tzinfo=_dt.timezone.utc) if value.tzinfo is None else value
    if isinstance(value, bool) or value is None or isinstance(value, (str, float, bytes)):
        return value
    if isinstance(value, int):
        return int(value)
    return str(value)


class MongitaCollection(KVCollection):
    """A `_kvdocs` collection whose writes are journaled for Mongita."""

    def _write(self, txn: KVTxn, key: bytes, old: dict | None, new: dict | None, raw: bytes | None) -> None:
        if new is not None:
            for field in new:
                if not field or field.startswith("$"):
                    raise InvalidDocument(f"Mongita cannot store a top-level key {field!r} (empty or '$...')")
        super()._write(txn, key, old, new, raw)
        journal = self._backend._journal  # type: ignore[attr-defined]
        if journal is not None:
            doc = new if new is not None else old
            assert doc is not None
            journal.append((self.name, doc["_id"], new))


    def create_index(self, keys: Any, unique: bool = False, name: str | None = None) -> str:
        created = super().create_index(keys, unique=unique, name=name)
        self._backend._save_index_specs(self.name)  # type: ignore[attr-defined]
        return created

    def drop_index(self, name: str) -> None:
        super().drop_index(name)
        self._backend._save_index_specs(self.name)  # type: ignore[attr-defined]


_SPECS = "_microblob_indexes"  # mongita_name never makes a name with a leading "_": no user collection


class MongitaBackend(KVBackend):
    """A Backend: documents persisted in Mongita, evaluated by microblob; bytes in `dir/chunks.db`."""

    # Writes reach Mongita one document at a time, after the in-process unit commits: the store must
    # order its writes and take leases, as on MongoDB.
    transactional = False
    chunk_size = 1024 * 1024

    def __init__(self, directory: str | os.PathLike[str], *, database: str = "microblob") -> None:
        try:
            from mongita import MongitaClientDisk
        except ImportError as exc:  # pragma: no cover - mongita is a dependency
            raise StorageError("mongita:// needs the mongita package") from exc
        directory = os.path.realpath(check_path(directory, "the mongita:// directory"))
        if os.path.exists(directory) and not os.path.isdir(directory):
            raise StorageError(f"{directory} is not a directory")
        os.makedirs(directory, exist_ok=True)
        self.directory = directory
        self._lock_file = self._take_directory(directory)
        super().__init__(MemoryEngine(), f"mongita://{directory}")
        self._journal: list[tuple[str, Any, dict | None]] | None = None
        self._write_lock = threading.RLock()
        self._collections_lock = threading.Lock()
        try:
            self._chunk_backend = KVBackend(LmdbEngine(os.path.join(directory, "chunks.db")),
                                            os.path.join(directory, "chunks.db"))
            self._chunks = KVChunkStore(self._chunk_backend)
            self._client = MongitaClientDisk(directory)
            self._db = self._client[mongita_name(database)]
            self._load_index_specs()
        except BaseException:
            self._release_directory()
            raise

    def space(self) -> Space | None:
        """The bytes go to `dir/chunks.db`: its room is what limits this store."""
        return self._chunk_backend.space()

    @staticmethod
    def _take_directory(directory: str) -> Any:
        with _HELD_LOCK:
            if directory in _HELD:
                raise StorageError(f"{directory} is already open in this process (Mongita is single-process)")
            handle = open(os.path.join(directory, "microblob.lock"), "a+b")  # noqa: SIM115 - held while open
            try:
                import fcntl

                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except ImportError:  # pragma: no cover - not POSIX
                pass
            except OSError:
                handle.close()
                raise StorageError(f"{directory} is open in another process (Mongita is single-process)") from None
            _HELD.add(directory)
            return handle

    def _release_directory(self) -> None:
        with _HELD_LOCK:
            _HELD.discard(self.directory)
        self._lock_file.close()

    # --- collections: loaded from Mongita once, on first use ---------------------------------------

    def collection(self, name: str) -> KVCollection:
        coll = self._collections.get(name)
        if coll is not None:
            return coll
        with self._collections_lock, self._write_lock:
            coll = self._collections.get(name)
            if coll is None:
                coll = MongitaCollection(self, name)
                self._load(coll)
                self._collections[name] = coll
        return coll

    def _load(self, coll: MongitaCollection) -> None:
        self._check_open()
        source = self._db[mongita_name(coll.name)]
        try:
            docs = list(source.find({}))
        except Exception as exc:
            raise StorageError(f"Mongita could not read collection {coll.name!r}: {exc}") from exc

        def load(txn: KVTxn) -> None:
            for stored in docs:
                doc = _from_bson(stored)
                doc["_id"] = _microblob_id(stored["_id"])
                coll._write(txn, coll._prefix + id_key(doc["_id"]), None, doc, _codec.encode(doc))

        self._engine.write(load)  # not through _writing: nothing to write back

    def _load_index_specs(self) -> None:
        """Index specs persist in a Mongita collection of their own; the in-process engine starts with
        them, so loading a collection's documents builds its indexes."""
        try:
            stored = {doc["_id"]: doc["specs"] for doc in self._db[_SPECS].find({})}
        except Exception as exc:
            raise StorageError(f"Mongita could not read the index specs: {exc}") from exc
        self._saved_specs: dict[str, Any] = stored
        if stored:
            self._engine.write(lambda txn: put_specs(txn, stored))

    def _save_index_specs(self, collection: str) -> None:
        with self._engine.read() as txn:
            specs = self._index_specs(txn).get(collection, [])
        if self._saved_specs.get(collection) == specs:
            return  # every open asks for the store's own indexes: no write when nothing changed
        try:
            self._db[_SPECS].replace_one({"_id": collection}, {"_id": collection, "specs": specs}, upsert=True)
        except Exception as exc:
            raise StorageError(f"Mongita failed to write the index specs of {collection!r}: {exc}") from exc
        self._saved_specs[collection] = specs

    def _check_open(self) -> None:
        if self.closed:
            raise StoreClosed("the store is closed")

    @property
    def chunks(self) -> KVChunkStore:
        return self._chunks

    # --- writes: one in-process unit, then written through to Mongita in order ---------------------

    def _writing(self, fn: Callable[[KVTxn], T], *, size_hint: int = 0, durable: bool = True) -> T:
        if getattr(self._local, "txn", None) is not None:
            return fn(self._local.txn)
        with self._write_lock:
            self._journal = []
            try:
                result = super()._writing(fn, size_hint=size_hint, durable=durable)
                journal = self._journal
            finally:
                self._journal = None
            self._persist(journal)
            return result

    def _persist(self, journal: list[tuple[str, Any, dict | None]]) -> None:
        for name, _id, doc in journal:
            target = self._db[mongita_name(name)]
            stored_id = _mongita_id(_id)
            try:
                if doc is None:
                    target.delete_one({"_id": stored_id})
                else:
                    target.replace_one({"_id": stored_id}, {**doc, "_id": stored_id}, upsert=True)
            except Exception as exc:
                raise StorageError(f"Mongita failed to write {name!r} {_id!r}: {exc}") from exc

    def atomic(self, fn: Callable[[], T], *, size_hint: int = 0) -> T:
        return self._writing(lambda txn: fn(), size_hint=size_hint)

    def compact(self) -> tuple[str, int, int]:
        """Compact `dir/chunks.db`, where the bytes live (Mongita rewrites its own document files itself).
        The directory lock keeps every other process out; this backend is the file's only opener here."""
        self._check_open()
        with self._write_lock:
            return self._chunk_backend.compact()

    def snapshot(self) -> AbstractContextManager[None]:
        """No cheap consistent view here: each read sees the latest state, as without the block."""
        return nullcontext()

    def close(self) -> None:
        with self._write_lock:
            if self.closed:
                return
            super().close()
            try:
                self._chunk_backend.close()
                self._client.close()
            finally:
                self._release_directory()
