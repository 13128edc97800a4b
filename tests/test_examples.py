"""Every `examples/*.py` runs end to end, so an example that breaks fails CI.

The examples are discovered, not listed: a new one is covered as soon as it exists. The contract for an
example: `python examples/NAME.py STORE_URI` works against a fresh temporary file and against `memory://`,
runs again on the same file (re-runnable), exits 0, prints what it did and leaves a store that verifies.
An example run otherwise (one that starts its own server, say) says how in `ARGS`; it must still run
twice, exit 0 and print what it did. A client example names in `SERVERS` the example to start as its
server (a subprocess on a free 127.0.0.1 port, stopped after the test); an example that needs a MongoDB
server says `{mongodb}` (the test server of tests/conftest.py, a fresh database); `PREPARE` names an
example run first on the same store (to give it data). An example that imports torch is marked `torch`
(`tox -e torch`; CI installs torch, so it runs there); one that imports a package that is not installed is
skipped, which fails CI (tests/conftest.py): CI must install what every example needs. `EXPECTED` names,
for the examples that have them, lines their output must contain.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import pytest

import microblob

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))

# How to run an example that does not take just a store URI: `{store}` is a store URI, `{tmp}` a fresh
# temporary directory. The default is ["{store}"].
# `{url}`: the base URL of the example's server (`SERVERS`); `{mongodb}`: a fresh MongoDB database URI.
ARGS: dict[str, list[str]] = {
    "camera": ["demo", "{tmp}"],  # a Thing server on a free 127.0.0.1 port, both client flows, then stop
    "camera_client": ["{url}camera/", "{tmp}"],
    "sync_to_mongodb": ["{store}", "{mongodb}"],
}
# Client examples: the example (and its arguments; `{port}` is a free port) to serve them while they run.
SERVERS: dict[str, list[str]] = {
    "camera_client": ["camera.py", "serve", "--port", "{port}"],
}
# Run this example on the same store first (once), so there is something to work with.
PREPARE: dict[str, str] = {
    "sync_to_mongodb": "quickstart",
}
# Store variants, where not both: a store in another process's memory:// cannot be copied from.
VARIANTS: dict[str, list[str]] = {
    "sync_to_mongodb": ["file"],
}

# Per example: (patterns for the first run, patterns for the second run on the same file).
EXPECTED: dict[str, tuple[list[str], list[str]]] = {
    "quickstart": (
        [r"saved quickstart-image v0: \d+ bytes", r"updated to v1 \(prev_version 0\)", r"version 0 is still there",
         r"models with accuracy >= 0\.9: \['quickstart-model'\]", r"verify: ok"],
        [r"updated to v3 \(prev_version 2\)", r"verify: ok"],
    ),
    "versions": (
        [r"latest is v2 \(prev_version 1\), gain 1\.05", r"metadata-only update -> v3, tags \['approved'\], "
         r"same bytes as v2: True", r"v0 and v1 differ: True", r"history: \[\(3, 1\.05\), \(2, 1\.05\), "
         r"\(1, 1\.02\), \(0, 1\.0\)\]", r"non-versioned update -> v4 \(prev_version 2\).*no version 3.*"
         r"readable versions: \[4, 2, 1, 0\]", r"archived versions with gain < 1\.03: \[0, 1\]",
         r"with its whole history: True"],
        [r"latest is v2 \(prev_version 1\)", r"with its whole history: True"],
    ),
    "torch_checkpoint": (
        [r"epoch 1: val_loss [\d.]+ -> saved regressor-\w+ v0", r"epoch 6: val_loss [\d.]+ -> saved regressor-\w+ v5",
         r"6 versions; best is v\d", r"application/x-safetensors\) into a fresh model: val_loss [\d.]+, "
         r"matches the checkpoint: True"],
        [r"6 versions; best is v\d", r"matches the checkpoint: True"],
    ),
    "camera": (
        [r"flow 1: \d+ RAW bytes stayed on the server \(downloads: 0\)", r"flow 2: saved \d+ JPEG bytes"],
        [r"flow 2: saved \d+ JPEG bytes"],
    ),
    "camera_client": (
        [r"actions capture_raw_image, convert_raw_to_jpeg, capture_image", r"flow 1: \d+ RAW bytes stayed on "
         r"the server \(downloads: 0\)", r"flow 2: saved \d+ JPEG bytes \(image/jpeg\)", r"captured 2 frames"],
        [r"flow 1: \d+ RAW bytes stayed on the server \(downloads: 0\)", r"captured 4 frames"],  # same server
    ),
    "sync_to_mongodb": (
        [r"copied 3 objects \(\d+ versions\)", r"MongoDB holds 3 of the 3 source objects with the same bytes"],
        [r"nothing to copy: 3 objects", r"MongoDB holds 3 of the 3 source objects with the same bytes"],
    ),
}


def imports(path: Path) -> set[str]:
    """Top-level names of every module the example imports, anywhere in it (imports inside functions too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def needs_torch(path: Path) -> bool:
    return any(name == "torch" or name.startswith("torch.") or name == "microblob.torch" for name in imports(path))


def missing_packages(path: Path) -> list[str]:
    siblings = {example.stem for example in EXAMPLES}  # examples/ is on sys.path when an example runs
    tops = {name.split(".")[0] for name in imports(path)} - set(sys.stdlib_module_names) - {"__future__", "microblob"}
    tops -= siblings
    if needs_torch(path):
        tops |= {"torch", "safetensors", "numpy"}
    return sorted(top for top in tops if importlib.util.find_spec(top) is None)


def example_params() -> list[object]:
    params = []
    for path in EXAMPLES:
        marks = [pytest.mark.torch] if needs_torch(path) else []
        default = ["file", "memory"] if "{store}" in ARGS.get(path.stem, ["{store}"]) else ["own"]
        variants = VARIANTS.get(path.stem, default)
        params.extend(pytest.param(path, variant, id=f"{path.stem}-{variant}", marks=marks) for variant in variants)
    return params


def run_example(path: Path, store: str, tmp: Path, **values: str) -> str:
    args = [arg.format(store=store, tmp=tmp, **values) for arg in ARGS.get(path.stem, ["{store}"])]
    proc = subprocess.run([sys.executable, str(path), *args], capture_output=True, text=True, timeout=600, cwd=tmp,
                          env=example_env())
    assert proc.returncode == 0, f"{path.name} {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    assert proc.stdout.strip(), f"{path.name} printed nothing: an example says what it did"
    return proc.stdout


def example_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MICROBLOB_URI", "MICROBLOB_TOKEN")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


@contextmanager
def example_server(args: list[str], tmp: Path) -> Iterator[str]:
    """Start `examples/ARGS[0] ARGS[1:]` on a free port; yields its base URL once it answers; stops it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    argv = [arg.format(port=port) for arg in args]
    log = tmp / f"server-{port}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, str(ROOT / "examples" / argv[0]), *argv[1:]], cwd=tmp,
                                env=example_env(), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"{' '.join(argv)} exited {proc.returncode}:\n{log.read_text()}")
            try:
                if httpx.get(base + "things/", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"{' '.join(argv)} did not answer in time:\n{log.read_text()}")
            time.sleep(0.05)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=20)


def check_output(name: str, output: str, run: int) -> None:
    for pattern in EXPECTED.get(name, ([], []))[run]:
        assert re.search(pattern, output), f"{name} (run {run + 1}): no line matches {pattern!r} in:\n{output}"


def test_examples_are_discovered() -> None:
    assert {"quickstart", "versions", "torch_checkpoint", "camera", "camera_client", "sync_to_mongodb"} <= {
        path.stem for path in EXAMPLES}
    assert set(ARGS) | set(SERVERS) | set(PREPARE) | set(VARIANTS) <= {path.stem for path in EXAMPLES}


@pytest.mark.parametrize(("example", "variant"), example_params())
def test_example_runs(example: Path, variant: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    missing = missing_packages(example)
    if missing:
        pytest.skip(f"{example.name} needs {', '.join(missing)} (CI installs them; torch: `tox -e torch`)")
    with ExitStack() as stack:
        values: dict[str, str] = {}
        args = " ".join(ARGS.get(example.stem, []))
        if "{mongodb}" in args:
            server = request.getfixturevalue("mongo_server")
            values["mongodb"] = server.fresh_uri()
            stack.callback(server.drop, values["mongodb"])
        if example.stem in SERVERS:
            values["url"] = stack.enter_context(example_server(SERVERS[example.stem], tmp_path))
        if variant == "memory":
            check_output(example.stem, run_example(example, "memory://", tmp_path, **values), 0)
        else:
            path = tmp_path / "store.db"
            if example.stem in PREPARE:
                run_example(ROOT / "examples" / f"{PREPARE[example.stem]}.py", str(path), tmp_path)
            for run in range(2):  # examples are re-runnable on the same store
                check_output(example.stem, run_example(example, str(path), tmp_path, **values), run)
            if variant == "file":
                with microblob.connect(path) as store:
                    report = store.verify()
                    assert report.ok, report.damaged
    if variant != "own":
        assert not (tmp_path / "microblob.db").exists(), "the example ignored the store URI it was given"
