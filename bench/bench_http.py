"""Call an action that returns a Blob, wait for it, download it: microblob vs a bare Starlette route vs
LabThings-FastAPI 0.3.0, in one run, as medians and ratios.

    python bench/bench_http.py [--runs-scale X] [--sizes 1KiB,1MiB,64MiB,256MiB] [--no-labthings]

Each server runs in its own process (uvicorn, 127.0.0.1, a free port) and each client in its own process,
so no two share an interpreter; runs are interleaved (one of each in turn) so noise hits all alike.
All three serve the same bytes (seeded random, made before timing).

- microblob: `ThingClient.make_blob(size).data` — one POST held with ?wait until the action ends, then
  a streamed GET of the link, sha256-verified.
- bare: a plain Starlette route returning the bytes; the client streams the body with the same httpx
  calls (no action, no JSON, no hashing) — the floor for moving these bytes over HTTP here.
- labthings: the same Thing written for LabThings-FastAPI 0.3.0, called through its own ThingClient
  (which polls the invocation) and downloaded with `blob.content`. Installed on first use into
  bench/.venv-labthings. Its client sleeps 50 ms before its first poll, so it is also driven by:
- labthings raw: the same LabThings server from a raw httpx client that polls the invocation in a tight
  loop (no sleep) and then downloads the output's href: LabThings at its fastest.

Then concurrency (`--clients 1,8,32`): that many clients at once, each making 1 KiB round trips
(call + download) in a loop on its own connection (asyncio + httpx in one client process, the same
code against every server: microblob's held POST, the bare route, LabThings tight-polled), interleaved;
p50/p99 latency and throughput per server.

Targets: 1 KiB round trip >= 5x faster than LabThings-FastAPI; 256 MiB within 1.25x of the bare route.
"""


import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
LT_VENV = HERE / ".venv-labthings"
SIZES = {"1KiB": 1 << 10, "1MiB": 1 << 20, "64MiB": 64 << 20, "256MiB": 256 << 20}
RUNS = {1 << 10: 50, 1 << 20: 20, 64 << 20: 7, 256 << 20: 7}


def payload(size: int) -> bytes:
    """The same bytes in every server process."""
    import random

    rng = random.Random(size)
    pieces = [rng.randbytes(1 << 20) for _ in range(size >> 20)]
    return b"".join([*pieces, rng.randbytes(size & ((1 << 20) - 1))])


def _listen() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # TCP: asyncio sets NODELAY
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)  # before the port is printed, so an early client waits instead of being refused
    print(sock.getsockname()[1], flush=True)
    return sock


def _run_uvicorn(app: object, sock: socket.socket) -> None:
    import uvicorn

    # The same HTTP implementation and event loop for all three servers: the LabThings venv pulls in
    # httptools and uvloop (uvicorn[standard]), ours may not have them.
    http = os.environ.get("MB_BENCH_HTTP", "h11")
    loop = os.environ.get("MB_BENCH_LOOP", "asyncio")
    uvicorn.Server(uvicorn.Config(app, log_level="warning", http=http, loop=loop)).run(sockets=[sock])


# --- servers (each in its own process) ---------------------------------------------------------------


def serve_microblob() -> None:
    sys.path.insert(0, str(ROOT))
    from microblob import Blob, Thing, ThingServer, thing_action

    cache: dict[int, bytes] = {}

    class OctetBlob(Blob):
        content_type = "application/octet-stream"

    class BenchThing(Thing):
        @thing_action
        def make_blob(self, size: int) -> OctetBlob:
            if size not in cache:
                cache[size] = payload(size)
            return OctetBlob.from_bytes(cache[size])  # a new Blob each call: its sha256 is computed each call

    sock = _listen()
    _run_uvicorn(ThingServer({"bench": BenchThing()}), sock)


def serve_bare() -> None:
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    cache: dict[int, bytes] = {}

    async def data(request):  # type: ignore[no-untyped-def]
        size = int(request.path_params["size"])
        if size not in cache:
            cache[size] = payload(size)
        return Response(cache[size], media_type="application/octet-stream")

    sock = _listen()
    _run_uvicorn(Starlette(routes=[Route("/bytes/{size}", data)]), sock)


def serve_labthings() -> None:
    import tempfile

    import labthings_fastapi as lt

    cache: dict[int, bytes] = {}

    class OctetBlob(lt.blob.Blob):
        media_type = "application/octet-stream"

    class BenchThing(lt.Thing):
        @lt.action
        def make_blob(self, size: int) -> OctetBlob:
            if size not in cache:
                cache[size] = payload(size)
            return OctetBlob.from_bytes(cache[size])

    server = lt.ThingServer.from_things({"bench": BenchThing}, settings_folder=tempfile.mkdtemp())
    sock = _listen()
    _run_uvicorn(server.app, sock)


# --- clients (each in its own process; print one JSON line: {size: [seconds, ...]}) --------------------


def _serve_requests(fn) -> None:  # type: ignore[no-untyped-def]
    """Client loop: read a size per line on stdin, run one call+download, print its seconds."""
    for line in sys.stdin:
        size = int(line)
        t0 = time.perf_counter()
        fn(size)
        print(time.perf_counter() - t0, flush=True)


def client_microblob(base: str) -> None:
    sys.path.insert(0, str(ROOT))
    from microblob import ThingClient

    bench = ThingClient.from_url(base + "bench/")

    def once(size: int) -> None:
        data = bench.make_blob(size).data
        assert len(data) == size

    _serve_requests(once)


def client_bare(base: str) -> None:
    import httpx

    http = httpx.Client(timeout=300)

    def once(size: int) -> None:
        with http.stream("GET", f"{base}bytes/{size}") as r:
            data = b"".join(r.iter_raw())
        assert len(data) == size

    _serve_requests(once)


def client_labthings_raw(base: str) -> None:
    import httpx

    http = httpx.Client(timeout=300)

    def once(size: int) -> None:
        assert len(_labthings_tight(http, base, size)) == size

    _serve_requests(once)


def _labthings_tight(http, base: str, size: int) -> bytes:  # type: ignore[no-untyped-def]
    """LabThings' protocol without its client's sleeps: POST, poll the invocation's self link in a tight
    loop until it ends, then GET the output Blob's href."""
    r = http.post(f"{base}bench/make_blob", json={"size": size})
    r.raise_for_status()
    inv = r.json()
    while inv["status"] not in ("completed", "error", "cancelled"):
        inv = http.get(next(link["href"] for link in inv["links"] if link["rel"] == "self")).json()
    assert inv["status"] == "completed", inv
    return http.get(inv["output"]["href"]).content


def client_labthings(base: str) -> None:
    import labthings_fastapi as lt

    bench = lt.ThingClient.from_url(base + "bench/")

    def once(size: int) -> None:
        data = bench.make_blob(size=size).content
        assert len(data) == size

    _serve_requests(once)


async def _one_async(kind: str, http, base: str, size: int) -> int:  # type: ignore[no-untyped-def]
    if kind == "bare":
        r = await http.get(f"{base}bytes/{size}")
        return len(r.content)
    if kind == "microblob":
        r = await http.post(f"{base}bench/make_blob", json={"size": size}, params={"wait": "30"})
        inv = r.json()
        while inv["status"] not in ("completed", "error", "cancelled"):
            inv = (await http.get(inv["href"], params={"wait": "30"})).json()
        out = inv["output"]
        return len((await http.get(out.get("href") or out["url"])).content)
    r = await http.post(f"{base}bench/make_blob", json={"size": size})  # LabThings, tight-polled
    inv = r.json()
    while inv["status"] not in ("completed", "error", "cancelled"):
        inv = (await http.get(next(link["href"] for link in inv["links"] if link["rel"] == "self"))).json()
    return len((await http.get(inv["output"]["href"])).content)


def load_client(kind: str, base: str, clients: int, calls: int) -> None:
    """`clients` concurrent 1 KiB round-trip loops of `calls` each; prints {"latencies", "elapsed"}."""
    import asyncio

    import httpx

    async def run() -> dict:
        latencies: list[float] = []
        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
        async with httpx.AsyncClient(timeout=300, limits=limits) as http:
            await _one_async(kind, http, base, 1024)  # warm: connections, payload cached

            async def loop() -> None:
                for _ in range(calls):
                    t0 = time.perf_counter()
                    assert await _one_async(kind, http, base, 1024) == 1024
                    latencies.append(time.perf_counter() - t0)

            t0 = time.perf_counter()
            await asyncio.gather(*(loop() for _ in range(clients)))
            return {"latencies": latencies, "elapsed": time.perf_counter() - t0}

    print(json.dumps(asyncio.run(run())), flush=True)


def run_load(kind: str, port: int, clients: int, calls: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "_load", kind, f"http://127.0.0.1:{port}/", str(clients),
                          str(calls)], capture_output=True, text=True, check=True,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    return json.loads(out.stdout.splitlines()[-1])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# --- orchestration ---------------------------------------------------------------------------------------


def ensure_labthings() -> Path | None:
    python = LT_VENV / "bin" / "python"
    if not python.exists():
        print("installing labthings-fastapi==0.3.0 into", LT_VENV, file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(LT_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "labthings-fastapi==0.3.0"], check=True)
    check = subprocess.run([str(python), "-c", "import labthings_fastapi"], capture_output=True)
    return python if check.returncode == 0 else None


class Pair:
    """One server process and one client process of a kind; `call(size)` times one round trip."""

    def __init__(self, python: str, kind: str, server: str | None = None, client_python: str | None = None) -> None:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.server = subprocess.Popen([python, __file__, f"_serve_{server or kind}"], stdout=subprocess.PIPE,
                                       text=True, env=env)
        assert self.server.stdout is not None
        self.port = port = int(self.server.stdout.readline())
        deadline = time.monotonic() + 60
        while True:  # wait until it accepts connections
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.client = subprocess.Popen([client_python or python, __file__, f"_client_{kind}",
                                        f"http://127.0.0.1:{port}/"],
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)

    def call(self, size: int) -> float:
        assert self.client.stdin is not None and self.client.stdout is not None
        self.client.stdin.write(f"{size}\n")
        self.client.stdin.flush()
        line = self.client.stdout.readline()
        if not line:
            raise RuntimeError("client died (see its stderr above)")
        return float(line)

    def close(self) -> None:
        for proc in (self.client, self.server):
            if proc.poll() is None:
                proc.terminate()
                proc.wait(30)


def fmt(seconds: float) -> str:
    return f"{seconds * 1000:9.2f} ms" if seconds < 1 else f"{seconds:9.3f} s "


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default=",".join(SIZES), help="comma list of " + ", ".join(SIZES))
    ap.add_argument("--runs-scale", type=float, default=1.0, help="multiply the number of runs per size")
    ap.add_argument("--no-labthings", action="store_true")
    ap.add_argument("--json", help="also write the medians here")
    ap.add_argument("--clients", default="1,8,32", help="concurrent client counts ('' skips the load run)")
    ap.add_argument("--load-calls", type=int, default=200, help="round trips per load run, split across clients")
    ap.add_argument("--http", default="h11", choices=["h11", "httptools"],
                    help="uvicorn's HTTP implementation, the same for all servers (httptools must be installed)")
    ap.add_argument("--loop", default="asyncio", choices=["asyncio", "uvloop"],
                    help="uvicorn's event loop, the same for all servers (uvloop must be installed)")
    args = ap.parse_args()
    sizes = [SIZES[s] for s in args.sizes.split(",")]
    os.environ["MB_BENCH_HTTP"] = args.http
    os.environ["MB_BENCH_LOOP"] = args.loop
    pairs = {"microblob": Pair(sys.executable, "microblob"), "bare": Pair(sys.executable, "bare")}
    lt_python = None if args.no_labthings else ensure_labthings()
    if lt_python is not None:
        pairs["labthings"] = Pair(str(lt_python), "labthings")
        pairs["labthings raw"] = Pair(str(lt_python), "labthings_raw", server="labthings",
                                      client_python=sys.executable)
    results: dict[str, dict[int, list[float]]] = {k: {} for k in pairs}
    try:
        for size in sizes:
            for pair in pairs.values():
                pair.call(size)  # warm up: payload made and cached, connections open
            for _ in range(max(3, int(RUNS.get(size, 5) * args.runs_scale))):
                for kind, pair in pairs.items():  # interleaved, so machine noise hits all alike
                    results[kind].setdefault(size, []).append(pair.call(size))
        load = {}
        servers = {"microblob": pairs["microblob"].port, "bare": pairs["bare"].port}
        if "labthings" in pairs:
            servers["labthings"] = pairs["labthings"].port
        for clients in [int(c) for c in args.clients.split(",") if c]:
            calls = max(1, args.load_calls // clients)
            runs: dict[str, list[dict]] = {k: [] for k in servers}
            for _ in range(3):
                for kind, port in servers.items():
                    runs[kind].append(run_load(kind, port, clients, calls))
            load[clients] = {kind: {"p50_ms": statistics.median(percentile(r["latencies"], 0.5) for r in rs) * 1000,
                                    "p99_ms": statistics.median(percentile(r["latencies"], 0.99) for r in rs) * 1000,
                                    "per_s": statistics.median(len(r["latencies"]) / r["elapsed"] for r in rs)}
                             for kind, rs in runs.items()}
    finally:
        for pair in pairs.values():
            pair.close()
    med = {k: {s: statistics.median(v[s]) for s in sizes} for k, v in results.items()}
    names = {v: k for k, v in SIZES.items()}
    head = f"{'size':>7} {'runs':>4}  {'microblob':>12} {'bare route':>12}"
    if "labthings" in med:
        head += f" {'LabThings':>12} {'LT raw':>12}  {'mb/bare':>8} {'LT/mb':>8} {'LTraw/mb':>8}"
    else:
        head += f"  {'mb/bare':>8}"
    print(head)
    for s in sizes:
        mb, bare = med["microblob"][s], med["bare"][s]
        line = f"{names[s]:>7} {len(results['microblob'][s]):>4}  {fmt(mb):>12} {fmt(bare):>12}"
        if "labthings" in med:
            lt, raw = med["labthings"][s], med["labthings raw"][s]
            line += f" {fmt(lt):>12} {fmt(raw):>12}  {mb / bare:7.2f}x {lt / mb:7.2f}x {raw / mb:7.2f}x"
        else:
            line += f"  {mb / bare:7.2f}x"
        print(line)
    print(f"uvicorn http={args.http} loop={args.loop}; medians of interleaved runs")
    print("mb/bare: microblob time over the bare route's (target at 256MiB <= 1.25); "
          "LT/mb: how many times faster microblob is than LabThings-FastAPI (target at 1KiB >= 5); "
          "LTraw/mb: the same against LabThings driven by a tight-polling raw client")
    if load:
        print("\nconcurrent 1 KiB round trips (call + download), medians of 3 interleaved runs")
        print(f"{'clients':>7} {'server':>10} {'p50':>10} {'p99':>10} {'calls/s':>9}")
        for clients, by in load.items():
            for kind, row in by.items():
                print(f"{clients:>7} {kind:>10} {row['p50_ms']:8.2f}ms {row['p99_ms']:8.2f}ms {row['per_s']:9.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "round_trip_s": {k: {names[s]: v for s, v in d.items()} for k, d in med.items()},
            "concurrent_1KiB": {str(c): by for c, by in load.items()}}, indent=2))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1].startswith("_serve_"):
        globals()[f"serve_{sys.argv[1][7:]}"]()
    elif len(sys.argv) > 1 and sys.argv[1] == "_load":
        load_client(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
    elif len(sys.argv) > 1 and sys.argv[1].startswith("_client_"):
        globals()[f"client_{sys.argv[1][8:]}"](sys.argv[2])
    else:
        main()
