"""`$regex` matching has a time budget per query: a pattern that backtracks over stored text raises
`QueryTimeout` (Python API) or answers 400 JSON (HTTP), and while it runs the server keeps serving
everyone else (matching releases the GIL, off the event loop)."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

import microblob
from microblob import InvalidArgument, InvalidQuery, QueryTimeout, regex_budget
from microblob.engine.regex import MAX_EXPANSION, expansion

HOSTILE = "a.*a.*a.*b"  # polynomial: no "bad shape", minutes over a few thousand characters


def test_query_timeout_is_in_the_exception_tree() -> None:
    assert issubclass(QueryTimeout, InvalidQuery) and issubclass(QueryTimeout, TimeoutError)
    assert "QueryTimeout" in microblob.__all__ and "regex_budget" in microblob.__all__


def test_python_api_raises_query_timeout(embedded_store: microblob.Store) -> None:
    embedded_store.save_or_update_object(b"x", object_id="long", custom_metadata={"note": "a" * 3000})
    embedded_store.save_or_update_object(b"y", object_id="short", custom_metadata={"note": "ab"})
    with regex_budget(0.3), pytest.raises(QueryTimeout) as caught:
        embedded_store.blob_object_query({"custom_metadata.note": {"$regex": HOSTILE}})
    assert caught.value.pattern == HOSTILE and caught.value.budget == 0.3
    assert "a.*a.*a.*b" in str(caught.value)
    with regex_budget(0.3), pytest.raises(QueryTimeout):  # the same budget for $in, $not, $all and counts
        embedded_store.count_objects({"custom_metadata.note": {"$in": [re.compile(HOSTILE)]}})
    with regex_budget(0.3), pytest.raises(QueryTimeout):
        embedded_store.query({"custom_metadata.note": {"$not": {"$regex": HOSTILE}}})
    # nothing changed, and a pattern that does not backtrack still answers under the same budget
    with regex_budget(0.3):
        found = embedded_store.blob_object_query({"custom_metadata.note": {"$regex": "^ab$"}})
    assert [o.object_id for o in found] == ["short"]
    assert embedded_store.count_objects() == 2


def test_budget_is_per_query_not_per_document(embedded_store: microblob.Store) -> None:
    """Each document alone stays under the budget; all of them together do not."""
    for i in range(40):
        embedded_store.save_or_update_object(b"x", object_id=f"o{i}", custom_metadata={"note": "a" * 400})
    with regex_budget(2.0):  # one document alone: ~0.15 s of matching
        assert embedded_store.query({"_id": "o0", "custom_metadata.note": {"$regex": HOSTILE}}) == []
    with regex_budget(0.5), pytest.raises(QueryTimeout):
        embedded_store.query({"custom_metadata.note": {"$regex": HOSTILE}})


def test_regex_budget_arguments_are_checked(make_server: Any) -> None:
    for bad in (0, -1, float("nan"), float("inf"), "1", True):
        with pytest.raises(InvalidArgument), regex_budget(bad):
            pass
        with pytest.raises(InvalidArgument):
            make_server({}, store=microblob.connect("memory://"), regex_budget=bad)


def test_patterns_that_unroll_huge_are_refused_before_compiling(embedded_store: microblob.Store) -> None:
    """`regex` unrolls counted repeats when it compiles, which no timeout covers."""
    embedded_store.save_or_update_object(b"x", object_id="a")
    for pattern in ["((((a{100}){100}){100}){100})", "a{99999999999}", f"x{{{MAX_EXPANSION + 1}}}"]:
        assert expansion(pattern) > MAX_EXPANSION
        with pytest.raises(InvalidQuery, match="unroll"):
            embedded_store.query({"object_id": {"$regex": pattern}})
    for pattern in ["[a-f0-9]{64}", r"^\d{4}-\d{2}-\d{2}$", "(ab){3}c", r"\{5\}", "x{2,5}"]:
        assert expansion(pattern) <= MAX_EXPANSION
        assert embedded_store.query({"object_id": {"$regex": pattern}}) == []


def test_flags_of_compiled_patterns_carry_over(embedded_store: microblob.Store) -> None:
    embedded_store.save_or_update_object(b"x", object_id="o", type="Été")
    by_type = lambda flt: [o.object_id for o in embedded_store.blob_object_query(flt)]  # noqa: E731
    assert by_type({"type": re.compile(r"^\w+$")}) == ["o"]
    assert by_type({"type": re.compile(r"^\w+$", re.ASCII)}) == []
    assert by_type({"type": re.compile("^été$", re.IGNORECASE)}) == ["o"]
    assert by_type({"type": {"$regex": "^été$", "$options": "i"}}) == ["o"]
    assert by_type({"type": re.compile("^É # comment", re.VERBOSE)}) == ["o"]


def test_a_backtracking_regex_does_not_stop_other_clients(make_server: Any, live: Any, tmp_path: Path) -> None:
    """The hostile listing runs in one thread; meanwhile another client's listing completes (the hostile
    one is still running then), and the hostile one ends in a 400 QueryTimeout instead of minutes."""
    store = microblob.connect(tmp_path / "store.db")
    store.save_or_update_object(b"x", object_id="long", custom_metadata={"note": "a" * 3000})
    store.save_or_update_object(b"y", object_id="plain", type="image")
    entered = threading.Event()

    def observed(query: Any) -> Any:  # tells the test the hostile query has started
        def call(flt: Any = None, *args: Any, **kwargs: Any) -> Any:
            if "$regex" in json.dumps(flt):
                entered.set()
            return query(flt, *args, **kwargs)
        return call

    store.query = observed(store.query)  # type: ignore[method-assign]
    store.blob_object_query = observed(store.blob_object_query)  # type: ignore[method-assign]
    base = live(make_server({}, store=store, regex_budget=3.0))
    hostile: dict[str, Any] = {}

    def send_hostile() -> None:
        with httpx.Client(base_url=base, timeout=120) as client:
            r = client.get("/objects/", params={"filter": json.dumps({"custom_metadata.note": {"$regex": HOSTILE}})})
            hostile["response"] = r

    thread = threading.Thread(target=send_hostile)
    thread.start()
    try:
        assert entered.wait(60)
        with httpx.Client(base_url=base, timeout=60) as client:
            for _ in range(3):
                r = client.get("/objects/", params={"filter": json.dumps({"type": "image"})})
                assert r.status_code == 200 and [o["object_id"] for o in r.json()] == ["plain"]
                assert thread.is_alive() and "response" not in hostile  # served while the hostile one runs
    finally:
        thread.join(120)
    r = hostile["response"]
    assert r.status_code == 400 and r.headers["content-type"].startswith("application/json"), r.text
    assert r.json()["error"] == "QueryTimeout" and "3 s" in r.json()["detail"]


@pytest.mark.parametrize("pattern", ["a*a*a*b", "(.*){12}b", "a.*a.*a.*b", "^(a+)+$", r"(\w+\s?)+$"])
def test_issue_patterns_are_answered_or_stopped(make_server: Any, live: Any, pattern: str) -> None:
    """Each is either answered correctly or stopped by its budget with a 400; never a frozen server."""
    store = microblob.connect("memory://")
    store.save_or_update_object(b"x", object_id="long", type="a" * 1000 + "!")
    base = live(make_server({}, store=store, regex_budget=1.0))
    with httpx.Client(base_url=base, timeout=60) as client:
        r = client.get("/objects/", params={"filter": json.dumps({"type": {"$regex": pattern}})})
        assert (r.status_code, r.json()) == (200, []) or (r.status_code == 400 and r.json()["error"] ==
                                                          "QueryTimeout"), r.text
        assert [o["object_id"] for o in client.get("/objects/").json()] == ["long"]


@pytest.mark.parametrize("pattern", ["^scan-", "png$", "a.b", r"^\d{4}-\d{2}$", "(jpg|png)$", "x|Y", "^$",
                                     "(?:ab|cd)e*", "a+b?c*", "[^a-c]+x", r"\bword\b", "(a)(b)", "(a+)+$",
                                     r"(\w)\1", "(?=a)a", "a{2,3}"])
@pytest.mark.parametrize("flags", [0, re.IGNORECASE, re.MULTILINE | re.DOTALL])
def test_both_engines_agree(pattern: str, flags: int) -> None:
    """Short texts of simple patterns run on `re` (no timeout to pay for), the rest on `regex`: the
    answers are `re`'s either way."""
    from microblob.engine.regex import compile_pattern

    texts = ["", "scan-1", "x.png", "a\nb", "2024-06", "abcde", "cdeee", "aab", "xyz x", "a word.", "ab",
             "ZZx", "aa", "aaa", "Y", "A.B"]
    texts += [t * 200 for t in texts if t]  # long enough for the `regex` path
    test = compile_pattern(pattern, flags)
    for text in texts:
        assert test(text) == (re.search(pattern, text, flags) is not None), (pattern, text[:20])
