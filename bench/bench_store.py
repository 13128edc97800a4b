"""Store throughput beside its baselines, measured in the same run (machines here are noisy: only the
ratios mean anything).

    python bench/bench_store.py [--repeat 5] [--sizes 1KiB,1MiB,256MiB] [--dir /tmp]

For each size: microblob's embedded default (save = committed and fsync'd, default chunked storage;
get = `get_blob_object(id).data`, or a streamed read above 1 MiB), raw py-lmdb (one put per write
transaction with LMDB's default durability, sync and metasync; get = one read transaction), up to 1 MiB
"lmdb layout" (raw py-lmdb writing the 14 keys one microblob save writes, at the same durability: the
floor of microblob's layout without its Python, to tell the two costs apart), a raw file
(one write + fsync; read), the raw file written in 1 MiB pieces (+ fsync), and a stdlib sqlite3 blob
table in WAL mode with synchronous=FULL (INSERT + COMMIT; SELECT). Same durability on every side: each
save is committed and synced before the next starts.

Then concurrent writers (`--threads`, default 1,8): T threads saving 1 KiB objects durably at once, into
microblob (group commit: writers that arrive during a commit share the next), raw py-lmdb (a write
transaction each, as LMDB serialises them) and sqlite3 WAL FULL (a connection per thread). Throughput and
its ratio to the same side's single writer.

Prints medians of `--repeat` runs and the ratios; writes them as JSON to bench/results/store.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import lmdb

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import microblob  # noqa: E402

KiB, MiB = 1024, 1024 * 1024
SIZES = {"1KiB": KiB, "1MiB": MiB, "64MiB": 64 * MiB, "256MiB": 256 * MiB, "1GiB": 1024 * MiB}
DEFAULT_SIZES = "1KiB,1MiB,64MiB,256MiB"
READ_PIECE = MiB


def ops_for(size: int) -> int:
    """Enough operations that one run takes a measurable while, but a big one stays a few runs."""
    return max(2, min(1000, (64 * MiB) // size))


class Side:
    """One contestant: `save(i, data)` must be durable on return; `load(i)` returns the byte count read."""

    name = ""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def save(self, i: int, data: bytes) -> None:
        raise NotImplementedError

    def load(self, i: int) -> int:
        raise NotImplementedError

    def close(self) -> None:
        pass


class Microblob(Side):
    name = "microblob"

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.store = microblob.connect(directory / "microblob.db")

    def save(self, i: int, data: bytes) -> None:
        self.store.save_or_update_object(data, object_id=f"obj-{i}")

    def load(self, i: int) -> int:
        obj = self.store.get_blob_object(f"obj-{i}")
        if obj.size <= READ_PIECE:
            return len(obj.data)
        n = 0
        with obj.open() as stream:
            while piece := stream.read(READ_PIECE):
                n += len(piece)
        return n

    def close(self) -> None:
        self.store.close()


class RawFile(Side):
    name = "raw file"

    def save(self, i: int, data: bytes) -> None:
        with open(self.directory / f"f{i}", "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())

    def load(self, i: int) -> int:
        n = 0
        with open(self.directory / f"f{i}", "rb") as fh:
            while piece := fh.read(READ_PIECE):
                n += len(piece)
        return n


class RawFileStreamed(RawFile):
    """The raw file written as a program streaming it would: 1 MiB writes, one fsync at the end. On the VMs
    here one 256 MiB write + fsync swung between 400 and 1,800 MB/s from run to run; this one less."""

    name = "raw 1MiB"

    def save(self, i: int, data: bytes) -> None:
        view = memoryview(data)
        with open(self.directory / f"f{i}", "wb") as fh:
            for start in range(0, len(view), READ_PIECE):
                fh.write(view[start : start + READ_PIECE])
            fh.flush()
            os.fsync(fh.fileno())


class RawLmdb(Side):
    """py-lmdb as its documentation uses it: one environment, one put per write transaction, LMDB's
    default durability (sync + metasync: a commit is on disk when it returns)."""

    name = "raw lmdb"

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.env = lmdb.open(str(directory / "raw.lmdb"), subdir=False, map_size=1 << 36, sync=True,
                             metasync=True)

    def save(self, i: int, data: bytes) -> None:
        with self.env.begin(write=True) as txn:
            txn.put(b"obj-%d" % i, data)

    def load(self, i: int) -> int:
        with self.env.begin() as txn:
            return len(txn.get(b"obj-%d" % i))

    def close(self) -> None:
        self.env.close()


class RawLmdbLayout(Side):
    """Not a contestant but the floor of microblob's layout: raw py-lmdb writing, in one transaction with
    the same durability as `RawLmdb`, the keys one microblob save of a new object writes (the chunk, the
    files and object documents, seven index entries of which five land at random places and two at the
    end, three per-value counters and the collection count: 14 puts in 4 tables), without microblob's
    Python. What it loses against raw lmdb is the layout's pages; what microblob loses against it is code."""

    name = "lmdb layout"

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.env = lmdb.open(str(directory / "layout.lmdb"), subdir=False, map_size=1 << 36, max_dbs=4)
        self.dbs = {name: self.env.open_db(name) for name in (b"chunks", b"docs", b"index", b"meta")}
        self.files: dict[int, bytes] = {}

    def save(self, i: int, data: bytes) -> None:
        file_id, oid = uuid.uuid4().hex.encode(), b"obj-%d" % i
        stamp = time.time_ns().to_bytes(8, "big")
        index = self.dbs[b"index"]
        with self.env.begin(write=True) as txn:
            txn.put(file_id + b"\0\0\0\0", data, db=self.dbs[b"chunks"])
            txn.put(b"fs.files" + file_id, os.urandom(265), db=self.dbs[b"docs"])
            txn.put(b"objects" + oid, os.urandom(383), db=self.dbs[b"docs"])
            for name, value in ((b"workflow_id", b"\x10"), (b"task_id", b"\x10"), (b"type", b"0image"),
                                (b"file_id", b"0" + file_id), (b"object_id", b"0" + oid),
                                (b"created_at", stamp), (b"updated_at", stamp)):
                txn.put(b"objects" + name + value + oid, b"\x01", db=index)
            for name, value in ((b"workflow_id", b"\x10"), (b"task_id", b"\x10"), (b"type", b"0image")):
                counter = b"objects" + name + b"\x03" + value
                old = txn.get(counter, db=index)
                txn.put(counter, (int.from_bytes(old, "big") + 1 if old else 1).to_bytes(8, "big"), db=index)
            txn.put(b"count objects", str(i).encode(), db=self.dbs[b"meta"])
        self.files[i] = file_id

    def load(self, i: int) -> int:
        with self.env.begin() as txn:
            txn.get(b"objects" + b"obj-%d" % i, db=self.dbs[b"docs"])
            return len(txn.get(self.files[i] + b"\0\0\0\0", db=self.dbs[b"chunks"]))

    def close(self) -> None:
        self.env.close()


SQLITE_MAX_LENGTH = 1_000_000_000  # sqlite3's default limit on one blob: a 1 GiB value is refused


class Sqlite(Side):
    """sqlite3 at its fastest durable setting: WAL journal, synchronous=FULL (the WAL is synced at every
    commit), statements cached by the module."""

    name = "sqlite3 WAL"

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.db = self.connect(directory)
        self.db.execute("CREATE TABLE IF NOT EXISTS blobs (id TEXT PRIMARY KEY, data BLOB)")
        self.db.commit()

    @staticmethod
    def connect(directory: Path) -> sqlite3.Connection:
        db = sqlite3.connect(directory / "blobs.sqlite", timeout=60, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        return db

    def save(self, i: int, data: bytes) -> None:
        self.db.execute("INSERT OR REPLACE INTO blobs VALUES (?, ?)", (f"obj-{i}", data))
        self.db.commit()

    def load(self, i: int) -> int:
        (data,) = self.db.execute("SELECT data FROM blobs WHERE id = ?", (f"obj-{i}",)).fetchone()
        return len(data)

    def close(self) -> None:
        self.db.close()


def timed(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run_size(label: str, size: int, repeat: int, base: Path, sides: list[type[Side]]) -> dict[str, dict]:
    n = ops_for(size)
    payload = os.urandom(size)
    results: dict[str, dict[str, list[float]]] = {s.name: {"save": [], "load": []} for s in sides}
    for r in range(repeat):
        for side_type in sides:  # interleave sides within each repeat, so drift hits all alike
            directory = base / f"{label}-{side_type.name.replace(' ', '_')}-{r}"
            directory.mkdir()
            side = side_type(directory)
            # Start every side with nothing dirty in the page cache, so no side pays for the previous one's
            # writeback. (The single-write raw side still swung 400-1,800 MB/s between runs: the VM's disk.)
            os.sync()
            try:
                save_s = timed(lambda side=side: [side.save(i, payload) for i in range(n)])
                load_s = timed(lambda side=side: [side.load(i) for i in range(n)])
            finally:
                side.close()
                shutil.rmtree(directory)
            results[side_type.name]["save"].append(save_s / n)
            results[side_type.name]["load"].append(load_s / n)
    summary = {}
    for name, times in results.items():
        save, load = statistics.median(times["save"]), statistics.median(times["load"])
        summary[name] = {"ops": n, "save_s": save, "load_s": load, "save_ops_per_s": 1 / save,
                         "load_ops_per_s": 1 / load, "pair_ops_per_s": 1 / (save + load),
                         "save_MBps": size / save / 1e6, "load_MBps": size / load / 1e6}
    return summary


CONCURRENT_SAVES = 2000  # 1 KiB saves per run, split across the threads


def concurrent_saves(side: str, directory: Path, threads: int) -> float:
    """Durable 1 KiB saves per second with `threads` writers at once."""
    payload = os.urandom(KiB)
    per = CONCURRENT_SAVES // threads
    if side == "microblob":
        store = microblob.connect(directory / "microblob.db")
        writers = [lambda t: [store.save_or_update_object(payload, object_id=f"t{t}-{i}") for i in range(per)]]
        close: Callable[[], None] = store.close
    elif side == "raw lmdb":
        env = lmdb.open(str(directory / "raw.lmdb"), subdir=False, map_size=1 << 32)

        def put(t: int) -> None:
            for i in range(per):
                with env.begin(write=True) as txn:
                    txn.put(b"t%d-%d" % (t, i), payload)
        writers, close = [put], env.close
    else:
        Sqlite(directory).close()  # the table, in WAL mode
        dbs = [Sqlite.connect(directory) for _ in range(threads)]

        def insert(t: int) -> None:
            db = dbs[t]
            for i in range(per):
                db.execute("INSERT INTO blobs VALUES (?, ?)", (f"t{t}-{i}", payload))
                db.commit()
        writers = [insert]

        def close() -> None:
            for db in dbs:
                db.close()
    os.sync()
    pool = [threading.Thread(target=writers[0], args=(t,)) for t in range(threads)]
    start = time.perf_counter()
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    elapsed = time.perf_counter() - start
    close()
    return per * threads / elapsed


def run_concurrent(thread_counts: list[int], repeat: int, base: Path) -> dict[str, dict[str, float]]:
    sides = ("microblob", "raw lmdb", "sqlite3 WAL")
    rates: dict[str, dict[int, list[float]]] = {s: {t: [] for t in thread_counts} for s in sides}
    for r in range(repeat):
        for threads in thread_counts:
            for side in sides:  # interleaved, as above
                directory = base / f"concurrent-{side.replace(' ', '_')}-{threads}-{r}"
                directory.mkdir()
                try:
                    rates[side][threads].append(concurrent_saves(side, directory, threads))
                finally:
                    shutil.rmtree(directory)
    return {side: {str(t): statistics.median(v) for t, v in by.items()} for side, by in rates.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help=f"comma list of {', '.join(SIZES)}")
    parser.add_argument("--dir", default=None, help="where to write (default: a temp dir)")
    parser.add_argument("--threads", default="1,8", help="writer counts for the concurrent run ('' skips it)")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="microblob-bench-", dir=args.dir))
    report: dict[str, dict] = {}
    try:
        for label in args.sizes.split(","):
            size = SIZES[label]
            sides = [Microblob, RawLmdb, RawFile, RawFileStreamed]
            if size <= MiB:  # the layout's pages matter for small objects only
                sides.insert(2, RawLmdbLayout)
            if size < SQLITE_MAX_LENGTH:
                sides.append(Sqlite)
            else:
                print(f"\n{label}: no sqlite3 side (its blobs stop below {SQLITE_MAX_LENGTH:,} bytes)")
            summary = run_size(label, size, args.repeat, base, sides)
            report[label] = summary
            mb = summary["microblob"]
            print(f"\n{label} x {mb['ops']} ops, median of {args.repeat} runs")
            print(f"  {'':11} {'save/s':>10} {'get/s':>10} {'save+get/s':>11} {'save MB/s':>10} {'get MB/s':>10}")
            for name, row in summary.items():
                print(f"  {name:11} {row['save_ops_per_s']:10.1f} {row['load_ops_per_s']:10.1f} "
                      f"{row['pair_ops_per_s']:11.1f} {row['save_MBps']:10.1f} {row['load_MBps']:10.1f}")
            for name in ("raw lmdb", "lmdb layout", "raw file", "raw 1MiB", "sqlite3 WAL"):
                if name not in summary:
                    continue
                other = summary[name]
                print(f"  microblob / {name:11}: save {mb['save_ops_per_s'] / other['save_ops_per_s']:.2f}x, "
                      f"get {mb['load_ops_per_s'] / other['load_ops_per_s']:.2f}x, "
                      f"save+get {mb['pair_ops_per_s'] / other['pair_ops_per_s']:.2f}x")
        counts = [int(t) for t in args.threads.split(",") if t]
        if counts:
            concurrent = run_concurrent(counts, args.repeat, base)
            report["concurrent_1KiB_saves_per_s"] = concurrent
            print(f"\nconcurrent durable 1 KiB saves/s, median of {args.repeat} runs")
            for side, by in concurrent.items():
                single = by.get("1")
                cells = "  ".join(f"{t} threads {rate:8.0f}" + (f" ({rate / single:.2f}x)" if single else "")
                                  for t, rate in by.items())
                print(f"  {side:11} {cells}")
            mb = concurrent["microblob"]
            for side in ("raw lmdb", "sqlite3 WAL"):
                print("  microblob / " + side + ": " + ", ".join(
                    f"{t} threads {mb[t] / concurrent[side][t]:.2f}x" for t in mb))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    (out / "store.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
