"""Compaction: file size before and after `store.compact()` and how long it takes, beside sqlite3's VACUUM
of the same rows (WAL, synchronous=FULL, the equivalent indexes) and LMDB's own compacting copy of the same
file (`copyfd(compact=True)`, which `compact()` replaced by a rebuild: see engine/lmdb_compact.py).

    python bench/bench_compact.py [--n 10000,100000] [--keep 0.25] [--repeat 3] [--dir /tmp]

Each round builds both stores afresh with bench_scale's N documents (1 KiB inline payload, realistic
metadata, bulk-loaded unsynced on both sides), deletes the same (1 - keep) of the objects on both, in
batches of 5,000 per transaction, then compacts microblob and VACUUMs sqlite3, the two sides' order
alternating from round to round. Prints medians and the time ratio; writes bench/results/compact.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from bench_scale import MicroblobSide, SqliteSide  # noqa: E402

BATCH = 5000


def doomed(n: int, keep: float) -> list[str]:
    """The ids bench_scale gives its documents, minus every 1/keep-th one."""
    step = round(1 / keep)
    return [hashlib.md5(str(i).encode()).hexdigest() for i in range(n) if i % step]


def microblob_round(directory: Path, n: int, ids: list[str]) -> dict[str, float]:
    side = MicroblobSide(directory, n)
    store = side.store
    for start in range(0, len(ids), BATCH):
        batch = ids[start : start + BATCH]
        store.backend.atomic(lambda batch=batch: [store.delete_object(oid) for oid in batch])
    before = side.size()
    copy = directory / "lmdb-compacting-copy.db"
    began = time.perf_counter()
    store.backend.engine.copy_to(str(copy), compact=True)
    copy_seconds = time.perf_counter() - began
    copy_size = copy.stat().st_size
    copy.unlink()
    report = store.compact()
    assert store.count_objects() == n - len(ids)
    side.close()
    return {"before": before, "after": report.after_bytes, "seconds": report.seconds,
            "lmdb_copy_after": copy_size, "lmdb_copy_seconds": copy_seconds}


def sqlite_round(directory: Path, n: int, ids: list[str]) -> dict[str, float]:
    side = SqliteSide(directory, n)
    db = side.db
    for start in range(0, len(ids), BATCH):
        batch = ids[start : start + BATCH]
        db.execute(f"DELETE FROM objects WHERE id IN ({','.join('?' * len(batch))})", batch)
        db.commit()
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    before = side.size()
    began = time.perf_counter()
    db.execute("VACUUM")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    seconds = time.perf_counter() - began
    assert db.execute("SELECT count(*) FROM objects").fetchone()[0] == n - len(ids)
    after = side.size()
    side.close()
    return {"before": before, "after": after, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", default="10000,100000", help="comma-separated object counts")
    parser.add_argument("--keep", type=float, default=0.25, help="fraction of the objects kept")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", default=None, help="where to build the stores (default: the temp dir)")
    args = parser.parse_args()
    results: dict[str, Any] = {}
    for n in (int(x) for x in args.n.split(",")):
        ids = doomed(n, args.keep)
        samples: dict[str, list[dict[str, float]]] = {"microblob": [], "sqlite3": []}
        for r in range(args.repeat):
            order = [("microblob", microblob_round), ("sqlite3", sqlite_round)]
            for name, fn in order if r % 2 == 0 else order[::-1]:
                directory = Path(tempfile.mkdtemp(prefix=f"compact-{n}-", dir=args.dir))
                try:
                    samples[name].append(fn(directory, n, ids))
                finally:
                    shutil.rmtree(directory, ignore_errors=True)
        row: dict[str, Any] = {}
        for name, runs in samples.items():
            row[name] = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
            m = row[name]
            per_object = m["after"] / (n * args.keep) / 1024
            print(f"N={n} keep {args.keep:.0%} {name:9}: {m['before'] / 2**20:7.1f} MiB -> {m['after'] / 2**20:6.1f} "
                  f"MiB ({per_object:.2f} KiB per kept object) in {m['seconds'] * 1e3:7.0f} ms", flush=True)
        m = row["microblob"]
        print(f"  LMDB's compacting copy of the same file: {m['lmdb_copy_after'] / 2**20:6.1f} MiB in "
              f"{m['lmdb_copy_seconds'] * 1e3:.0f} ms", flush=True)
        row["time ratio microblob/sqlite3"] = m["seconds"] / row["sqlite3"]["seconds"]
        print(f"  compact time / VACUUM time: {row['time ratio microblob/sqlite3']:.2f}; compacted size / VACUUMed "
              f"size: {m['after'] / row['sqlite3']['after']:.2f}", flush=True)
        results[str(n)] = row
    out = ROOT / "bench" / "results" / "compact.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"keep": args.keep, "repeat": args.repeat, **results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
