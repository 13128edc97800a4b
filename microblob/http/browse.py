"""The browse page at ``GET /``: objects newest first (filters, thumbnails, paging), an object's detail
with its whole history and a download link per version, and the Things with their actions and properties.

The page is package data (``microblob/static/browse.html``, ``browse.css``, ``browse.js``: plain HTML, CSS
and JavaScript, no build step) served as one document with the CSS and JS inlined, so it is a single
request and a single token check. Its Content-Security-Policy allows exactly those two inline blocks (by
hash) and same-origin requests, so nothing is loaded from anywhere else: it works offline, and a stray
``<script>`` in user data could not run even if it ever reached the DOM as HTML (the JS only ever inserts
data as text). The JS reads everything from the JSON routes (``/things/``, the TDs, ``/objects/...``).
"""

from __future__ import annotations

import base64
import hashlib
import re
from importlib import resources

__all__ = ["BrowsePage", "STATIC_FILES"]

STATIC_FILES = ("browse.html", "browse.css", "browse.js")
_SLOT = re.compile(r"/\*(CSS|JS|STORE)\*/")


def _asset(name: str) -> str:
    return (resources.files("microblob") / "static" / name).read_text(encoding="utf-8")


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"


class BrowsePage:
    """The page's bytes and headers for a server with or without a store (built once)."""

    def __init__(self, has_store: bool) -> None:
        template, css, js = (_asset(name) for name in STATIC_FILES)
        if re.search(r"</style", css, re.IGNORECASE) or re.search(r"</script", js, re.IGNORECASE):
            raise RuntimeError("browse.css/browse.js must not contain a closing </style> or </script> tag")
        slots = {"CSS": css, "JS": js, "STORE": "yes" if has_store else "no"}
        self.body = _SLOT.sub(lambda m: slots[m.group(1)], template).encode("utf-8")
        self.headers = {
            "content-security-policy": "; ".join([
                "default-src 'none'",
                f"script-src {_csp_hash(js)}",
                f"style-src {_csp_hash(css)}",
                "img-src 'self' blob: data:",
                "connect-src 'self'",
                "base-uri 'none'",
                "form-action 'none'",
                "frame-ancestors 'none'",
            ]),
            "x-content-type-options": "nosniff",
            "referrer-policy": "no-referrer",  # the page's URL may carry ?token=
            "cache-control": "no-store",
        }
