"""The camera of the LabThings Blob documentation, made real: a simulated camera served over HTTP.

    python examples/camera.py serve [--port 5000]        # the Thing server (Ctrl-C to stop)
    python examples/camera.py demo [OUT_DIR]             # a server on a free port, the client flows, then stop

This file is the Thing and its server; `examples/camera_client.py URL` is the client side (flow 1 passes
a RAW frame back to ``convert_raw_to_jpeg`` without downloading it, flow 2 calls ``capture_image``).
The server's page at http://127.0.0.1:5000/ lists the camera's actions and properties.
Needs Pillow for the JPEG encoder (``pip install '.[examples]'``).
"""

from __future__ import annotations

import io
import math
import struct
import sys
import threading

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


def demo(out_dir: str = ".") -> None:
    """A server on a free 127.0.0.1 port in this process, the client flows of camera_client.py, then stop."""
    import socket

    import uvicorn
    from camera_client import run_client  # examples/ is on sys.path when this file runs as a script

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
    if not argv or argv[0] not in ("serve", "demo"):
        print(__doc__)
        raise SystemExit(2)
    if argv[0] == "serve":
        from microblob import ThingServer

        port = int(argv[argv.index("--port") + 1]) if "--port" in argv else 5000
        print(f"camera: http://127.0.0.1:{port}/camera/ (the browse page: http://127.0.0.1:{port}/)", flush=True)
        ThingServer({"camera": Camera()}).serve("127.0.0.1", port)
    else:
        demo(argv[1] if len(argv) > 1 else ".")


if __name__ == "__main__":
    main(sys.argv[1:])
