"""microblob: binary objects with provenance and versions in one embedded file, served over HTTP.

`import microblob` loads the store and the Blob value only; the Thing server, the client and the Thing
model (Starlette, httpx, uvicorn) load on first use of one of their names, so a script that only stores
objects never pays for the HTTP stack (docs/ARCHITECTURE.md, "Layers").
"""

import typing as _typing

from ._exceptions import (
    ActionError,
    BlobError,
    BlobExpired,
    DuplicateKey,
    FileNotFound,
    IntegrityError,
    InvalidArgument,
    InvalidDocument,
    InvalidInput,
    InvalidOutput,
    InvalidQuery,
    InvocationCancelled,
    InvocationTimeout,
    MicroblobError,
    NotFound,
    ObjectEvicted,
    ObjectNotFound,
    QueryTimeout,
    RemoteError,
    RemoteInvalidInput,
    StorageError,
    StoreClosed,
    StoreFull,
    StoreInUse,
    StoreNotFound,
    ThingSlotError,
    Unauthorized,
    UnsupportedOperation,
    VersionNotFound,
    WriteConflict,
)
from ._version import __version__
from .blob import Blob, RemoteBlob
from .engine.regex import regex_budget
from .store.bundle import export_store, import_store
from .store.compaction import CompactReport
from .store.connect import connect, default_uri
from .store.copying import CopyReport, copy
from .store.core import Store
from .store.files import DownloadStream, FilesBucket, UploadStream
from .store.maintenance import GcReport, VerifyReport
from .store.objects import BlobObject
from .store.retention import EvictReport, evict
from .store.syncing import SyncRound, SyncStatus, SyncWorker, sync, sync_status
from .store.workflows import Workflow, current_workflow_id

if _typing.TYPE_CHECKING:
    from .http.client import ThingClient
    from .http.server import ThingServer
    from .things.slots import thing_slot
    from .things.thing import Thing, cancellable_sleep, raise_if_cancelled, thing_action, thing_property

    action = thing_action
    property = thing_property  # noqa: A001

__all__ = [
    "ActionError",
    "Blob",
    "BlobError",
    "BlobExpired",
    "BlobObject",
    "CompactReport",
    "CopyReport",
    "DownloadStream",
    "DuplicateKey",
    "EvictReport",
    "FileNotFound",
    "FilesBucket",
    "GcReport",
    "IntegrityError",
    "InvalidArgument",
    "InvalidDocument",
    "InvalidInput",
    "InvalidOutput",
    "InvalidQuery",
    "InvocationCancelled",
    "InvocationTimeout",
    "MicroblobError",
    "NotFound",
    "ObjectEvicted",
    "ObjectNotFound",
    "QueryTimeout",
    "RemoteBlob",
    "RemoteError",
    "RemoteInvalidInput",
    "StorageError",
    "Store",
    "StoreClosed",
    "StoreFull",
    "StoreInUse",
    "StoreNotFound",
    "SyncRound",
    "SyncStatus",
    "SyncWorker",
    "Thing",
    "ThingClient",
    "ThingServer",
    "ThingSlotError",
    "Unauthorized",
    "UnsupportedOperation",
    "UploadStream",
    "VerifyReport",
    "VersionNotFound",
    "Workflow",
    "WriteConflict",
    "__version__",
    "cancellable_sleep",
    "connect",
    "copy",
    "current_workflow_id",
    "default_uri",
    "evict",
    "export_store",
    "import_store",
    "raise_if_cancelled",
    "regex_budget",
    "sync",
    "sync_status",
    "thing_action",
    "thing_property",
    "thing_slot",
]

_THING_NAMES = frozenset({"Thing", "cancellable_sleep", "raise_if_cancelled", "thing_action", "thing_property"})
# LabThings' spellings (`import microblob as lt`; `lt.property(default=0)`, `@lt.action`). Not in
# __all__: `from microblob import *` must not shadow the builtin `property`.
_LABTHINGS_ALIASES = {"action": "thing_action", "property": "thing_property"}


def __getattr__(name: str) -> _typing.Any:
    """The HTTP half on first use: `microblob.ThingServer`, `from microblob import Thing`, ..."""
    target = _LABTHINGS_ALIASES.get(name, name)
    if target == "thing_slot":
        from .things import slots as module
    elif target in _THING_NAMES:
        from .things import thing as module
    elif target == "ThingServer":
        from .http import server as module
    elif target == "ThingClient":
        from .http import client as module
    else:
        raise AttributeError(f"module 'microblob' has no attribute {name!r}")
    value = getattr(module, target)
    globals()[name] = value  # later lookups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__) | set(_LABTHINGS_ALIASES))
