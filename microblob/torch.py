"""Old import path of `microblob.store.torch_models`, kept for existing code: the very same module object, so
attributes read or patched through either name are one and the same."""

import sys

from .store import torch_models as _module

sys.modules[__name__] = _module
