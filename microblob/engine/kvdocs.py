"""A MongoDB-style document layer over a KVEngine: the embedded backends (LMDB file, memory).

Layout inside the engine's tables:
- docs:   pack(collection) + id_key(_id)                   -> msgpack document
- index:  pack(collection) + pack(index name) + entry      -> len(id key), one byte
          entry = order-preserving component per indexed field + id_key (`_index_keys.py`, `_planner.py`)
          pack(collection) + pack(index name) + 0x03 + value prefix -> 8-byte big-endian count of the
          documents filed under those leading components, kept from 2 on (fewer: count the entries)
- chunks: pack(file_id) + 4-byte big-endian chunk number    -> raw bytes (no framing, no copy)
- meta:   b"indexes"                                        -> {collection: [index spec, ...]}
          b"count" + pack(collection)                        -> how many documents it holds
          b"plan"                                            -> 8 random bytes, new whenever an index is
          created or dropped or an ALWAYS/MULTI entry is filed or removed: what a planner learnt about
          the indexes under one token holds for every snapshot with that token, in every process

Index specs live in the file, so every process on it maintains the same indexes. An index only narrows
the candidates; every candidate is re-checked by the full matcher, so an index can never change a
result, only its cost.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import itertools
import math
import os
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any, TypeVar

import msgpack

from .._exceptions import DuplicateKey, InvalidArgument, InvalidQuery, UnsupportedOperation
from . import codec as _codec
from .backend import Filter, Projection, Sort, as_document, check_window, check_write, checked_chunk
from .ids import new_id
from .index_keys import ALWAYS, successor
from .index_keys import encode as encode_component
from .kv import KVEngine, KVTxn
from .planner import Index, Plan, any_entry, check_index_spec, documents_under, plan
from .query import (
    compile_filter,
    compile_projection_owned,
    compile_update,
    equality_values,
    normalize_sort,
    sort_documents,
    window,
)

if TYPE_CHECKING:
    from .lmdb_kv import Space

__all__ = ["KVBackend", "KVChunkStore", "KVCollection"]

T = TypeVar("T")

_MAX_ID_KEY = 160  # LMDB keys stop at 511 bytes: collection + index name + two components + id key fit
_HASHED = b"\xc1\x01"  # 0xc1 never starts a msgpack value, so these cannot collide with packed keys
_NAN = msgpack.ExtType(1, b"nan")
_INDEXES_KEY = b"indexes"
_COUNT_KEY = b"count"
_PLAN_KEY = b"plan"
_ID_ONLY = {"_id": 1}
_FORMAT = 3  # index entry format (3: with value-prefix counters); older ones are rebuilt by the next create_index


def _pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True, datetime=True)


def _scalar(value: Any) -> tuple[bool, Any]:
    """(indexable, normalised value) with MongoDB's equality: 1 == 1.0, True != 1, NaN == NaN."""
    if value is None or isinstance(value, (bool, str, bytes)):
        return True, value
    if isinstance(value, int):
        return True, value
    if isinstance(value, float):
        if math.isnan(value):
            return True, _NAN
        if value.is_integer() and -(2**63) <= value < 2**63:
            return True, int(value)
        return True, value
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=_dt.timezone.utc)
        return True, value
    return False, None


def id_key(_id: Any) -> bytes:
    if type(_id) is str and len(_id) <= 100 and _id.isascii():  # the common id: packs as itself, fits
        return _pack(_id)
    ok, norm = _scalar(_id)
    if not ok or _id is None:
        raise InvalidArgument(f"_id must be a str, int, float, bytes or datetime, not {type(_id).__name__}")
    try:
        raw = _pack(norm)
    except (OverflowError, ValueError) as exc:  # beyond 64 bits, or a lone surrogate (UnicodeEncodeError)
        raise InvalidArgument(f"_id {_id!r} cannot be stored: {exc}") from None
    if len(raw) > _MAX_ID_KEY:
        return _HASHED + hashlib.sha256(raw).digest()
    return raw


class KVCollection:
    """One named collection: the pymongo subset of `_backend.Collection`."""

    def __init__(self, backend: KVBackend, name: str) -> None:
        if not isinstance(name, str) or not name or "\x00" in name or not _codec.is_utf8(name) \
                or len(name.encode()) > 64:
            raise InvalidArgument(f"collection names are non-empty UTF-8 str of at most 64 bytes, no NUL, "
                                  f"not {name!r:.100}")
        self._backend = backend
        self.name = name
        self._prefix = _pack(name)

    def __repr__(self) -> str:
        return f"<KVCollection {self.name!r}>"

    # --- reading -----------------------------------------------------------------------------------

    def _plan(self, txn: KVTxn, filter: Filter | None, sort: list[tuple[str, int]], window: int | None) -> Plan:
        if filter and equality_values(filter, "_id") is not None:
            return Plan(in_sort_order=not sort, reason="the filter names the _id: one lookup per id")
        return plan(txn, self._backend._indexes(txn, self.name), filter, sort, window,
                    markers=self._backend._markers(txn))

    def _candidates(self, txn: KVTxn, filter: Filter, chosen: Plan) -> Iterator[tuple[bytes, bytes]]:
        """(key, raw document) pairs that may match: by _id, by the plan's index walk, or every document."""
        ids = equality_values(filter, "_id") if filter else None
        if ids is not None:
            seen = set()
            for value in ids:
                try:
                    key = self._prefix + id_key(value)
                except InvalidArgument:
                    continue
                if key in seen:
                    continue
                seen.add(key)
                raw = txn.get("docs", key)
                if raw is not None:
                    yield key, raw
            return
        if chosen.index is not None:
            for idk in chosen.candidates(txn):
                key = self._prefix + idk
                raw = txn.view("docs", key)  # decoded before the transaction ends
                if raw is not None:
                    yield key, raw
            return
        yield from txn.scan("docs", self._prefix)

    def _matching(
        self, txn: KVTxn, filter: Filter | None, predicate: Callable[[Mapping[str, Any]], bool] | None = None,
        chosen: Plan | None = None,
    ) -> Iterator[tuple[bytes, dict]]:
        if predicate is None:
            predicate = compile_filter(filter)
        if chosen is None:
            chosen = self._plan(txn, filter, [], None)
        if chosen.exact and chosen.index is not None and not chosen.multi:
            # The index answered the filter: only the documents filed under ALWAYS need the matcher.
            for value, idk in chosen.keyed_candidates(txn):
                key = self._prefix + idk
                raw = txn.view("docs", key)
                if raw is not None:
                    doc = _codec.decode(raw)
                    if value != ALWAYS or predicate(doc):
                        yield key, doc
            return
        for key, raw in self._candidates(txn, filter or {}, chosen):
            doc = _codec.decode(raw)
            if predicate(doc):
                yield key, doc

    def find(
        self,
        filter: Filter | None = None,
        projection: Projection = None,
        sort: Sort = None,
        skip: int = 0,
        limit: int = 0,
    ) -> list[dict]:
        skip, limit = check_window(skip, limit)
        project = compile_projection_owned(projection)  # every document here is freshly decoded
        spec = normalize_sort(sort)  # the hot path below ignores the sort: a bad one must still be refused
        exact = _exact_id(filter)
        if exact is not None and not skip:  # the hot path: one key, no matcher
            with self._backend._reading() as txn:
                raw = txn.view("docs", self._prefix + exact)
                docs = [_codec.decode(raw)] if raw is not None else []
            return [project(doc) for doc in docs] if projection is not None else docs
        predicate = compile_filter(filter)  # validate before touching the engine
        with self._backend._reading() as txn:
            chosen = self._plan(txn, filter, spec, min(skip + limit, sys.maxsize) if limit else None)
            if chosen.exact and chosen.index is not None and not chosen.multi and not chosen.tiebreak \
                    and (not spec or chosen.in_sort_order):
                return self._answered(txn, chosen, predicate, skip, limit, project if projection is not None else None)
            matches = (doc for _, doc in self._matching(txn, filter, predicate, chosen))
            if spec and not chosen.in_sort_order:
                if chosen.index is not None:  # ties keep the scan's order (by id key), as without the index
                    matches = iter(sorted(matches, key=lambda doc: id_key(doc["_id"])))
                docs = sort_documents(matches, spec, skip=skip, limit=limit)
            else:
                # Projected as they come: a page of ids must not hold every matching document whole.
                keep = project if projection is not None else None
                if spec and chosen.tiebreak:
                    return self._ordered_runs(txn, chosen, predicate, spec, skip, limit, keep)
                found = window(matches, skip, limit)
                return [keep(doc) for doc in found] if keep is not None else list(found)
        return [project(doc) for doc in docs] if projection is not None else docs

    def _answered(self, txn: KVTxn, chosen: Plan, predicate: Callable[[Mapping[str, Any]], bool], skip: int,
                  limit: int, project: Callable[[dict], dict] | None) -> list[dict]:
        """A find the index answers, in its order: walk, read and decode in one loop (the index's own
        entries need no matcher, only those filed under ALWAYS) and stop after skip + limit. Each
        document is projected as it comes, so a page never holds whole documents."""
        stop = min(skip + limit, sys.maxsize) if limit else sys.maxsize
        out: list[dict] = []
        prefix, view, decode = self._prefix, txn.view, _codec.decode
        for value, idk in chosen.keyed_candidates(txn):
            raw = view("docs", prefix + idk)
            if raw is None:
                continue
            doc = decode(raw)
            if value == ALWAYS and not predicate(doc):
                continue
            out.append(project(doc) if project is not None else doc)
            if len(out) >= stop:
                break
        return out[skip:] if skip else out

    def _ordered_runs(self, txn: KVTxn, chosen: Plan, predicate: Callable[[Mapping[str, Any]], bool],
                      spec: list[tuple[str, int]], skip: int, limit: int,
                      project: Callable[[dict], dict] | None = None) -> list[dict]:
        """The index gives the order of the sort's leading fields: sort each run of ties on them by the
        whole sort (stably, so the result is exactly a full sort's), and stop after skip + limit. Each
        sorted run is projected (`project`) before the next is read."""
        stop = skip + limit if limit else None
        out: list[dict] = []
        run: list[dict] = []
        run_value: bytes | None = None

        def flush(run: list[dict]) -> None:
            if len(run) == 1:  # most runs: a timestamp seldom ties
                out.append(project(run[0]) if project is not None else run[0])
                return
            ordered = sort_documents(run, spec) if run else run
            out.extend(map(project, ordered) if project is not None else ordered)

        for value, idk in chosen.keyed_candidates(txn):
            if value != run_value:
                flush(run)
                run = []
                run_value = value
                if stop is not None and len(out) >= stop:
                    break
            raw = txn.view("docs", self._prefix + idk)
            if raw is not None:
                doc = _codec.decode(raw)
                if predicate(doc):
                    run.append(doc)
        else:
            flush(run)
        return out[skip:stop]

    def find_one(self, filter: Filter | None = None, projection: Projection = None, sort: Sort = None) -> dict | None:
        if sort is None and (projection is None or projection == _ID_ONLY):
            exact = _exact_id(filter)
            if exact is not None:  # a get by id, the most common call there is: one key, nothing else
                with self._backend._reading() as txn:
                    raw = txn.view("docs", self._prefix + exact)
                    if raw is None:
                        return None
                    if projection is None:
                        return _codec.decode(raw)
                    _id = filter["_id"]  # type: ignore[index]
                    # Whether it exists: a str id is stored as itself (an int may be stored as 1.0).
                    return {"_id": _id} if type(_id) is str else {"_id": _codec.decode(raw)["_id"]}
        if sort is None and self._indexed_miss(filter):
            return None
        found = self.find(filter, projection, sort=sort, limit=1)
        return found[0] if found else None

    def _indexed_miss(self, filter: Filter | None) -> bool:
        """True when a one-field index shows that nothing matches `{field: "text"}`: no entry under the
        value and none under ALWAYS. Two key probes instead of compiling, planning and walking (a save of
        a new id asks this of `object_id` for every object); any candidate leaves the answer to `find`."""
        if not isinstance(filter, dict) or len(filter) != 1:
            return False
        ((path, value),) = filter.items()
        if type(value) is not str or type(path) is not str or not _plain_field(path):
            return False
        component = encode_component(value)
        if component is None:
            return False
        with self._backend._reading() as txn:
            for index in self._backend._indexes(txn, self.name):
                if index.fields == [path]:
                    return not any_entry(txn, index.prefix + component) and not any_entry(txn, index.prefix + ALWAYS)
        return False

    def count_documents(self, filter: Filter | None = None) -> int:
        predicate = compile_filter(filter)
        with self._backend._reading() as txn:
            if not filter:
                stored = txn.get("meta", self._count_key)
                if stored is not None:
                    return int(msgpack.unpackb(stored))
            chosen = self._plan(txn, filter, [], None)
            if chosen.index is not None and (chosen.counted or (chosen.exact and not chosen.multi)):
                # The index answers the filter: its counters (equality) or its entries (ranges) count the
                # documents; only those filed under ALWAYS are decoded and checked.
                n = chosen.count_counted(txn) if chosen.counted else chosen.count_entries(txn)
                if chosen.always:
                    always = Plan(index=chosen.index, always=True)
                    for idk in always.candidates(txn):
                        raw = txn.get("docs", self._prefix + idk)
                        n += raw is not None and predicate(_codec.decode(raw))
                return n
            return sum(1 for _ in self._matching(txn, filter, predicate, chosen))

    def explain(self, filter: Filter | None = None, sort: Sort = None, skip: int = 0, limit: int = 0) -> dict:
        """Which index a find (and a count) with these arguments uses, and why."""
        skip, limit = check_window(skip, limit)
        compile_filter(filter)
        spec = normalize_sort(sort)
        with self._backend._reading() as txn:
            if _exact_id(filter) is not None:
                out: dict[str, Any] = {"plan": "IDHACK", "index": "_id_", "sort": "none",
                                       "reason": "the filter is one _id: one lookup"}
            else:
                chosen = self._plan(txn, filter, spec, min(skip + limit, sys.maxsize) if limit else None)
                out = chosen.explain()
                if chosen.index is None and filter and equality_values(filter, "_id") is not None:
                    out["plan"] = "IDHACK"
                    out["index"] = "_id_"
                counting = self._plan(txn, filter, [], None)
                if not filter:
                    out["count"] = "stored counter" if txn.get("meta", self._count_key) is not None else "scan"
                elif counting.index is not None and counting.counted:
                    out["count"] = f"stored counters of {counting.index.name}"
                elif counting.index is not None and counting.exact and not counting.multi:
                    out["count"] = f"index entries of {counting.index.name}"
                else:
                    out["count"] = "documents checked one by one"
        return {"collection": self.name, **out}

    def iter_documents(self, filter: Filter | None = None, projection: Projection = None,
                       batch: int = 1000) -> Iterator[dict]:
        """Every match, streamed in batches of `batch` documents, each batch read in its own snapshot: for
        batch jobs (verify, gc, copy) over collections too big to hold, and safe to write between items.
        Not one snapshot: a document written meanwhile may or may not be seen, none is seen twice."""
        predicate = compile_filter(filter)
        project = compile_projection_owned(projection)  # every document here is freshly decoded
        if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
            raise InvalidArgument(f"batch must be an int >= 1, not {batch!r}")
        lo, hi = self._prefix, successor(self._prefix)
        while True:
            page: list[dict] = []
            last = None
            with self._backend._reading() as txn:
                for key, raw in txn.range("docs", lo, hi):
                    last = key
                    doc = _codec.decode(raw)
                    if predicate(doc):
                        page.append(project(doc) if projection is not None else doc)
                    if len(page) >= batch:
                        break
            # An aborted LMDB read transaction keeps its reader slot while anything refers to it: this
            # frame stays alive between items, so it must not.
            del txn
            yield from page
            if last is None or len(page) < batch:
                return
            lo = last + b"\x00"  # the next key after `last`

    def ids(self, filter: Filter | None = None) -> list[Any]:
        """The `_id` of every match, without projecting whole documents for the caller."""
        with self._backend._reading() as txn:
            return [doc["_id"] for _, doc in self._matching(txn, filter)]

    # --- writing -----------------------------------------------------------------------------------

    def insert_one(self, doc: Mapping[str, Any]) -> Any:
        doc = as_document(doc)
        if "_id" not in doc:
            doc["_id"] = new_id()
        raw = _codec.encode(doc)
        key = self._prefix + id_key(doc["_id"])

        def insert(txn: KVTxn) -> Any:
            if txn.get("docs", key) is not None:
                raise DuplicateKey(f"{self.name}: _id {doc['_id']!r} already exists")
            self._write(txn, key, None, doc, raw)
            return doc["_id"]

        return self._backend._writing(insert)

    def replace_one(self, filter: Filter, doc: Mapping[str, Any], upsert: bool = False) -> int:
        check_write(filter, upsert)
        new = as_document(doc)
        compile_filter(filter)
        _codec.check_document(new)

        exact = _exact_id(filter)

        def replace(txn: KVTxn) -> int:
            for key, old in self._by_id(txn, exact) if exact is not None else self._matching(txn, filter):
                if "_id" in new and not _same_id(new["_id"], old["_id"]):
                    raise InvalidQuery("replace_one cannot change a document's _id")
                new["_id"] = old["_id"]
                self._write(txn, key, old, new, _codec.encode(new, checked=True))
                return 1
            if upsert:
                self._upsert(txn, filter, new)
            return 0

        return self._backend._writing(replace)

    def update_one(self, filter: Filter, update: Mapping[str, Any], upsert: bool = False) -> int:
        check_write(filter, upsert=upsert)
        compile_filter(filter)
        apply = compile_update(update)

        def do_update(txn: KVTxn) -> int:
            for key, old in self._matching(txn, filter):
                new = apply(old)
                self._write(txn, key, old, new, _codec.encode(new))
                return 1
            if upsert:
                seed = {k: v for k, v in filter.items() if not k.startswith("$") and not isinstance(v, Mapping)}
                self._upsert(txn, filter, apply(seed))
            return 0

        return self._backend._writing(do_update)

    def _by_id(self, txn: KVTxn, idk: bytes) -> list[tuple[bytes, dict]]:
        """The (key, document) a filter of exactly one `_id` matches: one get, not a plan and a walk
        (a counter bumped on every save is replaced, and an entry deleted, by `_id`)."""
        key = self._prefix + idk
        raw = txn.get("docs", key)
        return [(key, _codec.decode(raw))] if raw is not None else []

    def _upsert(self, txn: KVTxn, filter: Filter, doc: dict) -> None:
        if "_id" not in doc:
            ids = equality_values(filter, "_id")
            doc["_id"] = ids[0] if ids and len(ids) == 1 else new_id()
        key = self._prefix + id_key(doc["_id"])
        if txn.get("docs", key) is not None:
            raise DuplicateKey(f"{self.name}: _id {doc['_id']!r} already exists")
        self._write(txn, key, None, doc, _codec.encode(doc))

    def delete_one(self, filter: Filter) -> int:
        return self._delete(filter, 1)

    def delete_many(self, filter: Filter) -> int:
        return self._delete(filter, 0)

    def _delete(self, filter: Filter, limit: int) -> int:
        check_write(filter)
        compile_filter(filter)

        exact = _exact_id(filter)

        def delete(txn: KVTxn) -> int:
            matches = self._by_id(txn, exact) if exact is not None else self._matching(txn, filter)
            found = list(itertools.islice(matches, limit or None))
            for key, old in found:
                self._write(txn, key, old, None, None)
            return len(found)

        return self._backend._writing(delete)

    @property
    def _count_key(self) -> bytes:
        return _COUNT_KEY + self._prefix

    def _write(self, txn: KVTxn, key: bytes, old: dict | None, new: dict | None, raw: bytes | None) -> None:
        """Put or delete one document and bring every index (and the count) along, in the caller's
        transaction."""
        idk = key[len(self._prefix) :]
        none: tuple[set[bytes], set[bytes]] = (set(), set())
        marked = False  # an ALWAYS or MULTI entry came or went: planners must look again
        for index in self._backend._indexes(txn, self.name):
            before, was_counted = index.filing(old, idk) if old is not None else none
            after, counted = index.filing(new, idk) if new is not None else none
            if before == after:
                continue
            cut = len(index.prefix)
            for entry in before - after:
                txn.delete("index", entry)
                marked = marked or entry[cut] < 3  # ALWAYS (1) or MULTI (2); a value component is >= 0x10
            for entry in after - before:
                if index.unique:
                    self._check_unique(txn, index, entry, idk)
                txn.put("index", entry, _id_length(idk))
                marked = marked or entry[cut] < 3
            for value_prefix in was_counted - counted:
                _uncount(txn, index, value_prefix)
            for value_prefix in counted - was_counted:
                _count(txn, index, value_prefix)
        if marked:
            new_plan_token(txn)
        if new is None:
            txn.delete("docs", key)
        else:
            assert raw is not None
            txn.put("docs", key, raw)
        if (old is None) != (new is None):
            stored = txn.get("meta", self._count_key)
            if stored is not None:
                txn.put("meta", self._count_key, _pack(int(msgpack.unpackb(stored)) + (1 if old is None else -1)))

    def _check_unique(self, txn: KVTxn, index: Index, entry: bytes, idk: bytes) -> None:
        values_part = entry[: len(entry) - len(idk)]
        if len(values_part) <= len(index.prefix) + 1 and values_part[len(index.prefix):] in (b"\x01", b"\x02"):
            return  # a marker entry (ALWAYS, MULTI), not a value
        for other, _ in txn.range("index", values_part, successor(values_part)):
            if other[len(values_part):] != idk:
                raise DuplicateKey(f"{self.name}: duplicate key for unique index {index.name}")

    def _build(self, txn: KVTxn, index: Index) -> None:
        """File every document under a new index, in the caller's transaction (all or nothing)."""
        for key, raw in txn.scan("docs", self._prefix):
            idk = key[len(self._prefix) :]
            entries, counted = index.filing(_codec.decode(raw), idk)
            for entry in entries:
                if index.unique:
                    self._check_unique(txn, index, entry, idk)
                txn.put("index", entry, _id_length(idk))
            for value_prefix in counted:
                _count(txn, index, value_prefix)

    def _drop_entries(self, txn: KVTxn, prefix: bytes) -> None:
        doomed = [k for k, _ in txn.scan("index", prefix, values=False)]
        for k in doomed:
            txn.delete("index", k)

    def _current(self, txn: KVTxn) -> bool:
        """Whether this collection's indexes are all of the current format and its count is kept."""
        specs = self._backend._index_specs(txn).get(self.name, [])
        return all(spec.get("v") == _FORMAT for spec in specs) and txn.get("meta", self._count_key) is not None

    def _upgrade(self, txn: KVTxn, specs: dict[str, list[dict]]) -> None:
        """Rebuild indexes written in an older entry format, and start the document count."""
        for spec in specs.get(self.name, []):
            if spec.get("v") != _FORMAT:
                index = Index(self._prefix, spec)
                self._drop_entries(txn, index.prefix)
                spec["v"] = _FORMAT
                self._build(txn, Index(self._prefix, spec))
        if txn.get("meta", self._count_key) is None:
            end = successor(self._prefix)
            txn.put("meta", self._count_key, _pack(txn.count_range("docs", self._prefix, end)))

    def create_index(self, keys: Sequence[tuple[str, int]] | str | Mapping[str, int], unique: bool = False,
                     name: str | None = None) -> str:
        """Create (or find) an index; built over the existing documents in one transaction, so a crash
        mid-build leaves no index at all. The same keys under another name, or another index under
        this name, is InvalidArgument."""
        fields, name = check_index_spec(keys, name, unique)
        spec = {"name": name, "keys": [list(k) for k in fields], "unique": bool(unique), "v": _FORMAT}

        def same(existing: Mapping[str, Any]) -> bool:
            return [tuple(k) for k in existing["keys"]] == fields and bool(existing.get("unique")) == unique

        def check(mine: list[dict]) -> bool:
            for existing in mine:
                if existing["name"] == name:
                    if not same(existing):
                        raise InvalidArgument(f"{self.name}: an index named {name!r} exists with other keys "
                                              f"{[tuple(k) for k in existing['keys']]}")
                    return True
            for existing in mine:
                if same(existing):
                    raise InvalidArgument(f"{self.name}: the index {existing['name']!r} has these keys already")
            return False

        with self._backend._reading() as txn:  # every Store open asks: answer without a write (and fsync)
            if check(self._backend._index_specs(txn).get(self.name, [])) and self._current(txn):
                return name

        def create(txn: KVTxn) -> str:
            specs = self._backend._index_specs(txn)
            self._upgrade(txn, specs)
            mine = specs.setdefault(self.name, [])
            if not check(mine):
                mine.append(spec)
                self._build(txn, Index(self._prefix, spec))
            put_specs(txn, specs)
            return name

        return self._backend._writing(create)

    def drop_index(self, name: str) -> None:
        """Remove an index and its entries; InvalidArgument if there is none of that name."""
        if not isinstance(name, str):
            raise InvalidArgument(f"an index name is a str, not {type(name).__name__}")

        def drop(txn: KVTxn) -> None:
            specs = self._backend._index_specs(txn)
            mine = specs.get(self.name, [])
            found = [spec for spec in mine if spec["name"] == name]
            if not found:
                known = ", ".join(spec["name"] for spec in mine) or "none"
                raise InvalidArgument(f"{self.name}: no index named {name!r} (indexes: {known})")
            specs[self.name] = [spec for spec in mine if spec["name"] != name]
            self._drop_entries(txn, Index(self._prefix, found[0]).prefix)
            put_specs(txn, specs)

        self._backend._writing(drop)

    def list_indexes(self) -> list[dict[str, Any]]:
        with self._backend._reading() as txn:
            specs = self._backend._index_specs(txn).get(self.name, [])
        return [{"name": s["name"], "key": [(f, int(d)) for f, d in s["keys"]], "unique": bool(s.get("unique"))}
                for s in specs]

    def index_information(self) -> dict[str, dict]:
        return {spec["name"]: {"key": spec["key"], "unique": spec["unique"]} for spec in self.list_indexes()}


def put_specs(txn: KVTxn, specs: Mapping[str, list[dict]]) -> None:
    """Store the index specs; every planner of the file (any process) sees them change."""
    txn.put("meta", _INDEXES_KEY, _pack(specs))
    new_plan_token(txn)


def new_plan_token(txn: KVTxn) -> None:
    """A fresh `plan` token, in the transaction that changed the indexes or their markers: random, so a
    token of a transaction that rolled back is never seen again."""
    txn.put("meta", _PLAN_KEY, os.urandom(8))


def _count(txn: KVTxn, index: Index, value_prefix: bytes) -> None:
    """One more document under a value prefix (its entries already written). A counter is kept only from
    two documents on: most values of a timestamp or id index have one, and a key for each would cost
    as much room as the entries."""
    counter = index.counter_key(value_prefix)
    raw = txn.get("index", counter)
    if raw is not None:  # a value already shared (a missing field, a type): no need to count its entries
        txn.put("index", counter, (int.from_bytes(raw, "big") + 1).to_bytes(8, "big"))
        return
    if _documents_under(txn, index, value_prefix) >= 2:  # most values of most indexes: one probe, then no counter
        txn.put("index", counter, (2).to_bytes(8, "big"))


def _documents_under(txn: KVTxn, index: Index, value_prefix: bytes) -> int:
    """Documents under a value prefix, up to 2. A one-field index has one entry per document and value:
    its keys are counted in the engine, not walked in Python."""
    if len(index.fields) == 1:
        lo = index.prefix + value_prefix
        return txn.count_range("index", lo, successor(lo), 2)
    return documents_under(txn, index, value_prefix, 2)


def _uncount(txn: KVTxn, index: Index, value_prefix: bytes) -> None:
    """One document fewer under a value prefix; below two, its counter goes."""
    counter = index.counter_key(value_prefix)
    raw = txn.get("index", counter)
    if raw is None:
        return
    n = int.from_bytes(raw, "big") - 1
    if n >= 2:
        txn.put("index", counter, n.to_bytes(8, "big"))
    else:
        txn.delete("index", counter)


def _plain_field(path: str) -> bool:
    """A top-level field name an index files exactly (no dotted path, no operator)."""
    return bool(path) and "." not in path and not path.startswith("$") and "\x00" not in path


def _id_length(idk: bytes) -> bytes:
    """An index entry's value: how many of its key's last bytes are the id key (at most 160 + 2)."""
    return bytes((len(idk),))


def _exact_id(filter: Filter | None) -> bytes | None:
    """The id key when the filter is exactly {"_id": <str or int>}; None otherwise, and for anything
    the filter compiler must judge first (not a dict, or an id no key can hold, on which the fast path would
    raise a bare AttributeError, OverflowError or UnicodeEncodeError)."""
    if not isinstance(filter, Mapping) or len(filter) != 1:
        return None
    value = filter.get("_id")
    if isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
        try:
            return id_key(value)
        except InvalidArgument:
            return None
    return None


def _same_id(a: Any, b: Any) -> bool:
    try:
        return id_key(a) == id_key(b)
    except InvalidArgument:
        return False


class KVChunkStore:
    """File chunks under pack(file_id) + chunk number, so one file's chunks are one key range."""

    def __init__(self, backend: KVBackend) -> None:
        self._backend = backend

    @staticmethod
    def _file_key(file_id: Any) -> bytes:
        try:
            raw = _pack(file_id)
        except (OverflowError, ValueError, TypeError) as exc:  # > 64 bits, a lone surrogate, a set...
            raise InvalidArgument(f"file id {file_id!r:.100} cannot be stored: {exc}") from None
        if len(raw) > _MAX_ID_KEY:
            raise InvalidArgument("file ids are at most 160 bytes when packed")
        return raw

    def put(self, file_id: Any, n: int, data: bytes | memoryview) -> None:
        key = self._file_key(file_id) + n.to_bytes(4, "big")
        self._backend._writing(lambda txn: txn.put("chunks", key, data), size_hint=len(data))

    def put_many(self, file_id: Any, first: int, chunks: Sequence[bytes | memoryview]) -> None:
        """Several chunks in one transaction: one commit (and fsync) per batch, not per chunk."""
        fk = self._file_key(file_id)

        def put_all(txn: KVTxn) -> None:
            for i, data in enumerate(chunks, first):
                txn.put("chunks", fk + i.to_bytes(4, "big"), data)

        # Not yet referenced by any document: losing this commit in an OS crash loses nothing visible.
        self._backend._writing(put_all, size_hint=sum(len(c) for c in chunks), durable=False)

    def get(self, file_id: Any, n: int) -> bytes | None:
        key = self._file_key(file_id) + n.to_bytes(4, "big")
        with self._backend._reading() as txn:
            return txn.get("chunks", key)

    def read_joined(self, file_id: Any, parts: list[tuple[int, int, int, int]]) -> bytes:
        """Slices of several chunks joined straight from storage: one copy, one read transaction."""
        fk = self._file_key(file_id)
        with self._backend._reading() as txn:
            pieces = []
            for n, start, stop, expected in parts:
                data = checked_chunk(file_id, n, txn.view("chunks", fk + n.to_bytes(4, "big")), expected)
                pieces.append(memoryview(data)[start:stop])
            return b"".join(pieces)

    def count(self, file_id: Any) -> int:
        fk = self._file_key(file_id)
        with self._backend._reading() as txn:
            return sum(1 for key, _ in txn.scan("chunks", fk, values=False) if len(key) == len(fk) + 4)

    def delete(self, file_id: Any) -> int:
        fk = self._file_key(file_id)

        def delete_all(txn: KVTxn) -> int:
            keys = [key for key, _ in txn.scan("chunks", fk, values=False) if len(key) == len(fk) + 4]
            for key in keys:
                txn.delete("chunks", key)
            return len(keys)

        return self._backend._writing(delete_all)

    def file_ids(self, batch: int = 1000) -> Iterator[Any]:
        """Every file id that has chunks, in key order, streamed: `batch` ids per read snapshot (a store
        of a million files is not listed in memory), safe to delete chunks between items."""
        lo = b""
        last_fk = None
        while True:
            page: list[bytes] = []
            last_key = None
            with self._backend._reading() as txn:
                for key, _ in txn.range("chunks", lo, None):
                    last_key = key
                    fk = key[:-4]
                    if fk != last_fk:
                        last_fk = fk
                        page.append(fk)
                        if len(page) >= batch:
                            break
            del txn  # its reader slot, as in KVCollection.iter_documents
            for fk in page:
                yield msgpack.unpackb(fk, raw=False, timestamp=3)
            if last_key is None or len(page) < batch:
                return
            lo = last_key + b"\x00"


class _Snapshot:
    """`with backend.snapshot():` (a class: it runs on every get). Inside a write transaction or an outer
    snapshot it adds nothing; writes inside it run in their own transactions, as anywhere."""

    __slots__ = ("_backend", "_scope")

    def __init__(self, backend: KVBackend) -> None:
        self._backend = backend
        self._scope: AbstractContextManager[KVTxn] | None = None

    def __enter__(self) -> None:
        local = self._backend._local
        if getattr(local, "txn", None) is None and getattr(local, "snapshot", None) is None:
            scope = self._backend._engine.read()
            local.snapshot = scope.__enter__()
            self._scope = scope

    def __exit__(self, *exc_info: Any) -> None:
        scope, self._scope = self._scope, None
        if scope is not None:
            self._backend._local.snapshot = None
            scope.__exit__(*exc_info)


class KVBackend:
    """A Backend over a KVEngine. Writes inside `atomic()` join its transaction (per thread)."""

    transactional = True
    # Measured on LMDB: 1 MiB chunks save 256 MiB ~8% faster than GridFS's 255 KiB, at equal speed
    # for 1 MiB objects (fewer, larger overflow-page runs).
    chunk_size = 1024 * 1024

    def __init__(self, engine: KVEngine, uri: str) -> None:
        self._engine = engine
        self.uri = uri
        self._local = threading.local()
        self._collections: dict[str, KVCollection] = {}
        self._chunks = KVChunkStore(self)
        # (raw specs as last read from the file, parsed); replaced whole so threads never see a mix
        self._specs: tuple[bytes | None, dict[str, list[Index]]] = (None, {})
        # (plan token, {index prefix: (has ALWAYS, has MULTI)} learnt under it); replaced whole, as above
        self._marker_cache: tuple[bytes | None, dict[bytes, tuple[bool, bool]]] = (None, {})

    @property
    def engine(self) -> KVEngine:
        return self._engine

    @property
    def closed(self) -> bool:
        return self._engine.closed

    def space(self) -> Space | None:
        """The engine's `Space` (room left, map limit) where it keeps a file, else None (in memory)."""
        space = getattr(self._engine, "space", None)
        return space() if callable(space) else None

    def collection(self, name: str) -> KVCollection:
        coll = self._collections.get(name)
        if coll is None:
            coll = self._collections[name] = KVCollection(self, name)
        return coll

    @property
    def chunks(self) -> KVChunkStore:
        return self._chunks

    def atomic(self, fn: Callable[[], T], *, size_hint: int = 0) -> T:
        return self._writing(lambda txn: fn(), size_hint=size_hint)

    def compact(self) -> tuple[str, int, int]:
        """(file, bytes before, bytes after) of rewriting the engine's file compacted, in place."""
        compact = getattr(self._engine, "compact", None)
        if compact is None:
            raise UnsupportedOperation(f"{self.uri}: nothing to compact (the store lives in this process's "
                                       "memory, not in a file)")
        before, after = compact()
        return self._engine.path, before, after  # type: ignore[attr-defined]

    def close(self) -> None:
        self._engine.close()

    # --- transactions bound to the calling thread ---------------------------------------------------

    def snapshot(self) -> AbstractContextManager[None]:
        """Every read of this thread inside the block shares one read transaction: one consistent view
        (an object, its file and its chunks as of one moment) for the price of one begin."""
        return _Snapshot(self)

    def _reading(self) -> AbstractContextManager[KVTxn]:
        """The calling thread's write transaction or snapshot if it is inside one, else a new read one."""
        local = self._local
        txn = getattr(local, "txn", None) or getattr(local, "snapshot", None)
        if txn is not None:
            return nullcontext(txn)
        return self._engine.read()

    def _writing(self, fn: Callable[[KVTxn], T], *, size_hint: int = 0, durable: bool = True) -> T:
        txn = getattr(self._local, "txn", None)
        if txn is not None:
            return fn(txn)

        def bound(txn: KVTxn) -> T:
            self._local.txn = txn
            try:
                return fn(txn)
            finally:
                self._local.txn = None

        return self._engine.write(bound, size_hint=size_hint, durable=durable)

    # --- index specs, shared through the file -------------------------------------------------------

    def _index_specs(self, txn: KVTxn) -> dict[str, list[dict]]:
        raw = txn.get("meta", _INDEXES_KEY)
        return _codec.decode(raw) if raw is not None else {}

    def _markers(self, txn: KVTxn) -> Callable[[Index], tuple[bool, bool]]:
        """(has ALWAYS entries, has MULTI entries) of an index as of this snapshot: two cursor probes the
        first time under a plan token, then a dict lookup, until an index or a marker changes (in this
        process or another: the token is read in the same snapshot). A file with no token yet (written
        by an older version, and opened without a write: it may be read-only) is probed every time, until
        its next index or marker change writes one."""
        token = txn.get("meta", _PLAN_KEY)
        if token is None:
            return lambda index: index.markers(txn)
        cached_token, cache = self._marker_cache
        if cached_token != token:
            cache = {}
            self._marker_cache = (token, cache)

        def markers(index: Index) -> tuple[bool, bool]:
            found = cache.get(index.prefix)
            if found is None:
                found = cache[index.prefix] = index.markers(txn)
            return found

        return markers

    def _indexes(self, txn: KVTxn, collection: str) -> list[Index]:
        """The collection's indexes of the current entry format (an older one is ignored until rebuilt)."""
        raw = txn.get("meta", _INDEXES_KEY)
        raw = bytes(raw) if raw is not None else None
        cached_raw, parsed = self._specs
        if raw != cached_raw:
            specs = _codec.decode(raw) if raw is not None else {}
            parsed = {name: [Index(_pack(name), spec) for spec in of if spec.get("v") == _FORMAT]
                      for name, of in specs.items()}
            self._specs = (raw, parsed)
        return parsed.get(collection, [])
