"""A real LabThings-FastAPI server for tests/test_labthings_interop.py, run by the Python of LabThings' own
virtualenv (``MICROBLOB_LABTHINGS_PYTHON``), never imported by microblob or by the test process.

``python _labthings_app.py SETTINGS_DIR`` binds 127.0.0.1 on a port the OS picks, prints ``PORT <n>`` on
stdout once it listens, and serves until it is sent SIGTERM or SIGINT. LabThings keeps each Thing's
settings under SETTINGS_DIR (the test's temporary directory). The Thing is written the way a LabThings user
writes one; tests/test_labthings_interop.py has the same Thing written with ``import microblob as lt``.
"""

from __future__ import annotations

import hashlib
import os
import socket
import sys
from typing import Annotated

import labthings_fastapi as lt
import uvicorn
from _labthings_frames import frame
from pydantic import Field


class PNGBlob(lt.blob.Blob):
    media_type = "image/png"


class Camera(lt.Thing):
    """A camera whose frames are Blobs."""

    exposure: int = lt.property(default=10, ge=1, le=1000)

    @lt.action
    def capture(self, label: str = "frame", size: int = 300_000) -> PNGBlob:
        """Take a frame: a Blob the client downloads when it reads it."""
        return PNGBlob.from_bytes(frame(label, size), media_type="image/png")

    @lt.action
    def measure(self, image: lt.blob.Blob) -> dict[str, object]:
        """Read a Blob given back to the server and say what it holds."""
        data = image.content
        return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "media_type": image.media_type}

    @lt.action
    def wait_for(self, path: str) -> str:
        """Runs until the file at `path` exists (the test makes it), so its client has to poll."""
        while not os.path.exists(path):
            lt.cancellable_sleep(0.01)
        return "seen"

    @lt.action
    def move(self, steps: Annotated[int, Field(ge=0, le=10, description="steps forward")]) -> int:
        """A motor move whose input has limits."""
        return steps * 2


def main() -> None:
    server = lt.ThingServer.from_things({"camera": Camera}, settings_folder=sys.argv[1])
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    config = uvicorn.Config(server.app, log_level="warning", lifespan="on")
    web = uvicorn.Server(config)
    print(f"PORT {sock.getsockname()[1]}", flush=True)
    web.run(sockets=[sock])


if __name__ == "__main__":
    main()
