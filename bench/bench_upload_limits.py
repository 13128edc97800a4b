"""What the upload limits cost: `POST /blobs` of a large body and small JSON action calls, against the
same server with the limits' body reader swapped for Starlette's bare `request.stream()` (no idle or
total timeout per piece), interleaved, as medians and ratios.

    python bench/bench_upload_limits.py [--mib 128] [--runs 5] [--calls 300]

Loopback only: one uvicorn server in a thread of this process, spools in a temp directory.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _live import live_server  # noqa: E402

from microblob import Thing, thing_action  # noqa: E402
from microblob.http.server import ThingServer  # noqa: E402


class Adder(Thing):
    @thing_action
    def add(self, a: int, b: int = 2) -> int:
        return a + b


def _body(mib: int) -> Iterator[bytes]:
    piece = b"u" * (1 << 20)
    for _ in range(mib):
        yield piece


def _upload(http: httpx.Client, mib: int) -> float:
    start = time.perf_counter()
    r = http.post("/blobs", content=_body(mib), headers={"Content-Length": str(mib << 20)})
    assert r.status_code == 201, r.text
    return time.perf_counter() - start


def _calls(http: httpx.Client, n: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        r = http.post("/adder/add?wait=30", json={"a": i})
        assert r.status_code == 200 and r.json()["output"] == i + 2, r.text
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=128)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()
    upload: dict[str, list[float]] = {"limited": [], "bare": []}
    calls: dict[str, list[float]] = {"limited": [], "bare": []}
    with tempfile.TemporaryDirectory() as tmp:
        # One server and one connection for both sides (two servers differ by more than their code):
        # each measurement switches the body reader.
        app = ThingServer({"adder": Adder()}, upload_dir=tmp, upload_ttl=0, spool_budget=64 << 30)
        limited = app.uploads.chunks
        with live_server(app) as url, httpx.Client(base_url=url, timeout=600) as http:
            for run in range(args.runs):
                for side in (("limited", "bare") if run % 2 == 0 else ("bare", "limited")):
                    app.uploads.chunks = (  # type: ignore[method-assign]
                        limited if side == "limited" else lambda request, **_: request.stream())
                    upload[side].append(args.mib / _upload(http, args.mib))
                    calls[side].append(_calls(http, args.calls))
        app.close()
    for name, table in (("POST /blobs MiB/s", upload), ("action calls/s", calls)):
        lim, bare = statistics.median(table["limited"]), statistics.median(table["bare"])
        print(f"{name:20} limited {lim:8.1f}  bare {bare:8.1f}  ratio {lim / bare:.3f}  "
              f"(medians of {args.runs}, interleaved)")


if __name__ == "__main__":
    main()
