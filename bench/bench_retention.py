"""Retention beside its baselines, in one run, sides interleaved: what evicting confirmed bytes costs, and
what reading them back through the destination costs.

    python bench/bench_retention.py [--repeat 3] [--objects 40] [--size 1MiB]

Each repeat builds two identical embedded stores of `--objects` objects of `--size` bytes and syncs
one of them to an embedded destination file, then:

- evict: `microblob.evict(src, max_size=0)` on the synced store (marks + frees, 64 files per commit);
- delete: `delete_object` of every object of the twin: the cheapest way to free the same bytes;
- read-through: every evicted object read from the source (its bytes come from the destination,
  sha256-checked), against reading the same objects straight from the destination store (the
  strongest baseline: the bytes' own store) and from the twin before its deletion (local bytes).

Prints medians and ratios; writes bench/results/retention.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import microblob  # noqa: E402

SIZES = {"256KiB": 256 << 10, "1MiB": 1 << 20, "4MiB": 4 << 20}


def read_all(store: microblob.Store, ids: list[str]) -> int:
    total = 0
    for oid in ids:
        with store.get_blob_object(oid).open() as stream:
            while piece := stream.read(1 << 20):
                total += len(piece)
    return total


def one_repeat(work: Path, objects: int, size: int) -> dict[str, float]:
    payloads = [os.urandom(size) for _ in range(objects)]
    src, twin, dst = work / "src.db", work / "twin.db", work / "dst.db"
    with microblob.connect(src) as a, microblob.connect(twin) as b:
        ids = [a.save_or_update_object(p) for p in payloads]
        for oid, p in zip(ids, payloads, strict=True):
            b.save_or_update_object(p, object_id=oid)
        microblob.sync(a, dst)
        out: dict[str, float] = {}
        t = time.perf_counter()
        read_all(b, ids)
        out["read_local"] = time.perf_counter() - t
        t = time.perf_counter()
        report = microblob.evict(a, max_size=0)
        out["evict"] = time.perf_counter() - t
        assert report.evicted_files == objects, report
        t = time.perf_counter()
        for oid in ids:
            b.delete_object(oid)
        out["delete"] = time.perf_counter() - t
        t = time.perf_counter()
        assert read_all(a, ids) == objects * size
        out["read_through"] = time.perf_counter() - t
        with microblob.connect(dst) as there:
            t = time.perf_counter()
            read_all(there, ids)
            out["read_destination"] = time.perf_counter() - t
    for path in work.iterdir():
        path.unlink()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--objects", type=int, default=40)
    parser.add_argument("--size", choices=sorted(SIZES), default="1MiB")
    args = parser.parse_args()
    size = SIZES[args.size]
    runs: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeat):
            runs.append(one_repeat(Path(tmp), args.objects, size))
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    mb = args.objects * size / 1e6
    print(f"{args.objects} objects x {args.size}, {args.repeat} repeats (medians)")
    print(f"  evict            {med['evict'] * 1000:8.1f} ms  {mb / med['evict']:8.0f} MB/s freed  "
          f"{med['evict'] / med['delete']:.2f}x delete_object ({med['delete'] * 1000:.1f} ms)")
    print(f"  read-through     {med['read_through'] * 1000:8.1f} ms  {mb / med['read_through']:8.0f} MB/s  "
          f"{med['read_through'] / med['read_destination']:.2f}x the destination's own read, "
          f"{med['read_through'] / med['read_local']:.2f}x a local read")
    results = ROOT / "bench" / "results"
    results.mkdir(exist_ok=True)
    (results / "retention.json").write_text(json.dumps({"objects": args.objects, "size": size, "runs": runs,
                                                          "medians": med}, indent=2))


if __name__ == "__main__":
    main()
