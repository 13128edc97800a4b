"""microblob: binary objects with provenance and versions in one embedded file, served over HTTP."""

from ._connect import connect, default_uri
from ._exceptions import (
    ActionError,
    BlobError,
    BlobExpired,
    DuplicateKey,
    FileNotFound,
    IntegrityError,
    InvalidArgument,
    InvalidDocument,
    InvalidQuery,
    MicroblobError,
    NotFound,
    ObjectNotFound,
    RemoteError,
    StorageError,
    StoreClosed,
    VersionNotFound,
    WriteConflict,
)
from ._maintenance import GcReport, VerifyReport
from ._version import __version__
from .files import DownloadStream, FilesBucket, UploadStream
from .objects import BlobObject
from .store import Store
from .workflow import Workflow, current_workflow_id

__all__ = [
    "ActionError",
    "BlobError",
    "BlobExpired",
    "BlobObject",
    "DownloadStream",
    "DuplicateKey",
    "FileNotFound",
    "FilesBucket",
    "GcReport",
    "IntegrityError",
    "InvalidArgument",
    "InvalidDocument",
    "InvalidQuery",
    "MicroblobError",
    "NotFound",
    "ObjectNotFound",
    "RemoteError",
    "StorageError",
    "Store",
    "StoreClosed",
    "UploadStream",
    "VerifyReport",
    "VersionNotFound",
    "Workflow",
    "WriteConflict",
    "__version__",
    "connect",
    "current_workflow_id",
    "default_uri",
]
