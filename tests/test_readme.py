"""Every code block of README.md runs as written, so a snippet that breaks fails CI.

Each ```python and ```sh block runs in a fresh temporary directory (its own `./microblob.db`, no
`$MICROBLOB_URI`), as a newcomer would paste it, in a subprocess with the installed `microblob` script on
`PATH`. The directory holds only what the README presents as the reader's own: the files it names
(`scan.png`, `scan2.png`, `results/`, `things.json`, a `lab/devices.py` with the `Camera` and `Stage` it
serves, `~/.microblob-token`) and, for blocks that read a store before they write one, a `./microblob.db`
with an object in it. The only text changed is the placeholders in `PLACEHOLDERS` (a MongoDB database, a
Mongita directory), and port 5000, which becomes a free port so parallel runs cannot collide.

The first ```sh block is the set-up (install, then this test suite): CI runs it itself (`.ci/run`), so it
is checked for shape only. Blocks whose first line is `# on the Raspberry Pi` need a Pi (sudo, apt): they
are not run here but by `ci/arm-smoke.sh`, inside an ARM root filesystem, and this file only checks that
the script is there and picks them out by that marker. Blocks without a language (the exception tree) are
not code. A block that no runner below recognises fails `test_every_block_has_a_runner`, so a new snippet
cannot go untested.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

import microblob

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
TIMEOUT = 180.0
MONGO_PLACEHOLDER = "mongodb://institute/lab"
MONGITA_PLACEHOLDER = "/path/to/dir"
PLACEHOLDERS = (MONGO_PLACEHOLDER, MONGITA_PLACEHOLDER, "127.0.0.1:5000")


@dataclass(frozen=True)
class Block:
    lang: str
    code: str
    line: int  # the line of the opening fence

    @property
    def id(self) -> str:
        return f"README.md:{self.line}-{self.lang}"


def readme_blocks() -> list[Block]:
    blocks: list[Block] = []
    lines = README.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        match = re.fullmatch(r"```(\w*)", lines[i])
        if match:
            end = lines.index("```", i + 1)
            blocks.append(Block(match.group(1), "\n".join(lines[i + 1:end]) + "\n", i + 1))
            i = end
        i += 1
    return blocks


PI_MARKER = "# on the Raspberry Pi"
ARM_SMOKE = ROOT / "ci" / "arm-smoke.sh"

BLOCKS = readme_blocks()
PI = [b for b in BLOCKS if b.lang and b.code.startswith(PI_MARKER + "\n")]
CODE = [b for b in BLOCKS if b.lang and b not in PI]
SETUP = CODE[0]
SERVER = next(b for b in CODE if b.lang == "python" and "ThingServer(" in b.code)
CLIENT = next(b for b in CODE if b.lang == "python" and "ThingClient.from_url" in b.code)
PYTEST = [b for b in CODE if b.lang == "python" and re.search(r"^def test_", b.code, re.M)]
SERVE = [b for b in CODE if b.lang == "sh" and re.search(r"^(\S+=\S+ )*microblob serve", b.code, re.M)]
PLAIN_PY = [b for b in CODE if b.lang == "python" and b not in (SERVER, CLIENT, *PYTEST)]
PLAIN_SH = [b for b in CODE if b.lang == "sh" and b not in (SETUP, *SERVE)]


def _png(seed: int) -> bytes:
    """A real 64x64 greyscale PNG, different per seed, so the snippets handle an actual image file."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    rows = b"".join(b"\0" + bytes((x * y + seed) % 256 for x in range(64)) for y in range(64))
    header = struct.pack(">IIBBBBB", 64, 64, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


LAB_DEVICES = '''
from microblob import Thing, thing_action, thing_property


class Camera(Thing):
    @thing_action
    def capture(self, exposure: float = 0.1) -> str:
        return f"captured at {exposure}"


class Stage(Thing):
    @thing_property
    def position(self) -> float:
        return 0.0
'''


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def sandbox(tmp_path: Path) -> Path:
    """The reader's working directory (also their $HOME), holding their own files."""
    (tmp_path / "scan.png").write_bytes(_png(0))
    (tmp_path / "scan2.png").write_bytes(_png(1))
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "run-1.csv").write_text("t,value\n0,1.5\n1,2.5\n")
    (tmp_path / "lab").mkdir()
    (tmp_path / "lab" / "__init__.py").write_text("")
    (tmp_path / "lab" / "devices.py").write_text(LAB_DEVICES)
    (tmp_path / "things.json").write_text('{"things": {"camera": "lab.devices:Camera"}}\n')
    (tmp_path / ".microblob-token").write_text("s3cret-token-for-the-readme-test\n")
    return tmp_path


@pytest.fixture
def env(sandbox: Path) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MICROBLOB_")}
    environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + environ.get("PATH", "")
    environ["HOME"] = str(sandbox)
    environ["PYTHONPATH"] = str(sandbox)
    return environ


def _substitute(block: Block, request: pytest.FixtureRequest, sandbox: Path, port: int | None = None) -> str:
    code = block.code
    if MONGO_PLACEHOLDER in code:
        server = request.getfixturevalue("mongo_server")
        uri = server.fresh_uri()
        request.addfinalizer(lambda: server.drop(uri))
        code = code.replace(MONGO_PLACEHOLDER, uri)
    if MONGITA_PLACEHOLDER in code:
        mongita_dir = sandbox / "mongita-data"
        with microblob.connect(f"mongita://{mongita_dir}") as store:
            store.save_or_update_object(b"kept in mongita", type="dataset", object_id="from-mongita")
        code = code.replace(MONGITA_PLACEHOLDER, str(mongita_dir))
    if port is not None:
        code = code.replace("127.0.0.1:5000", f"127.0.0.1:{port}")
    return code


def _seed_store(sandbox: Path) -> None:
    """A `./microblob.db` with an object, for blocks that copy or read a store before writing one."""
    with microblob.connect(str(sandbox / "microblob.db")) as store:
        store.save_or_update_object(sandbox.joinpath("scan.png"), type="image", object_id="seed-scan")


def _run(args: list[str], sandbox: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, cwd=sandbox, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result


def test_every_block_has_a_runner() -> None:
    covered = [SETUP, SERVER, CLIENT, *PYTEST, *SERVE, *PLAIN_PY, *PLAIN_SH]
    assert sorted(b.line for b in covered) == sorted(b.line for b in CODE)
    assert {b.lang for b in CODE} == {"python", "sh"}, "only python and sh blocks are run: add a runner"
    # The placeholders the runners replace are in the README: a renamed one would go unreplaced.
    text = README.read_text(encoding="utf-8")
    assert all(p in text for p in PLACEHOLDERS)


def test_raspberry_pi_blocks_run_in_arm_smoke() -> None:
    """The Pi's blocks are left to ci/arm-smoke.sh, which must exist and select them by the same marker."""
    if not ARM_SMOKE.exists():
        assert not PI, f"README has {len(PI)} '{PI_MARKER}' blocks but {ARM_SMOKE.relative_to(ROOT)} is missing"
        pytest.skip(f"{ARM_SMOKE.relative_to(ROOT)} is not in this checkout yet")
    assert PI_MARKER in ARM_SMOKE.read_text(encoding="utf-8")


def test_setup_block_is_what_ci_runs() -> None:
    """.ci/run takes line 2 of the first sh block as the test command; the first line is the tour."""
    lines = SETUP.code.splitlines()
    assert lines[0].startswith("pip install . && python examples/quickstart.py")
    assert "pytest" in lines[1]
    assert (ROOT / "examples" / "quickstart.py").exists()


@pytest.mark.parametrize("block", PLAIN_PY, ids=lambda b: b.id)
def test_python_block(block: Block, sandbox: Path, env: dict[str, str], request: pytest.FixtureRequest) -> None:
    if "import torch" in block.code:
        pytest.importorskip("torch")
    code = _substitute(block, request, sandbox)
    if any(call in code for call in ("microblob.copy(", "export_store(")):  # they read ./microblob.db first
        _seed_store(sandbox)
    (sandbox / "snippet.py").write_text(code)
    _run([sys.executable, "snippet.py"], sandbox, env)
    if "save_or_update_object(" in code and "latest.png" in code:
        # The object API tour: the reader's files are untouched and the latest version was saved beside.
        assert (sandbox / "scan.png").read_bytes() == _png(0)
        assert (sandbox / "latest.png").read_bytes() == _png(1)


@pytest.mark.parametrize("block", PYTEST, ids=lambda b: b.id)
def test_pytest_block(block: Block, sandbox: Path, env: dict[str, str]) -> None:
    """A test written with the plugin's fixtures passes under pytest in a project of its own."""
    (sandbox / "test_snippet.py").write_text(block.code)
    result = _run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_snippet.py"], sandbox, env)
    assert re.search(r"\b1 passed\b", result.stdout), result.stdout


@pytest.mark.parametrize("block", PLAIN_SH, ids=lambda b: b.id)
def test_shell_block(block: Block, sandbox: Path, env: dict[str, str], request: pytest.FixtureRequest) -> None:
    code = _substitute(block, request, sandbox)
    (sandbox / "snippet.sh").write_text("set -euo pipefail\n" + code)
    _run(["bash", "snippet.sh"], sandbox, env)
    if "microblob put scan.png" in code:
        assert (sandbox / "scan.png").read_bytes() == _png(0), "the reader's original was overwritten"
        assert (sandbox / "latest.png").read_bytes() == _png(1)
    if MONGITA_PLACEHOLDER in block.code:
        with microblob.connect(str(sandbox / "microblob.db"), create=False) as store:
            assert store.get_blob_object("from-mongita").data == b"kept in mongita"


def _serve(command: str, sandbox: Path, env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    """Start a serve command in its own process group; return it and the first line it prints."""
    process = subprocess.Popen(["bash", "-c", f"exec env {command}"], cwd=sandbox, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    if not line:
        process.wait(timeout=TIMEOUT)
        pytest.fail(f"{command!r} printed nothing; exit {process.returncode}: {process.stderr.read()}")  # type: ignore[union-attr]
    return process, line


def _stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@pytest.mark.parametrize("block", SERVE, ids=lambda b: b.id)
def test_serve_block(block: Block, sandbox: Path, env: dict[str, str]) -> None:
    """Each serve line starts (on a free port), answers, and stops cleanly on SIGTERM."""
    token = (sandbox / ".microblob-token").read_text().strip()
    commands = [line.split("  #")[0].strip() for line in block.code.splitlines() if line.strip()]
    assert commands
    for command in commands:
        command = command.replace("microblob serve", "microblob serve --port 0", 1)
        process, url = _serve(command, sandbox, env)
        try:
            match = re.fullmatch(r"http://([\d.]+):(\d+)/", url)
            assert match, f"{command!r} printed {url!r}, not its URL"
            base = f"http://127.0.0.1:{match.group(2)}"
            headers = {"Authorization": f"Bearer {token}"} if "MICROBLOB_TOKEN" in command else {}
            things = httpx.get(f"{base}/things/", headers=headers, timeout=30)
            assert things.status_code == 200, (command, things.text)
            for name in re.findall(r"--thing (\w+)=", command) + (["camera"] if "--config" in command else []):
                assert name in things.json(), (command, things.json())
            if headers:
                assert httpx.get(f"{base}/things/", timeout=30).status_code == 401
        finally:
            _stop(process)
        assert process.returncode == 0, (command, process.stderr.read())  # type: ignore[union-attr]


def test_thing_server_and_client_blocks(sandbox: Path, env: dict[str, str], request: pytest.FixtureRequest) -> None:
    """The server snippet serves (on a free port) and the client snippet, run against it, saves the frame."""
    port = _free_port()
    server_code = _substitute(SERVER, request, sandbox).replace(".serve()", f".serve(port={port})")
    assert f"port={port}" in server_code
    (sandbox / "server.py").write_text(server_code)
    (sandbox / "client.py").write_text(_substitute(CLIENT, request, sandbox, port))
    server = subprocess.Popen([sys.executable, "server.py"], cwd=sandbox, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        _wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/things/", timeout=5).status_code == 200, server)
        _run([sys.executable, "client.py"], sandbox, env)
    finally:
        _stop(server)
    frame = (sandbox / "frame.jpg").read_bytes()
    assert frame.startswith(b"\xff\xd8") and frame.endswith(b"\xff\xd9") and len(frame) == 1006


def _wait_for(ready: Callable[[], bool], process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"server exited {process.returncode}: {process.stderr.read()}")  # type: ignore[union-attr]
        try:
            if ready():
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    pytest.fail("server did not answer in time")


def test_no_shell_block_needs_what_the_sandbox_lacks() -> None:
    """The stand-in files are the ones the blocks name; a block naming another file needs one here."""
    for block in PLAIN_SH + SERVE:
        for name in re.findall(r"\b[\w-]+\.(?:png|json)\b", block.code):
            assert name in {"scan.png", "scan2.png", "latest.png", "things.json"}, (block.id, name)
    assert shutil.which("bash")
