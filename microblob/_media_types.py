"""The rule for a content type, one for every layer: a Blob's, a stored object's, an upload's. It becomes an
HTTP Content-Type header, so only what one header can carry safely passes."""

from __future__ import annotations

import re
from typing import Any

from ._exceptions import InvalidArgument

__all__ = ["MAX_CONTENT_TYPE_LENGTH", "check_content_type"]

# RFC 6838 type/subtype, optional parameters; printable ASCII only, matched whole. `\w` (Unicode-aware), `\s`
# and `[^;]` would let through letters no header can carry, CR/LF (header injection), control characters and
# lone surrogates, and `$` a trailing newline.
_MEDIA_TYPE = re.compile(
    r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}"
    r"(?:[ \t]*;[ \t]*[\x20-\x3a\x3c-\x7e]+)*"
)
MAX_CONTENT_TYPE_LENGTH = 1024


def check_content_type(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_CONTENT_TYPE_LENGTH or not _MEDIA_TYPE.fullmatch(value):
        raise InvalidArgument(f"content_type must be a MIME type like 'image/png', not {value!r:.200}")
    return value
