"""Files microblob writes where the user said: `microblob get ID -o PATH`, `BlobObject.save()` and the
client's `Blob.save()`.

- Only a regular file or a new path is replaced (temp file beside it, then rename). A character device
  (/dev/null, /dev/full), a FIFO and `-o -` are written straight into and are still what they were
  afterwards; /dev/full's ENOSPC is one line on stderr and exit 1, never a traceback.
- A new file gets `0o666 & ~umask`, like `open()`; an existing file keeps its mode.

The CLI runs in real subprocesses (its umask set with `subprocess.run(umask=)`); the in-process savers
set the umask for the call and restore it.
"""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from test_cli import Cli, InProcessCli
from thing_fixtures import frame

import microblob
from microblob import ThingClient

MiB = 1 << 20
PAYLOAD = frame(3 * MiB + 5)  # several 1 MiB write chunks


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return InProcessCli([sys.executable, "-m", "microblob"], tmp_path)


@pytest.fixture
def stored(cli: Cli) -> str:
    return cli.put(PAYLOAD)


def _device(tmp_path: Path, name: str, major: int, minor: int) -> Path:
    """A private character device node (a twin of /dev/null or /dev/full) under tmp_path: a broken
    writer replaces this one, not the machine's."""
    path = tmp_path / name
    try:
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(major, minor))
    except PermissionError:
        pytest.skip("creating a device node needs root")
    return path


@contextlib.contextmanager
def _umask(mask: int) -> Iterator[None]:
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


class _FifoReader(threading.Thread):
    """Reads a FIFO to its end in a thread (a writer's open blocks until a reader has it open)."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path, self.data = path, b""
        # A second name for the FIFO, so finish() reaches it even if a writer renamed a file over `path`.
        (path.parent / "fifo-links").mkdir(exist_ok=True)
        self._link = path.parent / "fifo-links" / path.name
        os.link(path, self._link)

    def run(self) -> None:
        with open(self.path, "rb") as fifo:
            self.data = fifo.read()

    def finish(self) -> bytes:
        """What was read, once the writer is done. A reader still waiting in open() (nobody wrote into
        the FIFO) is let through to EOF by a writer that opens and closes at once, so this cannot hang."""
        try:
            os.close(os.open(self._link, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:  # ENXIO: no reader left, it has finished
            pass
        self.join()
        return self.data


# --- item 5: devices and FIFOs are written into, never replaced --------------------------------------


@pytest.mark.parametrize("where", ["/dev/null", "twin of /dev/null"])
def test_get_into_a_character_device_leaves_it_a_device(cli: Cli, stored: str, tmp_path: Path,
                                                        where: str) -> None:
    target = Path("/dev/null") if where == "/dev/null" else _device(tmp_path, "null", 1, 3)
    before = os.stat(target)
    assert stat.S_ISCHR(before.st_mode)
    assert cli.ok("get", stored, "-o", str(target)) == ""
    after = os.stat(target)
    assert stat.S_ISCHR(after.st_mode), f"{target} is no longer a character device: {stat.filemode(after.st_mode)}"
    assert (after.st_ino, after.st_rdev, stat.S_IMODE(after.st_mode)) == (
        before.st_ino, before.st_rdev, stat.S_IMODE(before.st_mode))
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".microblob-")]


@pytest.mark.parametrize("where", ["/dev/full", "twin of /dev/full"])
def test_get_into_dev_full_is_a_one_line_error(cli: Cli, stored: str, tmp_path: Path, where: str) -> None:
    target = Path("/dev/full") if where == "/dev/full" else _device(tmp_path, "full", 1, 7)
    message = cli.fails(1, "get", stored, "-o", str(target))
    assert "No space left on device" in message and str(target) in message, message
    assert stat.S_ISCHR(os.stat(target).st_mode)
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".microblob-")]


def test_get_to_stdout_on_dev_full_is_a_one_line_error(cli: Cli, stored: str) -> None:
    with open("/dev/full", "wb") as full:
        proc = subprocess.run(cli.cmd("get", stored, "-o", "-"), stdout=full, stderr=subprocess.PIPE,
                              cwd=cli.cwd, env=cli.env, timeout=300)
    err = proc.stderr.decode()
    assert proc.returncode == 1, err
    assert "Traceback" not in err and err.count("\n") == 1 and err.startswith("microblob"), err
    assert "No space left on device" in err, err


def test_get_into_a_fifo_streams_whole_and_leaves_a_fifo(cli: Cli, stored: str, tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    reader = _FifoReader(fifo)
    reader.start()
    assert cli.ok("get", stored, "-o", str(fifo)) == ""
    assert reader.finish() == PAYLOAD
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".microblob-")) == []


def test_get_to_dash_writes_stdout(cli: Cli, stored: str) -> None:
    proc = cli("get", stored, "-o", "-")
    assert proc.returncode == 0 and proc.stdout == PAYLOAD, proc.stderr.decode()
    assert not (cli.cwd / "-").exists()


# --- the in-process savers share the same rules ---------------------------------------------------


@pytest.fixture
def camera_client(make_server: Any, live: Any, camera: Any) -> Iterator[Any]:
    with ThingClient.from_url(live(make_server({"camera": camera})) + "camera") as client:
        yield client


Saver = Callable[[Path], None]


@pytest.fixture(params=["BlobObject.save", "client Blob.save"])
def saver(request: pytest.FixtureRequest, tmp_path: Path) -> Saver:
    """A function that writes PAYLOAD to a path through one of the in-process savers."""
    if request.param == "BlobObject.save":
        store = microblob.connect(tmp_path / "objects.db")
        request.addfinalizer(store.close)
        obj = store.get_blob_object(store.save_or_update_object(PAYLOAD))
        return lambda path: obj.save(path)
    cam = request.getfixturevalue("camera_client")
    return lambda path: cam.capture_raw_image(len(PAYLOAD)).save(path)


def test_savers_write_into_a_fifo(saver: Saver, tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    reader = _FifoReader(fifo)
    reader.start()
    saver(fifo)
    assert reader.finish() == PAYLOAD
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


def test_savers_write_into_a_character_device(saver: Saver, tmp_path: Path) -> None:
    device = _device(tmp_path, "null", 1, 3)
    saver(device)
    assert stat.S_ISCHR(os.stat(device).st_mode) and os.stat(device).st_rdev == os.makedev(1, 3)
    saver(Path("/dev/null"))
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    full = _device(tmp_path, "full", 1, 7)
    with pytest.raises(OSError, match="No space left"):
        saver(full)
    assert stat.S_ISCHR(os.stat(full).st_mode)


def test_savers_replace_a_regular_file_through_a_symlink(saver: Saver, tmp_path: Path) -> None:
    real = tmp_path / "real.bin"
    real.write_bytes(b"old")
    link = tmp_path / "link.bin"
    link.symlink_to(real)
    saver(link)
    assert link.is_symlink() and real.read_bytes() == PAYLOAD


# --- item 6: modes ----------------------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002, 0o000], ids=oct)
def test_get_makes_a_new_file_with_the_umask_mode(cli: Cli, stored: str, tmp_path: Path, umask: int) -> None:
    target = tmp_path / "new.bin"
    proc = subprocess.run(cli.cmd("get", stored, "-o", str(target)), capture_output=True, cwd=cli.cwd,
                          env=cli.env, timeout=300, umask=umask)
    assert proc.returncode == 0, proc.stderr.decode()
    assert target.read_bytes() == PAYLOAD
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask


@pytest.mark.parametrize(("mode", "umask"), [(0o644, 0o077), (0o600, 0o022), (0o640, 0o000), (0o604, 0o022)],
                         ids=oct)
def test_get_over_an_existing_file_keeps_its_mode(cli: Cli, stored: str, tmp_path: Path, mode: int,
                                                  umask: int) -> None:
    target = tmp_path / "old.bin"
    target.write_bytes(b"previous")
    target.chmod(mode)
    proc = subprocess.run(cli.cmd("get", stored, "-o", str(target)), capture_output=True, cwd=cli.cwd,
                          env=cli.env, timeout=300, umask=umask)
    assert proc.returncode == 0, proc.stderr.decode()
    assert target.read_bytes() == PAYLOAD
    assert stat.S_IMODE(target.stat().st_mode) == mode


@pytest.mark.parametrize("umask", [0o022, 0o077], ids=oct)
def test_savers_make_a_new_file_with_the_umask_mode(saver: Saver, tmp_path: Path, umask: int) -> None:
    target = tmp_path / "new.bin"
    with _umask(umask):
        saver(target)
    assert target.read_bytes() == PAYLOAD
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask


@pytest.mark.parametrize(("mode", "umask"), [(0o644, 0o077), (0o600, 0o022)], ids=oct)
def test_savers_keep_an_existing_files_mode(saver: Saver, tmp_path: Path, mode: int, umask: int) -> None:
    target = tmp_path / "old.bin"
    target.write_bytes(b"previous")
    target.chmod(mode)
    with _umask(umask):
        saver(target)
    assert target.read_bytes() == PAYLOAD
    assert stat.S_IMODE(target.stat().st_mode) == mode


def test_get_over_another_users_file_keeps_its_owner(cli: Cli, stored: str, tmp_path: Path) -> None:
    """Run as root (as in the report), a file written over stays its owner's, not root's."""
    if os.geteuid() != 0:
        pytest.skip("changing a file's owner needs root")
    target = tmp_path / "theirs.bin"
    target.write_bytes(b"previous")
    os.chown(target, 65534, 65534)
    target.chmod(0o640)
    assert cli.ok("get", stored, "-o", str(target)) == ""
    after = target.stat()
    assert (after.st_uid, after.st_gid, stat.S_IMODE(after.st_mode)) == (65534, 65534, 0o640)
    assert target.read_bytes() == PAYLOAD
