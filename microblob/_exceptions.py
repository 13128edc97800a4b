"""The exception tree: every error microblob raises on purpose derives from `MicroblobError`.

    MicroblobError
    ├── InvalidArgument (ValueError)        a public function got a wrong type or value
    │   ├── InvalidQuery                    a malformed filter, projection or sort
    │   │   └── QueryTimeout (TimeoutError) its $regex matching ran past the query's time budget
    │   ├── InvalidDocument                 a document that cannot be stored (bad keys, huge ints, ...)
    │   ├── InvalidInput                    an action/property input fails its type hints (names the field)
    │   └── ThingSlotError                  a thing_slot the server cannot fill (none, several, wrong class)
    ├── InvalidOutput                       an action returned a value its return annotation does not allow
    ├── NotFound (KeyError, ValueError)     something named by the caller does not exist
    │   ├── ObjectNotFound                  no object with that id
    │   ├── VersionNotFound                 the object exists, that version does not
    │   ├── FileNotFound                    no file with that id in the files bucket
    │   └── StoreNotFound                   connect(..., create=False) found no store there
    ├── DuplicateKey                        insert_one of an `_id` that already exists
    ├── WriteConflict                       a compare-and-swap kept losing to other writers
    ├── IntegrityError                      stored bytes do not match their sha256 or length
    ├── StoreClosed                         the store was used after close()
    ├── StorageError                        the engine failed (unreadable file, read-only, ...)
    │   ├── StoreFull                       no room: the disk is full, or the map cannot grow
    │   ├── StoreInUse                      compaction refused: another process or Store has the file open
    │   └── ObjectEvicted                   bytes evicted to the sync destination, which cannot serve them now
    ├── UnsupportedOperation                this backend cannot do that (compaction on memory:// or MongoDB)
    ├── BlobError                           a Blob could not be read, sent or resolved
    │   └── BlobExpired                     its link has expired
    ├── InvocationCancelled                 an action invocation was cancelled (inside the action or seen by a client)
    ├── InvocationTimeout (TimeoutError)    a client gave up waiting for an invocation (it was cancelled)
    └── RemoteError                         a server answered with an error
        ├── ActionError                     an action ran and failed on the server
        ├── RemoteInvalidInput              the server rejected the input (422); the message names the field
        └── Unauthorized                    the server wants a (different) bearer token (401)

`NotFound` subclasses `KeyError` (it is a failed lookup) and `ValueError` (what Flowcept raises), so
code written for either keeps working.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ActionError",
    "BlobError",
    "BlobExpired",
    "DuplicateKey",
    "FileNotFound",
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
    "RemoteError",
    "RemoteInvalidInput",
    "StorageError",
    "StoreClosed",
    "StoreFull",
    "StoreInUse",
    "StoreNotFound",
    "ThingSlotError",
    "Unauthorized",
    "UnsupportedOperation",
    "VersionNotFound",
    "WriteConflict",
]


class MicroblobError(Exception):
    """Base of every error microblob raises on purpose."""


class InvalidArgument(MicroblobError, ValueError):
    """A public function was called with an argument of the wrong type or value."""


class InvalidQuery(InvalidArgument):
    """A filter, projection or sort is malformed (unknown operator, `$gt` at top level, ...)."""


class QueryTimeout(InvalidQuery, TimeoutError):
    """A query spent its whole `$regex` budget matching (see `microblob.regex_budget`): a pattern that
    backtracks, like ``a.*a.*a.*b`` over long text, is stopped instead of running for minutes.
    `budget` is the limit in seconds, `pattern` the regex that was running."""

    def __init__(self, pattern: str, budget: float) -> None:
        super().__init__(f"$regex {pattern[:100]!r} ran past the query's matching budget of {budget:g} s: "
                         f"it backtracks over this data; anchor or simplify it, or narrow the filter")
        self.pattern = pattern
        self.budget = budget


class InvalidDocument(InvalidArgument):
    """A document cannot be stored: non-string keys, integers beyond 64 bits, unsupported types."""


class InvalidInput(InvalidArgument):
    """Input to an action or property does not match its type hints; `field` names where (``"a.b[2]"``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field


class ThingSlotError(InvalidArgument):
    """A `thing_slot` cannot be filled (no Thing of its class, several where it holds one, a name the server
    does not serve, a Thing of the wrong class), or was read before a server connected it."""


class InvalidOutput(MicroblobError):
    """An action returned a value that does not match its return annotation; `field` names where."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class NotFound(MicroblobError, KeyError, ValueError):
    """Something the caller named does not exist."""

    def __str__(self) -> str:
        # KeyError.__str__ would print the repr of the message, quotes and all.
        return Exception.__str__(self)


class ObjectNotFound(NotFound):
    """No object with this id."""

    def __init__(self, object_id: Any) -> None:
        super().__init__(f"object {object_id!r} not found")
        self.object_id = object_id


class StoreNotFound(NotFound):
    """`connect(uri, create=False)` found no store there: reading a mistyped path must not quietly
    create an empty store and report it empty."""

    def __init__(self, location: str) -> None:
        super().__init__(f"no store at {location!r}")
        self.location = location


class VersionNotFound(NotFound):
    """The object exists but not at this version."""

    def __init__(self, object_id: Any, version: Any) -> None:
        super().__init__(f"object {object_id!r} has no version {version!r}")
        self.object_id = object_id
        self.version = version


class FileNotFound(NotFound):
    """No file with this id in the files bucket."""

    def __init__(self, file_id: Any, detail: str = "not found") -> None:
        super().__init__(f"file {file_id!r} {detail}")
        self.file_id = file_id


class DuplicateKey(MicroblobError):
    """insert_one of a document whose `_id` already exists."""


class WriteConflict(MicroblobError):
    """A compare-and-swap lost to other writers more times than the retry budget allows."""


class IntegrityError(MicroblobError):
    """Stored bytes do not match their recorded sha256 or length, or a reference is dangling."""


class StoreClosed(MicroblobError):
    """The store (or a stream of it) was used after close()."""


class StorageError(MicroblobError):
    """The storage engine failed: disk full, an unreadable file, a server that went away."""


class StoreFull(StorageError):
    """No room for the write: the filesystem is full, or the map cannot grow (its cap, or no contiguous
    address space). Nothing of the failed write was kept; reads and smaller writes may still work."""


class StoreInUse(StorageError):
    """An operation that needs the store file to itself (`compact()`) was refused: another process or
    another Store of this process has it open, or is compacting it. Nothing was changed. Also raised by
    an open that waited too long for another process's compaction to finish."""


class ObjectEvicted(StorageError):
    """A version's bytes were evicted from this store (retention: they are confirmed at its sync
    destination) and the destination cannot serve them now: unreachable, or no longer holding them.
    The metadata and history are still here; nothing was lost locally that the destination did not
    confirm. `object_id`, `version`, `destination` (its URI without credentials) and `reason` say what."""

    def __init__(self, object_id: Any, version: Any, destination: str, reason: str) -> None:
        super().__init__(f"object {object_id!r} v{version}: its bytes were evicted to {destination} and cannot be "
                         f"read from there now ({reason})")
        self.object_id = object_id
        self.version = version
        self.destination = destination
        self.reason = reason


class UnsupportedOperation(MicroblobError):
    """The store's backend cannot do this (`compact()` on `memory://` or MongoDB); the message says what
    to do instead. Nothing was changed."""


class BlobError(MicroblobError):
    """A Blob could not be read, transferred or resolved."""


class BlobExpired(BlobError):
    """The Blob's link has expired; the server released its data."""


class InvocationCancelled(MicroblobError):
    """The invocation was cancelled: raised inside the action when a client asked, and by a client that sees it."""


class InvocationTimeout(MicroblobError, TimeoutError):
    """A client waited longer than its `timeout=` for an invocation; the client asked the server to cancel it."""


class RemoteError(MicroblobError):
    """A server answered with an error; carries its status and message."""

    def __init__(self, message: str, *, status: int | None = None, error: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error = error


class ActionError(RemoteError):
    """An action ran on the server and failed; the message is the server's."""


class RemoteInvalidInput(RemoteError):
    """The server rejected an action's or property's input (HTTP 422); the message names the field."""


class Unauthorized(RemoteError):
    """The server needs a bearer token, or a different one (HTTP 401)."""
