"""Hypothesis fuzz of the public store API with wrong types and odd values (issue 5; docs/ARCHITECTURE.md, "Objects
and versions", "Testing").

What it proves, on both embedded backends (a real LMDB file and memory://):

- Typed errors only. Every public call (`connect`, the object API and its Flowcept aliases, the ml_model
  and dataset helpers, `query`/`blob_object_query`/`count_objects`, the files bucket, `Workflow`,
  `verify`, `gc`, `copy`) either succeeds or raises a `microblob.MicroblobError`: never a bare
  TypeError/KeyError/ValueError/RecursionError/OverflowError, a msgpack or lmdb exception, or a crash.
  Arguments come from a pool of odd values: 513-character and 1 MiB strings, NUL, '/', '..', lone
  surrogates, ints beyond 64 bits, NaN/inf, 200- and 10,000-level and cyclic nesting, `$` and dotted
  keys, bytes-like subclasses, non-contiguous and multi-dimensional memoryviews, sets, generators,
  text-mode and closed files, operator documents where ids belong, skip/limit beyond 64 bits.
- Nothing is left behind. After every call no transaction or engine lock is still held, checked while the
  exception (and the traceback that would pin an LMDB read transaction) is still alive; after every
  step `verify()` is clean, no chunk lacks a files document, no upload lease is left, and `gc()` finds
  nothing to free.
- Model-based. `StoreMachine` (a RuleBasedStateMachine) saves, updates, reads, queries, deletes, uploads
  files, runs workflows, gc and copy with a mix of good and bad arguments, and keeps a model of every
  readable version. A call whose arguments are all valid must succeed; one with an invalid argument must
  raise InvalidArgument and change nothing. After every step every object, every readable version (bytes
  and metadata, compared strictly: True is not 1, NaN is NaN, -0.0 is not 0.0) and every history listing
  equals the model, `verify()` checks exactly the model's versions, every stored document is one that
  MongoDB could store (`bson.encode`, at most 16 MiB), and on LMDB the model survives closing and
  re-opening the file.

- BSON's sizes. The document check computes exactly `len(bson.encode(doc))` (so the 16 MiB limit is
  MongoDB's), for random documents and for str/bytes subclasses that misreport their length.

Sizes: per backend 60 state-machine runs of up to 25 steps (about 1,500-3,000 calls) and 1,000 sweep
calls, plus 300 connect() calls and 150 documents: 20-30 s on two shared cores (keep it under a minute).
Run with -s to see how many calls of each function succeeded or raised what. The seed is hypothesis's:
a failure prints it, and @reproduce_failure replays it. Every bug this file found is pinned by a small
regression test in the file that fits it (test_errors.py, test_files.py, test_objects.py,
test_lmdb_engine.py), each saying "found by tests/test_store_fuzz.py".
"""

from __future__ import annotations

import array
import collections
import contextlib
import datetime as dt
import hashlib
import io
import math
import mimetypes
import os
import types
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bson
import pytest
from _hypothesis_budget import examples
from conftest import TEST_CHUNK_SIZE, open_store
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

import microblob
from microblob import (
    DuplicateKey,
    FileNotFound,
    InvalidArgument,
    MicroblobError,
    NotFound,
    ObjectNotFound,
    StoreClosed,
    VersionNotFound,
)
from microblob.engine.kv import MemoryEngine
from microblob.engine.lmdb_kv import LmdbEngine

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
BSON_LIMIT = 16 * 1024 * 1024
UTC = dt.timezone.utc
FUZZ = settings(deadline=None, suppress_health_check=list(HealthCheck), print_blob=True)


# --- odd values that print short -------------------------------------------------------------------------


class Huge(str):
    """A long string whose repr stays readable in hypothesis's report."""

    def __repr__(self) -> str:
        return f"<{len(self)}-char str>"

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(repr(self))


class Deep(dict):
    """`levels` nested dicts (or lists); its repr does not recurse (printing 10,000 levels would)."""

    levels = 0

    def __repr__(self) -> str:
        return f"<{self.levels}-level nesting>"

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(repr(self))


class LongList(list):
    """A long list that prints short."""

    def __repr__(self) -> str:
        return f"<list of {len(self)}>"

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(repr(self))


def deep(levels: int, *, lists: bool = False, key: str = "x") -> Deep:
    inner: Any = 1
    for _ in range(levels - 1):
        inner = [inner] if lists else {key: inner}
    top = Deep({key: inner})
    top.levels = levels
    return top


def nest(levels: int, wrap: Callable[[Any], Any]) -> Deep:
    """`wrap` applied `levels` times (e.g. 10,000 nested `$and`s), in a Deep so it prints short."""
    inner: Any = {"a": 1}
    for _ in range(levels - 1):
        inner = wrap(inner)
    top = Deep(wrap(inner))
    top.levels = levels
    return top


def cyclic() -> Deep:
    top = Deep()
    top.levels = -1
    top["self"] = top
    return top


class LyingBytes(bytes):
    """A bytes subclass that misreports its length and its bytes(): what is stored is its buffer."""

    def __len__(self) -> int:
        return 0

    def __bytes__(self) -> bytes:
        return b"a lie"


class Label:
    """A value made fresh for each call (files, streams, generators), shown by name."""

    def __init__(self, name: str, make: Callable[[Ctx], Any]) -> None:
        self.name = name
        self.make = make

    def __repr__(self) -> str:
        return self.name


@dataclass
class Ctx:
    """Where fresh values live: a directory for files, and what to close afterwards."""

    directory: Path
    opened: list[Any] = field(default_factory=list)

    def file(self, data: bytes, suffix: str = ".bin") -> Path:
        path = self.directory / f"payload-{uuid.uuid4().hex[:8]}{suffix}"
        path.write_bytes(data)
        return path

    def open(self, path: Path, mode: str) -> Any:
        handle = open(path, mode)  # noqa: SIM115 - closed by close()
        self.opened.append(handle)
        return handle

    def close(self) -> None:
        for handle in self.opened:
            handle.close()
        for path in self.directory.glob("payload-*"):
            path.unlink()
        self.opened.clear()


def resolve(value: Any, ctx: Ctx) -> Any:
    return value.make(ctx) if isinstance(value, Label) else value


class Trickle:
    """A binary reader that returns at most 1000 bytes per read, as bytearray."""

    def __init__(self, data: bytes) -> None:
        self._stream = io.BytesIO(data)

    def read(self, n: int = -1) -> bytearray:
        return bytearray(self._stream.read(min(n, 1000) if n >= 0 else 1000))


class BadReader:
    """A reader whose read() returns something that is not bytes. (An error a source raises itself is the
    caller's and propagates as it is: tests/test_files.py pins that.)"""

    def __init__(self, result: Any) -> None:
        self._result = result

    def read(self, n: int = -1) -> Any:
        return self._result


def _closed(handle: Any) -> Any:
    handle.close()
    return handle


# --- argument strategies: every drawn argument says whether the API must accept it ----------------------


@dataclass(frozen=True)
class Arg:
    value: Any
    good: bool

    def __repr__(self) -> str:
        return f"{'good' if self.good else 'BAD'}:{self.value!r}"


def good(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Arg]:
    return _tagged(strategy.map(lambda v: Arg(v, True)), True)


def bad(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Arg]:
    return _tagged(strategy.map(lambda v: Arg(v, False)), False)


def _tagged(strategy: st.SearchStrategy[Arg], is_good: bool) -> st.SearchStrategy[Arg]:
    strategy._fuzz_good = is_good  # type: ignore[attr-defined]
    return strategy


BAD_SHARE = 8  # percent of arguments drawn bad: a call passes several, and about half the calls should get through


def mix(*branches: st.SearchStrategy[Arg]) -> st.SearchStrategy[Arg]:
    """Good and bad branches (made with good()/bad()), the bad ones drawn BAD_SHARE percent of the time.
    Shrinking moves towards the good ones."""
    goods = [b for b in branches if getattr(b, "_fuzz_good", True)]
    bads = [b for b in branches if not getattr(b, "_fuzz_good", True)]
    good_part, bad_part = st.one_of(goods), st.one_of(bads)
    if not bads:
        return good_part
    if not goods:
        return bad_part
    return st.integers(0, 99).flatmap(lambda n: bad_part if n >= 100 - BAD_SHARE else good_part)


# Text that is valid Unicode (no lone surrogates); NUL, '$', '.' and '/' are all fine in values.
TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
SURROGATE_STRINGS = ["\ud800", "a\udcffb", "\udfff\ud800", "x\udc80"]
MIB_STRING = Huge("m" * (1 << 20))

ID_CHARS = st.characters(exclude_categories=("Cs",), exclude_characters="\x00/")
GOOD_IDS = st.one_of(
    st.text(ID_CHARS, min_size=1, max_size=24).filter(lambda s: s not in (".", "..")),
    st.sampled_from(["a", "...", "a..b", "a:1", "$gt", "a.b", " ", "é😀", "id-with-\n-newline"]),
    st.just(Huge("i" * 512)),
)
BAD_IDS = st.one_of(
    st.sampled_from(["", ".", "..", "a/b", "/", "../etc", "a\x00b", "\x00"]),
    st.sampled_from(SURROGATE_STRINGS),
    st.just(Huge("i" * 513)),
    st.just(MIB_STRING),
    st.sampled_from([0, 5, -1, 1.5, True, b"id", bytearray(b"id"), ["a"], ("a",), {"$gt": ""}, {"$ne": None}]),
    st.just(frozenset({"a"})),
)

OPTIONAL_STR = mix(
    good(st.none() | TEXT | st.just(Huge("s" * 4096)) | st.just("")),
    bad(st.sampled_from(SURROGATE_STRINGS) | st.just(Huge("s" * 4097)) | st.just(MIB_STRING)),
    bad(st.sampled_from([5, 1.5, True, b"bytes", ["list"], {"a": 1}])),
)
BOOLS = mix(good(st.booleans()), bad(st.sampled_from([0, 1, None, "yes", "False", 1.0, []])))
CONTENT_TYPES = mix(
    good(st.sampled_from([None, "image/png", "application/octet-stream", "text/plain; charset=utf-8"])),
    bad(st.sampled_from(["", "png", "image/", "/png", "a/b/c", 5, b"image/png", ["image/png"], "\ud800/png"])),
    bad(st.just("text/plain; charset=\ud800")),
)
TAGS = mix(
    good(st.none() | st.lists(TEXT, max_size=4) | st.lists(TEXT, max_size=3).map(tuple)),
    good(st.just([Huge("t" * 4096)])),
    bad(st.sampled_from(["tag", b"tag", 5, {"a": 1}, [1], [None], ["ok", b"b"], ["\ud800"]])),
    bad(st.just([Huge("t" * 4097)])),
    bad(st.builds(lambda: (t for t in ["a", "b"]))),
)
VERSIONS_GOOD = st.one_of(st.none(), st.integers(0, 4), st.sampled_from([INT64_MAX, 2**64, 2**100]))
VERSIONS_BAD = st.sampled_from([-1, -(2**70), 1.0, True, False, "0", float("nan"), float("inf"), [0], b"0"])
WINDOW = mix(
    good(st.integers(0, 4) | st.just(INT64_MAX)),
    bad(st.sampled_from([-1, -(2**70), 1.5, True, "1", None, 2**63, 2**64, 2**100, [1]])),
)

# Metadata values: BSON's value rules. Good leaves include NaN, inf, -0.0, 64-bit extremes, NUL in
# strings, bytes, naive and aware datetimes; keys may start with '$' or contain dots (stored literally).
KEYS = st.one_of(
    st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=8),
    st.sampled_from(["$set", "$gt", "$", "a.b", ".", "", "_id", "$where", "..", "a.$.b"]),
)
GOOD_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(INT64_MIN, INT64_MAX),
    st.sampled_from([INT64_MIN, INT64_MAX, 2**31, -(2**31) - 1]),
    st.floats(),
    TEXT,
    st.binary(max_size=12),
    st.datetimes(timezones=st.none() | st.just(UTC)).map(lambda d: d.replace(microsecond=d.microsecond // 1000 * 1000)),
)
GOOD_VALUES = st.recursive(
    GOOD_LEAVES,
    lambda children: st.lists(children, max_size=4)
    | st.lists(children, max_size=3).map(tuple)
    | st.dictionaries(KEYS, children, max_size=4),
    max_leaves=12,
)
GOOD_META = st.dictionaries(KEYS, GOOD_VALUES, max_size=5)
BAD_VALUES = st.one_of(
    st.sampled_from([2**63, INT64_MIN - 1, 2**100, -(2**200), 1 + 2j, {1, 2}, frozenset(), bytearray(b"x")]),
    st.sampled_from(SURROGATE_STRINGS),
    st.sampled_from([{b"k": 1}, {1: 2}, {None: 1}, {("t",): 1}, {"a\x00b": 1}, {"\ud800": 1}]),
    st.sampled_from([range(3), memoryview(b"x"), types.MappingProxyType({"a": 1}), object(), Path("p")]),
    st.sampled_from([deep(101), deep(200), deep(10_000, lists=True), deep(10_000)]),
    st.builds(cyclic),
    st.builds(lambda: (x for x in [1])),
)


def _inject(meta: dict[str, Any], key: str, value: Any, where: str) -> dict[str, Any]:
    out = dict(meta)
    out[key] = value if where == "top" else [1, value] if where == "list" else {"inner": value}
    return out


METADATA = mix(
    good(st.none() | GOOD_META),
    good(GOOD_META.map(collections.OrderedDict) | GOOD_META.map(types.MappingProxyType)),
    good(st.just({"big": MIB_STRING, "many": LongList(range(20_000))})),
    bad(st.builds(_inject, GOOD_META, KEYS, BAD_VALUES, st.sampled_from(["top", "list", "dict"]))),
    bad(st.sampled_from(["meta", b"{}", 5, [("a", 1)], {"a"}, 1.5])),
    bad(st.sampled_from([deep(200), deep(10_000)])),
)


def normalize(value: Any) -> Any:
    """What the store gives back for a value it accepted: tuples as lists, mappings as dicts, naive
    datetimes as UTC."""
    if isinstance(value, Mapping):
        return {k: normalize(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [normalize(v) for v in value]
    if isinstance(value, dt.datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def same(a: Any, b: Any) -> bool:
    """Strict equality: types must agree (True is not 1, 1.0 is not 1), NaN equals NaN, -0.0 is not 0.0,
    and dict keys must come in the same order."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, float) or isinstance(b, float):
        if not (isinstance(a, float) and isinstance(b, float)):
            return False
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    if isinstance(a, Mapping) or isinstance(b, Mapping):
        if not (isinstance(a, Mapping) and isinstance(b, Mapping)) or list(a) != list(b):
            return False
        return all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) or isinstance(b, list):
        return isinstance(a, list) and isinstance(b, list) and len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, (int, str, bytes)) or isinstance(b, (int, str, bytes)):
        kind = int if isinstance(a, int) else str if isinstance(a, str) else bytes
        return isinstance(b, kind) and a == b
    return type(a) is type(b) and a == b


# --- payloads: what the object API and the files bucket accept ------------------------------------------


@dataclass(frozen=True)
class Payload:
    """`make(ctx)` gives the object to pass; `data` is what save_or_update_object stores (None: it must
    refuse), `file_data` what files.upload_from_stream stores (None: it must refuse)."""

    name: str
    make: Callable[[Ctx], Any]
    data: bytes | None
    file_data: bytes | None
    content_type: str | None = None

    def __repr__(self) -> str:
        size = "" if self.data is None else f" ({len(self.data)} B)"
        return f"{self.name}{size}"


def _interleaved(data: bytes) -> memoryview:
    """A non-contiguous view whose content is `data`."""
    return memoryview(bytes(b for x in data for b in (x, 0)))[::2]


def _good_payloads(data: bytes) -> list[Payload]:
    even = data[: len(data) // 2 * 2]
    out = [
        Payload("bytes", lambda c: data, data, data),
        Payload("bytearray", lambda c: bytearray(data), data, data),
        Payload("memoryview", lambda c: memoryview(data), data, data),
        Payload("non-contiguous memoryview", lambda c: _interleaved(data), data, data),
        Payload("LyingBytes", lambda c: LyingBytes(data), data, data),
        Payload("array('H') memoryview", lambda c: memoryview(array.array("H", even)), even, even),
        Payload("BytesIO", lambda c: io.BytesIO(data), data, data),
        Payload("binary file", lambda c: c.open(c.file(data), "rb"), data, data),
        Payload("trickling reader", lambda c: Trickle(data), data, data),
        Payload("Path (.png)", lambda c: c.file(data, ".png"), data, None, "image/png"),
        Payload("Path (.bin)", lambda c: c.file(data, ".bin"), data, None,
                mimetypes.guess_type("x.bin", strict=False)[0]),
        Payload("Blob", lambda c: microblob.Blob(data, "image/png"), data, None, "image/png"),
        Payload("list of byte strings", lambda c: [data[:3], data[3:]], None, data),
        Payload("generator of byte strings", lambda c: (p for p in [data[:5], data[5:]]), None, data),
    ]
    if even:
        out.append(Payload("2-D memoryview", lambda c: memoryview(even).cast("B", (2, len(even) // 2)), even, even))
    return out


BAD_PAYLOADS = [
    Payload("str", lambda c: "text is ambiguous", None, None),
    Payload("None", lambda c: None, None, None),
    Payload("int", lambda c: 42, None, None),
    Payload("float nan", lambda c: float("nan"), None, None),
    Payload("dict", lambda c: {"a": b"x"}, None, None),
    Payload("set of str", lambda c: {"a"}, None, None),
    Payload("object()", lambda c: object(), None, None),
    Payload("StringIO", lambda c: io.StringIO("text"), None, None),
    Payload("text-mode file", lambda c: c.open(c.file(b"text"), "r"), None, None),
    Payload("closed binary file", lambda c: _closed(open(c.file(b"data"), "rb")), None, None),  # noqa: SIM115
    Payload("closed text file", lambda c: _closed(open(c.file(b"data"))), None, None),  # noqa: SIM115
    Payload("closed BytesIO", lambda c: _closed(io.BytesIO(b"data")), None, None),
    Payload("missing Path", lambda c: c.directory / "missing.bin", None, None),
    Payload("directory Path", lambda c: c.directory, None, None),
    Payload("Path with NUL", lambda c: c.directory / "a\x00b", None, None),
    Payload("Path with a lone surrogate", lambda c: c.directory / "\ud800.bin", None, None),
    Payload("reader returning str", lambda c: BadReader("text"), None, None),
    Payload("reader returning int", lambda c: BadReader(5), None, None),
    Payload("generator of str", lambda c: (s for s in ["a", "b"]), None, None),
    Payload("list with a str", lambda c: [b"a", "b"], None, None),
]

PAYLOAD_BYTES = st.one_of(
    st.binary(max_size=64),
    st.tuples(st.binary(min_size=1, max_size=8), st.sampled_from([TEST_CHUNK_SIZE, 2 * TEST_CHUNK_SIZE + 1])).map(
        lambda t: (t[0] * (t[1] // len(t[0]) + 1))[: t[1]]
    ),
)
PAYLOADS = st.integers(0, 99).flatmap(
    lambda n: st.sampled_from(BAD_PAYLOADS) if n >= 100 - BAD_SHARE
    else PAYLOAD_BYTES.flatmap(lambda data: st.sampled_from(_good_payloads(data)))
)


# --- calling: typed errors only, nothing left open ------------------------------------------------------


CALLS: collections.Counter[str] = collections.Counter()  # "function: outcome", printed by each test


def report(title: str) -> None:
    """What the calls did (shown with -s or on failure): proof that both good and bad paths ran."""
    print(f"\n{title}: {sum(CALLS.values())} calls")
    for key, count in sorted(CALLS.items()):
        print(f"  {count:6d}  {key}")
    CALLS.clear()


@dataclass
class Outcome:
    value: Any = None
    error: MicroblobError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def assert_no_transaction_left(store: microblob.Store) -> None:
    """No read or write transaction, and no engine lock, outlives a call (even while its exception and
    traceback are alive): a pinned LMDB reader would block the next map growth forever."""
    backend = store.backend
    assert getattr(backend._local, "txn", None) is None, "a write transaction is still bound to this thread"
    assert getattr(backend._local, "snapshot", None) is None, "a read snapshot is still bound to this thread"
    engine = backend.engine
    if isinstance(engine, LmdbEngine) and engine._shared is not None:
        shared = engine._shared
        assert shared.rw.holders == 0, f"{shared.rw.holders} thread(s) still hold an LMDB transaction"
        assert not shared.write_lock.locked(), "the LMDB write lock is still held"
    elif isinstance(engine, MemoryEngine):
        assert not engine._lock._is_owned(), "the memory engine's lock is still held"  # type: ignore[attr-defined]


def call(store: microblob.Store, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Outcome:
    """Run one public call: it returns, or raises a MicroblobError; anything else fails the test."""
    name = getattr(fn, "__name__", type(fn).__name__)
    try:
        outcome = Outcome(value=fn(*args, **kwargs))
        CALLS[f"{name}: ok"] += 1
    except MicroblobError as exc:
        outcome = Outcome(error=exc)
        CALLS[f"{name}: {type(exc).__name__}"] += 1
    except Exception as exc:  # noqa: BLE001 - an untyped error is exactly what this test looks for
        name = getattr(fn, "__qualname__", repr(fn))
        raise AssertionError(f"{name}(*{args!r:.300}, **{kwargs!r:.300}) raised untyped {exc!r:.300}") from exc
    assert_no_transaction_left(store)
    return outcome


def expect(outcome: Outcome, valid: bool, *, missing: type[MicroblobError] | None = None) -> None:
    """Valid arguments succeed (or raise `missing`, e.g. ObjectNotFound); invalid ones raise InvalidArgument."""
    if not valid:
        assert isinstance(outcome.error, InvalidArgument), f"invalid arguments were not refused: {outcome}"
    elif missing is not None:
        assert isinstance(outcome.error, missing), f"expected {missing.__name__}, got {outcome}"
    else:
        assert outcome.ok, f"valid arguments were refused: {outcome.error!r}"


def assert_mongodb_could_store(doc: Mapping[str, Any]) -> None:
    """What the embedded store accepted, MongoDB must accept: BSON-encodable and at most 16 MiB."""
    try:
        raw = bson.encode(dict(doc))
    except Exception as exc:  # noqa: BLE001 - any failure means MongoDB could not store it
        raise AssertionError(f"stored a document MongoDB could not store: {exc!r:.300}") from exc
    assert len(raw) <= BSON_LIMIT, f"stored a {len(raw)}-byte document; MongoDB's limit is {BSON_LIMIT}"


# --- the model ------------------------------------------------------------------------------------------

META_FIELDS = ("workflow_id", "task_id", "type", "custom_metadata", "tags", "content_type")
SAVERS = {
    "save_or_update_object": None,
    "insert_or_update_object": None,
    "save_or_update_ml_model": "ml_model",
    "insert_or_update_ml_model": "ml_model",
    "save_or_update_dataset": "dataset",
    "insert_or_update_dataset": "dataset",
}
DEFAULT_CONTENT_TYPE = "application/octet-stream"


@dataclass
class Version:
    data: bytes
    storage: str
    prev_version: int | None
    meta: dict[str, Any]


@dataclass
class Obj:
    latest: int
    versions: dict[int, Version]  # the readable ones


class StoreMachine(RuleBasedStateMachine):
    """Good and bad calls against one store and a model of what it must hold."""

    kind = "lmdb"
    root: Path = Path()

    def __init__(self) -> None:
        super().__init__()
        self.directory = self.root / uuid.uuid4().hex[:12]
        self.directory.mkdir()
        self.ctx = Ctx(self.directory)
        self.store = open_store(self.kind, self.directory)
        self.objects: dict[str, Obj] = {}
        self.files: dict[Any, bytes] = {}  # files uploaded through the bucket (not objects' bytes)
        self.workflows: dict[str, dict[str, Any]] = {}
        self.workflow_id: str | None = None  # the active Workflow while a rule saves inside one

    def teardown(self) -> None:
        self.ctx.close()
        self.store.close()

    # -- drawing arguments --------------------------------------------------------------------------

    def draw_id(self, data: st.DataObject, *, new: bool = False) -> Arg:
        """An existing id, a fresh valid one, an invalid one (or None = a new uuid, if `new`)."""
        options = [good(GOOD_IDS), bad(BAD_IDS)]
        if self.objects:
            options.insert(0, good(st.sampled_from(sorted(self.objects))))
            options.insert(0, good(st.sampled_from(sorted(self.objects))))
        if new:
            options.append(good(st.none()))
        return data.draw(mix(*options), label="object_id")

    def draw_version(self, data: st.DataObject, object_id: Any) -> Arg:
        exists = isinstance(object_id, str) and object_id in self.objects
        known = sorted(self.objects[object_id].versions) if exists else []
        options = [good(VERSIONS_GOOD), bad(VERSIONS_BAD)]
        if known:
            options.insert(0, good(st.sampled_from(known)))
        return data.draw(mix(*options), label="version")

    def draw_fields(self, data: st.DataObject, saver_type: str | None = None) -> dict[str, Arg]:
        """Metadata keyword arguments, each left out or drawn good or bad. `type` and `object_type` mostly
        agree (with each other, and with a typed helper's type): a contradiction is one bad draw among many."""
        if saver_type is None:
            type_arg = mix(good(st.sampled_from([None, "image", "dataset", "ml_model", ""]) | TEXT),
                           bad(st.sampled_from([5, b"image", "\ud800", Huge("t" * 4097)])))
        else:
            type_arg = mix(good(st.sampled_from([None, saver_type])), bad(st.sampled_from(["image", 5])))
        drawn: dict[str, Arg] = {}
        for name, strategy in (
            ("workflow_id", OPTIONAL_STR), ("task_id", OPTIONAL_STR), ("type", type_arg),
            ("custom_metadata", METADATA), ("tags", TAGS), ("content_type", CONTENT_TYPES),
        ):
            if data.draw(st.booleans(), label=f"pass {name}"):
                drawn[name] = data.draw(strategy, label=name)
        if data.draw(st.integers(0, 3), label="pass object_type") == 0:
            given = drawn["type"].value if "type" in drawn else None
            kind = given if given is not None else saver_type  # what a good object_type must agree with
            agreeing = [None, kind] if kind is not None else [None, "image", ""]
            contradicting = ["a contradiction", b"bytes"] if kind is not None else [b"bytes", 5]
            drawn["object_type"] = data.draw(mix(good(st.sampled_from(agreeing)),
                                                 bad(st.sampled_from(contradicting))), label="object_type")
        return drawn

    # -- the model's view of a save --------------------------------------------------------------

    def expected_fields(self, kwargs: Mapping[str, Any], saver_type: str | None) -> tuple[bool, dict[str, Any]]:
        """Whether the type arguments agree, and the metadata fields as given (None: keep/default)."""
        given = {name: kwargs.get(name) for name in META_FIELDS}
        kind, alias = kwargs.get("type"), kwargs.get("object_type")
        if kind is not None and alias is not None and kind != alias:
            return False, given
        kind = alias if alias is not None else kind
        if saver_type is not None:
            if kind is not None and kind != saver_type:
                return False, given
            kind = saver_type
        given["type"] = kind
        if given["workflow_id"] is None:
            given["workflow_id"] = self.workflow_id
        return True, given

    def apply(self, object_id: str, given: dict[str, Any], payload: tuple[bytes, str] | None,
              source_type: str | None, control_version: bool) -> None:
        """Record a call that succeeded (only then are its arguments known to be normal values)."""
        given = dict(given)
        if given["custom_metadata"] is not None:
            given["custom_metadata"] = normalize(given["custom_metadata"])
        if given["tags"] is not None:
            given["tags"] = list(given["tags"])
        current = self.objects.get(object_id)
        if current is None:
            assert payload is not None
            meta = {
                "workflow_id": given["workflow_id"], "task_id": given["task_id"], "type": given["type"],
                "custom_metadata": given["custom_metadata"] if given["custom_metadata"] is not None else {},
                "tags": given["tags"] if given["tags"] is not None else [],
                "content_type": given["content_type"] or source_type or DEFAULT_CONTENT_TYPE,
            }
            self.objects[object_id] = Obj(0, {0: Version(payload[0], payload[1], None, meta)})
            return
        last = current.versions[current.latest]
        meta = {name: given[name] if given[name] is not None else last.meta[name] for name in META_FIELDS}
        if given["content_type"] is None and source_type is not None:
            meta["content_type"] = source_type
        data, storage = payload if payload is not None else (last.data, last.storage)
        prev = current.latest if control_version else last.prev_version
        if not control_version:
            del current.versions[current.latest]
        current.latest += 1
        current.versions[current.latest] = Version(data, storage, prev, meta)

    # -- rules: the object API --------------------------------------------------------------------

    @rule(data=st.data())
    def save(self, data: st.DataObject) -> None:
        saver = data.draw(st.sampled_from(sorted(SAVERS)), label="saver")
        target = self.draw_id(data, new=True)
        payload = data.draw(PAYLOADS, label="object")
        fields = self.draw_fields(data, SAVERS[saver])
        flags = {name: data.draw(BOOLS, label=name) for name in ("save_data_in_collection", "control_version")
                 if data.draw(st.booleans(), label=f"pass {name}")}
        kwargs = {name: arg.value for name, arg in {**fields, **flags}.items()}
        if target.value is not None or data.draw(st.booleans(), label="pass object_id=None"):
            kwargs["object_id"] = target.value
        types_agree, given = self.expected_fields(kwargs, SAVERS[saver])
        valid = (target.good and payload.data is not None and types_agree
                 and all(arg.good for arg in (*fields.values(), *flags.values())))
        outcome = call(self.store, getattr(self.store, saver), payload.make(self.ctx), **kwargs)
        expect(outcome, valid)
        if outcome.ok:
            object_id = outcome.value
            assert isinstance(object_id, str)
            if target.value is not None:
                assert object_id == target.value
            inline = kwargs.get("save_data_in_collection", False)
            assert payload.data is not None
            self.apply(object_id, given, (payload.data, "inline" if inline else "chunked"),
                       payload.content_type, kwargs.get("control_version", False))

    @rule(data=st.data())
    def update_metadata(self, data: st.DataObject) -> None:
        target = self.draw_id(data)
        fields = self.draw_fields(data)
        control = data.draw(BOOLS, label="control_version") if data.draw(st.booleans()) else Arg(True, True)
        kwargs = {name: arg.value for name, arg in fields.items()}
        kwargs["control_version"] = control.value
        types_agree, given = self.expected_fields(kwargs, None)
        valid = target.good and control.good and types_agree and all(arg.good for arg in fields.values())
        outcome = call(self.store, self.store.update_object_metadata, target.value, **kwargs)
        exists = valid and target.value in self.objects
        expect(outcome, valid, missing=None if exists else ObjectNotFound)
        if outcome.ok:
            assert outcome.value == target.value
            self.apply(target.value, given, None, None, control.value)

    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        target = self.draw_id(data)
        outcome = call(self.store, self.store.delete_object, target.value)
        exists = target.good and target.value in self.objects
        expect(outcome, target.good, missing=None if exists else ObjectNotFound)
        if outcome.ok:
            del self.objects[target.value]

    @rule(data=st.data())
    def read(self, data: st.DataObject) -> None:
        reader = data.draw(st.sampled_from(["get_blob_object", "get_ml_model", "get_dataset",
                                            "get_blob_fingerprint", "blob_objects_equal", "get_object_history"]))
        target = self.draw_id(data)
        version = self.draw_version(data, target.value)
        args: list[Any] = [target.value]
        valid = target.good and (version.good or reader == "get_object_history")
        other = other_version = None
        if reader == "blob_objects_equal":
            other = self.draw_id(data)
            other_version = self.draw_version(data, other.value)
            args += [other.value, version.value, other_version.value]
            valid = valid and other.good and other_version.good
        elif reader != "get_object_history":
            args.append(version.value)
        outcome = call(self.store, getattr(self.store, reader), *args)
        if not valid:
            expect(outcome, False)
            return
        if reader == "get_object_history":
            expect(outcome, True)
            obj = self.objects.get(target.value)
            assert [e["version"] for e in outcome.value] == (sorted(obj.versions, reverse=True) if obj else [])
            return
        wanted = [(target.value, version.value)]
        if other is not None:
            wanted.append((other.value, other_version.value if other_version else None))
        found = [self.lookup(oid, v) for oid, v in wanted]
        missing = next((f for f in found if isinstance(f, type)), None)
        expect(outcome, True, missing=missing)
        if missing is not None:
            return
        versions = [f for f in found if isinstance(f, tuple)]
        if reader == "blob_objects_equal":
            assert outcome.value is (versions[0][1].data == versions[1][1].data)
        elif reader == "get_blob_fingerprint":
            number, expected = versions[0]
            assert outcome.value == {"object_id": target.value, "version": number, "size": len(expected.data),
                                     "sha256": hashlib.sha256(expected.data).hexdigest(), "storage": expected.storage}
        else:
            self.check_version(outcome.value, target.value, *versions[0])

    def lookup(self, object_id: str, version: int | None) -> tuple[int, Version] | type[NotFound]:
        obj = self.objects.get(object_id)
        if obj is None:
            return ObjectNotFound
        number = obj.latest if version is None else version
        if number not in obj.versions:
            return VersionNotFound
        return number, obj.versions[number]

    @rule(data=st.data())
    def query(self, data: st.DataObject) -> None:
        how = data.draw(st.sampled_from(["blob_object_query", "query", "ml_model_query", "dataset_query",
                                         "count_objects"]))
        flt = data.draw(mix(good(self.model_filters()), bad(BAD_FILTERS), good(ODD_FILTERS)), label="filter")
        kwargs: dict[str, Any] = {}
        args: list[Arg] = [flt]
        if how != "count_objects":
            for name, strategy in (("skip", WINDOW), ("limit", WINDOW), ("sort", SORTS)):
                if data.draw(st.booleans(), label=f"pass {name}"):
                    kwargs[name] = data.draw(strategy, label=name)
            if how == "query" and data.draw(st.booleans(), label="pass collection"):
                kwargs["collection"] = data.draw(COLLECTIONS, label="collection")
        args += kwargs.values()
        given = flt.value.filter if isinstance(flt.value, ModelFilter) else flt.value
        outcome = call(self.store, getattr(self.store, how), given, **{k: a.value for k, a in kwargs.items()})
        valid = all(a.good for a in args)
        if not isinstance(flt.value, ModelFilter):
            if not valid:
                expect(outcome, False)
            return  # odd but valid filters: only typed errors are required (the matcher has its own tests)
        expect(outcome, valid)
        if not outcome.ok:
            return
        collection = kwargs["collection"].value if "collection" in kwargs else "objects"
        if collection != "objects":
            return
        kind = {"ml_model_query": "ml_model", "dataset_query": "dataset"}.get(how)
        expected = sorted(oid for oid, obj in self.objects.items() if flt.value.matches(oid, obj)
                          and (kind is None or obj.versions[obj.latest].meta["type"] == kind))
        if how == "count_objects":
            assert outcome.value == len(expected)
            return
        got = [(d["object_id"], d["version"]) for d in outcome.value]
        skip = kwargs["skip"].value if "skip" in kwargs else 0
        limit = kwargs["limit"].value if "limit" in kwargs else 0
        sort = kwargs["sort"].value if "sort" in kwargs else None
        assert all(oid in self.objects and self.objects[oid].latest == v for oid, v in got)
        if sort in (("object_id", 1), [("object_id", 1)], "object_id", [("object_id", -1)]):
            ordered = expected[::-1] if sort == [("object_id", -1)] else expected
            assert [oid for oid, _ in got] == ordered[skip: skip + limit if limit else None]
        else:
            assert set(oid for oid, _ in got) <= set(expected)
            assert len(got) == len(expected[skip: skip + limit if limit else None])

    def model_filters(self) -> st.SearchStrategy[ModelFilter]:
        ids = sorted(self.objects) or ["nothing"]
        return st.one_of(
            st.just(ModelFilter({}, lambda oid, obj: True)),
            st.just(ModelFilter(None, lambda oid, obj: True)),
            st.sampled_from(ids).map(lambda i: ModelFilter({"object_id": i}, lambda oid, obj: oid == i)),
            st.sampled_from(ids).map(lambda i: ModelFilter({"_id": i}, lambda oid, obj: oid == i)),
            st.lists(st.sampled_from(ids), max_size=3).map(
                lambda some: ModelFilter({"object_id": {"$in": some}}, lambda oid, obj: oid in some)),
            st.integers(0, 3).map(lambda n: ModelFilter({"version": {"$gte": n}}, lambda oid, obj: obj.latest >= n)),
            st.sampled_from(["ml_model", "dataset"]).map(
                lambda t: ModelFilter({"type": t}, lambda oid, obj: obj.versions[obj.latest].meta["type"] == t)),
            st.sampled_from(["inline", "chunked"]).map(
                lambda s: ModelFilter({"storage": s}, lambda oid, obj: obj.versions[obj.latest].storage == s)),
            st.just(ModelFilter({"$or": [{"version": 0}, {"type": "dataset"}]}, lambda oid, obj: (
                obj.latest == 0 or obj.versions[obj.latest].meta["type"] == "dataset"))),
        )

    # -- rules: files, workflows, maintenance --------------------------------------------------------

    @rule(data=st.data())
    def upload(self, data: st.DataObject) -> None:
        filename = data.draw(mix(good(TEXT), bad(st.sampled_from([None, 5, b"f", ["f"]])),
                                 bad(st.sampled_from(SURROGATE_STRINGS))), label="filename")
        payload = data.draw(PAYLOADS, label="source")
        kwargs: dict[str, Arg] = {}
        for name, strategy in (("metadata", METADATA), ("chunk_size", CHUNK_SIZES), ("file_id", FILE_IDS)):
            if data.draw(st.booleans(), label=f"pass {name}"):
                kwargs[name] = data.draw(strategy, label=name)
        valid = filename.good and payload.file_data is not None and all(a.good for a in kwargs.values())
        file_id = kwargs["file_id"].value if "file_id" in kwargs else None
        duplicate = file_id is not None and valid and self.store.files.exists(file_id)
        outcome = call(self.store, self.store.files.upload_from_stream, filename.value, payload.make(self.ctx),
                       **{k: a.value for k, a in kwargs.items()})
        expect(outcome, valid, missing=DuplicateKey if duplicate else None)
        if outcome.ok:
            assert payload.file_data is not None
            assert file_id is None or outcome.value == file_id
            self.files[outcome.value] = payload.file_data

    @rule(data=st.data())
    def file_lookup(self, data: st.DataObject) -> None:
        known = sorted(self.files, key=repr)
        options = [good(FILE_IDS_GOOD), bad(FILE_LOOKUPS_BAD)]
        if known:
            options.insert(0, good(st.sampled_from(known)))
        file_id = data.draw(mix(*options), label="file_id")
        how = data.draw(st.sampled_from(["open_download_stream", "download_to_stream", "delete", "exists",
                                         "find"]))
        present = file_id.good and file_id.value in self.files
        if how == "exists":
            outcome = call(self.store, self.store.files.exists, file_id.value)
            expect(outcome, file_id.good)
            assert not outcome.ok or outcome.value is present
        elif how == "find":
            outcome = call(self.store, self.store.files.find, {"_id": file_id.value} if file_id.good else file_id.value)
            if outcome.ok and file_id.good:
                assert [d["_id"] for d in outcome.value] == ([file_id.value] if present else [])
        elif how == "open_download_stream":
            outcome = call(self.store, self.store.files.open_download_stream, file_id.value)
            expect(outcome, file_id.good, missing=None if present else FileNotFound)
            if outcome.ok:
                with outcome.value as stream:
                    assert stream.read() == self.files[file_id.value]
        elif how == "download_to_stream":
            sink = data.draw(mix(good(st.just("BytesIO")), bad(st.sampled_from(["StringIO", None, 5]))))
            dest = {"BytesIO": io.BytesIO, "StringIO": io.StringIO}.get(sink.value, lambda: sink.value)()
            outcome = call(self.store, self.store.files.download_to_stream, file_id.value, dest)
            expect(outcome, file_id.good and sink.good, missing=None if present or not sink.good else FileNotFound)
            if outcome.ok:
                assert dest.getvalue() == self.files[file_id.value]
        else:
            outcome = call(self.store, self.store.files.delete, file_id.value)
            expect(outcome, file_id.good, missing=None if present else FileNotFound)
            if outcome.ok:
                del self.files[file_id.value]

    @rule(data=st.data())
    def workflow(self, data: st.DataObject) -> None:
        name = data.draw(OPTIONAL_STR, label="name")
        workflow_id = data.draw(mix(good(st.none() | GOOD_IDS), bad(BAD_IDS)), label="workflow_id")
        meta = data.draw(METADATA, label="custom_metadata")
        store = data.draw(mix(good(st.sampled_from(["store", None])), bad(st.sampled_from([5, "memory://"]))))
        fails = data.draw(st.booleans(), label="block raises")
        valid = name.good and workflow_id.good and meta.good and store.good
        kwargs = {"workflow_id": workflow_id.value, "custom_metadata": meta.value,
                  "store": self.store if store.value == "store" else store.value}
        outcome = call(self.store, microblob.Workflow, name.value, **kwargs)
        expect(outcome, valid)
        if not outcome.ok:
            return
        wf = outcome.value

        class Boom(Exception):
            pass

        saved = None
        with pytest.raises(Boom) if fails else contextlib.nullcontext(), wf:
            assert microblob.current_workflow_id() == wf.workflow_id
            saved = self.store.save_or_update_object(b"in a workflow")
            if fails:
                raise Boom
        assert microblob.current_workflow_id() is None
        self.workflow_id = wf.workflow_id
        _, given = self.expected_fields({}, None)
        self.workflow_id = None
        self.apply(saved, given, (b"in a workflow", "chunked"), None, False)
        if store.value == "store":
            self.workflows[wf.workflow_id] = {"name": wf.name, "status": "error" if fails else "completed",
                                              "custom_metadata": normalize(meta.value) if meta.value else {}}

    @rule(data=st.data())
    def get_workflow(self, data: st.DataObject) -> None:
        options = [good(GOOD_IDS), bad(BAD_IDS)]
        if self.workflows:
            options.insert(0, good(st.sampled_from(sorted(self.workflows))))
        workflow_id = data.draw(mix(*options), label="workflow_id")
        outcome = call(self.store, self.store.get_workflow, workflow_id.value)
        known = workflow_id.value in self.workflows if workflow_id.good else False
        expect(outcome, workflow_id.good, missing=None if known else NotFound)
        if outcome.ok:
            expected = self.workflows[workflow_id.value]
            assert same({k: outcome.value.get(k) for k in expected}, expected), (outcome.value, expected)

    @rule()
    def gc(self) -> None:
        outcome = call(self.store, self.store.gc)
        expect(outcome, True)
        freed = outcome.value
        assert (freed.freed_files, freed.freed_orphan_chunks, freed.freed_history_entries) == (0, 0, 0), freed

    @rule(data=st.data())
    def copy(self, data: st.DataObject) -> None:
        dst = data.draw(mix(good(st.just("memory store")), bad(st.sampled_from([5, None, b"x", "self"]))))
        since = data.draw(mix(good(st.sampled_from([None, dt.datetime(2000, 1, 1)])),
                              bad(st.sampled_from(["2020-01-01", 5, dt.date(2020, 1, 1)]))))
        target = dst.value
        if dst.value == "memory store":
            target = microblob.connect("memory://")
        elif dst.value == "self":
            target = self.store
        try:
            outcome = call(self.store, microblob.copy, self.store, target, since=since.value)
            expect(outcome, dst.good and since.good)
            if outcome.ok:
                assert outcome.value.ok, outcome.value.problems
                assert sorted(d["_id"] for d in target.query({}, projection={"_id": 1})) == sorted(self.objects)
                for object_id, obj in self.objects.items():
                    assert target.get_blob_object(object_id).data == obj.versions[obj.latest].data
                    assert sorted(e["version"] for e in target.get_object_history(object_id)) == sorted(obj.versions)
        finally:
            if dst.value == "memory store":
                target.close()

    @precondition(lambda self: self.kind == "lmdb")
    @rule()
    def reopen(self) -> None:
        """Close the file, check every entry point refuses with StoreClosed, open it again."""
        self.store.close()
        for name, args in (("get_blob_object", ("x",)), ("save_or_update_object", (b"x",)), ("query", ({},)),
                           ("verify", ()), ("gc", ()), ("delete_object", ("x",)), ("get_object_history", ("x",))):
            outcome = call(self.store, getattr(self.store, name), *args)
            assert isinstance(outcome.error, StoreClosed), (name, outcome)
        outcome = call(self.store, self.store.files.find, {})
        assert isinstance(outcome.error, StoreClosed)
        self.store = open_store(self.kind, self.directory)

    # -- invariants --------------------------------------------------------------------------------

    def check_version(self, record: Any, object_id: str, number: int, expected: Version) -> None:
        assert record.object_id == object_id and record.version == number
        assert record.data == expected.data, f"{object_id!r} v{number}: bytes differ"
        assert record.size == len(expected.data) and record.sha256 == hashlib.sha256(expected.data).hexdigest()
        assert record.storage == expected.storage and record.prev_version == expected.prev_version
        for name in META_FIELDS:
            assert same(record[name], expected.meta[name]), (object_id, number, name, record[name], expected.meta[name])

    @invariant()
    def store_matches_model(self) -> None:
        assert_no_transaction_left(self.store)
        stored = {d["_id"]: d for d in self.store.query({})}
        assert sorted(stored) == sorted(self.objects)
        for object_id, obj in self.objects.items():
            assert_mongodb_could_store(stored[object_id])
            self.check_version(self.store.get_blob_object(object_id), object_id, obj.latest, obj.versions[obj.latest])
            for number, version in obj.versions.items():
                self.check_version(self.store.get_blob_object(object_id, number), object_id, number, version)
            for number in set(range(obj.latest + 2)) - set(obj.versions):
                with pytest.raises(VersionNotFound):
                    self.store.get_blob_object(object_id, number)
            history = self.store.get_object_history(object_id)
            assert [e["version"] for e in history] == sorted(obj.versions, reverse=True)
        for entry in self.store.query({}, collection="object_history"):
            assert_mongodb_could_store(entry)
        verified = self.store.verify()
        assert verified.ok, verified.damaged
        assert verified.checked == sum(len(obj.versions) for obj in self.objects.values())

    @invariant()
    def nothing_is_left_behind(self) -> None:
        files = {d["_id"]: d for d in self.store.query({}, collection="fs.files")}
        for file_id, content in self.files.items():
            assert files[file_id]["length"] == len(content)
        referenced = {d.get("file_id") for coll in ("objects", "object_history")
                      for d in self.store.query({}, collection=coll, projection={"file_id": 1})}
        assert set(files) == set(self.files) | (referenced - {None}), "a files document no one references"
        assert set(self.store.backend.chunks.file_ids()) <= set(files), "chunks without a files document"
        assert self.store.files._pending.find({}) == [], "an upload lease was left behind"
        for doc in files.values():
            assert_mongodb_could_store(doc)


@dataclass(frozen=True)
class ModelFilter:
    """A filter the model can evaluate itself."""

    filter: dict[str, Any] | None
    matches: Callable[[str, Obj], bool]

    def __repr__(self) -> str:
        return f"ModelFilter({self.filter!r})"


BAD_FILTERS = st.one_of(
    st.sampled_from([
        {"$gt": 1}, {"a": {"$foo": 1}}, {"$where": "1"}, {"$and": []}, {"$or": {"a": 1}}, {"$or": [5]},
        {"a": {"$in": 5}}, {"a": {"$regex": "("}}, {1: 2}, {"a": 2**64}, {"a": {"$gt": -(2**70)}},
        {"a": {1, 2}}, {"a": {"$size": -1}}, {"a": {"$size": 2**40}}, {"a": {"$exists": True, "b": 1}},
        {"_id": 2**64}, {"_id": {"$in": [2**64]}}, {"a": {"$regex": "a\x00"}}, {"a": {"$type": "string"}},
        {"$expr": {"$eq": ["$a", 1]}}, {"a": {"$elemMatch": 5}}, {"a": {"$not": {}}},
        "type == 'x'", ["type"], 5, b"{}", {"a": object()}, {"a": complex(1, 2)},
    ]),
    st.sampled_from([
        nest(10_000, lambda f: {"$and": [f]}), nest(201, lambda f: {"$or": [f, {"b": 1}]}),
        {"a": nest(10_000, lambda f: {"$elemMatch": f})}, {"a": nest(10_000, lambda f: {"$not": f})},
        {"a": {"$in": [deep(10_000, lists=True)]}}, {"a": deep(10_000, lists=True)}, {"a": deep(300)},
        {"$nor": [deep(250, key="b")]}, {"a": {"$all": [nest(5_000, lambda f: {"$elemMatch": f})]}},
    ]),
    st.builds(lambda: {"a": cyclic()}),
)
ODD_FILTERS = st.one_of(
    st.sampled_from([
        {"custom_metadata.$set": {"$exists": True}}, {"custom_metadata": {"$eq": {"$gt": 1}}},
        {"tags": {"$all": []}}, {"tags": {"$size": 0}}, {"a.b.c.d": None}, {"version": float("nan")},
        {"version": {"$in": [float("inf"), INT64_MAX, INT64_MIN]}}, {"_id": "x" * 5000}, {"_id": b"bytes"},
        {"_id": {"$in": ["a", 1, None, 1.5]}}, {"a": {"$not": {"$regex": "^x", "$options": "i"}}},
        {"$comment": "hi"}, {"a": deep(50)}, {"_id": Huge("i" * 513)}, {"object_id": MIB_STRING},
    ]),
    st.dictionaries(KEYS, GOOD_VALUES, max_size=3),
)
SORTS = mix(
    good(st.sampled_from([None, "object_id", ("object_id", 1), [("object_id", 1)], [("object_id", -1)],
                          [("version", -1)], {"size": 1}, [("custom_metadata.a", 1), ("object_id", -1)]])),
    bad(st.sampled_from([5, [("a", 2)], [("a", 1), ("a", -1)], [("$a", 1)], {"a": "up"}, [("", 1)], [(1, 1)]])),
)
COLLECTIONS = mix(
    good(st.sampled_from(["objects", "object_history", "workflows", "fs.files"])),
    bad(st.sampled_from(["fs.pending", "fs.chunks", "", "objects\x00", None, 5, "\ud800"])),
)
CHUNK_SIZES = mix(good(st.sampled_from([7, 1000, 255 * 1024])),
                  bad(st.sampled_from([0, -1, 1.5, True, "10", 2**64, 16 * 1024 * 1024])))
FILE_IDS_GOOD = st.one_of(
    st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), min_size=1, max_size=20),
    st.integers(INT64_MIN, INT64_MAX),
    st.binary(min_size=1, max_size=64),
    st.just(Huge("f" * 128)),
)
FILE_IDS = mix(
    good(st.none() | FILE_IDS_GOOD),
    bad(st.sampled_from(["", Huge("f" * 129), "a\x00b", 2**64, -(2**70), 1.5, True, b"", b"x" * 65, [1],
                         {"a": 1}, {"$gt": ""}])),
    bad(st.sampled_from(SURROGATE_STRINGS)),
)
FILE_LOOKUPS_BAD = st.sampled_from([None, {"$gt": ""}, {"$ne": None}, {"$exists": True}, {"$in": ["a"]}, ["a"],
                                    ("a",), {"a"}, 2**64, "\ud800", [], {"a": 1, "$b": 2}])


# --- the tests ------------------------------------------------------------------------------------------


def test_state_machine(embedded_kind: str, tmp_path: Path) -> None:
    """Model-based: random good and bad calls, the store compared with the model after every step."""
    machine = type(f"StoreMachine_{embedded_kind}", (StoreMachine,), {"kind": embedded_kind, "root": tmp_path})
    CALLS.clear()
    run_state_machine_as_test(machine, settings=settings(FUZZ, max_examples=examples(60), stateful_step_count=25))
    report(f"state machine on {embedded_kind}")


ANYTHING = st.one_of(
    st.none(), st.booleans(), st.integers(), st.sampled_from([2**64, -(2**63) - 1, 2**100]),
    st.floats(), TEXT, st.binary(max_size=8),
    st.sampled_from(SURROGATE_STRINGS), st.sampled_from(["", ".", "..", "a/b", "a\x00b", "x" * 513]),
    st.just(MIB_STRING),
    st.lists(TEXT, max_size=3), st.dictionaries(KEYS, GOOD_LEAVES, max_size=3),
    st.sampled_from([{"$gt": ""}, {"$where": "1"}, {"a": {"$foo": 1}}, {1: 2}, {"\ud800": 1}, deep(200),
                     deep(10_000, lists=True), {"a", "b"}, frozenset(), (1, 2), 1 + 2j, object(), Path("p"), range(3)]),
    st.sampled_from([Label(p.name, p.make) for p in BAD_PAYLOADS]),
    st.sampled_from([Label(f"good {p.name}", p.make) for p in _good_payloads(b"payload bytes")]),
    st.builds(cyclic),
)

# Every public function and its parameters. Each parameter is drawn from the shared pool of odd values,
# or from a few good values (so calls also get past their first check).
PARAMETERS: dict[str, st.SearchStrategy[Any]] = {
    "object": st.sampled_from([b"payload", b""]),
    "object_id": st.sampled_from(["obj-a", "obj-b", "missing"]),
    "a": st.sampled_from(["obj-a", "obj-b"]),
    "b": st.sampled_from(["obj-a", "obj-b"]),
    "version": st.sampled_from([None, 0, 1]),
    "version_a": st.sampled_from([None, 0, 1]),
    "version_b": st.sampled_from([None, 0, 1]),
    "filter": st.sampled_from([None, {}, {"type": "ml_model"}]),
    "collection": st.sampled_from(["objects", "object_history", "workflows", "fs.files"]),
    "file_id": st.sampled_from(["user-file", None]),
    "filename": st.sampled_from(["f.bin"]),
    "source": st.sampled_from([b"file bytes"]),
    "destination": st.builds(io.BytesIO),
    "dst": st.just("memory://"),
    "control_version": st.booleans(),
    "save_data_in_collection": st.booleans(),
    "workflow_id": st.sampled_from([None, "wf-1"]),
    "task_id": st.sampled_from([None, "task"]),
    "type": st.sampled_from([None, "image"]),
    "object_type": st.none(),
    "custom_metadata": st.sampled_from([None, {"a": 1}, {"$gt": {"a.b": float("nan")}}]),
    "tags": st.sampled_from([None, ["t"]]),
    "content_type": st.sampled_from([None, "image/png"]),
    "name": st.sampled_from([None, "run"]),
    "metadata": st.sampled_from([None, {"k": "v"}]),
    "chunk_size": st.sampled_from([1000, 255 * 1024]),
    "sort": st.sampled_from([None, "version", [("object_id", -1)]]),
    "skip": st.integers(0, 3),
    "limit": st.integers(0, 3),
    "projection": st.sampled_from([None, {"data": 0}, ["object_id"]]),
    "since": st.sampled_from([None, dt.datetime(2000, 1, 1)]),
    "progress": st.sampled_from([None, lambda done, total: None]),
}
SAVE_KWARGS = ["object_id", "workflow_id", "task_id", "type", "custom_metadata", "save_data_in_collection",
               "control_version", "content_type", "tags", "object_type"]
WINDOW_KWARGS = ["sort", "limit", "skip"]
Getter = Callable[[microblob.Store], Callable[..., Any]]
# name: (the function, given the store; required positional; optional positional; keyword-only or optional)
FUNCTIONS: dict[str, tuple[Getter, list[str], list[str], list[str]]] = {
    "save_or_update_object": (lambda s: s.save_or_update_object, ["object"], [], SAVE_KWARGS),
    "insert_or_update_object": (lambda s: s.insert_or_update_object, ["object"], [], SAVE_KWARGS),
    "save_or_update_ml_model": (lambda s: s.save_or_update_ml_model, ["object"], [], SAVE_KWARGS),
    "insert_or_update_ml_model": (lambda s: s.insert_or_update_ml_model, ["object"], [], SAVE_KWARGS),
    "save_or_update_dataset": (lambda s: s.save_or_update_dataset, ["object"], [], SAVE_KWARGS),
    "insert_or_update_dataset": (lambda s: s.insert_or_update_dataset, ["object"], [], SAVE_KWARGS),
    "update_object_metadata": (lambda s: s.update_object_metadata, ["object_id"], [],
                               ["custom_metadata", "tags", "type", "task_id", "workflow_id", "control_version",
                                "object_type", "content_type"]),
    "get_blob_object": (lambda s: s.get_blob_object, ["object_id"], ["version"], []),
    "get_ml_model": (lambda s: s.get_ml_model, ["object_id"], ["version"], []),
    "get_dataset": (lambda s: s.get_dataset, ["object_id"], ["version"], []),
    "get_blob_fingerprint": (lambda s: s.get_blob_fingerprint, ["object_id"], ["version"], []),
    "blob_objects_equal": (lambda s: s.blob_objects_equal, ["a", "b"], ["version_a", "version_b"], []),
    "get_object_history": (lambda s: s.get_object_history, ["object_id"], [], []),
    "delete_object": (lambda s: s.delete_object, ["object_id"], [], []),
    "blob_object_query": (lambda s: s.blob_object_query, [], ["filter"], WINDOW_KWARGS),
    "ml_model_query": (lambda s: s.ml_model_query, [], ["filter"], WINDOW_KWARGS),
    "dataset_query": (lambda s: s.dataset_query, [], ["filter"], WINDOW_KWARGS),
    "query": (lambda s: s.query, [], ["filter", "collection", "projection", "sort", "limit", "skip"], []),
    "count_objects": (lambda s: s.count_objects, [], ["filter"], []),
    "get_workflow": (lambda s: s.get_workflow, ["workflow_id"], [], []),
    "verify": (lambda s: s.verify, [], [], []),
    "gc": (lambda s: s.gc, [], [], []),
    "files.upload_from_stream": (lambda s: s.files.upload_from_stream, ["filename", "source"],
                                 ["metadata", "chunk_size", "file_id"], []),
    "files.open_upload_stream": (lambda s: s.files.open_upload_stream, ["filename"],
                                 ["metadata", "chunk_size", "file_id"], []),
    "files.open_download_stream": (lambda s: s.files.open_download_stream, ["file_id"], [], []),
    "files.get_file": (lambda s: s.files.get_file, ["file_id"], [], []),
    "files.download_to_stream": (lambda s: s.files.download_to_stream, ["file_id", "destination"], [], []),
    "files.delete": (lambda s: s.files.delete, ["file_id"], [], []),
    "files.exists": (lambda s: s.files.exists, ["file_id"], [], []),
    "files.find": (lambda s: s.files.find, [], ["filter", "sort", "skip", "limit"], []),
    "Workflow": (lambda s: microblob.Workflow, [], ["name"], ["store", "workflow_id", "custom_metadata"]),
    "copy": (lambda s: microblob.copy, ["src", "dst"], ["since", "progress"], []),
}


def _sweep_store(kind: str, directory: Path) -> microblob.Store:
    store = open_store(kind, directory)
    store.save_or_update_object(b"a0", object_id="obj-a", type="ml_model")
    store.save_or_update_object(b"a1", object_id="obj-a", control_version=True)
    store.save_or_update_object(b"b0", object_id="obj-b", save_data_in_collection=True)
    store.files.upload_from_stream("user.bin", b"user bytes", file_id="user-file")
    return store


def _draw(data: st.DataObject, param: str) -> Any:
    """Half the time a good value for this parameter (if there is one), else anything from the odd pool."""
    if param in PARAMETERS and data.draw(st.booleans(), label=f"good {param}"):
        return data.draw(PARAMETERS[param], label=param)
    return data.draw(ANYTHING, label=param)


def test_every_function_with_odd_arguments(embedded_kind: str, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Each public function, each parameter drawn from the pool of odd values (or a good one): typed
    errors only, no lock left held, and after every call the store verifies clean and holds only
    documents MongoDB could store."""
    monkeypatch.chdir(tmp_path)  # copy() to a relative path makes a store file here
    monkeypatch.delenv("MICROBLOB_URI", raising=False)
    ctx = Ctx(tmp_path / "ctx")
    ctx.directory.mkdir()
    store = _sweep_store(embedded_kind, tmp_path)

    @settings(FUZZ, max_examples=examples(1000))
    @given(st.data())
    def sweep(data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(sorted(FUNCTIONS)), label="function")
        get, required, optional, keywords = FUNCTIONS[name]
        count = data.draw(st.integers(0, len(optional)), label="optional positional arguments")
        args = [_draw(data, param) for param in required + optional[:count]]
        kwargs = {param: _draw(data, param) for param in keywords if data.draw(st.booleans(), label=f"pass {param}")}
        if name == "copy" and data.draw(st.booleans(), label="copy from the store"):
            args[0] = store
        if name == "Workflow" and "store" in kwargs and data.draw(st.booleans(), label="the real store"):
            kwargs["store"] = store
        try:
            outcome = call(store, get(store), *[resolve(a, ctx) for a in args],
                           **{k: resolve(v, ctx) for k, v in kwargs.items()})
            value = outcome.value
            if isinstance(value, microblob.UploadStream):
                call(store, value.close)  # publishing checks the filename and metadata too
            elif isinstance(value, io.IOBase):
                value.close()
            elif isinstance(value, microblob.Workflow):
                with value:
                    pass
            verified = store.verify()
            assert verified.ok, verified.damaged
            for doc in store.query({}):
                assert_mongodb_could_store(doc)
        finally:
            ctx.close()

    CALLS.clear()
    try:
        sweep()
        freed = store.gc()
        assert (freed.freed_files, freed.freed_orphan_chunks, freed.freed_history_entries) == (0, 0, 0), freed
        assert store.files._pending.find({}) == []
    finally:
        store.close()
    report(f"sweep on {embedded_kind}")


class _LyingStr(str):
    def __str__(self) -> str:
        return "a lie"

    def __len__(self) -> int:
        return 0


BSON_VALUES = st.recursive(
    GOOD_LEAVES | TEXT.map(_LyingStr) | st.binary(max_size=8).map(LyingBytes),
    lambda children: st.lists(children, max_size=12)
    | st.dictionaries(KEYS | KEYS.map(_LyingStr), children, max_size=6),
    max_leaves=30,
)


@settings(FUZZ, max_examples=examples(150))
@given(st.dictionaries(KEYS, BSON_VALUES, max_size=6))
def test_document_check_measures_bson(doc: dict[str, Any]) -> None:
    """The embedded store's document check computes exactly the size MongoDB measures (`bson.encode`), so
    its 16 MiB limit is MongoDB's; subclasses that misreport their length change nothing."""
    from microblob.engine import codec as _codec

    assert _codec._check(doc, 0, None) == len(bson.encode(doc))


# URIs: ABS is replaced by a fresh directory per example; relative paths land in the test's cwd.
URIS = mix(
    good(st.sampled_from(["store.db", "sub/../store.db", "lmdb:///ABS/store.db", "file:///ABS/store.db",
                          "lmdb://localhostABS/store.db", "ABS/store.db", "ABS/é 😀 %41.db", "lmdb:///ABS/%41.db",
                          "memory://", "memory://anything", "lmdb:relative.db"])),
    good(st.sampled_from([Label("Path", lambda c: c.directory / "path.db"),
                          Label("PathLike returning bytes", lambda c: _PathLike(os.fsencode(c.directory / "b.db")))])),
    bad(st.sampled_from(["", "lmdb://", "lmdb://host/store.db", "lmdb:///ABS/%ff.db", "lmdb:///ABS/%00.db",
                         "lmdb://[::1", "a\x00b.db", "ABS/\ud800.db", "ABS/\udcff.db", "ABS", "ABS/missing-dir/x.db",
                         "ftp://host/x", "mongita://", "mongodb://h:99999/db", "://", "ABS/not-lmdb.txt"])),
    bad(st.just(Huge("ABS/" + "x" * 5000)) | st.just(MIB_STRING)),
    bad(st.sampled_from([b"store.db", 5, 1.5, ["store.db"], {"uri": "x"}])),
    bad(st.sampled_from([Label("PathLike returning int", lambda c: _PathLike(5)),
                         Label("PathLike to a surrogate name", lambda c: _PathLike(str(c.directory / "\ud800.db")))])),
)
OPTION_VALUES: dict[str, st.SearchStrategy[Arg]] = {
    # map_size is the initial size: a few KB must work too (the tables alone did not fit)
    "map_size": mix(good(st.sampled_from([None, 1, 4096, 6521, 8192, 16384, 1 << 20, 1 << 31])),
                    bad(st.sampled_from([0, -1, 2**64, 1.5, "64MB", True]))),
    "sync": mix(good(st.booleans()), bad(st.sampled_from(["no", 1, None]))),
    "metasync": mix(good(st.booleans()), bad(st.sampled_from(["yes", 0, None]))),
    "max_readers": mix(good(st.sampled_from([1, 8, 126, 1 << 16])), bad(st.sampled_from([0, -1, 2**31, 1.5, "8"]))),
    "chunk_size": mix(good(st.sampled_from([1, 1000, 16 * 1024 * 1024 - 16 * 1024])),
                      bad(st.sampled_from([0, 1.5, True, 2**64]))),
    "bogus": bad(st.integers()),
}
OPTIONS = st.lists(st.sampled_from(sorted(OPTION_VALUES)), unique=True, max_size=3).flatmap(
    lambda keys: st.fixed_dictionaries({key: OPTION_VALUES[key] for key in keys})
)


class _PathLike(os.PathLike):
    def __init__(self, value: Any) -> None:
        self.value = value

    def __fspath__(self) -> Any:
        return self.value

    def __repr__(self) -> str:
        return f"_PathLike({self.value!r})"


def test_connect_with_odd_uris_and_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """connect() opens a working store or raises a typed error, for any URI and option values, and
    never makes a file outside the directory it names."""
    monkeypatch.chdir(tmp_path)
    counter = iter(range(1_000_000))

    @settings(FUZZ, max_examples=examples(300))
    @given(URIS, OPTIONS)
    def check(uri_arg: Arg, args: dict[str, Arg]) -> None:
        options = {key: arg.value for key, arg in args.items()}
        directory = tmp_path / f"d{next(counter)}"
        directory.mkdir()
        (directory / "not-lmdb.txt").write_text("not an LMDB file " * 100)
        uri = uri_arg.value.replace("ABS", str(directory)) if isinstance(uri_arg.value, str) else uri_arg.value
        uri = resolve(uri, Ctx(directory))
        memory_with_file_options = str(uri).startswith("memory") and bool(set(options) - {"chunk_size"})
        valid = uri_arg.good and all(arg.good for arg in args.values()) and not memory_with_file_options
        try:
            store = microblob.connect(uri, **options)
        except MicroblobError as exc:
            CALLS[f"connect: {type(exc).__name__}"] += 1
            assert not valid, f"connect({uri!r:.200}, **{options!r}) refused good arguments: {exc!r}"
            if uri_arg.good:  # bad options are refused as such, before the file is touched
                assert isinstance(exc, InvalidArgument), (uri, options, exc)
            return
        CALLS["connect: ok"] += 1
        assert valid, f"connect({uri!r:.200}, **{options!r}) accepted bad arguments"
        try:
            object_id = call(store, store.save_or_update_object, b"works").value
            assert store.get_blob_object(object_id).data == b"works"
            assert store.verify().ok
        finally:
            store.close()

    root_file_existed = Path("/store.db").exists()
    CALLS.clear()
    check()
    report("connect")
    made = {p.name for p in tmp_path.iterdir() if not p.name.startswith("d")}
    assert made <= {"store.db", "store.db-lock", "store.db.open", "lmdb:relative.db", "lmdb:relative.db-lock",
                    "lmdb:relative.db.open"}, made
    assert Path("/store.db").exists() == root_file_existed, "a URI with a host opened a file at the root"
