"""microblob: binary objects with provenance and versions in one embedded file, served over HTTP."""

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
    InvalidOutput,
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
    StoreFull,
    StoreNotFound,
    Unauthorized,
    VersionNotFound,
    WriteConflict,
)
from ._maintenance import GcReport, VerifyReport
from ._remote import RemoteBlob
from ._version import __version__
from .blob import Blob
from .client import ThingClient
from .files import DownloadStream, FilesBucket, UploadStream
from .objects import BlobObject
from .server import ThingServer
from .store import Store
from .thing import Thing, cancellable_sleep, raise_if_cancelled, thing_action, thing_property
from .workflow import Workflow, current_workflow_id

# LabThings' spellings (`import microblob as lt`; `lt.property(default=0)`, `@lt.action`). Not in
# __all__: `from microblob import *` must not shadow the builtin `property`.
action = thing_action
property = thing_property  # noqa: A001

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
    "InvalidOutput",
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
    "StoreFull",
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

