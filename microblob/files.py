"""Old import path of `microblob.store.files`, kept for existing code: the very same module object, so
attributes read or patched through either name are one and the same."""

import sys

from .store import files as _module

sys.modules[__name__] = _module
