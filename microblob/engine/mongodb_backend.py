"""`mongodb://host/db`: the store on MongoDB through pymongo (optional extra `microblob[mongodb]`).

Collections `objects`, `object_history`, `workflows` and `fs.pending` hold microblob's documents;
file bytes use the GridFS layout exactly (`fs.files` documents with the spec's fields, `fs.chunks`
documents `{_id, files_id, n, data}` with the spec's unique index on `(files_id, n)`), so pymongo's
`gridfs.GridFSBucket` and `mongofiles` read what microblob writes and microblob reads what they write.

A standalone mongod has no multi-document transactions, so `transactional` is False and `atomic(fn)`
just runs `fn`: the store orders its writes (bytes, then the files document, then the object document
last), takes a lease in `fs.pending` while an upload runs, and makes every version change a
compare-and-swap filtered on the old `version`. A crash between two steps leaves unreferenced bytes
that `gc()` reclaims, never a partial object.

Every filter, projection, sort and update is checked with microblob's own parser first, so bad input is
`InvalidQuery` here exactly as on the embedded backends; pymongo's errors become microblob's typed errors
(`DuplicateKeyError` -> `DuplicateKey`, a server that cannot be reached -> `StorageError`).
"""

from __future__ import annotations

import functools
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any, TypeVar

from .._exceptions import (
    DuplicateKey,
    InvalidArgument,
    InvalidDocument,
    InvalidQuery,
    StorageError,
    StoreClosed,
    UnsupportedOperation,
)
from . import codec as _codec
from .backend import Filter, Projection, Sort, as_document, check_window, check_write, checked_chunk
from .planner import check_index_spec
from .query import compile_filter, compile_projection, compile_update, normalize_sort

try:
    import bson
    import pymongo
    from pymongo import errors as _errors
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("mongodb:// needs pymongo: pip install 'microblob[mongodb]'") from exc

__all__ = ["GRIDFS_CHUNK_SIZE", "MongoBackend", "MongoChunkStore", "MongoCollection", "redact_uri"]

T = TypeVar("T")

GRIDFS_CHUNK_SIZE = 255 * 1024
_PUT_BATCH_BYTES = 8 * 1024 * 1024  # bytes per insert_many of chunks (well under a 48 MB wire message)
# Server error codes that mean "your request is wrong", not "the server failed".
_BAD_REQUEST_CODES = {2, 9, 14, 15, 16, 17, 22, 28, 52, 55, 56, 57, 66, 67, 72, 85, 86, 10334, 17419}
_DUPLICATE_KEY_CODES = {11000, 11001, 12582}


def redact_uri(uri: str) -> str:
    """The URI without its password, for repr() and messages."""
    scheme, sep, rest = uri.partition("://")
    if not sep or "@" not in rest.split("/", 1)[0]:
        return uri
    credentials, _, host = rest.partition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"


def _first_reason(exc: BaseException) -> str:
    """pymongo's message names every timeout and dumps the whole topology (~700 characters): keep the
    first server's reason (`host:port: [Errno 111] Connection refused`)."""
    text = str(exc)
    for cut in (" (configured timeouts", ", Timeout:", ", Topology Description"):
        text = text.split(cut, 1)[0]
    return text.strip() or type(exc).__name__


def _translate(exc: BaseException) -> BaseException:
    """pymongo's exception as microblob's typed error."""
    if isinstance(exc, _errors.DuplicateKeyError):
        return DuplicateKey(str(exc.details.get("errmsg") if exc.details else exc))
    if isinstance(exc, _errors.BulkWriteError):
        codes = {e.get("code") for e in (exc.details or {}).get("writeErrors", [])}
        if codes & _DUPLICATE_KEY_CODES:
            return DuplicateKey(str(exc))
        return StorageError(f"MongoDB bulk write failed: {exc}")
    if isinstance(exc, _errors.DocumentTooLarge):
        return InvalidDocument(str(exc))
    if isinstance(exc, (_errors.ConnectionFailure, _errors.ServerSelectionTimeoutError)):
        return StorageError(f"MongoDB is unreachable: {_first_reason(exc)}")
    if isinstance(exc, _errors.OperationFailure):
        if exc.code in _DUPLICATE_KEY_CODES:
            return DuplicateKey(str(exc))
        if exc.code in _BAD_REQUEST_CODES:
            return InvalidQuery(f"MongoDB refused the request: {exc.details.get('errmsg') if exc.details else exc}")
        return StorageError(f"MongoDB failed: {exc}")
    if isinstance(exc, _errors.InvalidOperation) and "after close" in str(exc):
        return StoreClosed("the store is closed")
    if isinstance(exc, bson.errors.InvalidDocument):
        return InvalidDocument(str(exc))
    if isinstance(exc, _errors.PyMongoError):
        return StorageError(f"MongoDB failed: {exc}")
    return exc


def _mapped(method: Callable[..., T]) -> Callable[..., T]:
    """Run a collection or chunk-store method with pymongo's errors translated."""

    @functools.wraps(method)
    def run(self: Any, *args: Any, **kwargs: Any) -> T:
        self._backend._check_open()
        try:
            return method(self, *args, **kwargs)
        except (_errors.PyMongoError, bson.errors.BSONError) as exc:
            raise _translate(exc) from exc

    return run


def _checkable(value: Any, depth: int = 0) -> Any:
    """A filter with ObjectId values (files GridFSBucket wrote) as str, for microblob's parser: the
    parser checks the shape, the server evaluates the real filter. Below MAX_DEPTH levels the value is
    passed on as it is (the checks refuse it), so a 10,000-level one cannot exhaust the recursion limit."""
    if depth > _codec.MAX_DEPTH:
        return value
    if isinstance(value, bson.ObjectId):
        return str(value)
    if isinstance(value, Mapping):
        return {k: _checkable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_checkable(v, depth + 1) for v in value]
    return value


def _check_filter(filter: Filter | None) -> dict[str, Any]:
    if filter is None:
        return {}
    compile_filter(_checkable(filter))
    return dict(filter)


def _check_doc(doc: Mapping[str, Any]) -> dict[str, Any]:
    doc = as_document(doc)
    _codec.check_document(_checkable(doc))
    return doc


class MongoCollection:
    """One MongoDB collection behind the `_backend.Collection` protocol."""

    def __init__(self, backend: MongoBackend, name: str) -> None:
        if not isinstance(name, str) or not name or "\x00" in name or name.startswith("system.") \
                or not _codec.is_utf8(name):
            raise InvalidArgument(f"bad collection name {name!r}")
        self._backend = backend
        self.name = name
        self._coll = backend.database[name]

    def __repr__(self) -> str:
        return f"<MongoCollection {self.name!r}>"

    @property
    def raw(self) -> Any:
        """The pymongo Collection, for tests and tools."""
        return self._coll

    @_mapped
    def insert_one(self, doc: Mapping[str, Any]) -> Any:
        doc = _check_doc(doc)
        if "_id" not in doc:
            doc["_id"] = uuid.uuid4().hex  # like the embedded backends (not an ObjectId)
        self._coll.insert_one(doc)
        return doc["_id"]

    @_mapped
    def find(
        self,
        filter: Filter | None = None,
        projection: Projection = None,
        sort: Sort = None,
        skip: int = 0,
        limit: int = 0,
    ) -> list[dict]:
        flt = _check_filter(filter)
        check_window(skip, limit)
        if projection is not None:
            compile_projection(projection)
            if not isinstance(projection, Mapping):
                projection = list(projection)
        spec = normalize_sort(sort) or None
        return list(self._coll.find(flt, projection, sort=spec, skip=skip, limit=limit))

    def find_one(self, filter: Filter | None = None, projection: Projection = None, sort: Sort = None) -> dict | None:
        found = self.find(filter, projection, sort=sort, limit=1)
        return found[0] if found else None

    @_mapped
    def count_documents(self, filter: Filter | None = None) -> int:
        return self._coll.count_documents(_check_filter(filter))

    def iter_documents(self, filter: Filter | None = None, projection: Projection = None,
                       batch: int = 1000) -> Iterator[dict]:
        """Every match, streamed by the server's cursor in batches (see KVCollection.iter_documents)."""
        self._backend._check_open()
        if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
            raise InvalidArgument(f"batch must be an int >= 1, not {batch!r}")
        flt = _check_filter(filter)
        if projection is not None:
            compile_projection(projection)
            if not isinstance(projection, Mapping):
                projection = list(projection)
        try:
            cursor = self._coll.find(flt, projection, batch_size=batch)
            with cursor:
                yield from cursor
        except (_errors.PyMongoError, bson.errors.BSONError) as exc:
            raise _translate(exc) from exc

    @_mapped
    def ids(self, filter: Filter | None = None) -> list[Any]:
        return [d["_id"] for d in self._coll.find(_check_filter(filter), {"_id": 1})]

    @_mapped
    def replace_one(self, filter: Filter, doc: Mapping[str, Any], upsert: bool = False) -> int:
        check_write(filter, upsert)
        flt = _check_filter(filter)
        doc = _check_doc(doc)
        if any(k.startswith("$") for k in doc):
            raise InvalidDocument("a replacement document cannot have top-level keys starting with '$'")
        # A compare-and-swap: the server matches `filter` (e.g. {_id, version}) and replaces atomically.
        return self._coll.replace_one(flt, doc, upsert=upsert).matched_count

    @_mapped
    def update_one(self, filter: Filter, update: Mapping[str, Any], upsert: bool = False) -> int:
        check_write(filter, upsert=upsert)
        flt = _check_filter(filter)
        compile_update(_checkable(update))
        return self._coll.update_one(flt, dict(update), upsert=upsert).matched_count

    @_mapped
    def delete_one(self, filter: Filter) -> int:
        check_write(filter)
        return self._coll.delete_one(_check_filter(filter)).deleted_count

    @_mapped
    def delete_many(self, filter: Filter) -> int:
        check_write(filter)
        return self._coll.delete_many(_check_filter(filter)).deleted_count

    @_mapped
    def create_index(self, keys: Sequence[tuple[str, int]] | str | Mapping[str, int], unique: bool = False,
                     name: str | None = None) -> str:
        fields, name = check_index_spec(keys, name, unique)
        existing_indexes = self.list_indexes()
        for existing in existing_indexes:  # the embedded backends' rules, before the server's errors
            if existing["name"] == name:
                if existing["key"] != fields or existing["unique"] != bool(unique):
                    raise InvalidArgument(f"{self.name}: an index named {name!r} exists with other keys "
                                          f"{existing['key']}")
                return name
        for existing in existing_indexes:
            if existing["key"] == fields and existing["unique"] == bool(unique):
                raise InvalidArgument(f"{self.name}: the index {existing['name']!r} has these keys already")
        return self._coll.create_index(fields, unique=bool(unique), name=name)

    @_mapped
    def list_indexes(self) -> list[dict[str, Any]]:
        return [{"name": spec["name"], "key": [(f, int(d)) for f, d in spec["key"].items()],
                 "unique": bool(spec.get("unique"))}
                for spec in self._coll.list_indexes() if spec["name"] != "_id_"]

    def index_information(self) -> dict[str, dict]:
        return {spec["name"]: {"key": spec["key"], "unique": spec["unique"]} for spec in self.list_indexes()}

    @_mapped
    def drop_index(self, name: str) -> None:
        if not isinstance(name, str):
            raise InvalidArgument(f"an index name is a str, not {type(name).__name__}")
        known = [spec["name"] for spec in self.list_indexes()]
        if name not in known:
            raise InvalidArgument(f"{self.name}: no index named {name!r} (indexes: {', '.join(known) or 'none'})")
        self._coll.drop_index(name)

    @_mapped
    def explain(self, filter: Filter | None = None, sort: Sort = None, skip: int = 0, limit: int = 0) -> dict:
        """The server's winning plan, summarised like the embedded backends' (its raw form under "server")."""
        flt = _check_filter(filter)
        check_window(skip, limit)
        spec = normalize_sort(sort) or None
        cursor = self._coll.find(flt, sort=spec, skip=skip, limit=limit)
        try:
            raw = cursor.explain()
        except _errors.OperationFailure as exc:  # a wire-compatible server without explain
            return {"collection": self.name, "plan": "unknown", "index": None, "reason": f"server: {exc}"}
        winning = (raw.get("queryPlanner") or {}).get("winningPlan") or {}
        stages = []
        node: Any = winning
        while isinstance(node, Mapping):
            stages.append(node)
            node = node.get("inputStage") or (node.get("inputStages") or [None])[0]
        index = next((st.get("indexName") for st in stages if st.get("indexName")), None)
        names = [st.get("stage") for st in stages]
        plan = "IXSCAN" if "IXSCAN" in names else "IDHACK" if any(n in ("IDHACK", "EXPRESS_IXSCAN") for n in names) \
            else "COLLSCAN" if names else "unknown"
        return {"collection": self.name, "plan": plan, "index": index,
                "sort": "in memory" if "SORT" in names else "index order" if spec else "none",
                "reason": "the MongoDB server's winning plan: " + " <- ".join(str(n) for n in names),
                "server": _plain(winning)}


def _plain(value: Any) -> Any:
    """A server answer with BSON types made JSON-friendly (for explain's "server" field)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


class MongoChunkStore:
    """File bytes as GridFS chunk documents `{files_id, n, data}` in `fs.chunks`."""

    def __init__(self, backend: MongoBackend) -> None:
        self._backend = backend
        self._coll = backend.database["fs.chunks"]

    @_mapped
    def put(self, file_id: Any, n: int, data: bytes | memoryview) -> None:
        self._coll.replace_one({"files_id": file_id, "n": n},
                               {"files_id": file_id, "n": n, "data": bson.Binary(bytes(data))}, upsert=True)

    @_mapped
    def put_many(self, file_id: Any, first: int, chunks: Sequence[bytes | memoryview]) -> None:
        """Insert chunks in batches of a few MiB; chunks left by an interrupted attempt are replaced."""
        batch: list[dict] = []
        size = 0
        for n, data in enumerate(chunks, first):
            batch.append({"files_id": file_id, "n": n, "data": bson.Binary(bytes(data))})
            size += len(data)
            if size >= _PUT_BATCH_BYTES:
                self._insert(batch)
                batch, size = [], 0
        if batch:
            self._insert(batch)

    def _insert(self, batch: list[dict]) -> None:
        try:
            self._coll.insert_many(batch, ordered=True)
        except _errors.BulkWriteError as exc:
            codes = {e.get("code") for e in (exc.details or {}).get("writeErrors", [])}
            if not codes <= _DUPLICATE_KEY_CODES:
                raise
            for doc in batch[exc.details.get("nInserted", 0):]:
                doc.pop("_id", None)
                self._coll.replace_one({"files_id": doc["files_id"], "n": doc["n"]}, doc, upsert=True)

    @_mapped
    def get(self, file_id: Any, n: int) -> bytes | None:
        doc = self._coll.find_one({"files_id": file_id, "n": n}, {"data": 1})
        return bytes(doc["data"]) if doc is not None else None

    @_mapped
    def read_joined(self, file_id: Any, parts: list[tuple[int, int, int, int]]) -> bytes:
        """Slices of several chunks fetched with one query (one round trip per cursor batch)."""
        if not parts:
            return b""
        numbers = [n for n, *_ in parts]
        found: dict[int, bytes] = {}
        cursor = self._coll.find({"files_id": file_id, "n": {"$gte": min(numbers), "$lte": max(numbers)}},
                                 {"n": 1, "data": 1})
        for doc in cursor:
            found[doc["n"]] = doc["data"]
        pieces = []
        for n, start, stop, expected in parts:
            data = checked_chunk(file_id, n, found.get(n), expected)
            pieces.append(memoryview(data)[start:stop])
        return b"".join(pieces)

    @_mapped
    def count(self, file_id: Any) -> int:
        return self._coll.count_documents({"files_id": file_id})

    @_mapped
    def delete(self, file_id: Any) -> int:
        return self._coll.delete_many({"files_id": file_id}).deleted_count

    @_mapped
    def file_ids(self) -> Iterator[Any]:
        """Every file id with chunks, streamed from the server (grouped there, spilling to disk if big)."""
        try:
            with self._coll.aggregate([{"$group": {"_id": "$files_id"}}], allowDiskUse=True) as cursor:
                for doc in cursor:
                    yield doc["_id"]
        except (_errors.PyMongoError, bson.errors.BSONError) as exc:
            raise _translate(exc) from exc


CONNECT_TIMEOUT = 3.0  # seconds for a server's first answer, at connect


class MongoBackend:
    """A Backend on one MongoDB database. Thread-safe (pymongo's client is); not fork-safe (open a
    new store in the child, as pymongo requires)."""

    transactional = False
    chunk_size = GRIDFS_CHUNK_SIZE
    holds_object_ids = True  # BSON ObjectId values (GridFSBucket's file ids) are stored as they are

    def __init__(self, uri: str, *, database: str | None = None, **client_options: Any) -> None:
        try:
            parsed = pymongo.uri_parser.parse_uri(uri)
        except (_errors.InvalidURI, _errors.ConfigurationError, ValueError) as exc:
            raise InvalidArgument(f"bad MongoDB URI {redact_uri(uri)!r}: {exc}") from None
        name = database or parsed.get("database")
        if not name:
            raise InvalidArgument(f"name the database in the URI: mongodb://host/dbname, not {redact_uri(uri)!r}")
        self.uri = redact_uri(uri)
        options = {"tz_aware": True, "uuidRepresentation": "standard", "appname": "microblob"}
        chosen = "serverselectiontimeoutms" in uri.lower() or any(
            key.lower() == "serverselectiontimeoutms" for key in client_options)
        if not chosen:
            options["serverSelectionTimeoutMS"] = 10_000
        options.update(client_options)
        self._client: Any = pymongo.MongoClient(uri, **options)
        self._closed = False
        self._lock = threading.Lock()
        self.database = self._client[name]
        self._collections: dict[str, MongoCollection] = {}
        try:
            # A server that is down or mistyped is found out at connect, in a few seconds, not after the
            # 10 s that operations may wait for a failover (a timeout given in the URI or options is kept).
            with pymongo.timeout(None if chosen else CONNECT_TIMEOUT):
                self._client.admin.command("ping")
            chunks = self.database["fs.chunks"]
            chunks.create_index([("files_id", 1), ("n", 1)], unique=True)  # the GridFS spec's indexes
            self.database["fs.files"].create_index([("filename", 1), ("uploadDate", 1)])
        except _errors.PyMongoError as exc:
            self._client.close()
            raise _translate(exc) from exc
        self._chunks = MongoChunkStore(self)

    def __repr__(self) -> str:
        return f"<MongoBackend {self.uri!r}>"

    @property
    def client(self) -> Any:
        return self._client

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed("the store is closed")

    def collection(self, name: str) -> MongoCollection:
        coll = self._collections.get(name)
        if coll is None:
            with self._lock:
                coll = self._collections.get(name)
                if coll is None:
                    coll = self._collections[name] = MongoCollection(self, name)
        return coll

    @property
    def chunks(self) -> MongoChunkStore:
        return self._chunks

    def atomic(self, fn: Callable[[], T], *, size_hint: int = 0) -> T:
        """No multi-document transaction on a standalone server: the store orders its writes instead."""
        self._check_open()
        return fn()

    def compact(self) -> tuple[str, int, int]:
        """MongoDB manages its own files: the server's `compact` command (per collection, with the
        privileges it needs) is the tool, and microblob does not run it behind the operator's back."""
        self._check_open()
        raise UnsupportedOperation(
            f"{self.uri}: MongoDB manages its own files; compact on the server instead, per collection "
            "(e.g. db.runCommand({compact: 'fs.chunks'}) in mongosh). Nothing was changed")

    def snapshot(self) -> AbstractContextManager[None]:
        """No cheap consistent view here: each read sees the latest state, as without the block."""
        return nullcontext()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._client.close()
