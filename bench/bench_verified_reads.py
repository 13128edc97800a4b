"""What checking the sha256 costs a whole read: `obj.save(path)` and `obj.data` of one object, verified
(the default) against the same read with the check switched off, interleaved, as medians and ratios.

    python bench/bench_verified_reads.py [--mib 256] [--runs 7]

One LMDB store in a temp directory, one seeded object; the file written by save() goes to the same
directory (page cache, no fsync difference between the sides: both fsync).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import microblob  # noqa: E402
from microblob import files  # noqa: E402


class _Unverified(files.DownloadStream):
    """The same stream without the whole-file hash: the baseline."""

    def _account(self, start: int, piece: bytes) -> None:
        return None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = microblob.connect(Path(tmp) / "store.db")
        oid = store.save_or_update_object(random.Random(1).randbytes(args.mib << 20))
        out = Path(tmp) / "out.bin"
        times: dict[str, list[float]] = {}
        real = files.DownloadStream
        for _ in range(args.runs):
            for side in ("verified", "unverified"):
                files.DownloadStream = real if side == "verified" else _Unverified  # type: ignore[misc]
                for what in ("save", "data"):
                    obj = store.get_blob_object(oid)
                    start = time.perf_counter()
                    if what == "save":
                        obj.save(out)
                    else:
                        _ = obj.data
                    times.setdefault(f"{what} {side}", []).append(time.perf_counter() - start)
                    del obj
                    if out.exists():
                        os.unlink(out)
        files.DownloadStream = real  # type: ignore[misc]
        store.close()
    for what in ("save", "data"):
        v = statistics.median(times[f"{what} verified"])
        u = statistics.median(times[f"{what} unverified"])
        print(f"{what:5} {args.mib} MiB: verified {args.mib / v:7.0f} MiB/s, unverified {args.mib / u:7.0f} MiB/s, "
              f"verified/unverified time {v / u:.2f}x  (medians of {args.runs})")


if __name__ == "__main__":
    main()
