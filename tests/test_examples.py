"""Every `examples/*.py` runs end to end, so an example that breaks fails CI.

The examples are discovered, not listed: a new one is covered as soon as it exists. The contract for an
example: `python examples/NAME.py STORE_URI` works against a fresh temporary file and against `memory://`,
runs again on the same file (re-runnable), exits 0, prints what it did and leaves a store that verifies.
An example that imports torch needs the torch extra: it is marked `torch` (`tox -e torch`; CI installs
torch, so it runs there). An example that needs a server starts its own (in-process or on 127.0.0.1).
`EXPECTED` names, for the examples that have them, lines their output must contain.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import microblob

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))

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
}


def imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def needs_torch(path: Path) -> bool:
    return any(name == "torch" or name.startswith("torch.") or name == "microblob.torch" for name in imports(path))


def example_params() -> list[object]:
    return [pytest.param(path, id=path.stem, marks=[pytest.mark.torch] if needs_torch(path) else [])
            for path in EXAMPLES]


def run_example(path: Path, uri: str, cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k != "MICROBLOB_URI"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, str(path), uri], capture_output=True, text=True, timeout=600, cwd=cwd,
                          env=env)
    assert proc.returncode == 0, f"{path.name} {uri} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    assert proc.stdout.strip(), f"{path.name} printed nothing: an example says what it did"
    return proc.stdout


def check_output(name: str, output: str, run: int) -> None:
    for pattern in EXPECTED.get(name, ([], []))[run]:
        assert re.search(pattern, output), f"{name} (run {run + 1}): no line matches {pattern!r} in:\n{output}"


def test_examples_are_discovered() -> None:
    names = {path.stem for path in EXAMPLES}
    assert {"quickstart", "versions", "torch_checkpoint"} <= names
    assert set(EXPECTED) <= names, "EXPECTED names an example that no longer exists"


@pytest.mark.parametrize("example", example_params())
def test_example_runs_on_a_file_twice(example: Path, tmp_path: Path) -> None:
    if needs_torch(example) and importlib.util.find_spec("torch") is None:
        pytest.skip("needs torch: run `tox -e torch` (CI installs it)")
    path = tmp_path / "store.db"
    for run in range(2):
        output = run_example(example, str(path), tmp_path)
        check_output(example.stem, output, run)
    with microblob.connect(path) as store:
        report = store.verify()
        assert report.ok, report.damaged
    assert not (tmp_path / "microblob.db").exists(), "the example ignored the store URI it was given"


@pytest.mark.parametrize("example", example_params())
def test_example_runs_in_memory(example: Path, tmp_path: Path) -> None:
    if needs_torch(example) and importlib.util.find_spec("torch") is None:
        pytest.skip("needs torch: run `tox -e torch` (CI installs it)")
    check_output(example.stem, run_example(example, "memory://", tmp_path), 0)
    assert not (tmp_path / "microblob.db").exists(), "the example ignored the store URI it was given"
