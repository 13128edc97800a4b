"""A 256 MiB Blob through server and client, both ways, with bounded memory on both sides.

Server and client each run in their own process so their peak RSS (VmHWM) is theirs alone. Bound: the
peak may exceed the process's RSS just before the transfer by at most 64 MiB (a quarter of the payload;
the streaming paths hold a few 1 MiB chunks).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import vm_status

SIZE = 256 << 20
BOUND = 64 << 20
TESTS = str(Path(__file__).resolve().parent)
ROOT = str(Path(__file__).resolve().parents[1])

SERVER = """
import socket, sys
sys.path[:0] = [sys.argv[1], sys.argv[2]]
import uvicorn
from thing_fixtures import Camera
from microblob.http.server import ThingServer
app = ThingServer({"camera": Camera()}, upload_dir=sys.argv[3])
sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
sock.bind(("127.0.0.1", 0))
sock.listen(128)  # before the port is printed: a client connecting before uvicorn starts waits, not refused
print(sock.getsockname()[1], flush=True)
uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])
"""

CLIENT = """
import hashlib, json, sys
sys.path[:0] = [sys.argv[1], sys.argv[2]]
from thing_fixtures import RAWBlob
from microblob import ThingClient
from conftest import vm_status

cam = ThingClient.from_url(sys.argv[3])
cam.add(1)  # warm up: connections, imports
before = vm_status()["VmRSS"]
raw = cam.file_frame(int(sys.argv[5]))        # made on the server, in a file
assert raw.size == int(sys.argv[5])
raw.save(sys.argv[4])                          # streamed to disk, sha256 verified
h = hashlib.sha256()
with open(sys.argv[4], "rb") as f:
    while chunk := f.read(1 << 20):
        h.update(chunk)
assert h.hexdigest() == raw.sha256
uploaded = cam.blob_sha256(RAWBlob.from_file(sys.argv[4]))   # streamed up, hashed on the server
assert uploaded == raw.sha256, (uploaded, raw.sha256)
print(json.dumps({"before": before, **vm_status()}))
"""


@pytest.mark.slow
def test_256_mib_blob_both_ways_with_bounded_memory(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=ROOT)
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    server = subprocess.Popen([sys.executable, "-c", SERVER, TESTS, ROOT, str(uploads)], stdout=subprocess.PIPE,
                              text=True, env=env)
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        url = f"http://127.0.0.1:{port}/camera/"
        import httpx

        httpx.post(url + "add", params={"wait": "30"}, json={"a": 1}, timeout=30).raise_for_status()  # warm up
        server_before = vm_status(server.pid)["VmRSS"]
        client = subprocess.run(
            [sys.executable, "-c", CLIENT, TESTS, ROOT, url, str(tmp_path / "copy.raw"), str(SIZE)],
            capture_output=True, text=True, timeout=600, env=env,
        )
        assert client.returncode == 0, client.stderr
        server_peak = vm_status(server.pid)["VmHWM"]
    finally:
        server.terminate()
        server.wait(30)
    c = json.loads(client.stdout.strip().splitlines()[-1])
    client_growth = c["VmHWM"] - c["before"]
    server_growth = server_peak - server_before
    print(f"client peak +{client_growth / 2**20:.1f} MiB, server peak +{server_growth / 2**20:.1f} MiB")
    assert client_growth < BOUND, f"client peak grew {client_growth / 2**20:.1f} MiB"
    assert server_growth < BOUND, f"server peak grew {server_growth / 2**20:.1f} MiB"
    assert (tmp_path / "copy.raw").stat().st_size == SIZE
    assert list(uploads.iterdir()) == []  # the upload's temp file went with its Blob
