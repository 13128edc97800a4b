"""What a person waits for, as a store grows: microblob's embedded store beside sqlite3 (WAL, the
equivalent indexes) at N objects, measured in the same run, the two sides interleaved.

    python bench/bench_scale.py [--n 10000,100000] [--repeat 21] [--dir /tmp]

For each N, both sides are bulk-loaded without syncing (one transaction per 5,000 objects): N objects of
1 KiB stored inline with realistic metadata (5 types, a workflow per 100 objects, a task, four custom
fields, two tags, created/updated stamps), under the ids the store makes when the caller names none
(`microblob.engine.ids.new_id`), the same on both sides. microblob gets the store's own default indexes plus
`create_index("custom_metadata.exposure_ms")`; sqlite3 gets indexes on updated_at, created_at, type,
workflow_id, task_id and an expression index on json_extract(meta, '$.exposure_ms').

Operations (server-side, no HTTP): the browse page's list (newest first, limit 51, ties by object_id),
the newest object, count of everything, count of one type, a custom-field equality and range with
limit 50, a type query with limit 50; and the file size per object (as loaded, and after a compacting
copy). Every query with a limit has more matches than its limit at every N (exposure_ms takes 100
values, so even at 10k an equality matches ~100 objects): each returns the same number of documents at
every N, so the growth column compares equal work. The bench checks that and prints the counts.
Prints medians and the ratio microblob / sqlite3, and each operation's growth from the smallest N;
writes bench/results/scale.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import microblob  # noqa: E402
from microblob.engine.ids import new_id  # noqa: E402

TYPES = ["image", "spectrum", "scan", "ml_model", "dataset"]
BATCH = 5000
T0 = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)  # noqa: UP017 - runs on 3.10


def make_ids(n: int) -> list[str]:
    """The objects' ids, in save order, as the store makes them."""
    return [new_id() for _ in range(n)]


def make_doc(i: int, rng: random.Random, ids: list[str]) -> dict[str, Any]:
    """One object document as the store writes it for a 1 KiB inline save."""
    data = rng.randbytes(1024)
    stamp = T0 + dt.timedelta(seconds=60 * i, milliseconds=rng.randrange(1000))  # one capture a minute
    oid = ids[i]
    return {
        "_id": oid, "object_id": oid, "workflow_id": f"wf-{i // 100:06d}", "task_id": f"task-{i:08d}",
        "type": TYPES[i % len(TYPES)],
        "custom_metadata": {"exposure_ms": rng.randrange(100), "temperature_k": round(rng.uniform(4, 300), 3),
                            "sample": f"S-{rng.randrange(5000):05d}", "operator": rng.choice(["ana", "bo", "cy"])},
        "tags": ["beamline-7", rng.choice(["calibration", "run", "test"])],
        "content_type": "application/octet-stream", "storage": "inline", "data": data, "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(), "version": 0, "prev_version": None,
        "created_at": stamp, "updated_at": stamp,
    }


def bulk_load(store: microblob.Store, n: int, rng: random.Random, ids: list[str]) -> None:
    """`n` documents of `make_doc` straight into the objects collection, one transaction per BATCH."""
    coll = store.backend.collection("objects")
    for start in range(0, n, BATCH):
        docs = [make_doc(i, rng, ids) for i in range(start, min(n, start + BATCH))]

        def load(docs: list[dict] = docs) -> None:
            for doc in docs:
                coll.insert_one(doc)

        store.backend.atomic(load)


class MicroblobSide:
    name = "microblob"

    def __init__(self, directory: Path, n: int, ids: list[str]) -> None:
        self.path = directory / "scale.db"
        self.store = microblob.connect(self.path, sync=False)  # bulk loading: unsynced on both sides
        bulk_load(self.store, n, random.Random(1), ids)
        self.store.create_index("custom_metadata.exposure_ms")
        self.store.close()
        self.store = microblob.connect(self.path)  # measured as a user opens it: synced

    def ops(self) -> dict[str, Callable[[], Any]]:
        s = self.store
        return {
            "browse list (limit 51)": lambda: s.blob_object_query(None, sort=[("updated_at", -1), ("object_id", 1)],
                                                                  limit=51),
            "newest object": lambda: s.query(None, sort=[("updated_at", -1)], limit=1, projection={"data": 0}),
            "count all": lambda: s.count_objects(),
            "count type=image": lambda: s.count_objects({"type": "image"}),
            "custom eq, limit 50": lambda: s.query({"custom_metadata.exposure_ms": 42}, limit=50,
                                                   projection={"data": 0}),
            "custom range, limit 50": lambda: s.query({"custom_metadata.exposure_ms": {"$gte": 10, "$lt": 12}},
                                                      limit=50, projection={"data": 0}),
            "type query, limit 50": lambda: s.query({"type": "scan"}, limit=50, projection={"data": 0}),
        }

    def size(self) -> int:
        return os.path.getsize(self.path)

    def compacted_size(self) -> int:
        """The file as a compacting copy writes it (pages full: bulk loading in random id order leaves
        LMDB's pages about two-thirds full)."""
        copy = self.path.with_suffix(".compact")
        self.store.backend.engine.copy_to(str(copy), compact=True)
        try:
            return os.path.getsize(copy)
        finally:
            copy.unlink()

    def close(self) -> None:
        self.store.close()


class SqliteSide:
    name = "sqlite3"

    def __init__(self, directory: Path, n: int, ids: list[str]) -> None:
        self.path = directory / "scale.sqlite"
        db = sqlite3.connect(self.path)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=OFF")  # bulk loading: unsynced on both sides
        db.execute("CREATE TABLE objects (id TEXT PRIMARY KEY, object_id TEXT, workflow_id TEXT, task_id TEXT, "
                   "type TEXT, meta TEXT, tags TEXT, content_type TEXT, storage TEXT, data BLOB, size INTEGER, "
                   "sha256 TEXT, version INTEGER, prev_version INTEGER, created_at TEXT, updated_at TEXT)")
        for column in ("updated_at", "created_at", "type", "workflow_id", "task_id"):
            db.execute(f"CREATE INDEX objects_{column} ON objects({column})")
        db.execute("CREATE INDEX objects_exposure ON objects(json_extract(meta, '$.exposure_ms'))")
        rng = random.Random(1)
        for start in range(0, n, BATCH):
            rows = []
            for i in range(start, min(n, start + BATCH)):
                d = make_doc(i, rng, ids)
                rows.append((d["_id"], d["object_id"], d["workflow_id"], d["task_id"], d["type"],
                             json.dumps(d["custom_metadata"]), json.dumps(d["tags"]), d["content_type"],
                             d["storage"], d["data"], d["size"], d["sha256"], d["version"], d["prev_version"],
                             d["created_at"].isoformat(), d["updated_at"].isoformat()))
            db.executemany("INSERT INTO objects VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
            db.commit()
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db.close()
        self.db = sqlite3.connect(self.path)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")

    def ops(self) -> dict[str, Callable[[], Any]]:
        q = self.db.execute
        meta = "id, object_id, workflow_id, task_id, type, meta, tags, content_type, size, sha256, version, " \
               "created_at, updated_at"
        return {
            "browse list (limit 51)": lambda: q(f"SELECT {meta} FROM objects ORDER BY updated_at DESC, object_id "
                                                "LIMIT 51").fetchall(),
            "newest object": lambda: q(f"SELECT {meta} FROM objects ORDER BY updated_at DESC LIMIT 1").fetchall(),
            "count all": lambda: q("SELECT count(*) FROM objects").fetchone(),
            "count type=image": lambda: q("SELECT count(*) FROM objects WHERE type = 'image'").fetchone(),
            "custom eq, limit 50": lambda: q(f"SELECT {meta} FROM objects WHERE json_extract(meta, '$.exposure_ms')"
                                             " = 42 LIMIT 50").fetchall(),
            "custom range, limit 50": lambda: q(f"SELECT {meta} FROM objects WHERE json_extract(meta, "
                                                "'$.exposure_ms') >= 10 AND json_extract(meta, '$.exposure_ms') "
                                                "< 12 LIMIT 50").fetchall(),
            "type query, limit 50": lambda: q(f"SELECT {meta} FROM objects WHERE type = 'scan' LIMIT 50").fetchall(),
        }

    def size(self) -> int:
        return sum(os.path.getsize(p) for p in self.path.parent.glob(self.path.name + "*"))

    def close(self) -> None:
        self.db.close()


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def returned(result: Any) -> int:
    """How many documents (or, for a count, which count) an operation gave."""
    if isinstance(result, list):
        return len(result)
    if isinstance(result, tuple):
        return int(result[0])
    return int(result)


def run(n: int, repeat: int, base: Path) -> dict[str, Any]:
    directory = Path(tempfile.mkdtemp(prefix=f"scale-{n}-", dir=base))
    try:
        started = time.perf_counter()
        ids = make_ids(n)
        sides = [MicroblobSide(directory, n, ids), SqliteSide(directory, n, ids)]
        print(f"N={n}: built both sides in {time.perf_counter() - started:.1f} s", flush=True)
        ops = [side.ops() for side in sides]
        results: dict[str, Any] = {}
        for name in ops[0]:
            counts = [returned(side_ops[name]()) for side_ops in ops]  # warm: maps pages, parses index specs
            if counts[0] != counts[1]:
                raise SystemExit(f"{name} at N={n}: microblob gave {counts[0]}, sqlite3 {counts[1]}")
            samples: list[list[float]] = [[], []]
            for _ in range(repeat):
                for k, side_ops in enumerate(ops):  # interleaved
                    samples[k].append(timed(side_ops[name]))
            mb, sq = (statistics.median(s) for s in samples)
            results[name] = {"microblob_ms": mb * 1e3, "sqlite3_ms": sq * 1e3, "ratio": mb / sq if sq else None,
                             "returned": counts[0]}
        results["bytes per object"] = {"microblob": sides[0].size() / n, "sqlite3": sides[1].size() / n,
                                       "microblob compacted": sides[0].compacted_size() / n}
        for side in sides:
            side.close()
        return results
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", default="10000,100000", help="comma-separated object counts (1000000 takes long)")
    parser.add_argument("--repeat", type=int, default=21)
    parser.add_argument("--dir", default=None, help="where to build the stores (default: the temp dir)")
    args = parser.parse_args()
    counts = [int(x) for x in args.n.split(",")]
    base = Path(args.dir or tempfile.gettempdir())
    all_results: dict[str, Any] = {}
    for n in counts:
        all_results[str(n)] = res = run(n, args.repeat, base)
        print(f"\nN = {n:,} (medians of {args.repeat}; ratio = microblob / sqlite3)")
        for name, r in res.items():
            if name == "bytes per object":
                print(f"  {name:26} microblob {r['microblob']:8.0f}   sqlite3 {r['sqlite3']:8.0f}   "
                      f"(microblob after a compacting copy: {r['microblob compacted']:.0f})")
            else:
                print(f"  {name:26} microblob {r['microblob_ms']:8.3f} ms   sqlite3 {r['sqlite3_ms']:8.3f} ms   "
                      f"ratio {r['ratio']:6.2f}   returned {r['returned']}")
    if len(counts) > 1:
        first = all_results[str(counts[0])]
        for n in counts[1:]:
            print(f"\ngrowth {counts[0]:,} -> {n:,} (microblob cost ratio; target <= 1.5 at 100k)")
            for name, r in all_results[str(n)].items():
                if "limit" in name and r["returned"] != first[name]["returned"]:
                    raise SystemExit(f"{name}: {first[name]['returned']} results at N={counts[0]}, "
                                     f"{r['returned']} at N={n}: the growth would compare unequal work")
                if name != "bytes per object":
                    print(f"  {name:26} {r['microblob_ms'] / first[name]['microblob_ms']:6.2f}x")
    out = Path(__file__).resolve().parent / "results" / "scale.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(all_results, indent=2))


if __name__ == "__main__":
    main()
