"""microblob: binary objects with provenance and versions in one embedded file, served over HTTP.

`import microblob` loads the store and the Blob value only; the Thing server, the client and the Thing
model (Starlette, httpx, uvicorn) load on first use of one of their names, so a script that only stores
objects never pays for the HTTP stack (docs/ARCHITECTURE.md, "Layers").
"""

import typing as _typing

from ._connect import connect, default_uri
from ._copy import CopyReport, copy
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
    InvalidQuery,
    InvocationCancelled,
    InvocationTimeout,
    MicroblobError,
    NotFound,
    ObjectNotFound,
    RemoteError,
    RemoteInvalidInput,
    StorageError,
    StoreClosed,
    StoreNotFound,
    Unauthorized,
    VersionNotFound,
    WriteConflict,
)
from ._maintenance import GcReport, VerifyReport
from ._version import __version__
from .blob import Blob, RemoteBlob
from .files import DownloadStream, FilesBucket, UploadStream
from .objects import BlobObject
from .store import Store
from .workflow import Workflow, current_workflow_id

if _typing.TYPE_CHECKING:
    from .client import ThingClient
    from .server import ThingServer
    from .thing import Thing, cancellable_sleep, raise_if_cancelled, thing_action, thing_property

__all__ = [
    "ActionError",
    "Blob",
    "BlobError",
    "BlobExpired",
    "BlobObject",
    "CopyReport",
    "DownloadStream",
    "DuplicateKey",
    "FileNotFound",
    "FilesBucket",
    "GcReport",
    "IntegrityError",
    "InvalidArgument",
    "InvalidDocument",
    "InvalidInput",
    "InvalidQuery",
    "InvocationCancelled",
    "InvocationTimeout",
    "MicroblobError",
    "NotFound",
    "ObjectNotFound",
    "RemoteBlob",
    "RemoteError",
    "RemoteInvalidInput",
    "StorageError",
    "Store",
    "StoreClosed",
    "StoreNotFound",
    "Thing",
    "ThingClient",
    "ThingServer",
    "Unauthorized",
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
    "raise_if_cancelled",
    "thing_action",
    "thing_property",
]

_THING_NAMES = frozenset({"Thing", "cancellable_sleep", "raise_if_cancelled", "thing_action", "thing_property"})


def __getattr__(name: str) -> _typing.Any:
    """The HTTP half on first use: `microblob.ThingServer`, `from microblob import Thing`, ..."""
    if name in _THING_NAMES:
        from . import thing as module
    elif name == "ThingServer":
        from . import server as module
    elif name == "ThingClient":
        from . import client as module
    else:
        raise AttributeError(f"module 'microblob' has no attribute {name!r}")
    value = getattr(module, name)
    globals()[name] = value  # later lookups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
