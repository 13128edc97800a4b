"""Screenshots of the browse page, for a person to look at.

    python tests/screenshot.py [OUT_DIR]      # or: python -m tests.screenshot [OUT_DIR]

Fills a temporary store with a small lab's worth of objects (camera frames with versions, a model, a
dataset, one object whose id and metadata are hostile HTML), serves it with the camera example's Thing
on a free 127.0.0.1 port, and saves `browse-home.png` and `browse-detail.png` (default directory:
`./screenshots`). Needs Debian's `chromium` and `chromium-driver` and `pip install selenium`.
"""

from __future__ import annotations

import importlib.util
import math
import struct
import sys
import tempfile
import zlib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# Object ids cannot hold "/", so no closing tags here; <img onerror> runs if it is ever parsed as HTML.
XSS_ID = '<img src=x onerror="window.__pwned = 1"><script>window.__pwned = 2 & "quotes" %2F#?'
XSS_TEXT = '<img src=x onerror="window.__pwned = 3"></pre><script>window.__pwned = 4</script>'


def make_png(width: int, height: int, seed: int = 0) -> bytes:
    """A real RGB PNG (zlib only): a coloured gradient with a bright spot whose place depends on `seed`."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    cx, cy = width * (0.25 + 0.5 * ((seed * 37) % 10) / 10), height * (0.3 + 0.4 * ((seed * 53) % 7) / 7)
    hue = (seed * 0.23) % 1.0
    rows = bytearray()
    for y in range(height):
        rows.append(0)
        for x in range(width):
            spot = math.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * (min(width, height) / 5) ** 2))
            base = 0.25 + 0.35 * x / width
            for k in range(3):
                tint = 0.55 + 0.45 * math.cos(2 * math.pi * (hue + k / 3))
                rows.append(min(255, int(255 * (base * tint + 0.8 * spot))))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(rows))) + \
        chunk(b"IEND", b"")


def fill_demo_store(store: Any) -> dict[str, str]:
    """A small lab's worth of objects; returns the ids worth looking at."""
    import microblob

    with microblob.Workflow(name="calibration", store=store):
        for n in range(3):
            store.save_or_update_object(make_png(96, 72, 10 + n), object_id=f"dark-frame-{n}", type="calibration",
                                        task_id="darks", content_type="image/png",
                                        custom_metadata={"exposure_ms": 100, "n": n})
    with microblob.Workflow(name="scan", store=store):
        for n in range(4):
            oid = f"scan-{n:03d}"
            store.save_or_update_object(make_png(160, 120, n), object_id=oid, type="image", task_id=f"capture-{n}",
                                        content_type="image/png",
                                        custom_metadata={"exposure_ms": 12.5, "stage": {"x": n * 0.5, "y": 2.0}})
        for v in range(1, 4):  # scan-000 re-captured three times: four versions
            store.save_or_update_object(make_png(160, 120, 20 + v), object_id="scan-000", control_version=True,
                                        task_id=f"recapture-{v}",
                                        custom_metadata={"exposure_ms": 12.5 + 5 * v, "stage": {"x": 0.0, "y": 2.0}})
        store.save_or_update_dataset(b"x,y\n" + b"".join(b"%d,%d\n" % (i, i * i) for i in range(500)),
                                     object_id="focus-curve", content_type="text/csv", task_id="analyse")
        store.save_or_update_ml_model(bytes(range(256)) * 4096, object_id="segmenter", task_id="train",
                                      custom_metadata={"val_loss": 0.21, "epochs": 12}, control_version=True,
                                      content_type="application/x-safetensors")
        store.save_or_update_ml_model(bytes(range(255, -1, -1)) * 4096, object_id="segmenter", control_version=True,
                                      custom_metadata={"val_loss": 0.17, "epochs": 20})
    store.save_or_update_object(b"<html><script>window.__pwned = 5</script></html>", object_id=XSS_ID,
                                type=XSS_TEXT, task_id=XSS_TEXT, content_type="text/html",
                                custom_metadata={"note": XSS_TEXT, "<b>bold</b>": 1})
    return {"versions": "scan-000", "xss": XSS_ID}


def camera_thing() -> Any:
    """The camera of `examples/camera.py` (its Thing only)."""
    spec = importlib.util.spec_from_file_location("microblob_camera_example", ROOT / "examples" / "camera.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module.Camera()


def main(argv: list[str]) -> None:
    sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]
    from urllib.parse import quote

    from _browser import chromium, screenshot
    from _live import live_server

    import microblob
    from microblob import ThingServer

    out = Path(argv[0] if argv else "screenshots")
    with tempfile.TemporaryDirectory() as tmp, microblob.connect(Path(tmp) / "demo.db") as store:
        ids = fill_demo_store(store)
        app = ThingServer({"camera": camera_thing()}, store=store)
        try:
            with live_server(app) as base, chromium() as driver:
                for name, url in (("home", base), ("detail", f"{base}#/objects/{quote(ids['versions'], safe='')}")):
                    path = screenshot(driver, url, out / f"browse-{name}.png")
                    print(f"{path} ({path.stat().st_size} bytes)")
        finally:
            app.close()


if __name__ == "__main__":
    main(sys.argv[1:])
