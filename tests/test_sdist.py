"""The distributions are complete and build cleanly.

The sdist carries the tests (conftest, helpers and data too), examples, bench, docs and LICENSE, so
`pytest` runs from an unpacked sdist; the wheel carries every `microblob.*` subpackage and the browse
page's static files; and building either draws none of setuptools' packaging warnings (license
classifiers, a data directory absent from `packages`). `.ci/run` also builds the sdist with the newest
setuptools and runs tests from it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SKIP = shutil.ignore_patterns(".git", ".venv*", ".tox", "*.egg-info", "__pycache__", "build", "dist", "*.db",
                              "*.db-lock", ".pytest_cache", ".ruff_cache", ".hypothesis")
WARNINGS = ("License classifiers are deprecated", "absent from the `packages` configuration",
            "no previously-included files", "no files found matching", "SetuptoolsDeprecationWarning")
SHIPPED_DIRS = ("tests", "examples", "bench", "microblob", "docs", "ci")
TOP_FILES = {"LICENSE", "README.md", "setup.cfg", "pyproject.toml", "tox.ini", "ruff.toml", "MANIFEST.in"}


def _tracked(*dirs: str) -> set[str]:
    """Files git tracks under `dirs`, or (in an unpacked sdist, which has no git) every file there."""
    try:
        out = subprocess.run(["git", "ls-files", *dirs], cwd=ROOT, capture_output=True, text=True, check=True).stdout
        files = set(out.split())
    except (OSError, subprocess.CalledProcessError):
        files = set()
    if not files:
        files = {str(p.relative_to(ROOT)) for d in dirs for p in (ROOT / d).rglob("*")
                 if p.is_file() and "__pycache__" not in p.parts}
    return {f for f in files if not f.endswith((".pyc", ".db", ".db-lock"))}


def _setuptools_major() -> int:
    import setuptools

    return int(setuptools.__version__.split(".")[0])


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """Build the sdist and the wheel with the installed setuptools (PEP 517, in a copy of the tree)."""
    tree = tmp_path_factory.mktemp("tree") / "src"
    shutil.copytree(ROOT, tree, ignore=SKIP)
    out = tmp_path_factory.mktemp("dist")
    names = tree.parent / "built.txt"  # the builders print their own progress on stdout
    code = ("import pathlib, sys; from setuptools import build_meta as b; "
            f"s = b.build_sdist({str(out)!r}); w = b.build_wheel({str(out)!r}); "
            f"pathlib.Path({str(names)!r}).write_text(s + '\\n' + w)")
    result = subprocess.run([sys.executable, "-W", "always", "-c", code], cwd=tree, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    sdist_name, wheel_name = names.read_text().split("\n")
    return out / sdist_name, out / wheel_name, result.stdout + result.stderr


def test_sdist_carries_tests_examples_bench_and_docs(built: tuple[Path, Path, str]) -> None:
    sdist, _, _ = built
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    wanted = _tracked(*SHIPPED_DIRS) | TOP_FILES
    assert {"tests/conftest.py", "tests/_td_schema.py", "tests/data/w3c-td/td-json-schema-validation.json",
            "microblob/static/browse.js", "docs/ARCHITECTURE.md", "examples/quickstart.py",
            "ci/arm-smoke.sh"} <= wanted
    assert not wanted - names, f"missing from the sdist: {sorted(wanted - names)}"


def test_wheel_carries_every_subpackage_and_the_static_files(built: tuple[Path, Path, str]) -> None:
    _, wheel, _ = built
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    wanted = _tracked("microblob")
    assert {"microblob/engine/lmdb_kv.py", "microblob/store/core.py", "microblob/things/thing.py",
            "microblob/http/server.py", "microblob/static/browse.html"} <= wanted
    assert not wanted - names, f"missing from the wheel: {sorted(wanted - names)}"
    assert not {n for n in names if n.startswith(("tests/", "bench/", "examples/"))}, "the wheel is the package only"


def test_builds_without_packaging_warnings(built: tuple[Path, Path, str]) -> None:
    if _setuptools_major() < 77:
        pytest.skip("setuptools < 77 does not warn about license classifiers: pip install -e '.[test]'")
    _, _, log = built
    for phrase in WARNINGS:
        assert phrase not in log, log


def test_tests_run_from_the_unpacked_sdist(built: tuple[Path, Path, str], tmp_path: Path) -> None:
    """The unpacked sdist's own tests pass against its own microblob (PYTHONPATH first), fixtures and all."""
    sdist, _, _ = built
    with tarfile.open(sdist) as tar:
        tar.extractall(tmp_path, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    (unpacked,) = tmp_path.iterdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MICROBLOB_")}
    env["PYTHONPATH"] = str(unpacked)
    probe = "import microblob, sys; print(microblob.__file__)"
    where = subprocess.run([sys.executable, "-c", probe], cwd=unpacked, env=env, capture_output=True, text=True,
                           check=True).stdout.strip()
    assert Path(where).is_relative_to(unpacked), where
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_versions.py",
                             "-k", "not mongodb"], cwd=unpacked, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout
