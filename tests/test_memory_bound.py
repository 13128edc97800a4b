"""Memory is bounded on the data path: a 1 GiB object in and out of the embedded default."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

GIB = 1024**3
LIMIT_MIB = 100

CHILD = r"""
import hashlib, json, sys
from pathlib import Path

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
import microblob
store = microblob.connect(sys.argv[1])
store.save_or_update_object(b"warm-up")          # every code path imported and touched once
baseline = status("VmRSS")
object_id = store.save_or_update_object(Path(sys.argv[2]), type="dataset")
obj = store.get_blob_object(object_id)
digest = hashlib.sha256()
with obj.open() as stream:
    while True:
        piece = stream.read(1024 * 1024)
        if not piece:
            break
        digest.update(piece)
store.close()
print(json.dumps({"baseline": baseline, "peak": status("VmHWM"), "size": obj.size,
                  "stored_sha256": obj.sha256, "read_sha256": digest.hexdigest()}))
"""


@pytest.mark.slow
def test_one_gib_object_in_and_out_with_bounded_rss(tmp_path: Path, run_python: Callable) -> None:
    source = tmp_path / "one-gib.bin"
    block = os.urandom(1024 * 1024)
    with open(source, "wb") as fh:
        for i in range(GIB // len(block)):
            fh.write(block[i % 256 :] + block[: i % 256])  # not one repeated block
    proc = run_python(CHILD, str(tmp_path / "store.db"), str(source), timeout=900)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["size"] == GIB
    assert result["read_sha256"] == result["stored_sha256"]
    grown_mib = (result["peak"] - result["baseline"]) / 2**20
    print(f"peak RSS {result['peak'] / 2**20:.0f} MiB, {grown_mib:.0f} MiB above baseline")
    assert grown_mib < LIMIT_MIB
