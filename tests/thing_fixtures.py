"""Things used by the HTTP tests (importable as ``thing_fixtures:Camera`` for the "module:Class" form)."""

from __future__ import annotations

import os
import tempfile
import threading
from dataclasses import dataclass, field
from typing import Literal

from microblob import Blob, Thing, cancellable_sleep, thing_action, thing_property


class RAWBlob(Blob):
    content_type = "image/x-raw"


class JPEGBlob(Blob):
    media_type = "image/jpeg"  # LabThings' spelling


@dataclass
class Settings:
    gain: float
    mode: Literal["fast", "slow"] = "fast"
    tags: list[str] = field(default_factory=list)


@dataclass
class Capture:
    image: RAWBlob
    note: str


class Camera(Thing):
    """A test camera: deterministic frames, and hooks to block, fail and count."""

    def __init__(self) -> None:
        self._exposure = 0.5
        self.release = threading.Event()
        self.calls = 0
        self.barrier: threading.Barrier | None = None

    @thing_property
    def exposure(self) -> float:
        """Exposure time in seconds."""
        return self._exposure

    @exposure.setter
    def exposure(self, value: float) -> None:
        self._exposure = value

    @thing_property
    def model(self) -> str:
        return "sim-1"

    @thing_action
    def capture_raw_image(self, size: int = 1024) -> RAWBlob:
        """A raw frame of `size` bytes."""
        self.calls += 1
        return RAWBlob.from_bytes(frame(size))

    @thing_action
    def convert_raw_to_jpeg(self, raw: RAWBlob) -> JPEGBlob:
        return JPEGBlob.from_bytes(b"\xff\xd8JPEG" + bytes(raw.data[:16]))

    @thing_action
    def blob_length(self, blob: Blob) -> int:
        return len(blob.data)

    @thing_action
    def blob_sha256(self, blob: Blob) -> str:
        """Streams the input (bounded memory) and returns its sha256."""
        import hashlib

        h = hashlib.sha256()
        with blob.open() as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        return h.hexdigest()

    @thing_action(blob_ttl=0.3)
    def short_lived(self) -> RAWBlob:
        return RAWBlob.from_bytes(b"short")

    @thing_action
    def file_frame(self, size: int) -> RAWBlob:
        """A frame written to a temporary file in 1 MiB pieces (the file goes with the Blob)."""
        fd, path = tempfile.mkstemp(prefix="mb-test-frame-")
        with os.fdopen(fd, "wb") as f:
            left, i = size, 0
            while left > 0:
                piece = frame(min(1 << 20, left), seed=i)
                f.write(piece)
                left -= len(piece)
                i += 1
        return RAWBlob.from_file(path, delete=True)

    @thing_action
    def nested(self, n: int = 2) -> dict[str, list[RAWBlob]]:
        return {"frames": [RAWBlob.from_bytes(frame(10 + i)) for i in range(n)]}

    @thing_action
    def capture_with_note(self, note: str) -> Capture:
        return Capture(RAWBlob.from_bytes(frame(8)), note)

    @thing_action
    def configure(self, settings: Settings, label: str | None = None, scale: float = 1.0) -> dict[str, object]:
        return {"gain": settings.gain, "mode": settings.mode, "tags": settings.tags, "label": label, "scale": scale}

    @thing_action
    def add(self, a: int, b: int = 2) -> int:
        return a + b

    @thing_action
    def wait_for_release(self, seconds: float = 30.0) -> str:
        """Blocks until the test sets `release` (or `seconds` pass); a cancel stops it at once."""
        waited = 0.0
        while not self.release.is_set():
            if waited >= seconds:
                return "timed out"
            cancellable_sleep(0.01)  # raises InvocationCancelled when a client cancels
            waited += 0.01
        return "released"

    @thing_action
    def sleep(self, seconds: float) -> str:
        cancellable_sleep(seconds)
        return "slept"

    @thing_action
    def meet(self, index: int) -> int:
        """Waits at the barrier: returns only when every participant is running at once."""
        assert self.barrier is not None
        self.barrier.wait(timeout=60)
        return index

    @thing_action
    def fail(self, message: str) -> None:
        raise ValueError(message)


def frame(size: int, seed: int = 0) -> bytes:
    """Deterministic, non-repeating-looking bytes."""
    block = bytes((i * 31 + seed * 7 + (i >> 8)) & 0xFF for i in range(min(size, 4096)))
    reps, rest = divmod(size, len(block)) if block else (0, 0)
    return block * reps + block[:rest]
