"""The checks ci/arm-smoke.sh runs inside each ARM rootfs, after the README's commands and the quickstart.

    python ci/arm_smoke_serve.py                  `microblob serve` in the background answers a real request
    python ci/arm_smoke_serve.py --make-store P   a store at P with one object, for the word-size check
    python ci/arm_smoke_serve.py --open-foreign P P (made on the other word size) gives the clear StorageError

Exit 0 when the check holds; otherwise a message on stderr and exit 1.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import signal
import subprocess
import sys
import threading

import httpx

import microblob

# qemu-user runs Python 10-30x slower than the host: a cold start of the server takes tens of seconds.
START_TIMEOUT = 300.0
OBJECT = "quickstart-image"  # examples/quickstart.py saves it in ./microblob.db


def fail(message: str) -> int:
    print(f"arm-smoke: {message}", file=sys.stderr)
    return 1


def check_serve() -> int:
    """Serve ./microblob.db on a free port, read the quickstart's image over HTTP, stop with SIGTERM."""
    with microblob.connect("microblob.db", create=False) as store:
        expected = store.get_blob_object(OBJECT)
        want_sha, want_version = expected.sha256, expected.version
    proc = subprocess.Popen([sys.executable, "-m", "microblob", "serve", "--port", "0"],
                            stdout=subprocess.PIPE, text=True)
    try:
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(proc.stdout.readline() if proc.stdout else ""))
        reader.start()
        reader.join(START_TIMEOUT)
        url = line[0].strip() if line else ""
        if not url.startswith("http://"):
            return fail(f"serve printed no URL within {START_TIMEOUT:.0f} s (exit code {proc.poll()})")
        with httpx.Client(base_url=url, timeout=120.0) as client:
            meta = client.get(f"objects/{OBJECT}")
            if meta.status_code != 200:
                return fail(f"GET /objects/{OBJECT}: {meta.status_code} {meta.text[:200]}")
            doc = meta.json()
            data = client.get(f"objects/{OBJECT}/data")
            digest = hashlib.sha256(data.content).hexdigest()
            listing = client.get("objects/", params={"limit": 10})
        print(f"GET {url}objects/{OBJECT}: version {doc.get('version')}, sha256 {str(doc.get('sha256'))[:12]}")
        print(f"GET {url}objects/{OBJECT}/data: {len(data.content)} bytes, {data.headers.get('content-type')}, "
              f"sha256 {digest[:12]}")
        if doc.get("version") != want_version or doc.get("sha256") != want_sha:
            return fail(f"metadata {doc} does not match the store's (version {want_version}, sha256 {want_sha})")
        if data.status_code != 200 or digest != want_sha or not data.content.startswith(b"\x89PNG\r\n\x1a\n"):
            return fail(f"the image's bytes came back wrong: {data.status_code}, sha256 {digest}")
        if listing.status_code != 200 or OBJECT not in listing.text:
            return fail(f"GET /objects/ does not list {OBJECT}: {listing.status_code} {listing.text[:200]}")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(START_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
    if code != 0:
        return fail(f"serve exited {code} after SIGTERM, not 0 (a graceful stop)")
    print("serve stopped on SIGTERM with exit code 0")
    return 0


def make_store(path: str) -> int:
    with microblob.connect(path) as store:
        oid = store.save_or_update_object(b"made on this machine", object_id="word-size", type="note")
        bits = 64 if sys.maxsize > 2**32 else 32
        print(f"{path}: object {oid} in a store of a {bits}-bit Python ({os.uname().machine})")
    return 0


def open_foreign(path: str) -> int:
    """The other word size's file must raise StorageError naming the cause, not read as damage."""
    try:
        with microblob.connect(path, create=False) as store:
            return fail(f"{path} opened ({store.count_objects()} objects): expected the other word size's error")
    except microblob.StorageError as exc:
        message = str(exc)
    print(f"StorageError: {message}")
    if "-bit machine" not in message or "not damaged" not in message:
        return fail("the error does not name the word size and that the file is not damaged")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--make-store", metavar="PATH")
    parser.add_argument("--open-foreign", metavar="PATH")
    args = parser.parse_args()
    if args.make_store:
        return make_store(args.make_store)
    if args.open_foreign:
        return open_foreign(args.open_foreign)
    return check_serve()


if __name__ == "__main__":
    sys.exit(main())
