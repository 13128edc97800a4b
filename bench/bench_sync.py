"""Sync to MongoDB beside its baselines, in one run, sides interleaved: how fast a field store's objects
reach the server, and how long a save takes to be confirmed there.

    python bench/bench_sync.py [--mongo mongodb://host:port] [--repeat 3] [--objects 40] [--size 1MiB]

Without --mongo it starts SecantusDB ($MICROBLOB_SECANTUSD, a MongoDB-wire-compatible server) on a
free port. The source is an embedded store of `--objects` objects of `--size` bytes plus 200 of 1 KiB.
Each repeat pushes it into a fresh database three ways, one after the other:

- sync: `microblob.sync(src, uri)`, a first full round (copy + confirmation at the destination);
- copy: `microblob.copy(src, uri)` alone;
- gridfs: what a script with pymongo would do, mongofiles-style: each object's bytes streamed from the
  source with `open()` into `GridFSBucket.upload_from_stream`, plus one metadata document per object.

Then the latency from a save returning to its confirmation at the destination, with a `SyncWorker`
polling every `--interval` seconds (median and p90 of 20 saves of 1 KiB, one at a time).
Then `sync status` at each `--status-backlogs` size (objects saved since the last round, pending at a
local destination): its median time beside the walk over the backlog it replaced (`walk_pending`),
sides interleaved. `--status-only` runs just that part (no MongoDB needed).
Prints medians and ratios; writes bench/results/sync.json (or sync_status.json with --status-only).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import microblob  # noqa: E402

SIZES = {"256KiB": 256 << 10, "1MiB": 1 << 20, "4MiB": 4 << 20}


def start_secantus(work: Path) -> tuple[str, subprocess.Popen]:
    executable = os.environ.get("MICROBLOB_SECANTUSD") or shutil.which("secantusd-py")
    if not executable:
        sys.exit("give --mongo URI, or set MICROBLOB_SECANTUSD to SecantusDB's secantusd-py")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([executable, "--host", "127.0.0.1", "--port", str(port), "--storage-path",
                             str(work / "secantus"), "--standalone", "--log-level", "WARNING"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import pymongo

    uri = f"mongodb://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with pymongo.MongoClient(uri, serverSelectionTimeoutMS=300) as client:
                client.admin.command("ping")
            return uri, proc
        except pymongo.errors.PyMongoError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def gridfs_upload(src: microblob.Store, uri: str) -> None:
    import gridfs
    import pymongo

    with pymongo.MongoClient(uri) as client:
        db = client.get_default_database()
        bucket = gridfs.GridFSBucket(db)
        docs = []
        for obj in src.blob_object_query(None):
            with obj.open() as stream:
                file_id = bucket.upload_from_stream(obj.object_id, stream, chunk_size_bytes=255 * 1024)
            docs.append({"_id": obj.object_id, "file_id": file_id, "size": obj.size, "sha256": obj.sha256,
                         "type": obj.type, "custom_metadata": obj.custom_metadata})
        db["objects"].insert_many(docs)


def fresh(base: str) -> str:
    return f"{base}/bench_{uuid.uuid4().hex[:10]}"


def drop(uri: str) -> None:
    import pymongo

    with pymongo.MongoClient(uri) as client:
        client.drop_database(client.get_default_database().name)


def latency(src: microblob.Store, uri: str, interval: float, saves: int = 20) -> list[float]:
    out = []
    with microblob.SyncWorker(src, uri, interval=interval):
        for i in range(saves):
            src.save_or_update_object(os.urandom(1024), custom_metadata={"probe": i})
            start = time.perf_counter()
            while microblob.sync_status(src, uri)[0].pending_objects:
                time.sleep(0.002)
            out.append(time.perf_counter() - start)
    return out


def status_timing(work: Path, backlogs: list[int], repeat: int) -> dict[str, dict[str, float]]:
    """Median seconds of `sync_status` and of the backlog walk, per backlog size (one store grown in
    steps, saves with sync off: what is measured is reading the status, not writing the backlog)."""
    from microblob.store.sync_pending import walk_pending

    src = microblob.connect(work / "status-src.db", sync=False, map_size=1 << 30)
    dst = microblob.connect(work / "status-dst.db", sync=False)
    for _ in range(100):
        src.save_or_update_object(os.urandom(64))
    microblob.sync(src, dst)
    out: dict[str, dict[str, float]] = {}
    saved = 0
    for backlog in sorted(backlogs):
        for _ in range(backlog - saved):
            src.save_or_update_object(os.urandom(64))
        saved = backlog
        (status,) = microblob.sync_status(src, dst)
        assert status.pending_objects == backlog, status
        times: dict[str, list[float]] = {"status": [], "walk": []}
        for _ in range(repeat):
            for side in times:  # interleaved
                start = time.perf_counter()
                if side == "status":
                    microblob.sync_status(src, dst)
                else:
                    assert len(walk_pending(src, dst.uri)) == backlog
                times[side].append(time.perf_counter() - start)
        out[str(backlog)] = {k: statistics.median(v) for k, v in times.items()}
        print(f"  sync status, {backlog:>7} pending: {out[str(backlog)]['status'] * 1000:8.3f} ms; "
              f"the walk it replaced {out[str(backlog)]['walk'] * 1000:9.1f} ms "
              f"({out[str(backlog)]['walk'] / out[str(backlog)]['status']:.0f}x)", flush=True)
    src.close()
    dst.close()
    return out


def save_cost(work: Path, repeat: int, batch: int = 2000) -> dict[str, float]:
    """Median microseconds per 1 KiB save (sync off: the CPU a save costs, not the disk's flush) into a
    store with no destination and into one with a counted destination (its pending entry and counter
    written in the save's transaction), batches interleaved."""
    plain = microblob.connect(work / "cost-plain.db", sync=False)
    synced = microblob.connect(work / "cost-synced.db", sync=False)
    dst = microblob.connect(work / "cost-dst.db", sync=False)
    synced.save_or_update_object(b"first")
    microblob.sync(synced, dst)
    times: dict[str, list[float]] = {"no destination": [], "1 destination": []}
    payload = os.urandom(1024)
    for _ in range(repeat):
        for side, store in (("no destination", plain), ("1 destination", synced)):
            start = time.perf_counter()
            for _ in range(batch):
                store.save_or_update_object(payload)
            times[side].append((time.perf_counter() - start) / batch * 1e6)
    for store in (plain, synced, dst):
        store.close()
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"  1 KiB save, sync off: {med['no destination']:.1f} us with no destination, "
          f"{med['1 destination']:.1f} us with one ({med['1 destination'] / med['no destination']:.2f}x)",
          flush=True)
    return med


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mongo", help="a MongoDB server's base URI (default: start SecantusDB)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--objects", type=int, default=40)
    ap.add_argument("--size", default="1MiB", choices=list(SIZES))
    ap.add_argument("--interval", type=float, default=0.05, help="SyncWorker polling interval for the latency")
    ap.add_argument("--status-backlogs", default="10000,100000", help="comma list of backlog sizes ('' skips)")
    ap.add_argument("--status-only", action="store_true", help="only the sync status timing")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-sync-"))
    backlogs = [int(n) for n in args.status_backlogs.split(",") if n.strip()]
    if args.status_only:
        try:
            status = status_timing(work, backlogs, args.repeat)
            cost = save_cost(work, args.repeat)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        out = ROOT / "bench" / "results"
        out.mkdir(exist_ok=True)
        (out / "sync_status.json").write_text(json.dumps({"status_seconds": status, "save_us": cost}, indent=2) + "\n")
        return
    proc = None
    try:
        base = args.mongo.rstrip("/") if args.mongo else None
        if base is None:
            base, proc = start_secantus(work)
        src = microblob.connect(work / "src.db")
        size = SIZES[args.size]
        for _ in range(args.objects):
            src.save_or_update_object(os.urandom(size), type="image")
        for _ in range(200):
            src.save_or_update_object(os.urandom(1024), type="note")
        total = args.objects * size + 200 * 1024
        times: dict[str, list[float]] = {"sync": [], "copy": [], "gridfs": []}
        for _ in range(args.repeat):
            for side in times:  # interleaved
                uri = fresh(base)
                start = time.perf_counter()
                if side == "sync":
                    round_ = microblob.sync(src, uri)
                    assert round_.ok and round_.confirmed == args.objects + 200, round_.summary()
                elif side == "copy":
                    assert microblob.copy(src, uri).ok
                else:
                    gridfs_upload(src, uri)
                times[side].append(time.perf_counter() - start)
                drop(uri)
        lat_uri = fresh(base)
        microblob.sync(src, lat_uri)
        lat = latency(src, lat_uri, args.interval)
        drop(lat_uri)
        src.close()
        status = status_timing(work, backlogs, args.repeat) if backlogs else {}
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
        shutil.rmtree(work, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{args.objects} x {args.size} + 200 x 1 KiB ({total / 1e6:.1f} MB), medians of {args.repeat}")
    for side, seconds in med.items():
        print(f"  {side:7} {seconds * 1000:9.1f} ms  {total / seconds / 1e6:8.1f} MB/s")
    print(f"  sync / gridfs upload: {med['gridfs'] / med['sync']:.2f}x the throughput; "
          f"sync / copy: {med['copy'] / med['sync']:.2f}x")
    lat_sorted = sorted(lat)
    p50, p90 = statistics.median(lat), lat_sorted[int(0.9 * len(lat_sorted))]
    print(f"  save -> confirmed at the destination (SyncWorker every {args.interval:g} s): "
          f"p50 {p50 * 1000:.1f} ms, p90 {p90 * 1000:.1f} ms")
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "sync.json").write_text(json.dumps({"seconds": med, "bytes": total, "latency_p50_s": p50,
                                               "latency_p90_s": p90, "status_seconds": status}, indent=2) + "\n")


if __name__ == "__main__":
    main()
