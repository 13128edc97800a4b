"""The command line: `python -m microblob ...` and the `microblob` console script.

See docs/ARCHITECTURE.md, "Command line".

Each subcommand is one small function over the public Python API; the CLI adds argument parsing,
output formatting and progress bars, never store logic. Exit codes:

- 0: done (for `serve`: stopped by Ctrl-C or SIGTERM after a graceful shutdown).
- 1: the operation failed (a `MicroblobError` such as a missing object or an invalid query, an
  unreadable input file, damage found by `verify`, objects `copy` left alone, a busy port, a Thing
  that cannot be imported); one line `microblob: <message>` on stderr.
- 2: usage error: unknown option, missing argument, malformed JSON or `k=v` syntax (argparse's
  convention), `serve` on a non-loopback address with neither a token nor `--insecure`; one line
  `microblob <command>: error: <message>` on stderr. Valid JSON that the store rejects as a filter
  is a failed operation (1), not a usage error.
- 130: interrupted (Ctrl-C), 143: terminated (SIGTERM); an interrupted `put` leaves nothing visible
  and an interrupted `get -o FILE` leaves FILE as it was.

No traceback is printed for any of these; a traceback means a bug (in microblob, or in a served
Thing's own code).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as _dt
import errno
import json
import os
import signal
import stat
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, BinaryIO

from ._exceptions import InvalidArgument, MicroblobError, ObjectNotFound, StoreNotFound
from ._version import __version__
from .store.connect import connect, default_uri
from .store.sizes import count_of, human_size

if TYPE_CHECKING:
    import socket

    from .engine.lmdb_kv import Space
    from .store.core import Store

__all__ = ["main"]

PROG = "microblob"
_COPY_SIZE = 1024 * 1024


class UsageError(Exception):
    """A mistake in how the command was called, found after parsing: exit 2."""


# --- entry point ----------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with `argv` (default: `sys.argv[1:]`); return the exit code."""
    # Started with a closed stdout or stdin (`ls >&-`), Python sets them to None: every use would be an
    # AttributeError traceback. A stand-in fails each use as an OSError, said in one line like the others.
    if sys.stdout is None:
        sys.stdout = _ClosedStream("stdout")  # type: ignore[assignment]
    if sys.stdin is None:
        sys.stdin = _ClosedStream("stdin")  # type: ignore[assignment]
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 2
    with _terminate_cleanly():
        try:
            return args.run(args) or 0
        except UsageError as exc:
            _say(f"{args.prog}: error: {exc}")
            return 2
        except StoreNotFound as exc:
            _say(f"{PROG}: {exc} (put, copy and serve create one; --db or $MICROBLOB_URI names another)")
            return 1
        except MicroblobError as exc:
            _say(f"{PROG}: {exc}")
            return 1
        except BrokenPipeError:
            # The reader went away (`microblob get X | head`): stop quietly, like other Unix tools,
            # and keep Python from complaining again when it flushes stdout at exit.
            _silence_stdout()
            return 1
        except OSError as exc:
            _say(f"{PROG}: {_describe_os_error(exc)}")
            return 1
        except KeyboardInterrupt:
            _say(f"{PROG}: interrupted")
            return 130
        except _Terminated:
            _say(f"{PROG}: terminated")
            return 128 + signal.SIGTERM


class _ClosedStream:
    """What a closed standard stream reads and writes as: an OSError (EBADF) at each use."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.buffer = self

    def _closed(self, *args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.EBADF, f"{self.name} is closed")

    write = read = readline = fileno = readinto = _closed

    def flush(self) -> None:  # nothing is ever held: the interpreter flushes it at exit
        pass

    def isatty(self) -> bool:
        return False


class _Terminated(BaseException):
    """SIGTERM, raised like Ctrl-C so that `with` blocks unwind: an upload in progress is aborted and a
    half-written `get -o` temp file removed, instead of both being left for `gc` or the user."""


@contextlib.contextmanager
def _terminate_cleanly() -> Iterator[None]:
    def terminate(signum: int, frame: Any) -> None:
        raise _Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, terminate)
    except ValueError:  # not the main thread (main() called from a thread): leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _say(line: str) -> None:
    try:
        sys.stderr.write(line.replace("\n", " ") + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


def _describe_os_error(exc: OSError) -> str:
    if exc.filename is not None:
        return f"{exc.filename}: {exc.strerror or exc}"
    return exc.strerror or str(exc)


# --- argument parsing -----------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors on one line (the usage itself is one `--help` away)."""

    def error(self, message: str) -> Any:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def loads_json(text: str) -> Any:
    """The store's JSON reading of what a person sends (every argument that takes JSON: no NaN or Infinity),
    loaded with the store only when needed."""
    from .store.validate import loads_plain_json

    return loads_plain_json(text)


def _json_value(text: str) -> Any:
    try:
        return loads_json(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from None


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, not {value}")
    return value


def _meta_pair(text: str) -> tuple[str, Any]:
    """`k=v`: the value is JSON when it parses as JSON (`n=3`, `ok=true`, `xy=[1,2]`), else a str."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, not {text!r}")
    try:
        value = loads_json(raw)
    except ValueError:
        value = raw
    return key, value


def _sort_spec(text: str) -> list[tuple[str, int]]:
    """`field`, `-field` (descending), comma-separated: `--sort=-updated_at,object_id`."""
    spec = []
    for part in text.split(","):
        part = part.strip()
        field = part[1:] if part.startswith(("-", "+")) else part
        if not field:
            raise argparse.ArgumentTypeError(f"empty field name in {text!r}")
        spec.append((field, -1 if part.startswith("-") else 1))
    return spec


def _datetime(text: str) -> _dt.datetime:
    """ISO 8601 date or date-time; a trailing Z is UTC (which `fromisoformat` reads only since 3.11)."""
    raw = text.strip()
    if raw[-1:] in ("Z", "z"):
        raw = raw[:-1] + "+00:00"
    try:
        value = _dt.datetime.fromisoformat(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 date or time: {text!r}") from None
    return value if value.tzinfo is not None else value.replace(tzinfo=_dt.timezone.utc)


def _port(text: str) -> int:
    value = _count(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"must be a TCP port in 0..65535, not {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds >= 0, not {text}")
    return value


def _positive_seconds(text: str) -> float:
    value = _seconds(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be a number of seconds > 0, not 0")
    return value


def _positive_count(text: str) -> int:
    value = _count(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be an integer > 0, not 0")
    return value


_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def _size(text: str) -> int:
    """Bytes, or with a binary suffix: `500M`, `2G`, `64KiB`."""
    raw = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = raw[-1:] if raw[-1:] in _SIZE_UNITS else ""
    try:
        value = int(raw[: len(raw) - len(unit)]) * _SIZE_UNITS[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size in bytes (e.g. 1048576, 500M, 2G): {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, not {text}")
    return value


def _retention_flags(p: argparse.ArgumentParser, when: str) -> None:
    p.add_argument("--keep-free", type=_size, metavar="BYTES",
                   help=f"{when}evict the bytes of the oldest objects confirmed at the destination until this "
                        "much is free for new data (e.g. 2G)")
    p.add_argument("--max-size", type=_size, metavar="BYTES",
                   help=f"{when}evict the same way until the store's live data is at most this (e.g. 20G)")


def _thing_pair(text: str) -> tuple[str, str]:
    name, sep, spec = text.partition("=")
    if not sep or not name or ":" not in spec:
        raise argparse.ArgumentTypeError(f"expected NAME=MODULE:CLASS, not {text!r}")
    return name, spec


def build_parser() -> argparse.ArgumentParser:
    # argparse %-formats help strings: a '%' of the URI would be read as a format ('100%d.db')
    db_help = f"store URI (default: $MICROBLOB_URI, else ./microblob.db; now {default_uri()!r})".replace("%", "%%")
    parser = _Parser(
        prog=PROG,
        description="Binary objects with provenance and versions in one embedded file.",
        epilog="Exit codes: 0 done, 1 the operation failed, 2 usage error, 130 interrupted, 143 terminated.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument("--db", metavar="URI", default=None, help=db_help)
    # --db is accepted after the subcommand too; SUPPRESS keeps a subcommand from resetting it.
    common = _Parser(add_help=False)
    common.add_argument("--db", metavar="URI", default=argparse.SUPPRESS, help=db_help)
    json_flag = _Parser(add_help=False)
    json_flag.add_argument("--json", action="store_true", help="print JSON (one object per line) for scripts")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    def command(name: str, run: Any, help: str, parents: Sequence[argparse.ArgumentParser] = (),
                db: bool = True) -> _Parser:
        sub = commands.add_parser(name, help=help, description=help, parents=[*([common] if db else []), *parents])
        sub.set_defaults(run=run, prog=sub.prog)
        return sub

    p = command("serve", cmd_serve, "serve the store (and Things) over HTTP until Ctrl-C or SIGTERM; "
                                    "prints the URL first")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: 127.0.0.1; any other needs --token or --insecure)")
    p.add_argument("--port", type=_port, default=5000, help="TCP port (default: 5000; 0: a free port)")
    p.add_argument("--thing", action="append", type=_thing_pair, default=[], metavar="NAME=MODULE:CLASS",
                   help="serve an instance of this Thing class at /NAME/ (repeatable)")
    p.add_argument("--config", metavar="FILE",
                   help='a JSON file {"things": {"NAME": "MODULE:CLASS", ...}}; --thing adds to it')
    p.add_argument("--token", default=None, help="require 'Authorization: Bearer TOKEN' (default: "
                                                 "$MICROBLOB_TOKEN, which other users cannot see in `ps`)")
    p.add_argument("--insecure", action="store_true", help="allow a non-loopback --host without a token")
    p.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                   help="accept this name in the Host header besides loopback names, IP addresses and this "
                        "machine's name, e.g. pi.lab.example or '*.lab.example' (repeatable; '*': any). "
                        "Other names are refused (421): a web page could rebind them to this server")
    p.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="let pages of this origin (e.g. http://localhost:8000) call the server from a browser "
                        "(repeatable); pages of any other origin may not change anything")
    p.add_argument("--blob-ttl", type=_seconds, metavar="SECONDS",
                   help="how long a Blob link lives after its action completes (default: 300)")
    p.add_argument("--max-upload", type=_size, metavar="BYTES",
                   help="largest upload, e.g. 500M or 2G (default: 4G, or the room left in the store if less)")
    p.add_argument("--regex-budget", type=_seconds, metavar="SECONDS",
                   help="seconds of $regex matching one GET /objects/ may spend, then 400 QueryTimeout "
                        "(default: 5; 0: no limit)")
    p.add_argument("--max-page-size", type=_count, metavar="N",
                   help="most objects one GET /objects/ answers; a Link header names the next page "
                        "(default: 1000)")
    p.add_argument("--upload-idle-timeout", type=_positive_seconds, metavar="SECONDS",
                   help="drop an upload (408) whose body sends nothing for this long (default: 30)")
    p.add_argument("--upload-timeout", type=_positive_seconds, metavar="SECONDS",
                   help="drop an upload (408) still arriving after this long (default: 3600)")
    p.add_argument("--max-uploads", type=_positive_count, metavar="N",
                   help="uploads received at once; the next gets 503 + Retry-After (default: 32)")
    p.add_argument("--spool-budget", type=_size, metavar="BYTES",
                   help="bytes all upload spools in TMPDIR may hold together, finished ones until taken or "
                        "expired; over it: 507 (default: 8G)")
    p.add_argument("--upload-ttl", type=_seconds, metavar="SECONDS",
                   help="how long a POST /blobs upload lives unless an action takes it "
                        "(default: 60, or --blob-ttl if shorter)")
    p.add_argument("--shutdown-timeout", type=_seconds, default=30.0, metavar="SECONDS",
                   help="on Ctrl-C/SIGTERM, how long requests in flight may take to finish (default: 30)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                   help="uvicorn's log level (default: info, one line per request)")
    p.add_argument("--sync-to", metavar="URI",
                   help="also push new and changed objects to this store in the background while serving "
                        "(as `microblob sync --watch`), retrying while it cannot be reached")
    p.add_argument("--sync-propagate-deletes", action="store_true",
                   help="with --sync-to: deletions travel too (as `microblob sync --propagate-deletes`)")
    _retention_flags(p, "with --sync-to: after each round, ")

    p = command("put", cmd_put, "save a file (or stdin) as a new object, or as a new version of --id; "
                                "prints the object id", [json_flag])
    p.add_argument("file", metavar="FILE|-", help="file to save; - reads stdin")
    p.add_argument("--id", dest="object_id", metavar="OBJECT_ID", help="update this object (default: a new id)")
    p.add_argument("--type", help="object type, e.g. image, dataset, ml_model")
    p.add_argument("--task-id")
    p.add_argument("--workflow-id")
    p.add_argument("--meta", action="append", type=_meta_pair, default=[], metavar="KEY=VALUE",
                   help="custom metadata (repeatable); VALUE is parsed as JSON when it is JSON, else kept as text")
    p.add_argument("--tag", action="append", default=None, help="a tag (repeatable)")
    p.add_argument("--content-type", help="MIME type (default: kept from the previous version, "
                                          "else application/octet-stream)")
    p.add_argument("--version-control", action="store_true",
                   help="keep the version this update replaces readable in the history")
    p.add_argument("--inline", action="store_true",
                   help="store the bytes in the object document (small payloads only)")

    p = command("get", cmd_get, "write an object's bytes to a file or to stdout")
    p.add_argument("object_id", metavar="ID")
    p.add_argument("-o", "--output", metavar="FILE", help="write here (a regular file atomically, a device or FIFO "
                   "directly); - or nothing: stdout")
    p.add_argument("--version", type=_count, metavar="N", help="this version (default: the latest)")

    p = command("ls", cmd_ls, "list objects (latest versions): a table, or JSON lines with --json", [json_flag])
    p.add_argument("--filter", type=_json_value, metavar="JSON", help='a MongoDB filter, e.g. \'{"type": "image"}\'')
    p.add_argument("--type", help="only objects of this type")
    p.add_argument("--sort", type=_sort_spec, metavar="FIELDS", help="e.g. --sort=-updated_at (- = descending)")
    p.add_argument("--limit", type=_count, default=0, metavar="N", help="at most N objects (default: all)")
    p.add_argument("--skip", type=_count, default=0, metavar="N")

    p = command("show", cmd_show, "print one object's metadata as JSON")
    p.add_argument("object_id", metavar="ID")
    p.add_argument("--version", type=_count, metavar="N", help="this version (default: the latest)")

    p = command("history", cmd_history, "print every version's metadata, newest first, as JSON lines")
    p.add_argument("object_id", metavar="ID")

    p = command("query", cmd_query, "print the documents matching a MongoDB filter, as JSON lines")
    p.add_argument("filter", type=_json_value, metavar="JSON", help='e.g. \'{"custom_metadata.n": {"$gt": 2}}\'')
    p.add_argument("--collection", default="objects",
                   help="objects (default), object_history, workflows or fs.files")
    p.add_argument("--projection", type=_json_value, metavar="JSON",
                   help='fields to return, e.g. \'{"object_id": 1}\' (default: all but inline data)')
    p.add_argument("--sort", type=_sort_spec, metavar="FIELDS", help="e.g. --sort=-updated_at (- = descending)")
    p.add_argument("--limit", type=_count, default=0, metavar="N")
    p.add_argument("--skip", type=_count, default=0, metavar="N")
    p.add_argument("--explain", action="store_true",
                   help="print which index the query uses and why (as JSON), instead of the documents")

    p = command("index", cmd_index_ls, "list, add or remove indexes (they speed up queries, sorts and counts)")
    p.add_argument("--collection", default="objects", help="objects (default), object_history, workflows or fs.files")
    index_commands = p.add_subparsers(title="index commands", metavar="ACTION")
    for action, run, help_ in (("ls", cmd_index_ls, "list the indexes, one JSON object per line"),
                               ("add", cmd_index_add, "add an index (built over the existing documents); "
                                                      "prints its name"),
                               ("rm", cmd_index_rm, "remove an index by name")):
        sub = index_commands.add_parser(action, help=help_, description=help_, parents=[common])
        sub.set_defaults(run=run, prog=sub.prog)
        sub.add_argument("--collection", default=argparse.SUPPRESS,
                         help="objects (default), object_history, workflows or fs.files")
        if action == "add":
            sub.add_argument("keys", type=_sort_spec, metavar="FIELDS",
                             help="a field path, or several comma-separated; - before one makes it descending: "
                                  "custom_metadata.exposure_ms, or type,-size")
            sub.add_argument("--name", help="the index's name (default: from its fields, e.g. type_1_size_-1)")
            sub.add_argument("--unique", action="store_true", help="refuse two documents with the same values")
        elif action == "rm":
            sub.add_argument("name", metavar="NAME", help="as `microblob index ls` shows it")

    p = command("rm", cmd_rm, "delete an object: every version and its bytes")
    p.add_argument("object_id", metavar="ID")

    p = command("copy", cmd_copy, "copy objects (every version), workflows and files from store SRC to store "
                                  "DST; run it again to copy only what is new", [json_flag], db=False)
    p.add_argument("src", metavar="SRC", help="source store URI or path")
    p.add_argument("dst", metavar="DST", help="destination store URI or path (created if it is a new file)")
    p.add_argument("--since", type=_datetime, metavar="ISO8601",
                   help="only objects updated (and files uploaded) at or after this time, e.g. 2025-06-01 "
                        "or 2025-06-01T12:00:00Z (UTC unless an offset is given)")

    p = command("export", cmd_export, "write every object (every version), workflow and file of store STORE to "
                                      "FILE, a bundle any machine can import (LMDB files are not portable "
                                      "between 32-bit and 64-bit machines)", [json_flag], db=False)
    p.add_argument("store", metavar="STORE", help="store URI or path")
    p.add_argument("file", metavar="FILE", help="the bundle to write (replaced atomically)")
    p = command("import", cmd_import, "copy what the bundle FILE (from `export`) holds into store STORE; checked "
                                      "in full first, and run again it imports nothing", [json_flag], db=False)
    p.add_argument("file", metavar="FILE", help="a bundle written by `microblob export`")
    p.add_argument("store", metavar="STORE", help="store URI or path (created if it is a new file)")

    command("info", cmd_info, "what the store holds and, for a file, its size, the most it can map "
                              "(1536 MiB on 32-bit) and the room left", [json_flag])
    p = command("sync", cmd_sync, "push what changed at SRC since the last confirmed sync to DST (a copy, then "
                                  "a check at DST); --watch keeps doing so. `sync status SRC [DST]`: what is "
                                  "pending", [json_flag], db=False)
    p.add_argument("src", metavar="SRC", help="source store URI or path (or `status`, then SRC [DST])")
    p.add_argument("dst", metavar="DST", nargs="?", help="destination store URI or path")
    p.add_argument("extra", metavar="DST", nargs="?", help=argparse.SUPPRESS)
    p.add_argument("--watch", action="store_true", help="keep syncing until Ctrl-C, backing off while DST is away")
    p.add_argument("--propagate-deletes", action="store_true",
                   help="also delete at DST the objects deleted at SRC since it first synced (unless they "
                        "changed at DST since)")
    p.add_argument("--interval", type=_positive_seconds, default=2.0, metavar="SECONDS",
                   help="with --watch: seconds between rounds (default: 2)")
    _retention_flags(p, "after each round, ")
    p = command("evict", cmd_evict, "free the local bytes of the oldest objects confirmed at the sync destination "
                                    "(their metadata and history stay; reads fetch the bytes from there) until "
                                    "--keep-free and/or --max-size hold; unsynced bytes are never evicted",
                [json_flag])
    _retention_flags(p, "")
    p.add_argument("--to", metavar="DST", help="the destination whose confirmations count (needed when the store "
                                               "syncs to several)")

    command("verify", cmd_verify, "re-hash every version's bytes and check every reference; "
                                  "exit 1 naming what is damaged", [json_flag])
    command("gc", cmd_gc, "free the bytes no version references (e.g. left by interrupted writes)", [json_flag])
    command("compact", cmd_compact, "rewrite the store file without its free pages (it never shrinks otherwise) "
                                    "and print its size before and after; refused while another process has "
                                    "it open", [json_flag])
    return parser


# --- helpers --------------------------------------------------------------------------------------


def _connect(args: argparse.Namespace, *, create: bool = False) -> Store:
    """Only `put` and `serve` create a store: `ls --db typo.db` is an error, not an empty listing."""
    return connect(args.db, create=create)


def _progress(total: int | None, desc: str, unit: str = "B") -> Any:
    """A tqdm bar on stderr when stderr is a terminal (counting bytes, or `unit`s); a silent no-op bar
    otherwise."""
    from tqdm import tqdm

    shown = _isatty(sys.stderr)
    # A terminal that reports a 0x0 size (a serial console, some `docker exec -t`) makes tqdm hide
    # the bar; give it the classic 80x24 there, and follow the real size everywhere else.
    sized = shown and _has_size(sys.stderr)
    scaled = {"unit_scale": True, "unit_divisor": 1024} if unit == "B" else {}
    return tqdm(total=total, desc=desc, unit=unit, **scaled, file=sys.stderr,
                disable=not shown, leave=True, dynamic_ncols=sized,
                ncols=None if sized else 80, nrows=None if sized else 24)


def _has_size(stream: Any) -> bool:
    try:
        size = os.get_terminal_size(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return size.columns > 0 and size.lines > 0


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


class _Counted:
    """A readable stream that advances a progress bar by every byte read through it."""

    def __init__(self, stream: Any, bar: Any) -> None:
        self._stream = stream
        self._bar = bar

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        if data:
            self._bar.update(len(data))
        return data

    def chunks(self) -> Iterator[bytes]:
        """The rest of the stream in pieces: the source's own chunks when it has them."""
        source = self._stream.chunks() if hasattr(self._stream, "chunks") else iter(
            lambda: self._stream.read(_COPY_SIZE), b"")
        for piece in source:
            self._bar.update(len(piece))
            yield piece


@contextlib.contextmanager
def _open_input(path: str) -> Iterator[tuple[BinaryIO, int | None, str]]:
    """(stream, size if known, label) for `put FILE|-`; stdin is streamed, never read whole."""
    if path == "-":
        stream = sys.stdin.buffer
        yield stream, _regular_size(stream), "stdin"
        return
    try:
        stream = open(path, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise MicroblobError(f"cannot read {path}: {exc.strerror or exc}") from None
    with stream:
        yield stream, _regular_size(stream), os.path.basename(path)


def _regular_size(stream: Any) -> int | None:
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None


def _json_default(value: Any) -> Any:
    if isinstance(value, _dt.datetime):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$binary": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"cannot print a {type(value).__name__} as JSON")


def _dumps(value: Any, *, indent: int | None = None) -> str:
    return json.dumps(value, default=_json_default, ensure_ascii=False, indent=indent)


def _print_json_lines(items: Any) -> None:
    out = sys.stdout
    for item in items:
        out.write(_dumps(item) + "\n")
    out.flush()


def _short_time(value: Any) -> str:
    if isinstance(value, _dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(_dt.timezone.utc)
        return value.strftime("%Y-%m-%dT%H:%M:%SZ")
    return "-" if value is None else str(value)


def _table(header: Sequence[str], rows: list[list[str]], right: Sequence[int] = ()) -> str:
    """Columns padded to their widest cell, two spaces apart; the columns in `right` right-aligned."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [cell.rjust(w) if i in right else cell.ljust(w)
                 for i, (cell, w) in enumerate(zip(row, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


# --- subcommands ----------------------------------------------------------------------------------


def cmd_put(args: argparse.Namespace) -> int:
    with _open_input(args.file) as (stream, size, label), _connect(args, create=True) as store:
        with _progress(size, f"put {label}") as bar:
            # The version this put made (reading the latest back could find another writer's).
            saved = store.save_object(
                _Counted(stream, bar),
                object_id=args.object_id,
                workflow_id=args.workflow_id,
                task_id=args.task_id,
                type=args.type,
                custom_metadata=dict(args.meta) if args.meta else None,
                save_data_in_collection=args.inline,
                control_version=args.version_control,
                content_type=args.content_type,
                tags=args.tag,
            )
        try:
            if args.json:
                _print_json_lines([saved.to_dict()])
            else:
                print(saved.object_id, flush=True)
        except OSError as exc:  # saved all the same: a retry on the exit code alone would save it twice
            if isinstance(exc, BrokenPipeError):
                _silence_stdout()
            raise MicroblobError(f"saved {saved.object_id} (version {saved.version}), but could not write it to "
                                 f"stdout: {_describe_os_error(exc)}") from None
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    to_stdout = args.output in (None, "-")
    if args.output is None and _isatty(sys.stdout):
        raise UsageError("refusing to write binary data to a terminal; give -o FILE, or -o - to insist")
    with _connect(args) as store:
        obj = store.get_blob_object(args.object_id, args.version)
        with obj.open() as stream, _progress(obj.size, f"get {obj.object_id} v{obj.version}") as bar:
            source = _Counted(stream, bar)
            if to_stdout:
                out = sys.stdout.buffer
                for piece in source.chunks():
                    out.write(piece)
                out.flush()
            else:
                from .store.objects import save_stream_atomically

                try:
                    save_stream_atomically(source, args.output)
                except OSError as exc:
                    raise MicroblobError(f"cannot write {args.output}: {exc.strerror or exc}") from None
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    filter = args.filter
    if args.type is not None:
        filter = {"$and": [filter, {"type": args.type}]} if filter else {"type": args.type}
    _check_ls_sort(args.sort)
    with _connect(args) as store:
        objects = store.blob_object_query(filter, sort=args.sort, limit=args.limit, skip=args.skip)
        if args.json:
            _print_json_lines(obj.to_dict() for obj in objects)
            return 0
        if not objects:
            if _isatty(sys.stdout):  # a person looking: nothing printed would read as a hang or a fault
                what = "no object matches" if filter or args.skip else "the store has no objects"
                sys.stdout.write(f"({what})\n")
            return 0
        header = ["object_id", "version", "type", "size", "content_type", "updated_at", "workflow/task"]
        rows = [
            [obj.object_id, str(obj.version), obj.type or "-", human_size(obj.size), obj.content_type or "-",
             _short_time(obj.updated_at), f"{obj.workflow_id or '-'}/{obj.task_id or '-'}"]
            for obj in objects
        ]
        sys.stdout.write(_table(header, rows, right=(1, 3)) + "\n")
        sys.stdout.flush()
    return 0


def _check_ls_sort(sort: list[tuple[str, int]] | None) -> None:
    """`ls` lists objects, whose fields microblob defines: a sort on any other name (`-update_at`) is a typo
    that would leave the list silently in another order, so it is refused before the store opens. This is
    decided from the schema, not from the data: a check for "a field no document has" would cost a scan
    and would refuse a real field on a store that has no such document yet. `custom_metadata.*` is the
    user's own, so any path under it is taken; `query --sort` takes any field, as MongoDB does."""
    from .store.core import _PAYLOAD_FIELDS, HISTORY_FIELDS
    from .store.flowcept_layout import FLOWCEPT_FIELDS

    known = {"_id", *HISTORY_FIELDS, *_PAYLOAD_FIELDS, *FLOWCEPT_FIELDS}
    for field, _ in sort or ():
        top, _, rest = field.partition(".")
        if top not in known or (rest and top != "custom_metadata"):
            shown = field if len(field) <= 60 else f"{field[:40]}...({len(field)} characters)"
            raise UsageError(f"ls cannot sort by {shown!r}: objects have {', '.join(sorted(known - {'_id'}))} "
                             f"and custom_metadata.KEY; query --sort takes any field")


def cmd_show(args: argparse.Namespace) -> int:
    with _connect(args) as store:
        obj = store.get_blob_object(args.object_id, args.version)
        sys.stdout.write(_dumps(obj.to_dict(), indent=2) + "\n")
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    with _connect(args) as store:
        history = store.get_object_history(args.object_id)
        if not history:  # every object has at least its current version: empty means no such object
            raise ObjectNotFound(args.object_id)
        _print_json_lines(history)
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    projection = args.projection
    if projection is None and args.collection in ("objects", "object_history"):
        projection = {"data": 0}  # inline bytes are data, not metadata: `get` prints them
    with _connect(args) as store:
        if args.explain:
            _print_json_lines([store.explain(args.filter, sort=args.sort, skip=args.skip, limit=args.limit,
                                             collection=args.collection)])
            return 0
        docs = store.query(args.filter, collection=args.collection, projection=projection, sort=args.sort,
                           limit=args.limit, skip=args.skip)
        _print_json_lines(docs)
    return 0


def cmd_index_ls(args: argparse.Namespace) -> int:
    with _connect(args) as store:
        _print_json_lines(store.list_indexes(collection=args.collection))
    return 0


def cmd_index_add(args: argparse.Namespace) -> int:
    with _connect(args) as store:
        print(store.create_index(args.keys, name=args.name, unique=args.unique, collection=args.collection),
              flush=True)
    return 0


def cmd_index_rm(args: argparse.Namespace) -> int:
    with _connect(args) as store:
        store.drop_index(args.name, collection=args.collection)
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    with _connect(args) as store:
        store.delete_object(args.object_id)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from .store.info import store_info

    with _connect(args) as store:
        info = store_info(store)
    if args.json:
        _print_json_lines([info.to_json()])
        return 0
    print(f"store:     {info.uri}")
    print(f"objects:   {info.objects} (and {count_of(info.history_versions, 'older version')}), "
          f"{count_of(info.workflows, 'workflow')}")
    print(f"files:     {info.files}, {human_size(info.file_bytes)}")
    if info.evicted_versions:
        print(f"evicted:   {count_of(info.evicted_versions, 'version')} (bytes at the sync destination only)")
    space = info.space
    if space is not None:
        print(f"file size: {human_size(space.file_size)} ({human_size(space.used)} in use)")
        print(f"map limit: {human_size(space.map_limit)} (mapped now: {human_size(space.map_size)})")
        print(f"room left: {human_size(space.room)} (disk free: {human_size(space.disk_free)})")
    sys.stdout.flush()
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    with _connect(args) as store:
        bar = _progress(store.count_versions() if _isatty(sys.stderr) else None, "verify", unit=" versions")
        with bar:
            report = store.verify(progress=bar.update)
    if args.json:
        damaged = [{"object_id": o, "version": v, "reason": r} for o, v, r in report.damaged]
        _print_json_lines([{"ok": report.ok, "checked": report.checked, "damaged": damaged}])
    else:
        for object_id, version, reason in report.damaged:
            print(f"damaged: {object_id} v{version}: {reason}")
        state = "ok" if report.ok else f"{len(report.damaged)} damaged"
        print(f"checked {count_of(report.checked, 'version')}: {state}", flush=True)
    if report.ok:
        return 0
    names = ", ".join(f"{o} v{v}" for o, v, _ in report.damaged[:5])
    more = f" and {len(report.damaged) - 5} more" if len(report.damaged) > 5 else ""
    _say(f"{PROG}: {count_of(len(report.damaged), 'damaged version')}: {names}{more}")
    return 1


def cmd_gc(args: argparse.Namespace) -> int:
    with _connect(args) as store:
        total = store.backend.collection("fs.files").count_documents({}) if _isatty(sys.stderr) else None
        with _progress(total, "gc", unit=" files") as bar:
            report = store.gc(progress=bar.update)
    if args.json:
        import dataclasses

        _print_json_lines([dataclasses.asdict(report)])
    else:
        print(f"freed {count_of(report.freed_files, 'file')}, {human_size(report.freed_bytes)} "
              f"({count_of(report.freed_bytes, 'byte')}), {count_of(report.freed_orphan_chunks, 'orphan chunk')}, "
              f"{count_of(report.freed_history_entries, 'stray history entry', 'stray history entries')}",
              flush=True)
    return 0


def cmd_compact(args: argparse.Namespace) -> int:
    with _connect(args) as store:
        report = store.compact()
    if args.json:
        import dataclasses

        _print_json_lines([{**dataclasses.asdict(report), "reclaimed_bytes": report.reclaimed_bytes}])
    else:
        print(f"compacted {report.path}: {human_size(report.before_bytes)} -> {human_size(report.after_bytes)}, "
              f"reclaimed {human_size(report.reclaimed_bytes)} ({count_of(report.reclaimed_bytes, 'byte')}) "
              f"in {report.seconds:.1f} s", flush=True)
    return 0


def cmd_copy(args: argparse.Namespace) -> int:
    from . import copy as copy_stores

    if args.db is not None:
        raise UsageError("copy reads SRC and writes DST; --db does not apply to it")
    return _run_copy(args, "copy", lambda progress: copy_stores(args.src, args.dst, since=args.since,
                                                                 progress=progress))


def cmd_export(args: argparse.Namespace) -> int:
    from .store.bundle import export_store

    if args.db is not None:
        raise UsageError("export reads STORE and writes FILE; --db does not apply to it")
    return _run_copy(args, "export", lambda progress: export_store(args.store, args.file, progress=progress))


def cmd_import(args: argparse.Namespace) -> int:
    from .store.bundle import import_store

    if args.db is not None:
        raise UsageError("import reads FILE and writes STORE; --db does not apply to it")
    return _run_copy(args, "import", lambda progress: import_store(args.file, args.store, progress=progress))


def _run_copy(args: argparse.Namespace, what: str, run: Callable[[Callable[[int, int], None]], Any]) -> int:
    """copy, export and import: a progress bar on a terminal, then the report; exit 1 if objects were left."""
    bar = _progress(None, what)

    def progress(done: int, total: int) -> None:
        if bar.total != total:
            bar.total = total
        bar.update(done - bar.n)

    with bar:
        report = run(progress)
    if args.json:
        _print_json_lines([report.as_dict()])
    else:
        for object_id, reason in report.problems:
            print(f"left alone: {object_id}: {reason}")
        print(report.summary(), flush=True)
    if report.ok:
        return 0
    names = ", ".join(object_id for object_id, _ in report.problems[:5])
    more = f" and {len(report.problems) - 5} more" if len(report.problems) > 5 else ""
    done = {"copy": "copied", "export": "exported", "import": "imported"}[what]
    _say(f"{PROG}: {count_of(len(report.problems), 'object')} not {done}: {names}{more}")
    return 1


def _space_line(uri: str, space: Space | None, max_upload: int, chosen: bool) -> str:
    """serve's start-up line on the store: its size against the map limit, the room left, the upload cap."""
    where = "" if space is None else (f"{human_size(space.file_size)} of a {human_size(space.map_limit)} "
                                      f"map limit, {human_size(space.room)} left; ")
    from .store.info import DEFAULT_MAX_UPLOAD

    why = "" if chosen or max_upload == DEFAULT_MAX_UPLOAD else " (the room left; --max-upload sets it)"
    return f"{PROG}: store {uri}: {where}uploads up to {human_size(max_upload)}{why}"


def cmd_sync(args: argparse.Namespace) -> int:
    from .store.syncing import SyncWorker, sync, sync_status

    if args.db is not None:
        raise UsageError("sync reads SRC and writes DST; --db does not apply to it")
    if args.src == "status":
        if args.dst is None:
            raise UsageError("sync status needs SRC (and optionally DST)")
        with connect(args.dst, create=False) as store:
            statuses = sync_status(store, args.extra)
        if args.json:
            _print_json_lines([s.as_dict() for s in statuses])
        elif not statuses:
            print(f"{args.dst} has not been synced anywhere yet")
        for status in statuses if not args.json else []:
            when = _short_time(status.last_round_at) if status.last_round_at else "never"
            oldest = f", oldest saved {_short_time(status.oldest_pending)}" if status.oldest_pending else ""
            print(f"{status.destination}: {count_of(status.pending_objects, 'object')} pending "
                  f"({human_size(status.pending_bytes)}){oldest}; last round {when}"
                  + (f"; last error: {status.last_error}" if status.last_error else "")
                  + (f"; {count_of(len(status.problems), 'object')} left alone" if status.problems else "")
                  + (f"; evicted here: {count_of(status.evicted_versions, 'version')} "
                     f"({count_of(status.evicted_files, 'file')}, {human_size(status.evicted_bytes)} freed)"
                     if status.evicted_versions else ""))
        return 0
    if args.dst is None or args.extra is not None:
        raise UsageError("sync takes SRC and DST (or `status SRC [DST]`)")
    with connect(args.src, create=False) as store:
        if not args.watch:
            result = sync(store, args.dst, propagate_deletes=args.propagate_deletes)
            evicted = _evict_after(store, args, args.dst)
            if args.json:
                _print_json_lines([{**result.copy.as_dict(), "confirmed": result.confirmed,
                                    **({"evicted": evicted.as_dict()} if evicted is not None else {})}])
            else:
                for object_id, reason in result.copy.problems:
                    print(f"left alone: {object_id}: {reason}")
                print(result.summary(), flush=True)
                if evicted is not None:
                    print(evicted.summary(), flush=True)
            return 0 if result.ok else 1

        def report(result: Any) -> None:
            if result.copy.copied_anything or not result.ok:
                if args.json:
                    _print_json_lines([{**result.copy.as_dict(), "confirmed": result.confirmed}])
                else:
                    print(result.summary(), flush=True)

        import logging

        logging.basicConfig(level=logging.WARNING, format=f"{PROG}: %(message)s")
        _say(f"{PROG}: syncing {store.uri} to {args.dst} every {args.interval:g} s; Ctrl-C stops")
        worker = SyncWorker(store, args.dst, interval=args.interval, propagate_deletes=args.propagate_deletes,
                            on_round=report, keep_free=args.keep_free, max_size=args.max_size).start()
        try:
            worker.join()
        finally:
            worker.stop()
    return 0


def _evict_after(store: Any, args: argparse.Namespace, dst: Any) -> Any:
    """`evict` with the command's --keep-free/--max-size, or None when neither was given."""
    if args.keep_free is None and args.max_size is None:
        return None
    from .store.retention import evict

    return evict(store, keep_free=args.keep_free, max_size=args.max_size, destination=dst)


def cmd_evict(args: argparse.Namespace) -> int:
    if args.keep_free is None and args.max_size is None:
        raise UsageError("evict needs --keep-free and/or --max-size")
    with _connect(args) as store:
        report = _evict_after(store, args, args.to)
    if args.json:
        _print_json_lines([report.as_dict()])
    else:
        print(report.summary(), flush=True)
    return 0 if report.met else 1


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .http.server import ThingServer, _is_loopback

    token = args.token if args.token is not None else os.environ.get("MICROBLOB_TOKEN") or None
    if not token and not args.insecure and not _is_loopback(args.host):
        raise UsageError(f"refusing to serve on {args.host} without a token: give --token (or set "
                         f"MICROBLOB_TOKEN), or --insecure to serve anyone who can reach it")
    from .http.browser_guard import check_allowed_hosts, check_cors_origins

    try:  # before the store opens and the port is taken
        check_allowed_hosts(args.allowed_host)
        check_cors_origins(args.cors_origin)
    except InvalidArgument as exc:
        raise UsageError(str(exc)) from None
    things = dict(_read_config(args.config)) if args.config else {}
    things.update(args.thing)
    # `module:Class` names a module of the directory serve runs in, as with `python -m` (the console
    # script's own directory is on sys.path instead).
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    chosen = {"blob_ttl": args.blob_ttl, "max_upload": args.max_upload, "upload_idle_timeout": args.upload_idle_timeout,
              "upload_timeout": args.upload_timeout, "max_uploads": args.max_uploads,
              "spool_budget": args.spool_budget, "upload_ttl": args.upload_ttl}
    options: dict[str, Any] = {k: v for k, v in chosen.items() if v is not None}
    if args.regex_budget is not None:
        options["regex_budget"] = args.regex_budget or None
    if args.max_page_size:
        options["max_page_size"] = args.max_page_size
    with _connect(args, create=True) as store:
        from .store.info import space as store_space
        from .store.info import upload_cap

        space = store_space(store)
        options.setdefault("max_upload", upload_cap(space))
        space_line = _space_line(store.uri, space, options["max_upload"], args.max_upload is not None)
        try:  # the port first: a busy port fails before any Thing touches its hardware
            sock = _listen(args.host, args.port)
        except (OSError, UnicodeError) as exc:  # UnicodeError: a host name IDNA refuses ('a..b', 64 letters)
            raise MicroblobError(f"cannot listen on {args.host} port {args.port}: "
                                 f"{getattr(exc, 'strerror', None) or exc}") from None
        with sock:
            try:
                # token="" (not None): the CLI has read $MICROBLOB_TOKEN already, the server must not again
                app = ThingServer(things=things, store=store, token=token or "", allowed_hosts=args.allowed_host,
                                  cors_origins=args.cors_origin, **options)
                app.allow_host(args.host)
            except (ImportError, AttributeError, ValueError, TypeError) as exc:  # 'a=:x', 'a=.:x' too
                raise MicroblobError(f"cannot load a Thing: {exc}") from None
            host, port = sock.getsockname()[:2]
            url = f"http://{f'[{host}]' if ':' in host else host}:{port}/"
            _say(f"{PROG}: serving {store.uri}" + (f" and {', '.join(app.things)}" if app.things else "")
                 + f" at {url}{' (token required)' if token else ''}; Ctrl-C stops")
            _say(space_line)
            print(url, flush=True)  # last: whoever reads it knows the server is about to accept connections
            # Logs, request lines included, go to stderr: stdout carries the URL only, for scripts.
            import copy

            log_config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
            log_config["handlers"]["access"]["stream"] = "ext://sys.stderr"
            config = uvicorn.Config(app, log_level=args.log_level, log_config=log_config, lifespan="on",
                                    timeout_graceful_shutdown=args.shutdown_timeout)
            server = uvicorn.Server(config)
            worker = None
            if args.sync_to:
                from .store.syncing import SyncWorker

                worker = SyncWorker(store, args.sync_to, propagate_deletes=args.sync_propagate_deletes,
                                    keep_free=args.keep_free, max_size=args.max_size).start()
                _say(f"{PROG}: syncing to {args.sync_to} in the background")
            try:
                server.run(sockets=[sock])
            except (KeyboardInterrupt, _Terminated):
                # uvicorn caught Ctrl-C/SIGTERM, shut down gracefully, then re-raised the signal for us.
                if not server.started:
                    raise
            finally:
                if worker is not None:
                    worker.stop()
            if not server.started:
                app.close()
                raise MicroblobError("the server did not start (see the log above)")
    return 0


def _listen(host: str, port: int) -> socket.socket:
    import socket  # only `serve` needs it: every other command starts ~2.5 ms sooner

    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                         flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
        sock.set_inheritable(True)
    except BaseException:
        sock.close()
        raise
    return sock


def _read_config(path: str) -> dict[str, str]:
    try:
        with open(path, encoding="utf-8") as fh:
            config = loads_json(fh.read())
    except OSError as exc:
        raise MicroblobError(f"cannot read {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise MicroblobError(f"{path} is not valid JSON: {exc}") from None
    things = config.get("things") if isinstance(config, dict) else None
    unknown = set(config) - {"things"} if isinstance(config, dict) else set()
    if not isinstance(things, dict) or unknown or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in things.items()):
        raise MicroblobError(f'{path}: expected {{"things": {{"NAME": "MODULE:CLASS", ...}}}}')
    return things
