"""The client side of the LabThings Blob documentation's camera, against a running camera server.

    python examples/camera.py serve --port 5000 &                       # the server (examples/camera.py)
    python examples/camera_client.py http://127.0.0.1:5000/camera/ [OUT_DIR]

Flow 1 captures a RAW frame, passes it to ``convert_raw_to_jpeg`` *without downloading it* (only its
URL travels back to the server) and saves the JPEG. Flow 2 calls ``capture_image``, which does both
steps on the server, and saves the result. Last, the RAW frame of flow 1 is downloaded after all.
A server started with a token needs it here too: ``MICROBLOB_TOKEN=... python examples/camera_client.py``.
Needs only microblob: the client does not decode images.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from microblob import ThingClient


def run_client(url: str, out_dir: str | Path = ".", token: str | None = None) -> dict[str, object]:
    """Both flows against the camera at `url` (e.g. ``http://127.0.0.1:5000/camera/``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with ThingClient.from_url(url, token=token or os.environ.get("MICROBLOB_TOKEN") or None) as camera:
        print(f"camera at {url}: actions {', '.join(camera.td['actions'])}; exposure {camera.exposure}")

        # Flow 1: the RAW frame stays on the server; only its URL goes back, and only the JPEG comes down.
        raw = camera.capture_raw_image()  # a lazy remote Blob: nothing downloaded yet
        jpeg = camera.convert_raw_to_jpeg(raw)  # sends raw's URL, not its bytes
        jpeg.save(out / "converted_image.jpg")  # streamed, sha256-checked, atomic
        raw_downloads = raw.downloads
        print(f"flow 1: {raw.size} RAW bytes stayed on the server (downloads: {raw_downloads}); "
              f"saved {jpeg.size} JPEG bytes to {out / 'converted_image.jpg'}")

        # Flow 2: one action does both steps on the server.
        image = camera.capture_image()
        image.save(out / "captured_image.jpg", progress=None)
        print(f"flow 2: saved {image.size} JPEG bytes ({image.content_type}) to {out / 'captured_image.jpg'}")

        # The RAW frame after all, downloaded only now (its link lives for the server's blob_ttl).
        raw.save(out / "raw_image.raw")
        frames = camera.frames_captured
        print(f"RAW frame saved ({raw.size} bytes, sha256 {raw.sha256[:12]}…); the camera has captured {frames} "
              f"frames")
        return {"raw_downloads_before_save": raw_downloads, "frames": frames,
                "files": [out / "converted_image.jpg", out / "captured_image.jpg", out / "raw_image.raw"]}


def main(argv: list[str]) -> None:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        raise SystemExit(0 if argv else 2)
    run_client(argv[0], argv[1] if len(argv) > 1 else ".")


if __name__ == "__main__":
    main(sys.argv[1:])
