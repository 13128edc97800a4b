"""Batch maintenance as a store grows: verify() and gc() time and peak memory at N objects, and
delete_object of a 1,000-version object beside sqlite3 (WAL, synchronous=FULL) deleting its 1,000 rows.

    python bench/bench_maintenance.py [--n 10000,100000] [--repeat 5] [--dir /tmp]

Each N: N objects of 1 KiB stored inline with realistic metadata (bench_scale's documents, bulk-loaded
unsynced) plus N/20 chunked objects of 16 KiB with a versioned update each (saved through the API). verify
and gc each run in a fresh process, which reports the time and how far its peak RSS (VmHWM) rose above its
RSS after opening the store: its anonymous memory (RssAnon, sampled) and all of it (VmHWM, which
counts the mapped file pages it read). The deletes are interleaved: one object (microblob) and one object's rows
(sqlite3) per round. Prints medians; writes bench/results/maintenance.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from bench_scale import bulk_load  # noqa: E402

import microblob  # noqa: E402

VERSIONS = 1000

_CHILD = r"""
import json, sys, threading, time
sys.path.insert(0, sys.argv[3])
import microblob

def status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024

# RSS counts the store's mapped file pages too (page cache, shared and reclaimable): the process's own
# memory is its anonymous RSS, sampled every 5 ms for its peak.
peak = {"anon": 0}
done = threading.Event()

def sample():
    while not done.wait(0.005):
        peak["anon"] = max(peak["anon"], status("RssAnon"))

store = microblob.connect(sys.argv[1])
store.count_objects()
base_rss, base_anon = status("VmRSS"), status("RssAnon")
sampler = threading.Thread(target=sample)
sampler.start()
start = time.perf_counter()
report = getattr(store, sys.argv[2])()
elapsed = time.perf_counter() - start
done.set()
sampler.join()
peak["anon"] = max(peak["anon"], status("RssAnon"))
print(json.dumps({"seconds": elapsed, "peak_above_open": status("VmHWM") - base_rss,
                  "anon_peak_above_open": peak["anon"] - base_anon, "report": repr(report)[:300]}))
"""


def build(directory: Path, n: int) -> Path:
    path = directory / "maint.db"
    store = microblob.connect(path, sync=False)
    rng = random.Random(1)
    bulk_load(store, n, rng)
    chunked = max(1, n // 20)
    for start in range(0, chunked, 500):
        def save(start: int = start) -> None:
            for i in range(start, min(chunked, start + 500)):
                oid = store.save_or_update_object(rng.randbytes(16384), object_id=f"chunked-{i:07d}")
                store.save_or_update_object(rng.randbytes(16384), object_id=oid, control_version=True)

        store.backend.atomic(save)
    store.close()
    return path


def in_child(path: Path, job: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-c", _CHILD, str(path), job, str(ROOT)], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout)


def deletes(directory: Path, repeat: int) -> dict[str, float]:
    store = microblob.connect(directory / "deletes.db")
    db = sqlite3.connect(directory / "deletes.sqlite")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE versions (object_id TEXT, version INTEGER, data BLOB, PRIMARY KEY (object_id, version))")
    rng = random.Random(2)
    samples: dict[str, list[float]] = {"microblob": [], "sqlite3": []}
    for r in range(repeat):
        oid = f"long-{r}"

        def fill(oid: str = oid) -> None:
            for v in range(VERSIONS):
                store.save_or_update_object(rng.randbytes(2048), object_id=oid, control_version=v > 0)

        store.backend.atomic(fill)
        db.executemany("INSERT INTO versions VALUES (?,?,?)", ((oid, v, rng.randbytes(2048)) for v in range(VERSIONS)))
        db.commit()
        start = time.perf_counter()
        store.delete_object(oid)
        samples["microblob"].append(time.perf_counter() - start)
        start = time.perf_counter()
        db.execute("DELETE FROM versions WHERE object_id = ?", (oid,))
        db.commit()
        samples["sqlite3"].append(time.perf_counter() - start)
    store.close()
    db.close()
    return {side: statistics.median(s) * 1e3 for side, s in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", default="10000,100000", help="comma-separated object counts (1000000 takes long)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--dir", default=None, help="where to build the stores (default: the temp dir)")
    args = parser.parse_args()
    results: dict[str, Any] = {}
    for n in (int(x) for x in args.n.split(",")):
        directory = Path(tempfile.mkdtemp(prefix=f"maint-{n}-", dir=args.dir))
        try:
            started = time.perf_counter()
            path = build(directory, n)
            print(f"N={n}: built in {time.perf_counter() - started:.1f} s ({os.path.getsize(path) / 2**20:.0f} MiB)",
                  flush=True)
            runs = {job: [in_child(path, job) for _ in range(max(1, args.repeat // 2))] for job in ("verify", "gc")}
            row = {}
            for job, samples in runs.items():
                row[job] = {"seconds": statistics.median(s["seconds"] for s in samples),
                            "peak_rss_above_open_mib": statistics.median(s["peak_above_open"] for s in samples) / 2**20,
                            "peak_anon_above_open_mib": statistics.median(s["anon_peak_above_open"]
                                                                          for s in samples) / 2**20}
                print(f"  {job:6} {row[job]['seconds']:8.2f} s   peak anonymous RSS "
                      f"+{row[job]['peak_anon_above_open_mib']:.1f} MiB (with mapped file pages "
                      f"+{row[job]['peak_rss_above_open_mib']:.1f} MiB)   {samples[0]['report']}", flush=True)
            row["gc / verify time"] = row["gc"]["seconds"] / row["verify"]["seconds"]
            print(f"  gc/verify time: {row['gc / verify time']:.3f}", flush=True)
            results[str(n)] = row
        finally:
            shutil.rmtree(directory, ignore_errors=True)
    directory = Path(tempfile.mkdtemp(prefix="maint-deletes-", dir=args.dir))
    try:
        medians = deletes(directory, args.repeat)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    ratio = medians["microblob"] / medians["sqlite3"]
    results[f"delete of a {VERSIONS}-version object (ms)"] = {**medians, "ratio": ratio}
    print(f"delete_object of {VERSIONS} versions: microblob {medians['microblob']:.1f} ms, sqlite3 "
          f"{medians['sqlite3']:.1f} ms ({medians['microblob'] / medians['sqlite3']:.1f}x)")
    out = ROOT / "bench" / "results" / "maintenance.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
