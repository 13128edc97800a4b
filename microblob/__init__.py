"""microblob: binary objects with provenance and versions in one embedded file, served over HTTP."""

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
from ._version import __version__

__all__ = [
    "ActionError",
    "BlobError",
    "BlobExpired",
    "DuplicateKey",
    "FileNotFound",
    "IntegrityError",
    "InvalidArgument",
    "InvalidDocument",
    "InvalidQuery",
    "MicroblobError",
    "NotFound",
    "ObjectNotFound",
    "RemoteError",
    "StorageError",
    "StoreClosed",
    "VersionNotFound",
    "WriteConflict",
    "__version__",
]
