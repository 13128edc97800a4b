"""The camera of the LabThings Blob documentation, made real: a simulated camera served over HTTP.

    python examples/camera.py serve [--port 5000]        # the Thing server (Ctrl-C to stop)
    python examples/camera.py client URL [OUT_DIR]       # both client flows against a running server
    python examples/camera.py demo [OUT_DIR]             # a server on a free port, both flows, then stop

Needs Pillow for the JPEG encoder (``pip install '.[examples]'``).

Flow 1 captures a RAW frame, passes it to ``convert_raw_to_jpeg`` *without downloading it* (only its
URL travels back) and saves the JPEG. Flow 2 calls ``capture_image``, which does both steps on the
server, and saves the result.
"""

from __future__ import annotations

import io
import math
import struct
import sys
import threading
from pathlib import Path

from microblob import Blob, Thing, thing_action, thing_property

RAW_MAGIC = b"MBRAW1"


class RAWBlob(Blob):
    """An 8-bit RGGB Bayer mosaic: ``MBRAW1``, width and height (uint16, big-endian), then the pixels."""

    content_type = "image/x-raw"


class JPEGBlob(Blob):
    content_type = "image/jpeg"


class Camera(Thing):
    """A simulated camera: a moving light spot on a gradient, seen through an RGGB Bayer filter."""

    def __init__(self, width: int = 320, height: int = 240) -> None:
        self.width, self.height = width, height
        self._exposure = 1.0
        self._frame = 0
        self._lock = threading.Lock()

    @thing_property
    def exposure(self) -> float:
        """Relative exposure (1.0 = nominal); brighter frames above 1."""
        return self._exposure

    @exposure.setter
    def exposure(self, value: float) -> None:
        if not 0 < value <= 10:
            raise ValueError("exposure must be in (0, 10]")
        self._exposure = value

    @thing_property
    def frames_captured(self) -> int:
        return self._frame

    @thing_action
    def capture_raw_image(self) -> RAWBlob:
        """Capture one RAW frame (Bayer mosaic, 8 bits per photosite)."""
        with self._lock:
            self._frame += 1
            n = self._frame
        w, h = self.width, self.height
        cx, cy = w * (0.3 + 0.4 * (n % 10) / 10), h / 2
        rows = []
        for y in range(h):
            row = bytearray(w)
            for x in range(w):
                spot = 255 * math.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * (h / 8) ** 2))
                base = 40 + 80 * x / w
                colour = (1.0, 0.8, 0.5)[(y & 1) + (x & 1)]  # R, G, B photosites of an RGGB pattern
                row[x] = min(255, int((base + spot) * colour * self._exposure))
            rows.append(bytes(row))
        return RAWBlob.from_bytes(RAW_MAGIC + struct.pack(">HH", w, h) + b"".join(rows))

    @thing_action
    def convert_raw_to_jpeg(self, raw: RAWBlob) -> JPEGBlob:
        """Demosaic a RAW frame (2x2 superpixels) and encode it as JPEG."""
        from PIL import Image

        data = bytes(raw.data)
        if not data.startswith(RAW_MAGIC):
            raise ValueError("not a RAW frame from this camera")
        w, h = struct.unpack(">HH", data[6:10])
        pixels = data[10:]
        if len(pixels) != w * h:
            raise ValueError(f"RAW frame is {len(pixels)} bytes, expected {w}x{h}")
        r, g, b = bytearray(), bytearray(), bytearray()
        for y in range(0, h - 1, 2):
            top, bottom = pixels[y * w : (y + 1) * w], pixels[(y + 1) * w : (y + 2) * w]
            r += top[0::2]
            b += bottom[1::2]
            g += bytes((p + q) // 2 for p, q in zip(top[1::2], bottom[0::2], strict=True))
        size = (w // 2, h // 2)
        planes = [Image.frombytes("L", size, bytes(plane)) for plane in (r, g, b)]
        out = io.BytesIO()
        Image.merge("RGB", planes).save(out, format="JPEG", quality=90)
        return JPEGBlob.from_bytes(out.getvalue())

    @thing_action
    def capture_image(self) -> JPEGBlob:
        """Capture and convert on the server: the RAW frame never leaves it."""
        raw = self.capture_raw_image()
        return self.convert_raw_to_jpeg(raw)


def run_client(url: str, out_dir: str | Path = ".") -> dict[str, object]:
    """Both flows of the documentation against a server at `url` (the camera's URL)."""
    from microblob import ThingClient

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with ThingClient.from_url(url) as camera:
        # Flow 1: RAW on the server, converted there; only the JPEG is downloaded.
        raw = camera.capture_raw_image()  # nothing downloaded yet
        jpeg = camera.convert_raw_to_jpeg(raw)  # sends raw's URL, not its bytes
        jpeg.save(out / "converted_image.jpg")
        raw_downloads = raw.downloads
        print(f"flow 1: {raw.size} RAW bytes stayed on the server (downloads: {raw_downloads}); "
              f"saved {jpeg.size} JPEG bytes to {out / 'converted_image.jpg'}")
        # Flow 2: one action does both steps.
        image = camera.capture_image()
        image.save(out / "captured_image.jpg", progress=None)
        print(f"flow 2: saved {image.size} JPEG bytes to {out / 'captured_image.jpg'}")
        raw.save(out / "raw_image.raw")  # the RAW frame too, downloaded only now
        return {"raw_downloads_before_save": raw_downloads, "frames": camera.frames_captured,
                "files": [out / "converted_image.jpg", out / "captured_image.jpg", out / "raw_image.raw"]}


def demo(out_dir: str = ".") -> None:
    import socket

    import uvicorn

    from microblob import ThingServer

    app = ThingServer({"camera": Camera()})
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    started = threading.Event()
    while not server.started and thread.is_alive():
        started.wait(0.01)
    try:
        run_client(f"http://127.0.0.1:{sock.getsockname()[1]}/camera/", out_dir)
    finally:
        server.should_exit = True
        thread.join(30)


def main(argv: list[str]) -> None:
    if not argv or argv[0] not in ("serve", "client", "demo"):
        print(__doc__)
        raise SystemExit(2)
    if argv[0] == "serve":
        from microblob import ThingServer

        port = int(argv[argv.index("--port") + 1]) if "--port" in argv else 5000
        ThingServer({"camera": Camera()}).serve("127.0.0.1", port)
    elif argv[0] == "client":
        run_client(argv[1], argv[2] if len(argv) > 2 else ".")
    else:
        demo(argv[1] if len(argv) > 1 else ".")


if __name__ == "__main__":
    main(sys.argv[1:])
