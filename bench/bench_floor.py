"""What a durable commit and a warm get cost at the bottom, whatever code sits on top: the floors that
decide how near raw py-lmdb and sqlite3 an indexed, versioned store on LMDB can come (machines here are
noisy: only the ratios mean anything).

    python bench/bench_floor.py [--repeat 5] [--n 1000] [--dir /tmp]

1. Keys per durable commit. Raw py-lmdb, LMDB's default durability (sync + metasync), a fresh file per
   run, `--n` commits each writing K random keys (one 1 KiB value, the rest 300 bytes, spread over 4
   tables as microblob's are) for K = 1, 2, 3, 5, 8, 14 (14: what one microblob save of a new object
   writes), 56 and 112 (a group commit of 4 and 8 such saves, in 4 and 8 times fewer commits, so that
   every run ends with the same keys; shown as saves/s). LMDB copies
   every page it changes, so each key at a random place costs a page written and synced. Beside it,
   sqlite3 in WAL mode with synchronous=FULL inserting one row into a table with 0 and with 7 secondary
   indexes (the 7 of microblob's objects collection): its changed pages are appended
   to the WAL in one sequential write. Sides interleaved; commits/s and the ratio to one LMDB key.
2. The least a warm 1 KiB get costs in CPython: one LMDB read transaction and get (raw py-lmdb's get),
   plus decoding a stored object document (msgpack), plus the sha256 that vouches for the bytes,
   against sqlite3's SELECT and microblob's `get_blob_object(id).data`. Microseconds per get.
3. A large save (`--large`, default 256 MiB) at its floor on LMDB: raw py-lmdb committing it as
   microblob does, 255 KiB chunks in 4 MiB batches, each batch committed at LMDB's default durability
   (no hash, no documents), against one raw file write + fsync and microblob's save. LMDB copies every
   value into its own pages before it writes them, and syncs inside its write lock, so the batches cannot
   overlap the disk. MB/s and the ratio to the raw file.

Prints medians of `--repeat` runs; writes them as JSON to bench/results/floor.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

import lmdb
import msgpack

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import microblob  # noqa: E402

SAVE_KEYS = 14  # keys one microblob save of a new object writes
KEY_COUNTS = (1, 2, 3, 5, 8, SAVE_KEYS, 4 * SAVE_KEYS, 8 * SAVE_KEYS)
INDEXED = ("workflow_id", "task_id", "type", "file_id", "object_id", "created_at", "updated_at")


def lmdb_commits(directory: Path, n: int, keys: int) -> float:
    """Durable commits/s, each writing `keys` random keys into 4 tables. A commit of several saves' keys
    (more than 14) runs fewer commits, so every run ends with a tree of the same size."""
    env = lmdb.open(str(directory / "floor.lmdb"), subdir=False, map_size=1 << 34, max_dbs=4)
    try:
        dbs = [env.open_db(b"t%d" % t) for t in range(4)]
        first, rest = os.urandom(1024), os.urandom(300)
        n = n if keys <= SAVE_KEYS else max(1, n * SAVE_KEYS // keys)
        start = time.perf_counter()
        for _ in range(n):
            with env.begin(write=True) as txn:
                for k in range(keys):
                    txn.put(os.urandom(16), first if k == 0 else rest, db=dbs[k % 4])
        return n / (time.perf_counter() - start)
    finally:
        env.close()


def sqlite_commits(directory: Path, n: int, indexes: int) -> float:
    """Durable commits/s of one row (a 1 KiB blob and 7 indexable columns) with `indexes` secondary indexes."""
    db = sqlite3.connect(directory / "floor.sqlite")
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute(f"CREATE TABLE t (id TEXT PRIMARY KEY, data BLOB, {', '.join(f'{c} TEXT' for c in INDEXED)})")
        for column in INDEXED[:indexes]:
            db.execute(f"CREATE INDEX t_{column} ON t ({column})")
        db.commit()
        data = os.urandom(1024)
        insert = f"INSERT INTO t VALUES ({', '.join('?' * (2 + len(INDEXED)))})"
        start = time.perf_counter()
        for _ in range(n):
            stamp = dt.datetime.now(dt.timezone.utc).isoformat()
            db.execute(insert, (os.urandom(16).hex(), data, None, None, None, os.urandom(16).hex(),
                                os.urandom(16).hex(), stamp, stamp))
            db.commit()
        return n / (time.perf_counter() - start)
    finally:
        db.close()


def lmdb_batched(directory: Path, data: bytes) -> float:
    """Seconds to commit `data` as 255 KiB chunks in 4 MiB batches, each batch its own durable commit."""
    env = lmdb.open(str(directory / "large.lmdb"), subdir=False, map_size=1 << 36)
    try:
        view, chunk, batch = memoryview(data), 255 * 1024, 4 * 1024 * 1024
        start = time.perf_counter()
        for first in range(0, len(view), batch):
            with env.begin(write=True) as txn:
                for at in range(first, min(first + batch, len(view)), chunk):
                    txn.put(at.to_bytes(8, "big"), view[at : at + chunk])
        return time.perf_counter() - start
    finally:
        env.close()


def raw_file(directory: Path, data: bytes) -> float:
    start = time.perf_counter()
    with open(directory / "large.bin", "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    return time.perf_counter() - start


def microblob_save(directory: Path, data: bytes) -> float:
    store = microblob.connect(directory / "microblob.db")
    try:
        start = time.perf_counter()
        store.save_or_update_object(data, object_id="large")
        return time.perf_counter() - start
    finally:
        store.close()


def large_floor(base: Path, size: int, repeat: int) -> dict[str, float]:
    data = os.urandom(size)
    sides = {"raw file": raw_file, "lmdb 4 MiB batches": lmdb_batched, "microblob save": microblob_save}
    seconds: dict[str, list[float]] = {name: [] for name in sides}
    for r in range(repeat):
        for name, fn in sides.items():
            directory = base / f"large-{r}-{name.replace(' ', '_')}"
            directory.mkdir()
            os.sync()  # nothing dirty left from the side before
            try:
                seconds[name].append(fn(directory, data))
            finally:
                shutil.rmtree(directory)
    return {name: size / statistics.median(v) / 1e6 for name, v in seconds.items()}


def commit_floor(base: Path, n: int, repeat: int) -> dict[str, float]:
    sides = {f"lmdb {k} keys": (lmdb_commits, k) for k in KEY_COUNTS}
    sides.update({"sqlite3 WAL, 0 indexes": (sqlite_commits, 0), "sqlite3 WAL, 7 indexes": (sqlite_commits, 7)})
    rates: dict[str, list[float]] = {name: [] for name in sides}
    for r in range(repeat):
        for name, (fn, arg) in sides.items():  # interleaved: drift hits every side alike
            directory = base / f"commit-{r}-{name.replace(' ', '_').replace(',', '')}"
            directory.mkdir()
            os.sync()
            try:
                rates[name].append(fn(directory, n, arg))
            finally:
                shutil.rmtree(directory)
    return {name: statistics.median(v) for name, v in rates.items()}


def per_get(fn, n: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        fn(i)
    return (time.perf_counter() - start) / n * 1e6


def get_floor(base: Path, n: int, repeat: int) -> dict[str, float]:
    directory = base / "get"
    directory.mkdir()
    data = os.urandom(1024)
    store = microblob.connect(directory / "microblob.db")
    env = lmdb.open(str(directory / "raw.lmdb"), subdir=False, map_size=1 << 32)
    db = sqlite3.connect(directory / "get.sqlite")
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE blobs (id TEXT PRIMARY KEY, data BLOB)")
        for i in range(n):
            store.save_or_update_object(data, object_id=f"obj-{i}")
        doc = store.backend.collection("objects").find_one({"_id": "obj-0"})
        doc_raw = msgpack.packb(doc, datetime=True, use_bin_type=True)
        with env.begin(write=True) as txn:
            for i in range(n):
                txn.put(b"obj-%d" % i, data)
                txn.put(b"doc-%d" % i, doc_raw)
        db.executemany("INSERT INTO blobs VALUES (?, ?)", [(f"obj-{i}", data) for i in range(n)])
        db.commit()

        def raw_get(i: int) -> int:
            with env.begin() as txn:
                return len(txn.get(b"obj-%d" % i))

        def floor_get(i: int) -> int:  # what any checked get must do: one snapshot, the document, the bytes
            with env.begin() as txn:
                doc = msgpack.unpackb(txn.get(b"doc-%d" % i), raw=False, timestamp=3)
                payload = txn.get(b"obj-%d" % i)
            if hashlib.sha256(payload).hexdigest() != doc["sha256"]:
                raise AssertionError("the bytes do not match their document's sha256")
            return len(payload)

        def sqlite_get(i: int) -> int:
            return len(db.execute("SELECT data FROM blobs WHERE id = ?", (f"obj-{i}",)).fetchone()[0])

        def microblob_get(i: int) -> int:
            return len(store.get_blob_object(f"obj-{i}").data)

        sides = {"raw lmdb get": raw_get, "floor: txn + document + sha256": floor_get,
                 "sqlite3 SELECT": sqlite_get, "microblob get": microblob_get}
        times: dict[str, list[float]] = {name: [] for name in sides}
        for _ in range(repeat):
            for name, fn in sides.items():
                per_get(fn, n)  # warm
                times[name].append(per_get(fn, n))
        return {name: statistics.median(v) for name, v in times.items()}
    finally:
        store.close()
        env.close()
        db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--n", type=int, default=1000, help="commits (and objects got) per run")
    parser.add_argument("--large", type=int, default=256, help="MiB of the large save (0 skips it)")
    parser.add_argument("--dir", default=None, help="where to write (default: a temp dir)")
    args = parser.parse_args()
    if args.repeat < 1 or args.n < 1 or args.large < 0:
        parser.error("--repeat and --n must be at least 1, --large at least 0")
    base = Path(tempfile.mkdtemp(prefix="microblob-floor-", dir=args.dir))
    try:
        commits = commit_floor(base, args.n, args.repeat)
        gets = get_floor(base, args.n, args.repeat)
        large = large_floor(base, args.large * 1024 * 1024, args.repeat) if args.large else {}
    finally:
        shutil.rmtree(base, ignore_errors=True)
    one = commits["lmdb 1 keys"]
    print(f"durable commits/s, {args.n} per run, median of {args.repeat} runs")
    for name, rate in commits.items():
        keys = int(name.split()[1]) if name.startswith("lmdb") else 0
        grouped = f"  = {rate * keys / SAVE_KEYS:6.0f} saves/s" if keys > SAVE_KEYS else ""
        print(f"  {name:24} {rate:8.0f}/s  {rate / one:.2f}x one lmdb key{grouped}")
    print(f"\nwarm 1 KiB get, microseconds, median of {args.repeat} runs")
    raw = gets["raw lmdb get"]
    for name, us in gets.items():
        print(f"  {name:32} {us:6.2f} us  {raw / us:.2f}x raw lmdb")
    if large:
        print(f"\n{args.large} MiB durable save, MB/s, median of {args.repeat} runs")
        for name, rate in large.items():
            print(f"  {name:20} {rate:7.0f} MB/s  {rate / large['raw file']:.2f}x raw file")
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    (out / "floor.json").write_text(json.dumps({"durable_commits_per_s": commits, "warm_get_us": gets,
                                                          "large_save_MBps": large}, indent=2))


if __name__ == "__main__":
    main()
