"""Soak the Thing server: N clients call an action returning a 1 KiB Blob and fetch its link, for a while.

    python bench/soak_http.py [--seconds 900] [--clients 8] [--window 15] [--size 1024] [--json FILE]

Loopback only: the server is a fresh interpreter (uvicorn on 127.0.0.1, a free port) started and stopped
by this script, with ThingServer's defaults (300 s Blob TTL and retention, 1,000 invocations). The
clients are asyncio tasks of this process on raw keep-alive HTTP/1.1 connections (no client library
in the measured path, so the client costs little of the shared CPU). Each iteration is one
``POST /soak/frame?wait=30`` (held until the action ends; its JSON names the Blob link) and one
``GET`` of that link, whose body is checked against the size and sha256 the JSON announced.

Every window prints calls/s (one call = the POST and the GET), p50/p99 of each request, failures, the
server's RSS (/proc/PID/status) and the 1-minute load average (/proc/loadavg: the machine may be shared).
Verdict (the targets of issue 14): every later full minute keeps throughput within 20% of the first
minute's, and the server's RSS stays within +64 MiB of its RSS at the end of the first minute.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import os
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MIB = 1 << 20

SERVER = r"""
import os, socket, sys
sys.path.insert(0, sys.argv[1])
import uvicorn
from microblob import Blob, Thing, ThingServer, thing_action

SIZE = int(sys.argv[2])


class Soak(Thing):
    @thing_action
    def frame(self) -> Blob:
        return Blob.from_bytes(os.urandom(SIZE), "application/octet-stream")


app = ThingServer({"soak": Soak()})
sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # TCP: asyncio sets NODELAY
sock.bind(("127.0.0.1", 0))
sock.listen(256)
print(sock.getsockname()[1], flush=True)
uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False)).run(sockets=[sock])
"""


class HttpError(Exception):
    """A request that did not answer as expected."""


class Connection:
    """One keep-alive HTTP/1.1 connection: enough of the protocol for these two requests."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
            sock = self.writer.get_extra_info("socket")
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        assert self.reader is not None
        head = (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nContent-Length: {len(body)}\r\n"
                + ("Content-Type: application/json\r\n" if body else "") + "\r\n")
        try:
            self.writer.write(head.encode() + body)
            status_line = await self.reader.readline()
            if not status_line:
                raise HttpError("the server closed the connection")
            status = int(status_line.split()[1])
            headers: dict[str, str] = {}
            while (line := await self.reader.readline()) not in (b"\r\n", b""):
                key, _, value = line.decode("latin-1").partition(":")
                headers[key.strip().lower()] = value.strip()
            if headers.get("transfer-encoding", "").lower() == "chunked":
                parts = []
                while size := int((await self.reader.readline()).split(b";")[0], 16):
                    parts.append(await self.reader.readexactly(size))
                    await self.reader.readexactly(2)
                await self.reader.readexactly(2)
                data = b"".join(parts)
            else:
                data = await self.reader.readexactly(int(headers.get("content-length", "0")))
        except (OSError, ValueError, IndexError, asyncio.IncompleteReadError) as e:
            self.close()
            raise HttpError(f"{type(e).__name__}: {e}") from e
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, headers, data

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


@dataclass
class Window:
    """What the clients saw between two ticks."""

    calls: int = 0
    failures: int = 0
    post_ms: list[float] = field(default_factory=list)
    get_ms: list[float] = field(default_factory=list)
    first_error: str | None = None


class Soak:
    def __init__(self, port: int, size: int) -> None:
        self.port, self.size = port, size
        self.window = Window()
        self.stop = False

    async def client(self) -> None:
        conn = Connection(self.port)
        while not self.stop:
            try:
                t0 = time.perf_counter()
                status, _, body = await conn.request("POST", "/soak/frame?wait=30", b"{}")
                t1 = time.perf_counter()
                if status != 200:
                    raise HttpError(f"POST answered {status}: {body[:200]!r}")
                out = json.loads(body)["output"]
                path = "/" + out["url"].split("/", 3)[3]
                status, _, data = await conn.request("GET", path)
                t2 = time.perf_counter()
                if status != 200 or len(data) != self.size or hashlib.sha256(data).hexdigest() != out["sha256"]:
                    raise HttpError(f"GET {path} answered {status} with {len(data)} bytes")
            except (HttpError, KeyError, ValueError, TypeError) as e:
                w = self.window
                w.failures += 1
                w.first_error = w.first_error or str(e)
                await asyncio.sleep(0.05)  # a failing server is not hammered in a tight loop
                continue
            w = self.window
            w.calls += 1
            w.post_ms.append((t1 - t0) * 1000)
            w.get_ms.append((t2 - t1) * 1000)
        conn.close()

    def tick(self) -> Window:
        w, self.window = self.window, Window()
        return w


def quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def loadavg() -> float:
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def start_server(size: int) -> tuple[subprocess.Popen[str], int]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(ROOT), str(size)], stdout=subprocess.PIPE,
                            text=True, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.strip().isdigit():
        proc.kill()
        raise SystemExit(f"the server did not start (printed {line!r})")
    return proc, int(line)


def stop_server(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(30)


async def run(args: argparse.Namespace, pid: int, port: int) -> list[dict[str, Any]]:
    soak = Soak(port, args.size)
    tasks = [asyncio.create_task(soak.client()) for _ in range(args.clients)]
    rows: list[dict[str, Any]] = []
    start = last = time.monotonic()
    ends = [min(args.seconds, args.window * (i + 1)) for i in range(math.ceil(args.seconds / args.window))]
    print(f"{'t (s)':>6} {'calls/s':>8} {'POST p50':>9} {'p99':>7} {'GET p50':>8} {'p99':>7} {'fail':>5} "
          f"{'RSS MiB':>8} {'load':>5}", flush=True)
    for end in ends:  # windows end at fixed offsets from the start, so they do not drift
        await asyncio.sleep(max(0.0, start + end - time.monotonic()))
        now = time.monotonic()
        w = soak.tick()
        row = {
            "t": end,
            "seconds": now - last,
            "calls_per_s": w.calls / (now - last),
            "post_p50_ms": quantile(w.post_ms, 0.50), "post_p99_ms": quantile(w.post_ms, 0.99),
            "get_p50_ms": quantile(w.get_ms, 0.50), "get_p99_ms": quantile(w.get_ms, 0.99),
            "failures": w.failures, "first_error": w.first_error,
            "rss": rss(pid), "load": loadavg(),
        }
        rows.append(row)
        last = now
        print(f"{row['t']:>6.0f} {row['calls_per_s']:>8.1f} {row['post_p50_ms']:>9.1f} {row['post_p99_ms']:>7.1f} "
              f"{row['get_p50_ms']:>8.1f} {row['get_p99_ms']:>7.1f} {w.failures:>5} {row['rss'] / MIB:>8.1f} "
              f"{row['load']:>5.2f}" + (f"  first failure: {w.first_error}" if w.first_error else ""), flush=True)
    soak.stop = True
    await asyncio.wait(tasks, timeout=35)
    return rows


def verdict(rows: list[dict[str, Any]]) -> tuple[bool | None, list[str]]:
    """Each later full minute against the first minute (throughput within 20%, RSS within +64 MiB)."""
    minutes: list[list[dict[str, Any]]] = []
    for row in rows:
        index = math.ceil(row["t"] / 60) - 1
        while len(minutes) <= index:
            minutes.append([])
        minutes[index].append(row)
    full = minutes if minutes and minutes[-1][-1]["t"] >= 60 * len(minutes) else minutes[:-1]
    if len(full) < 2 or not all(full):
        return None, ["too short for a verdict: it needs two full minutes"]

    def rate(m: list[dict[str, Any]]) -> float:
        return sum(r["calls_per_s"] * r["seconds"] for r in m) / sum(r["seconds"] for r in m)

    base_rate, base_rss = rate(full[0]), full[0][-1]["rss"]
    lines, ok = [f"first minute: {base_rate:.1f} calls/s, RSS {base_rss / MIB:.1f} MiB at its end"], True
    for i, m in enumerate(full[1:], start=2):
        r, peak = rate(m), max(x["rss"] for x in m)
        good = r >= 0.8 * base_rate and peak <= base_rss + 64 * MIB
        ok = ok and good
        lines.append(f"minute {i:>2}: {r:7.1f} calls/s ({r / base_rate:5.1%} of the first), "
                     f"RSS peak {(peak - base_rss) / MIB:+6.1f} MiB  {'ok' if good else 'MISSED'}")
    failures = sum(r["failures"] for r in rows)
    if failures:
        ok = False
        lines.append(f"{failures} failed calls")
    return ok, lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=900.0, help="how long the load lasts (default 900)")
    ap.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    ap.add_argument("--window", type=float, default=15.0, help="seconds per window, a divisor of 60 (default 15)")
    ap.add_argument("--size", type=int, default=1024, help="bytes of the Blob the action returns (default 1024)")
    ap.add_argument("--json", type=Path, help="also write the windows and the verdict to this file")
    args = ap.parse_args()
    if args.seconds <= 0 or args.clients < 1 or args.window <= 0 or args.size < 0:
        ap.error("--seconds, --clients and --window must be positive, --size >= 0")
    proc, port = start_server(args.size)
    try:
        print(f"server pid {proc.pid} on 127.0.0.1:{port}; {args.clients} clients for {args.seconds:g} s, "
              f"{args.size}-byte Blobs; {os.cpu_count()} CPUs, load {loadavg():.2f} at start", flush=True)
        rows = asyncio.run(run(args, proc.pid, port))
    finally:
        stop_server(proc)
    ok, lines = verdict(rows)
    print("\n".join(lines))
    print("verdict:", {True: "PASS", False: "FAIL", None: "none"}[ok])
    if args.json:
        args.json.write_text(json.dumps({"windows": rows, "verdict": ok, "summary": lines}, indent=1))
    sys.exit(1 if ok is False else 0)


if __name__ == "__main__":
    main()
