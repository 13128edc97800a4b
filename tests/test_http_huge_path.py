"""Path components made of digits, in sort, filter, projection and update paths.

- Up to 19 digits and at most 2**63 - 1, a component is an array position (and a field name in a
  subdocument). Beyond that it can never select an array element (no array is that long): it is a field
  name only, as in MongoDB, and `int()` is never asked to convert it.
- Over 4,300 digits (Python's limit for `int(str)`, where `_array_index` raised a bare ValueError: a 500
  over HTTP, a traceback in the CLI) it is refused with `InvalidQuery` on every backend: HTTP 400 JSON
  for `GET /objects/?sort=…` and `?filter=…`, one line and exit 1 from `microblob query` and
  `microblob ls --sort=custom_metadata.…` (`ls` refuses other names it does not know first, exit 2).
- An update may not pad an array by 1,500,000 elements or more (MongoDB's limit) or create a field
  inside an array: `InvalidQuery`, and nothing changes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_cli import Cli, InProcessCli

import microblob
from microblob import InvalidQuery
from microblob.engine.query import compile_update

HUGE = "9" * 4301  # one digit more than int() converts by default
LONG = "9" * 4300  # the most digits a path component may have: a field name
LONG_ZEROS = "1" + "0" * 4299  # sorts before LONG both numerically and as text
BEYOND = str(2**63)  # the first number that is not an array position


@pytest.fixture
def served(make_server: Any, live: Any, store: microblob.Store) -> str:
    store.save_or_update_object(b"a", object_id="a", custom_metadata={"k": [1, 2], "n": 1})
    store.save_or_update_object(b"b", object_id="b", custom_metadata={"k": [3], "d": {LONG: "here"}, "n": 2})
    return live(make_server({}, store=store))


def _ids(answer: httpx.Response) -> list[str]:
    assert answer.status_code == 200, answer.text[:300]
    body = answer.json()
    objects = body["objects"] if isinstance(body, dict) else body
    return [o["object_id"] for o in objects]


@pytest.mark.parametrize("params", [
    {"sort": HUGE},
    {"sort": f"-{HUGE}"},
    {"sort": f"custom_metadata.k.{HUGE},-custom_metadata.n"},
    {"sort": json.dumps([[f"custom_metadata.d.{HUGE}", -1]])},
    {"filter": json.dumps({f"custom_metadata.k.{HUGE}": 1})},
    {"filter": json.dumps({f"custom_metadata.k.{HUGE}": {"$exists": False}})},
    {"filter": json.dumps({"$or": [{"n": 1}, {f"custom_metadata.{HUGE}.x": {"$exists": True}}]})},
    {"filter": json.dumps({"custom_metadata.k": {"$elemMatch": {HUGE: 1}}})},
])
def test_over_4300_digits_is_a_400(served: str, params: dict[str, str]) -> None:
    with httpx.Client(base_url=served, timeout=60) as http:
        answer = http.get("/objects/", params=params)
        assert answer.status_code == 400, answer.text[:300]
        body = answer.json()
        assert body["error"] and "4,301 digits" in body["detail"], body
        assert len(body["detail"]) < 400  # the path is abbreviated, not echoed
        assert _ids(http.get("/objects/", params={"sort": "object_id"})) == ["a", "b"]  # nothing lost


@pytest.mark.parametrize(("params", "expected"), [
    ({"sort": f"{LONG},object_id"}, ["a", "b"]),
    ({"sort": f"custom_metadata.k.{BEYOND},-custom_metadata.n"}, ["b", "a"]),
    ({"sort": json.dumps([[f"custom_metadata.d.{LONG}", -1]])}, ["b", "a"]),
    ({"filter": json.dumps({f"custom_metadata.k.{LONG}": 1})}, []),
    ({"filter": json.dumps({f"custom_metadata.k.{BEYOND}": {"$exists": False}}), "sort": "object_id"}, ["a", "b"]),
    ({"filter": json.dumps({f"custom_metadata.d.{LONG}": "here"})}, ["b"]),
])
def test_up_to_4300_digits_is_a_field_name(served: str, params: dict[str, str], expected: list[str]) -> None:
    with httpx.Client(base_url=served, timeout=60) as http:
        assert _ids(http.get("/objects/", params=params)) == expected


def test_every_store_call_refuses_over_4300_digits(store: microblob.Store) -> None:
    store.save_or_update_object(b"a", object_id="a", custom_metadata={"k": [5, 6]})
    calls = [
        lambda: store.blob_object_query({f"custom_metadata.k.{HUGE}": 5}),
        lambda: store.blob_object_query({}, sort=[(f"custom_metadata.k.{HUGE}", 1)]),
        lambda: store.blob_object_query({}, sort=HUGE),
        lambda: store.query({}, projection={f"custom_metadata.{HUGE}": 1}),
        lambda: store.query({f"custom_metadata.{HUGE}": {"$exists": False}}),
    ]
    for call in calls:
        with pytest.raises(InvalidQuery, match="4,301 digits"):
            call()
    assert [o.object_id for o in store.blob_object_query({})] == ["a"]


def test_long_digit_runs_are_field_names_on_the_store(embedded_store: microblob.Store) -> None:
    embedded_store.save_or_update_object(b"a", object_id="a", custom_metadata={"k": [5, 6], "d": {LONG: 1}})
    embedded_store.save_or_update_object(b"b", object_id="b", custom_metadata={"k": [7]})
    query = embedded_store.blob_object_query
    assert query({f"custom_metadata.k.{LONG}": 5}) == []
    assert [o.object_id for o in query({f"custom_metadata.d.{LONG}": 1})] == ["a"]
    assert [o.object_id for o in query({f"custom_metadata.k.{LONG}": {"$exists": False}}, sort="object_id")] \
        == ["a", "b"]
    assert [o.object_id for o in query({}, sort=[(f"custom_metadata.d.{LONG}", -1)])] == ["a", "b"]
    # the largest position there can be is still a position (of nothing here); one more is a field name
    assert [o.object_id for o in query({"custom_metadata.k.1": 6})] == ["a"]
    assert query({f"custom_metadata.k.{2**63 - 1}": {"$exists": True}}) == []
    assert query({f"custom_metadata.k.{BEYOND}": {"$exists": True}}) == []


def test_update_paths_with_long_digit_runs() -> None:
    doc = {"k": [1], "d": {}}
    for path in (f"k.{LONG}", f"k.{BEYOND}.x"):
        with pytest.raises(InvalidQuery, match="array"):
            compile_update({"$set": {path: 1}})(doc)
    with pytest.raises(InvalidQuery, match="4,301 digits"):
        compile_update({"$set": {f"d.{HUGE}": 1}})
    with pytest.raises(InvalidQuery, match="4,301 digits"):
        compile_update({"$rename": {"d": f"e.{HUGE}"}})
    # applied in field order, numeric names numerically, without int() on them
    assert compile_update({"$set": {f"d.{LONG}": 1, f"d.{LONG_ZEROS}": 2, "d.7": 3}})(doc) == {
        "k": [1], "d": {"7": 3, LONG_ZEROS: 2, LONG: 1}}
    assert list(compile_update({"$set": {f"d.{LONG}": 1, f"d.{LONG_ZEROS}": 2, "d.7": 3}})(doc)["d"]) == [
        "7", LONG_ZEROS, LONG]
    assert compile_update({"$unset": {f"k.{LONG}": ""}})(doc) == doc
    assert doc == {"k": [1], "d": {}}  # the input is never modified


def test_padding_an_array_is_bounded() -> None:
    doc = {"k": [1]}
    for path in ("k.1500001", "k.100000000", f"k.{2**63 - 1}", "k.1500001.x"):
        with pytest.raises(InvalidQuery, match="pad an array"):
            compile_update({"$set": {path: 1}})(doc)
    assert compile_update({"$set": {"k.3": 1}})(doc) == {"k": [1, None, None, 1]}
    assert len(compile_update({"$set": {"k.1500000": 1}})(doc)["k"]) == 1_500_001
    assert doc == {"k": [1]}


def test_an_update_that_pads_too_far_changes_nothing(embedded_store: microblob.Store) -> None:
    docs = embedded_store.backend.collection("things")
    docs.insert_one({"_id": 1, "k": [1]})
    for path in ("k.100000000", f"k.{LONG}", f"k.{HUGE}"):
        with pytest.raises(InvalidQuery):
            docs.update_one({"_id": 1}, {"$set": {path: 1}})
    assert docs.find_one({"_id": 1}) == {"_id": 1, "k": [1]}


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    cli = InProcessCli([sys.executable, "-m", "microblob"], tmp_path)
    cli.put(b"x", "--id", "x", "--meta", "n=1")
    return cli


@pytest.mark.parametrize("sort", [f"custom_metadata.{HUGE}", f"-custom_metadata.{HUGE}",
                                  f"custom_metadata.{HUGE},object_id"],
                         ids=["huge", "-huge", "nested-huge,object_id"])
def test_ls_with_a_huge_sort_component_is_one_line(cli: Cli, sort: str) -> None:
    """Under custom_metadata (the only place `ls --sort` takes names it does not know) the store's digit
    limit applies; a top-level name of digits is no field objects have, refused in one short line."""
    assert "4,301 digits" in cli.fails(1, "ls", f"--sort={sort}")
    assert cli.ok("ls", f"--sort=custom_metadata.{LONG},-custom_metadata.{BEYOND}").splitlines()[1].startswith("x ")
    refused = cli.fails(2, "ls", f"--sort={sort.split('.', 1)[1].split(',')[0]}")
    assert "cannot sort by" in refused and len(refused) < 700, refused


def test_query_with_a_huge_component_is_one_line(cli: Cli) -> None:
    assert "4,301 digits" in cli.fails(1, "query", json.dumps({f"custom_metadata.{HUGE}": {"$exists": False}}))
    assert "4,301 digits" in cli.fails(1, "query", "{}", f"--sort=-{HUGE}")
    assert "4,301 digits" in cli.fails(1, "query", "--explain", json.dumps({f"custom_metadata.n.{HUGE}": 1}))
    filter = json.dumps({f"custom_metadata.{LONG}": {"$exists": False}})
    cli.ok("index", "add", f"custom_metadata.{LONG}", "--name", "long")
    assert [json.loads(line)["object_id"] for line in cli.ok("query", filter, f"--sort={LONG}").splitlines()] == ["x"]
    assert cli.ok("query", "--explain", filter).strip()
