"""Moving a store through a bundle (`export_store` + `import_store`) beside `copy` from file to file, the
strongest baseline: the same objects and bytes, one store file into a fresh one, no bundle in between.

    python bench/bench_bundle.py [--mib 256] [--small 2000] [--repeat 5] [--dir /tmp]

The source holds one object of `--mib` MiB and `--small` objects of 1 KiB. Each round runs, interleaved:
copy (src -> a new file), export (src -> a bundle), import (the bundle -> a new file); each target is
removed after its round. Prints medians and the ratio of export + import to copy.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import microblob  # noqa: E402


def _timed(fn: object) -> float:
    start = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--small", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--dir", default=None)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-bundle-", dir=args.dir))
    try:
        src = work / "src.db"
        with (work / "big.bin").open("wb") as out:
            for _ in range(args.mib):
                out.write(os.urandom(1 << 20))
        with microblob.connect(str(src)) as store:
            store.save_or_update_object(work / "big.bin", object_id="big")
            for n in range(args.small):
                store.save_or_update_object(os.urandom(1024), object_id=f"small-{n}", custom_metadata={"n": n})
        (work / "big.bin").unlink()
        times: dict[str, list[float]] = {"copy": [], "export": [], "import": []}
        for _ in range(args.repeat):
            times["copy"].append(_timed(lambda: microblob.copy(str(src), str(work / "copied.db"))))
            times["export"].append(_timed(lambda: microblob.export_store(str(src), work / "s.mbb")))
            times["import"].append(_timed(lambda: microblob.import_store(work / "s.mbb", str(work / "imported.db"))))
            for name in ("copied.db", "copied.db-lock", "imported.db", "imported.db-lock", "s.mbb"):
                (work / name).unlink(missing_ok=True)
        med = {k: statistics.median(v) for k, v in times.items()}
        mb = args.mib * 1.048576 + args.small * 0.001024
        print(f"{args.mib} MiB object + {args.small} x 1 KiB, medians of {args.repeat} interleaved rounds:")
        for name, seconds in med.items():
            print(f"  {name:<7} {seconds:7.2f} s  {mb / seconds:8.1f} MB/s")
        both = med["export"] + med["import"]
        print(f"  export + import {both:.2f} s = {both / med['copy']:.2f}x copy")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
