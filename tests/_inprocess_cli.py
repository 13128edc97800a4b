"""`microblob.cli.main(argv)` run in the test process, with the state a `python -m microblob` child
would have of its own: environment, working directory, stdin, stdout and stderr (bytes, in the encoding
the child would use), the root logger, the SIGTERM handler and the exit code.

A subprocess costs about half a CPU-second of interpreter start-up and imports per command; most CLI
tests check what a command prints and returns, which does not depend on the process boundary. Those
that do (signals, terminals, pipes closed by the reader, the console script, `serve`) keep running a
real child (tests/test_cli.py). An exception escaping `main` is printed as the child's interpreter would
print it (a traceback on stderr, exit 1), so the tests' "no traceback" checks still see it.
"""

from __future__ import annotations

import contextlib
import io
import locale
import logging
import os
import signal
import subprocess
import sys
import threading
import traceback
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from microblob import cli as microblob_cli

_ONE_AT_A_TIME = threading.Lock()  # sys.stdout and os.environ are per process: one command at a time


def _encoding(env: Mapping[str, str]) -> str:
    """The encoding the child's sys.stdout would have with `env` (PYTHONIOENCODING, else the locale's)."""
    named = env.get("PYTHONIOENCODING", "").split(":")[0]
    return named or locale.getpreferredencoding(False)


def _stdin(input: bytes | None, stdin: Any) -> io.TextIOWrapper:
    """What `subprocess.run(input=, stdin=)` would hand the child as its stdin."""
    if input is not None:
        raw: Any = io.BytesIO(input)
    elif stdin is None or stdin == subprocess.DEVNULL:
        raw = open(os.devnull, "rb")  # noqa: SIM115 - closed with the wrapper
    elif isinstance(stdin, int):
        raw = open(stdin, "rb", closefd=False)  # noqa: SIM115 - closed with the wrapper
    else:  # a file object: the child would get its descriptor (a regular file keeps its known size)
        raw = open(stdin.fileno(), "rb", closefd=False)  # noqa: SIM115 - closed with the wrapper
    return io.TextIOWrapper(raw, encoding=_encoding(os.environ))


@contextlib.contextmanager
def _process_state(cwd: Path, env: Mapping[str, str]) -> Iterator[None]:
    """Replace the environment and working directory for one command, then put the test's back."""
    saved_env = dict(os.environ)
    saved_cwd = os.getcwd()
    root = logging.getLogger()
    saved_logging = (list(root.handlers), root.level)
    saved_term = signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    try:
        yield
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        for handler in root.handlers[:]:
            if handler not in saved_logging[0]:
                root.removeHandler(handler)
                handler.close()
        root.setLevel(saved_logging[1])
        if saved_term is not None:
            signal.signal(signal.SIGTERM, saved_term)


def run_cli(args: Sequence[str], *, cwd: Path, env: Mapping[str, str], input: bytes | None = None,
            stdin: Any = None) -> subprocess.CompletedProcess[bytes]:
    """Run `microblob ARGS` in this process as `subprocess.run(capture_output=True)` would run it."""
    with _ONE_AT_A_TIME, _process_state(cwd, env):
        encoding = _encoding(env)
        out_bytes, err_bytes = io.BytesIO(), io.BytesIO()
        out = io.TextIOWrapper(out_bytes, encoding=encoding, errors="strict")
        err = io.TextIOWrapper(err_bytes, encoding=encoding, errors="backslashreplace")
        stdin_stream = _stdin(input, stdin)
        saved = sys.stdin, sys.stdout, sys.stderr
        sys.stdin, sys.stdout, sys.stderr = stdin_stream, out, err
        try:
            code = microblob_cli.main(list(args))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
        except KeyboardInterrupt:
            raise
        except BaseException:  # what the interpreter prints for an uncaught exception, and its status
            traceback.print_exc(file=err)
            code = 1
        finally:
            sys.stdin, sys.stdout, sys.stderr = saved
            for stream in (out, err):
                with contextlib.suppress(ValueError):
                    stream.flush()
            stdin_stream.close()
        return subprocess.CompletedProcess(["microblob", *args], code, out_bytes.getvalue(), err_bytes.getvalue())
