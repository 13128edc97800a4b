"""LabThings-FastAPI's own ThingClient driving a Thing served by microblob, for
tests/test_labthings_interop.py. Run by the Python of LabThings' virtualenv (``MICROBLOB_LABTHINGS_PYTHON``).

``python _labthings_client.py THING_URL`` does what a LabThings user's script does (read and write a
property, a constraint violation, an action returning a Blob, that Blob passed back to another action) and
prints one JSON object of what it saw, for the test to check; it never decides pass or fail itself.
"""

from __future__ import annotations

import hashlib
import json
import sys
from typing import Any

import labthings_fastapi as lt


def attempt(fn: Any) -> dict[str, Any]:
    """What a call gave: its value, or the type and message of what it raised."""
    try:
        return {"value": fn()}
    except Exception as e:  # the test looks at which type LabThings' client raised
        return {"raised": type(e).__name__, "message": str(e)}


def main(url: str) -> None:
    client = lt.ThingClient.from_url(url)
    seen: dict[str, Any] = {"client_class": type(client).__mro__[1].__module__}
    seen["exposure_before"] = client.exposure
    client.exposure = 20
    seen["exposure_after"] = client.exposure
    seen["exposure_too_low"] = attempt(lambda: setattr(client, "exposure", 0))
    seen["exposure_kept"] = client.exposure
    seen["move"] = attempt(lambda: client.move(steps=3))
    seen["move_too_far"] = attempt(lambda: client.move(steps=11))

    blob = client.capture(label="lt", size=300_000)
    seen["blob_class"] = f"{type(blob).__module__}.{type(blob).__name__}"
    seen["blob_media_type"] = blob.media_type
    content = blob.content
    seen["blob_size"] = len(content)
    seen["blob_sha256"] = hashlib.sha256(content).hexdigest()
    seen["measured"] = attempt(lambda: client.measure(image=blob))
    print(json.dumps(seen), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
