"""Workflows (docs/ARCHITECTURE.md, "Objects and versions"): the current workflow per thread and per asyncio task."""

from __future__ import annotations

import asyncio
import threading

import pytest

import microblob
from microblob import Workflow, current_workflow_id


def test_objects_saved_inside_take_the_workflow_id(store: microblob.Store) -> None:
    assert current_workflow_id() is None
    with Workflow(name="outer", store=store, custom_metadata={"operator": "kim"}) as outer:
        a = store.save_or_update_object(b"a")
        with Workflow(name="inner", store=store) as inner:
            b = store.save_or_update_object(b"b")
            c = store.save_or_update_object(b"c", workflow_id="explicit")
        d = store.save_or_update_object(b"d")
    assert current_workflow_id() is None
    assert store.get_blob_object(a).workflow_id == outer.workflow_id
    assert store.get_blob_object(b).workflow_id == inner.workflow_id
    assert store.get_blob_object(c).workflow_id == "explicit"
    assert store.get_blob_object(d).workflow_id == outer.workflow_id
    docs = {w["name"]: w for w in store.query({}, collection="workflows")}
    assert docs["outer"]["custom_metadata"] == {"operator": "kim"}
    assert docs["outer"]["started_at"] <= docs["inner"]["started_at"] <= docs["inner"]["ended_at"]


def test_failed_block_is_recorded(store: microblob.Store) -> None:
    with pytest.raises(ZeroDivisionError), Workflow(name="crash", store=store) as wf:
        raise ZeroDivisionError("the block failed")
    assert store.get_workflow(wf.workflow_id)["status"] == "error"
    with pytest.raises(microblob.NotFound):
        store.get_workflow("nope")


def test_threads_do_not_see_each_others_workflow() -> None:
    seen: dict[str, str | None] = {}
    barrier = threading.Barrier(2)

    def run(name: str) -> None:
        with Workflow(name=name, workflow_id=f"wf-{name}"):
            barrier.wait()
            seen[name] = current_workflow_id()

    threads = [threading.Thread(target=run, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {"a": "wf-a", "b": "wf-b"}


def test_asyncio_tasks_do_not_see_each_others_workflow() -> None:
    async def task(name: str) -> str | None:
        async with Workflow(name=name, workflow_id=f"wf-{name}"):
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            return current_workflow_id()

    async def main() -> list[str | None]:
        return await asyncio.gather(task("x"), task("y"))

    assert asyncio.run(main()) == ["wf-x", "wf-y"]


def test_bad_workflow_arguments() -> None:
    with pytest.raises(microblob.InvalidArgument):
        Workflow(name=3)  # type: ignore[arg-type]
    with pytest.raises(microblob.InvalidArgument):
        Workflow(store="not a store")  # type: ignore[arg-type]
    with pytest.raises(microblob.InvalidArgument):
        Workflow(workflow_id="")
