"""microblob: binary objects with provenance and versions in one embedded file, served over HTTP.

`import microblob` loads the exception tree and the version only; every other public name loads its
module on first use: the store path (`connect`, `Store`, `Blob`, ...) when a script first touches it,
the Thing server, the client and the Thing model (Starlette, httpx, uvicorn) only if it serves or calls
Things. So a script that only stores objects never pays for the HTTP stack, and `microblob --version`
pays for neither (docs/ARCHITECTURE.md, "Layers").
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

if _typing.TYPE_CHECKING:
    from .blob import Blob, RemoteBlob
    from .engine.regex import regex_budget
    from .http.client import ThingClient
    from .http.server import ThingServer
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

# Where each lazily loaded public name lives (relative to this package).
_HOMES = {
    "Blob": ".blob", "RemoteBlob": ".blob",
    "regex_budget": ".engine.regex",
    "export_store": ".store.bundle", "import_store": ".store.bundle",
    "CompactReport": ".store.compaction",
    "connect": ".store.connect", "default_uri": ".store.connect",
    "CopyReport": ".store.copying", "copy": ".store.copying",
    "Store": ".store.core",
    "DownloadStream": ".store.files", "FilesBucket": ".store.files", "UploadStream": ".store.files",
    "GcReport": ".store.maintenance", "VerifyReport": ".store.maintenance",
    "BlobObject": ".store.objects",
    "EvictReport": ".store.retention", "evict": ".store.retention",
    "SyncRound": ".store.syncing", "SyncStatus": ".store.syncing", "SyncWorker": ".store.syncing",
    "sync": ".store.syncing", "sync_status": ".store.syncing",
    "Workflow": ".store.workflows", "current_workflow_id": ".store.workflows",
    "thing_slot": ".things.slots",
    "Thing": ".things.thing", "cancellable_sleep": ".things.thing", "raise_if_cancelled": ".things.thing",
    "thing_action": ".things.thing", "thing_property": ".things.thing",
    "ThingServer": ".http.server",
    "ThingClient": ".http.client",
}
_SUBMODULES = frozenset({"blob", "cli", "client", "engine", "files", "flowcept", "http", "store", "testing",
                         "things", "torch"})
# LabThings' spellings (`import microblob as lt`; `lt.property(default=0)`, `@lt.action`). Not in
# __all__: `from microblob import *` must not shadow the builtin `property`.
_LABTHINGS_ALIASES = {"action": "thing_action", "property": "thing_property"}


def __getattr__(name: str) -> _typing.Any:
    """A public name's module on first use: `microblob.connect`, `from microblob import Thing`, ..."""
    target = _LABTHINGS_ALIASES.get(name, name)
    home = _HOMES.get(target)
    import importlib

    if home is None:
        if name not in _SUBMODULES:
            raise AttributeError(f"module 'microblob' has no attribute {name!r}")
        return importlib.import_module(f".{name}", __name__)  # `microblob.store.core` after `import microblob`
    value = getattr(importlib.import_module(home, __name__), target)
    globals()[name] = value  # later lookups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__) | set(_LABTHINGS_ALIASES))
