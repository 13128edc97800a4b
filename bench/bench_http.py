"""Call an action that returns a Blob, wait for it, download it: microblob vs a bare Starlette route vs
LabThings-FastAPI 0.3.0, in one run, as medians and ratios.

    python bench/bench_http.py [--runs-scale X] [--sizes 1KiB,1MiB,64MiB,256MiB] [--no-labthings]

Each server runs in its own process (uvicorn, 127.0.0.1, a free port) and each client in its own process,
so no two share an interpreter. All three serve the same bytes (seeded random, made before timing).

- microblob: `ThingClient.make_blob(size).data` — one POST held with ?wait until the action ends, then
  a streamed GET of the link, sha256-verified.
- bare: a plain Starlette route returning the bytes; the client streams the body with the same httpx
  calls (no action, no JSON, no hashing) — the floor for moving these bytes over HTTP here.
- labthings: the same Thing written for LabThings-FastAPI 0.3.0, called through its own ThingClient
  (which polls the invocation) and downloaded with `blob.content`. Installed on first use into
  bench/.venv-labthings.

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
RUNS = {1 << 10: 50, 1 << 20: 20, 64 << 20: 5, 256 << 20: 5}


def payload(size: int) -> bytes:
    """The same bytes in every server process."""
    import random

    rng = random.Random(size)
    pieces = [rng.randbytes(1 << 20) for _ in range(size >> 20)]
    return b"".join([*pieces, rng.randbytes(size & ((1 << 20) - 1))])


def _listen() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # TCP: asyncio sets NODELAY
    sock.bind(("127.0.0.1", 0))
    print(sock.getsockname()[1], flush=True)
    return sock


def _run_uvicorn(app: object, sock: socket.socket) -> None:
    import uvicorn

    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])


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


def _timed(fn, sizes: list[int], scale: float) -> dict[int, list[float]]:  # type: ignore[no-untyped-def]
    out: dict[int, list[float]] = {}
    for size in sizes:
        fn(size)  # warm up: the server makes and caches the payload, connections open
        times = []
        for _ in range(max(3, int(RUNS.get(size, 5) * scale))):
            t0 = time.perf_counter()
            fn(size)
            times.append(time.perf_counter() - t0)
        out[size] = times
    return out


def client_microblob(base: str, sizes: list[int], scale: float) -> dict[int, list[float]]:
    sys.path.insert(0, str(ROOT))
    from microblob import ThingClient

    bench = ThingClient.from_url(base + "bench/")

    def once(size: int) -> None:
        data = bench.make_blob(size).data
        assert len(data) == size

    return _timed(once, sizes, scale)


def client_bare(base: str, sizes: list[int], scale: float) -> dict[int, list[float]]:
    import httpx

    http = httpx.Client(timeout=300)

    def once(size: int) -> None:
        with http.stream("GET", f"{base}bytes/{size}") as r:
            data = b"".join(r.iter_raw())
        assert len(data) == size

    return _timed(once, sizes, scale)


def client_labthings(base: str, sizes: list[int], scale: float) -> dict[int, list[float]]:
    import labthings_fastapi as lt

    bench = lt.ThingClient.from_url(base + "bench/")

    def once(size: int) -> None:
        data = bench.make_blob(size=size).content
        assert len(data) == size

    return _timed(once, sizes, scale)


# --- orchestration ---------------------------------------------------------------------------------------


def ensure_labthings() -> Path | None:
    python = LT_VENV / "bin" / "python"
    if not python.exists():
        print("installing labthings-fastapi==0.3.0 into", LT_VENV, file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(LT_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "labthings-fastapi==0.3.0"], check=True)
    check = subprocess.run([str(python), "-c", "import labthings_fastapi"], capture_output=True)
    return python if check.returncode == 0 else None


def run_pair(python: str, kind: str, sizes: list[int], scale: float) -> dict[int, list[float]]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    server = subprocess.Popen([python, __file__, f"_serve_{kind}"], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        base = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + 60
        while True:  # wait until it answers
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        client = subprocess.run(
            [python, __file__, f"_client_{kind}", base, ",".join(map(str, sizes)), str(scale)],
            capture_output=True, text=True, env=env, timeout=3600,
        )
        if client.returncode != 0:
            raise RuntimeError(f"{kind} client failed:\n{client.stderr}")
        raw = json.loads(client.stdout.strip().splitlines()[-1])
        return {int(k): v for k, v in raw.items()}
    finally:
        server.terminate()
        server.wait(30)


def fmt(seconds: float) -> str:
    return f"{seconds * 1000:9.2f} ms" if seconds < 1 else f"{seconds:9.3f} s "


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default=",".join(SIZES), help="comma list of " + ", ".join(SIZES))
    ap.add_argument("--runs-scale", type=float, default=1.0, help="multiply the number of runs per size")
    ap.add_argument("--no-labthings", action="store_true")
    ap.add_argument("--json", help="also write the medians here")
    args = ap.parse_args()
    sizes = [SIZES[s] for s in args.sizes.split(",")]
    results = {
        "microblob": run_pair(sys.executable, "microblob", sizes, args.runs_scale),
        "bare": run_pair(sys.executable, "bare", sizes, args.runs_scale),
    }
    lt_python = None if args.no_labthings else ensure_labthings()
    if lt_python is not None:
        results["labthings"] = run_pair(str(lt_python), "labthings", sizes, args.runs_scale)
    med = {k: {s: statistics.median(v[s]) for s in sizes} for k, v in results.items()}
    names = {v: k for k, v in SIZES.items()}
    head = f"{'size':>7} {'runs':>4}  {'microblob':>12} {'bare route':>12}"
    if "labthings" in med:
        head += f" {'LabThings':>12}  {'mb/bare':>8} {'LT/mb':>8}"
    else:
        head += f"  {'mb/bare':>8}"
    print(head)
    for s in sizes:
        mb, bare = med["microblob"][s], med["bare"][s]
        line = f"{names[s]:>7} {len(results['microblob'][s]):>4}  {fmt(mb):>12} {fmt(bare):>12}"
        if "labthings" in med:
            lt = med["labthings"][s]
            line += f" {fmt(lt):>12}  {mb / bare:7.2f}x {lt / mb:7.2f}x"
        else:
            line += f"  {mb / bare:7.2f}x"
        print(line)
    print("mb/bare: microblob time over the bare route's (target at 256MiB <= 1.25); "
          "LT/mb: how many times faster microblob is than LabThings-FastAPI (target at 1KiB >= 5)")
    if args.json:
        Path(args.json).write_text(json.dumps({k: {names[s]: v for s, v in d.items()} for k, d in med.items()},
                                              indent=2))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1].startswith("_serve_"):
        globals()[f"serve_{sys.argv[1][7:]}"]()
    elif len(sys.argv) > 1 and sys.argv[1].startswith("_client_"):
        fn = globals()[f"client_{sys.argv[1][8:]}"]
        got = fn(sys.argv[2], [int(s) for s in sys.argv[3].split(",")], float(sys.argv[4]))
        print(json.dumps(got))
    else:
        main()
