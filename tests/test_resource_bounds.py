"""The server's memory stays bounded under load, and what expires is given back (issue 5).

The server runs in its own process (uvicorn on a free 127.0.0.1 port) so its RSS is its own; the clients are
threads of the test process. Memory is read from /proc/PID/status: VmRSS now, and VmHWM (the peak), reset
through /proc/PID/clear_refs just before the load so it is the peak *of the load*.

(a) 20 clients download a 256 MiB file-backed Blob at once (5 GiB served): every client holds after its
    first chunk until all 20 are streaming, so the server has 20 responses in flight, 19 of them stalled
    (backpressure, not buffering, must hold them). Bound: the peak exceeds the RSS before the downloads by
    less than 128 MiB (a tenth of one download per client would already be 512 MiB).
(b) 1,000 invocations, each returning a 1.5 MiB in-memory Blob and a 64 KiB file-backed Blob with a 5 s
    TTL and a 1 s retention, after a warm-up of 40 with a 1 s TTL: while they live, the RSS holds their
    bytes (checked against the live-link count, so the measurement is shown to see them); once they
    expire, the invocation table and the link table are empty, every temp file is gone, and the RSS is
    back within 48 MiB of what it was before the 1,000.
    (In-memory bytes over `microblob.engine.malloc.MMAP_THRESHOLD`, 1.125 MiB, get their own mapping and go back to
    the OS when released; smaller ones go back to the allocator's heap, which keeps them for reuse.)
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import vm_status
from test_http_server import wait_until

MIB = 1 << 20
MEMORY = 3 * MIB // 2  # the in-memory Blob of each invocation in (b): over _malloc.MMAP_THRESHOLD
ROOT = str(Path(__file__).resolve().parents[1])

SERVER = r"""
import os, socket, sys, tempfile
sys.path.insert(0, sys.argv[1])
import uvicorn
from microblob import Blob, Thing, ThingServer, thing_action, thing_property

TEMP, TTL, RETENTION, MEMORY = sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
WARM_TTL = 1.0
CHUNK = 1 << 20


class Bounds(Thing):
    server = None

    @thing_action(blob_ttl=600)
    def big(self, size: int) -> Blob:
        fd, path = tempfile.mkstemp(dir=TEMP, prefix="big-")
        block = os.urandom(CHUNK)
        with os.fdopen(fd, "wb") as f:
            for i in range(size // CHUNK):
                f.write(i.to_bytes(8, "little") + block[8:])
        return Blob.from_file(path, delete=True)

    @thing_action(blob_ttl=TTL)
    def frame(self, i: int) -> dict[str, Blob]:
        return self._frame()

    @thing_action(blob_ttl=WARM_TTL)  # `frame` with a short TTL: the warm-up runs its code and its expiry
    def warm(self, i: int) -> dict[str, Blob]:
        return self._frame()

    def _frame(self) -> dict[str, Blob]:
        fd, path = tempfile.mkstemp(dir=TEMP, prefix="frame-")
        with os.fdopen(fd, "wb") as f:
            f.write(os.urandom(64 * 1024))
        return {"memory": Blob.from_bytes(os.urandom(MEMORY)), "file": Blob.from_file(path, delete=True)}

    @thing_property
    def stats(self) -> dict[str, int]:
        links = self.server.links.stats()
        return {"links": links["links"], "live": links["live"], "invocations": len(self.server.invocations.all())}


thing = Bounds()
app = ThingServer({"bounds": thing}, retention=RETENTION, upload_dir=TEMP)
app.links.tombstone_time = 1.0  # an expired id answers 410 for 1 s, then the link table forgets it too
thing.server = app
sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
sock.bind(("127.0.0.1", 0))
print(sock.getsockname()[1], flush=True)
uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])
"""


@contextmanager
def server_process(temp: Path, ttl: float = 600.0, retention: float = 300.0) -> Iterator[tuple[int, str]]:
    """(pid, base URL) of a ThingServer serving `Bounds` in a fresh interpreter; stopped by its PID."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.Popen([sys.executable, "-c", SERVER, ROOT, str(temp), str(ttl), str(retention), str(MEMORY)],
                            stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        base = f"http://127.0.0.1:{port}/"
        wait_until(lambda: _answers(base), timeout=60)
        yield proc.pid, base
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)


def _answers(base: str) -> bool:
    try:
        return httpx.get(base + "things/", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def reset_peak(pid: int) -> None:
    """Make VmHWM start again from the current RSS (Linux: 5 > /proc/PID/clear_refs)."""
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")
    status = vm_status(pid)
    assert status["VmHWM"] <= status["VmRSS"] + MIB, status


class Sampler:
    """Samples the server's VmRSS (and, optionally, something else) every 20 ms in a thread."""

    def __init__(self, pid: int, probe: Any = None) -> None:
        self.pid, self.probe = pid, probe
        self.samples: list[tuple[int, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            extra = self.probe() if self.probe is not None else None
            self.samples.append((vm_status(self.pid)["VmRSS"], extra))

    def stop(self) -> list[tuple[int, Any]]:
        self._stop.set()
        self._thread.join(30)
        return self.samples


# --- (a) 20 x 256 MiB at once -------------------------------------------------------------------------------

SIZE = 256 * MIB
CLIENTS = 20
DOWNLOAD_BOUND = 128 * MIB


@pytest.mark.slow
def test_20_concurrent_256_mib_downloads_keep_the_server_bounded(tmp_path: Path) -> None:
    temp = tmp_path / "server-tmp"
    temp.mkdir()
    with server_process(temp) as (pid, base), httpx.Client(timeout=120) as http:
        out = http.post(base + "bounds/big", params={"wait": "120"}, json={"size": SIZE}).json()["output"]
        assert out["size"] == SIZE
        with http.stream("GET", out["url"], headers={"Range": "bytes=0-1048575"}) as r:  # warm the path
            assert r.status_code == 206 and len(r.read()) == MIB
        baseline = vm_status(pid)["VmRSS"]
        reset_peak(pid)
        sampler = Sampler(pid)
        barrier = threading.Barrier(CLIENTS, timeout=120)
        streaming = []

        def download(_: int) -> tuple[int, str]:
            digest, count = hashlib.sha256(), 0
            with httpx.Client(timeout=120) as client, client.stream("GET", out["url"]) as r:
                assert r.status_code == 200
                chunks = r.iter_raw(MIB)
                first = next(chunks)
                digest.update(first)
                count += len(first)
                streaming.append(True)
                barrier.wait()  # all 20 responses are in flight before any client reads on
                for chunk in chunks:
                    digest.update(chunk)
                    count += len(chunk)
            return count, digest.hexdigest()

        started = time.monotonic()
        with ThreadPoolExecutor(CLIENTS) as pool:
            results = list(pool.map(download, range(CLIENTS)))
        elapsed = time.monotonic() - started
        sampled_peak = max(rss for rss, _ in sampler.stop())
        # VmHWM is the kernel's peak, but its RSS counters are synced lazily (per-CPU batches), so a sample
        # can read a little above it: the peak is the larger of the two.
        peak = max(vm_status(pid)["VmHWM"], sampled_peak)
    assert len(streaming) == CLIENTS
    assert results == [(SIZE, out["sha256"])] * CLIENTS  # every byte of every download, verified
    growth = peak - baseline
    print(f"\n20 x 256 MiB in {elapsed:.1f} s ({CLIENTS * SIZE / elapsed / MIB:.0f} MiB/s): server RSS baseline "
          f"{baseline / MIB:.1f} MiB, peak {peak / MIB:.1f} MiB (sampled {sampled_peak / MIB:.1f}), "
          f"+{growth / MIB:.1f} MiB; bound +{DOWNLOAD_BOUND // MIB} MiB")
    assert growth < DOWNLOAD_BOUND, f"the server's peak grew {growth / MIB:.1f} MiB during the downloads"
    assert os.listdir(temp) == []  # the server stopped: the big file went with its Blob


# --- (b) 1,000 invocations expire ----------------------------------------------------------------------------

INVOCATIONS = 1000
TTL, RETENTION = 5.0, 1.0
RETURN_BOUND = 48 * MIB


def run_invocations(base: str, count: int, threads: int = 4, action: str = "frame") -> list[dict[str, Any]]:
    def run(indices: range) -> list[dict[str, Any]]:
        outs = []
        with httpx.Client(base_url=base, timeout=120) as client:
            for i in indices:
                inv = client.post(f"bounds/{action}", params={"wait": "60"}, json={"i": i}).json()
                assert inv["status"] == "completed", inv
                outs.append(inv["output"])
        return outs

    with ThreadPoolExecutor(threads) as pool:
        parts = pool.map(run, [range(t, count, threads) for t in range(threads)])
    return [out for part in parts for out in part]


def stats(base: str) -> dict[str, int]:
    return httpx.get(base + "bounds/stats", timeout=30).json()


@pytest.mark.slow
def test_1000_expiring_invocations_give_their_memory_back(tmp_path: Path) -> None:
    temp = tmp_path / "server-tmp"
    temp.mkdir()
    empty = {"links": 0, "live": 0, "invocations": 0}
    with server_process(temp, ttl=TTL, retention=RETENTION) as (pid, base):
        run_invocations(base, 40, action="warm")  # imports, worker threads, connections; then it all expires
        wait_until(lambda: stats(base) == empty and os.listdir(temp) == [], timeout=120)
        baseline = vm_status(pid)["VmRSS"]
        reset_peak(pid)
        sampler = Sampler(pid, probe=lambda: stats(base)["live"])
        outs = run_invocations(base, INVOCATIONS)
        during = stats(base)
        with httpx.Client(timeout=30) as http:  # the links work while they live
            for out in outs[-5:]:
                assert len(http.get(out["memory"]["url"]).content) == MEMORY
        wait_until(lambda: stats(base) == empty and os.listdir(temp) == [], timeout=120)
        samples = sampler.stop()
        final = vm_status(pid)["VmRSS"]
        peak = max(vm_status(pid)["VmHWM"], *(rss for rss, _ in samples))
        with httpx.Client(timeout=30) as http:
            assert http.get(outs[0]["memory"]["url"]).status_code in (404, 410)
    assert len({out["memory"]["url"] for out in outs}) == INVOCATIONS
    # The measurement sees the Blobs: at the sample with the most live links, the RSS held about their bytes
    # (half the live links are 1.5 MiB in memory, half 64 KiB files).
    rss, live = max(samples, key=lambda s: s[1])
    assert live >= 40, f"only {live} links were ever live at once"
    assert rss - baseline >= 0.75 * (live // 2) * MEMORY, (rss - baseline, live)
    back = final - baseline
    print(f"\n{INVOCATIONS} invocations (1.5 MiB + 64 KiB each, TTL {TTL:g} s): server RSS baseline "
          f"{baseline / MIB:.1f} MiB, peak {peak / MIB:.1f} MiB (+{(peak - baseline) / MIB:.1f}; {live} links live "
          f"at the fullest sample, {during['live']} when the last finished), after expiry {final / MIB:.1f} MiB "
          f"({back / MIB:+.1f}); bound +{RETURN_BOUND // MIB} MiB")
    assert back < RETURN_BOUND, f"{back / MIB:.1f} MiB were not given back after everything expired"
