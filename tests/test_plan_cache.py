"""The planner's cache of what it knows about indexes (which exist, which have ALWAYS or MULTI entries)
is keyed by the `plan` token stored in the file: another process or another Store handle that creates or
drops an index, or files the first array or unkeyable value under one, changes the plan of the next
query here, and its results stay those of a store without indexes."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import microblob
from microblob.engine.planner import Index

FIELD = "custom_metadata.x"


def _save(store: microblob.Store, oid: str, x: Any) -> None:
    store.save_or_update_object(oid.encode(), object_id=oid, custom_metadata={"x": x}, save_data_in_collection=True)


def _seed(*stores: microblob.Store) -> None:
    for i in range(40):
        for store in stores:
            _save(store, f"o{i:02d}", (i * 7) % 40)


def _ids(store: microblob.Store, filter: dict | None = None, sort: list | None = None) -> list[str]:
    return [d["_id"] for d in store.query(filter, sort=sort, projection={"data": 0})]


def test_an_index_another_process_creates_or_drops_is_used_or_not_by_the_next_query(
        lmdb_path: Path, run_python: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    reference = microblob.connect("memory://")  # the same documents, no user index: the right answers
    with microblob.connect(lmdb_path) as store:
        _seed(store, reference)
        eq, rng = {FIELD: 21}, {FIELD: {"$gte": 10, "$lt": 20}}
        assert store.explain(eq)["index"] != "x_index"
        assert _ids(store, eq) == _ids(reference, eq)  # the plan is cached from here on
        run_python("import microblob, sys\n"
                   "with microblob.connect(sys.argv[1]) as s: s.create_index('custom_metadata.x', name='x_index')",
                   str(lmdb_path))
        assert store.explain(eq)["index"] == "x_index"
        assert store.explain(rng, sort=[(FIELD, 1)])["sort"] == "index order"
        assert _ids(store, eq) == _ids(reference, eq)
        assert _ids(store, rng, sort=[(FIELD, 1)]) == _ids(reference, rng, sort=[(FIELD, 1)])
        run_python("import microblob, sys\n"
                   "with microblob.connect(sys.argv[1]) as s: s.drop_index('x_index')", str(lmdb_path))
        assert store.explain(eq)["index"] != "x_index"
        assert _ids(store, rng, sort=[(FIELD, 1)]) == _ids(reference, rng, sort=[(FIELD, 1)])
    reference.close()


def test_an_array_or_unkeyable_value_another_handle_files_changes_the_next_plan(lmdb_path: Path) -> None:
    reference = microblob.connect("memory://")
    with microblob.connect(lmdb_path) as mine, microblob.connect(lmdb_path) as other:
        _seed(mine, reference)
        mine.create_index(FIELD)
        by_x = [(FIELD, 1)]
        assert mine.explain(None, sort=by_x)["sort"] == "index order"
        assert _ids(mine, sort=by_x) == _ids(reference, sort=by_x)  # cached: no markers
        for store in (other, reference):
            _save(store, "array", [-5, 100])  # sorts first (by its smallest element), filed twice
        plan = mine.explain({FIELD: {"$gte": 0}}, sort=by_x)
        assert plan["multikey"] is True and plan["sort"] == "in memory", plan
        assert _ids(mine, sort=by_x) == _ids(reference, sort=by_x)
        assert _ids(mine, sort=by_x)[0] == "array"
        assert _ids(mine, {FIELD: {"$gt": 50}}) == ["array"]  # found through its second entry
        for store in (other, reference):
            _save(store, "nested", {"deep": 1})  # no key of its own: filed under ALWAYS, sorts after numbers
        assert _ids(mine, sort=by_x) == _ids(reference, sort=by_x)
        assert _ids(mine, sort=by_x)[-1] == "nested"
        assert _ids(mine, {FIELD: {"deep": 1}}) == ["nested"]
        other.delete_object("array")
        other.delete_object("nested")
        assert mine.explain(None, sort=by_x)["sort"] == "index order"  # both markers gone: served again
        reference.delete_object("array")
        reference.delete_object("nested")
        assert _ids(mine, sort=by_x) == _ids(reference, sort=by_x)
    reference.close()


@pytest.mark.parametrize("kind", ["lmdb", "memory"])
def test_markers_are_probed_once_per_plan_token(kind: str, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    probes: list[str] = []
    real = Index.markers

    def counting(self: Index, txn: Any) -> tuple[bool, bool]:
        if self.name == FIELD + "_1":  # the save path plans on other indexes of its own (object_id)
            probes.append(self.name)
        return real(self, txn)

    monkeypatch.setattr(Index, "markers", counting)
    uri = str(tmp_path / "s.db") if kind == "lmdb" else "memory://"
    with microblob.connect(uri) as store:
        _seed(store)
        store.create_index(FIELD)
        eq = {FIELD: 14}
        store.query(eq)
        probes.clear()
        for _ in range(3):
            assert len(store.query(eq)) == 1
        assert probes == []  # the same token: nothing probed
        _save(store, "plain", 14)  # a scalar: no marker, the token stays
        assert len(store.query(eq)) == 2 and probes == []
        _save(store, "array", [14, 15])  # the first MULTI entry: a new token, probed again
        assert len(store.query(eq)) == 3
        assert probes == [FIELD + "_1"]
        probes.clear()
        assert len(store.query(eq)) == 3 and probes == []


def test_a_file_without_a_plan_token_is_probed_every_time_until_a_change_writes_one(
        lmdb_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An older version's file has no token and may be opened read-only: it is planned right, without a
    cache, and the first marker change writes a token."""
    with microblob.connect(lmdb_path) as store:
        _seed(store)
        store.create_index(FIELD)
        store.backend.engine.write(lambda txn: txn.delete("meta", b"plan"))  # as an older version left it
    probes: list[str] = []
    real = Index.markers

    def counting(self: Index, txn: Any) -> tuple[bool, bool]:
        if self.name == FIELD + "_1":
            probes.append(self.name)
        return real(self, txn)

    monkeypatch.setattr(Index, "markers", counting)
    with microblob.connect(lmdb_path) as store:
        with store.backend.engine.read() as txn:
            assert txn.get("meta", b"plan") is None  # opening wrote nothing
        eq = {FIELD: 14}
        assert len(store.query(eq)) == 1 and len(store.query(eq)) == 1
        assert probes == [FIELD + "_1"] * 2
        _save(store, "array", [14, 15])
        probes.clear()
        assert len(store.query(eq)) == 2 and len(store.query(eq)) == 2
        assert probes == [FIELD + "_1"]
