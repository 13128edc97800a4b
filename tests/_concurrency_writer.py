"""One writer process of tests/test_concurrency.py: THREADS threads saving into one store file.

    python _concurrency_writer.py DB PROCESS ITERATIONS SHARED_ID [SHARED_ID ...]

Every thread updates the shared objects (`control_version=True`) and now and then creates a new object.
Each save that returned is recorded with the version it produced (read back: the latest, or the history
entry carrying the save's tag) and the sha256 of its payload. At the end, one JSON document on stdout:
`{"process", "saves": [...], "errors": [...], "map_sizes": [...]}` (every map size this process had
after a save: more than one means it grew the map or adopted another process's growth); exit 1 if any
thread raised.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
import threading
import traceback
from typing import Any

THREADS = 4
SMALL_MAX = 40_000
# A little over the LMDB backend's 1 MiB chunk: two chunks, the second partial.
LARGE_BASE = 1024 * 1024 + 200 * 1024


def plan(process: int, thread: int, i: int) -> dict[str, Any]:
    """What save number `i` of (process, thread) does: deterministic, so the test can recompute it."""
    create = i % 10 == 9
    large = i % 8 == 0 or i == 19
    inline = not create and not large and i % 4 == 2
    small = 1 + (process * 977 + thread * 131 + i * 4099) % SMALL_MAX
    size = LARGE_BASE + (i * 7919) % (100 * 1024) if large else small
    return {"create": create, "large": large, "inline": inline, "size": size}


def payload(process: int, thread: int, i: int, size: int) -> bytes:
    """Bytes unique to (process, thread, i): no two saves in a run carry the same sha256."""
    return f"{process}-{thread}-{i}|".encode() + random.Random(f"{process}-{thread}-{i}").randbytes(size)


def _run_thread(store: Any, process: int, thread: int, iterations: int, shared: list[str],
                saves: list[dict[str, Any]], errors: list[str], map_sizes: set[int]) -> None:
    try:
        for i in range(iterations):
            step = plan(process, thread, i)
            data = payload(process, thread, i, step["size"])
            tag = f"{process}-{thread}-{i}"
            if step["create"]:
                object_id = store.save_or_update_object(
                    data, type="new", custom_metadata={"tag": tag}, control_version=True)
            else:
                object_id = shared[(process * THREADS + thread + i) % len(shared)]
                got = store.save_or_update_object(
                    data, object_id=object_id, type="shared", custom_metadata={"tag": tag},
                    control_version=True, save_data_in_collection=step["inline"])
                if got != object_id:
                    raise AssertionError(f"saved to {object_id}, got back {got}")
            # Read back which version this save became: still the latest, or archived in the history.
            latest = store.get_blob_object(object_id)
            if latest.custom_metadata.get("tag") == tag:
                version = latest.version
            else:
                found = store.query({"object_id": object_id, "custom_metadata.tag": tag},
                                    collection="object_history", projection={"version": 1})
                if len(found) != 1:
                    raise AssertionError(f"save {tag} of {object_id}: {len(found)} history entries carry it")
                version = found[0]["version"]
            saves.append({"object_id": object_id, "version": version, "sha256": hashlib.sha256(data).hexdigest(),
                          "size": len(data), "tag": tag, "process": process, "thread": thread, "i": i,
                          "create": step["create"], "inline": step["inline"]})
            map_sizes.add(store.backend.engine.map_size())
    except BaseException:
        errors.append(f"thread {thread}: {traceback.format_exc()}")


def main(argv: list[str]) -> int:
    import microblob

    db, process, iterations, shared = argv[0], int(argv[1]), int(argv[2]), argv[3:]
    saves: list[dict[str, Any]] = []
    errors: list[str] = []
    with microblob.connect(db) as store:
        map_sizes = {store.backend.engine.map_size()}
        threads = [threading.Thread(target=_run_thread,
                                    args=(store, process, t, iterations, shared, saves, errors, map_sizes))
                   for t in range(THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    json.dump({"process": process, "saves": saves, "errors": errors, "map_sizes": sorted(map_sizes)}, sys.stdout)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
