"""Old import path of `microblob.http.client`, kept for existing code: the very same module object, so
attributes read or patched through either name are one and the same."""

import sys

from .http import client as _module

sys.modules[__name__] = _module
