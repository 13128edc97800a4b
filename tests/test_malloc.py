"""glibc's allocator is tuned once per process so large saves reuse LMDB's page copies (microblob/engine/malloc.py).

What is checked is the mechanism, in page faults rather than seconds: a 32 MiB save into a warmed-up store
faults in almost no new memory when the settings are in effect, and thousands of pages when the environment
opts out (LMDB's per-commit page copies handed back to the OS at each commit and faulted in again).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from microblob.files import DEFAULT_BATCH_BYTES

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc tuning is Linux-only")

CHILD = r"""
import json, os, resource, sys
import microblob
from microblob.engine import malloc as _malloc

store = microblob.connect(sys.argv[1])
payload = os.urandom(32 * 1024 * 1024)
store.save_or_update_object(payload, object_id="warm-up")  # the heap grows to its working size once
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
store.save_or_update_object(payload, object_id="measured")
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
assert store.get_blob_object("measured").data == payload
store.close()
print(json.dumps({"tuned": _malloc.tune_malloc(), "faults": faults}))
"""

NO_CHOICE = {"MALLOC_MMAP_THRESHOLD_": None, "MALLOC_TRIM_THRESHOLD_": None, "GLIBC_TUNABLES": None}
PAGES_OF_A_BATCH = DEFAULT_BATCH_BYTES // 4096


def _run(run_python: Callable, path: Path, env: dict[str, str | None]) -> dict:
    proc = run_python(CHILD, str(path), env_overrides=env)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_large_save_reuses_the_heap_instead_of_faulting_it_in_again(run_python: Callable, tmp_path: Path) -> None:
    tuned = _run(run_python, tmp_path / "tuned.db", NO_CHOICE)
    assert tuned["tuned"] is True
    # 32 MiB in batches: re-faulting each batch's page copies would be 8 x PAGES_OF_A_BATCH pages.
    assert tuned["faults"] < PAGES_OF_A_BATCH, tuned


@pytest.mark.parametrize("variable", ["MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES"])
def test_the_environment_can_opt_out_and_then_the_faults_show(
    run_python: Callable, tmp_path: Path, variable: str
) -> None:
    value = "glibc.malloc.trim_threshold=131072" if variable == "GLIBC_TUNABLES" else "131072"
    untuned = _run(run_python, tmp_path / "untuned.db", {**NO_CHOICE, variable: value})
    assert untuned["tuned"] is False  # left alone: the environment chose
    # 128 KiB: the trim threshold hands each commit's pages back; as the mmap threshold, it maps each one apart.
    assert untuned["faults"] > 4 * PAGES_OF_A_BATCH, untuned
