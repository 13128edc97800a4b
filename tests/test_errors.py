"""Bad input gets a typed MicroblobError, and nothing partial becomes visible."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest

import microblob
from microblob import InvalidArgument, InvalidQuery, MicroblobError, ObjectNotFound, VersionNotFound


def test_exception_tree() -> None:
    assert issubclass(ObjectNotFound, KeyError) and issubclass(ObjectNotFound, ValueError)
    assert issubclass(VersionNotFound, microblob.NotFound)
    assert issubclass(InvalidQuery, InvalidArgument) and issubclass(InvalidArgument, ValueError)
    assert issubclass(microblob.ObjectEvicted, microblob.StorageError)  # the bytes are elsewhere, not missing
    for name in microblob.__all__:
        obj = getattr(microblob, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, MicroblobError), name
    assert str(ObjectNotFound("abc")) == "object 'abc' not found"  # not KeyError's quoted repr


def _cyclic() -> dict:
    cycle: dict = {}
    cycle["self"] = cycle
    return cycle


_CYCLIC, _OTHER_CYCLIC = _cyclic(), _cyclic()  # comparing two distinct cycles recurses forever


def _closed(stream: io.IOBase) -> io.IOBase:
    stream.close()
    return stream


class _Reader:
    """read() returns `result`, whatever it is."""

    def __init__(self, result: object) -> None:
        self.result = result

    def read(self, n: int = -1) -> object:
        return self.result


class _InjectingBlob(microblob.Blob, register=False):
    content_type = "text/plain\r\nX-Injected: 1"


BAD_SAVES = [
    ({"object": "a str is ambiguous"}, "ambiguous"),
    ({"object": 12345}, "object must be"),
    ({"object": io.StringIO("text")}, "binary"),
    ({"object": b"x", "object_id": 7}, "object_id must be a str"),
    ({"object": b"x", "object_id": ""}, "empty"),
    ({"object": b"x", "object_id": "x" * 513}, "limit"),
    ({"object": b"x", "object_id": "a/b"}, "'/'"),
    ({"object": b"x", "object_id": "\udcff"}, "Unicode"),
    ({"object": b"x", "workflow_id": 5}, "workflow_id"),
    ({"object": b"x", "task_id": b"bytes"}, "task_id"),
    ({"object": b"x", "type": ["list"]}, "type"),
    ({"object": b"x", "custom_metadata": "not a dict"}, "custom_metadata"),
    ({"object": b"x", "custom_metadata": {1: "int key"}}, "keys must be str"),
    ({"object": b"x", "custom_metadata": {"n": 2**64}}, "64 bits"),
    ({"object": b"x", "custom_metadata": {"f": {1, 2}}}, "set"),
    ({"object": b"x", "tags": "one-string"}, "tags"),
    ({"object": b"x", "tags": ["ok", 3]}, "tag"),
    ({"object": b"x", "content_type": "not a mime type"}, "content_type"),
    ({"object": b"x", "control_version": "yes"}, "control_version"),
    ({"object": b"x", "save_data_in_collection": 1}, "save_data_in_collection"),
    ({"object": Path("/nonexistent/file.bin")}, "cannot read"),
    # found by tests/test_store_fuzz.py: these raised bare ValueError/TypeError/UnicodeEncodeError
    ({"object": Path("a\x00b")}, "cannot read"),
    ({"object": Path("/tmp/\ud800.bin")}, "cannot read"),
    ({"object": _closed(io.BytesIO(b"x"))}, "closed"),
    ({"object": _Reader(5), "save_data_in_collection": True}, "must return bytes"),
    # found by tests/test_store_fuzz.py: accepted, then refused by the encoder (or served as a broken header)
    ({"object": b"x", "content_type": "image/png\n"}, "content_type"),
    ({"object": b"x", "content_type": "text/plain; a=b\r\nSet-Cookie: c=d"}, "content_type"),
    ({"object": b"x", "content_type": "text/plain; charset=\ud800"}, "content_type"),
    ({"object": b"x", "content_type": "image/p\u00efng"}, "content_type"),
    ({"object": b"x", "content_type": "text/plain; x=" + "y" * 2000}, "content_type"),
    # a Blob refuses such a type when made (tests/test_blob.py); a subclass can still declare one
    ({"object": _InjectingBlob(b"x")}, "content_type"),
    # found by tests/test_store_fuzz.py: type and object_type were compared before either was checked
    ({"object": b"x", "type": _CYCLIC, "object_type": _OTHER_CYCLIC}, "type must be a str"),
]


@pytest.mark.parametrize("kwargs, message", BAD_SAVES, ids=[m for _, m in BAD_SAVES])
def test_bad_save_arguments(store: microblob.Store, kwargs: dict, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        store.save_or_update_object(**kwargs)
    assert store.query({}) == []
    assert store.query({}, collection="fs.files") == []
    assert list(store.backend.chunks.file_ids()) == []


def test_deep_nesting_is_refused(store: microblob.Store) -> None:
    meta: dict = {}
    inner = meta
    for _ in range(200):
        inner["x"] = {}
        inner = inner["x"]
    with pytest.raises(InvalidArgument, match="deeper"):
        store.save_or_update_object(b"x", custom_metadata=meta)


def _nest(levels: int, wrap: Any, inner: Any) -> Any:
    for _ in range(levels):
        inner = wrap(inner)
    return inner


def test_deep_and_cyclic_filters_are_invalid_queries(store: microblob.Store) -> None:
    """Found by tests/test_store_fuzz.py: a 10,000-level (or cyclic) filter raised RecursionError. Filters
    may nest 100 levels, MongoDB's limit for documents and query trees."""
    store.save_or_update_object(b"x", custom_metadata={"a": [[1]]})
    cyclic: dict = {}
    cyclic["self"] = cyclic
    deep_filters = [
        _nest(10_000, lambda f: {"$and": [f]}, {"a": 1}),
        {"a": _nest(10_000, lambda f: {"$elemMatch": f}, {"$gt": 1})},
        {"a": _nest(10_000, lambda f: {"$not": f}, {"$gt": 1})},
        {"a": _nest(10_000, lambda f: [f], 1)},
        {"a": {"$in": [_nest(150, lambda f: {"x": f}, 1)]}},
        {"a": cyclic},
    ]
    for flt in deep_filters:
        for call in (store.query, store.blob_object_query, store.count_objects, store.files.find):
            with pytest.raises(InvalidQuery, match="deeper than 100"):
                call(flt)
    with pytest.raises(InvalidQuery, match="deeper than 100"):
        store.backend.collection("things").update_one({}, {"$set": {"a": _nest(10_000, lambda f: [f], 1)}})
    # 100 levels are fine: any filter that can match a stored document fits
    deepest = _nest(97, lambda f: {"x": f}, 1)
    assert store.query({"custom_metadata.a": _nest(97, lambda f: {"$not": f}, {"$size": 5})}) != []  # odd: $size != 5
    assert store.query({"custom_metadata": deepest}) == []


def test_documents_mongodb_could_not_store_are_refused(store: microblob.Store) -> None:
    """Found by tests/test_store_fuzz.py: 1.5 million one-letter tags are 3 MB as msgpack (the size the
    embedded store measured) but 22 MB as BSON, over MongoDB's 16 MiB; and a lone surrogate reached the
    encoder of each backend (msgpack's or pymongo's) instead of the shared check."""
    with pytest.raises(InvalidArgument, match="as BSON"):
        store.save_or_update_object(b"x", tags=["x"] * 1_500_000)
    with pytest.raises(InvalidArgument, match="as BSON"):
        store.save_or_update_object(b"x", custom_metadata={"n": [0] * 1_500_000})
    for meta in ({"a": "\ud800"}, {"\udcff": 1}, {"a": [{"b": "x\udfff"}]}):
        with pytest.raises(InvalidArgument, match="lone surrogates"):
            store.save_or_update_object(b"x", custom_metadata=meta)
    with pytest.raises(InvalidArgument, match="lone surrogates"):
        store.files.upload_from_stream("name", b"x", metadata={"k": "\ud800"})
    assert store.query({}) == []
    object_id = store.save_or_update_object(b"x", tags=["x"] * 500_000)  # 7.4 MB as BSON: fine
    assert len(store.get_blob_object(object_id).tags) == 500_000


def test_inline_payload_over_the_document_limit(store: microblob.Store) -> None:
    big = io.BytesIO(b"\0" * (microblob.store.INLINE_LIMIT + 1))
    with pytest.raises(InvalidArgument, match="too large to store inline"):
        store.save_or_update_object(big, save_data_in_collection=True)
    assert store.query({}) == []


def test_bad_lookups(store: microblob.Store) -> None:
    object_id = store.save_or_update_object(b"x")
    with pytest.raises(ObjectNotFound):
        store.get_blob_object("missing")
    with pytest.raises(VersionNotFound):
        store.get_blob_object(object_id, version=1)
    for bad in (-1, "1", 1.0, True):
        with pytest.raises(InvalidArgument):
            store.get_blob_object(object_id, version=bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="type must be a str"):  # found by tests/test_store_fuzz.py:
        store.update_object_metadata(object_id, type=_CYCLIC, object_type=_OTHER_CYCLIC)  # RecursionError
    # found by tests/test_store_fuzz.py: the second pair was checked only after the first was looked up
    with pytest.raises(InvalidArgument, match="b must be a str"):
        store.blob_objects_equal("missing", 5)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="version_b"):
        store.blob_objects_equal("missing", object_id, None, -1)
    for bad_id in (None, 1, b"bytes", ["list"]):
        with pytest.raises(InvalidArgument):
            store.get_blob_object(bad_id)  # type: ignore[arg-type]
        with pytest.raises(InvalidArgument):
            store.get_object_history(bad_id)  # type: ignore[arg-type]
        with pytest.raises(InvalidArgument):
            store.delete_object(bad_id)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "bad_filter",
    [
        {"$gt": 1},
        {"type": {"$regexx": "a"}},
        {"$or": {"a": 1}},
        {"$and": []},
        {"version": {"$in": 5}},
        "type == 'x'",
        ["type"],
    ],
)
def test_malformed_filters(store: microblob.Store, bad_filter: object) -> None:
    store.save_or_update_object(b"x", type="t")
    with pytest.raises(InvalidQuery):
        store.blob_object_query(bad_filter)  # type: ignore[arg-type]
    with pytest.raises(InvalidQuery):
        store.query(bad_filter)  # type: ignore[arg-type]


def test_skip_and_limit_beyond_64_bits_are_invalid_arguments(store: microblob.Store) -> None:
    """Found by tests/test_store_fuzz.py: skip/limit of 2**64 raised a bare ValueError (itertools.islice)."""
    store.save_or_update_object(b"x")
    for big in (2**63, 2**64, 2**100):
        for call, kwargs in ((store.query, {"skip": big}), (store.query, {"limit": big}),
                             (store.blob_object_query, {"skip": big, "sort": "version"}),
                             (store.files.find, {"limit": big})):
            with pytest.raises(InvalidArgument, match="2\\*\\*63"):
                call({}, **kwargs)
    assert store.query({}, skip=2**63 - 1) == []
    assert len(store.query({}, limit=2**63 - 1)) == 1
    assert store.query({"size": 1}, skip=2**63 - 1, limit=2**63 - 1) == []  # the sum overflowed islice


def test_ids_and_filters_no_key_can_hold(store: microblob.Store) -> None:
    """Found by tests/test_store_fuzz.py: {"_id": <lone surrogate or 2**64>} took the exact-id fast path
    of the embedded backends and raised a bare UnicodeEncodeError/OverflowError; a filter that is not a
    dict raised AttributeError there (files.find([1])); and lone surrogates elsewhere in a filter were
    accepted by the embedded backends although MongoDB can never receive them."""
    store.save_or_update_object(b"x", object_id="x")
    bad_filters: list[Any] = [
        {"_id": "\ud800"}, {"_id": 2**64}, {"_id": {"$in": ["\udcff"]}}, {"object_id": "a\udfffb"},
        {"\ud800": 1}, {"custom_metadata": {"$eq": {"\ud800": 1}}}, {"type": {"$regex": "\ud800"}},
        [1], "x",
    ]
    for flt in bad_filters:
        for call in (store.query, store.blob_object_query, store.count_objects, store.files.find):
            with pytest.raises(InvalidQuery):
                call(flt)
    with pytest.raises(InvalidQuery):
        store.query({}, sort=[("\ud800", 1)])
    with pytest.raises(InvalidQuery):
        store.query({}, projection={"\ud800": 1})
    assert [d["_id"] for d in store.query({"_id": "x"})] == ["x"]


def test_bad_query_arguments(store: microblob.Store) -> None:
    with pytest.raises(InvalidArgument):
        store.query({}, collection="fs.pending")
    with pytest.raises(InvalidArgument):
        store.blob_object_query({}, limit=-5)
    with pytest.raises(InvalidQuery):
        store.blob_object_query({}, sort=[("type", 2)])
    for bad_sort in ([(1, 1)], [("type", 2)], 5, [("$a", 1)]):  # found by tests/test_store_fuzz.py: the
        with pytest.raises(InvalidQuery):                          # exact-_id fast path ignored the sort
            store.query({"_id": "some-id"}, sort=bad_sort)
    with pytest.raises(InvalidQuery):
        store.query({}, projection={"a": 1, "b": 0})


def test_connect_create_false_opens_only_an_existing_store(tmp_path: Path) -> None:
    """A mistyped path must be an error for code that only reads, not a new empty store."""
    missing = tmp_path / "typo.db"
    for uri in (missing, str(missing), f"lmdb://{missing}", f"mongita://{tmp_path / 'no-dir'}", "memory://"):
        with pytest.raises(microblob.StoreNotFound) as info:
            microblob.connect(uri, create=False)
        assert isinstance(info.value, microblob.NotFound) and "no store at" in str(info.value)
    assert list(tmp_path.iterdir()) == []  # nothing was created on the way
    with microblob.connect(missing) as store:  # create=True, the default, makes it
        store.save_or_update_object(b"x", object_id="a")
    with microblob.connect(missing, create=False) as store:
        assert store.get_blob_object("a").data == b"x"
    with pytest.raises(InvalidArgument, match="create must be a bool"):
        microblob.connect(missing, create="no")
