"""A local test run sums skips up by reason in one line each (a list of ~100 `SKIPPED` lines read like
breakage); in CI every skip is listed and fails the run. Runs tests/conftest.py as a plugin over a small
test file of its own, in a subprocess: in one process and under pytest-xdist (the README's command runs
`-n auto`), where the controller prints the totals over every worker and fails a CI run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

SAMPLE = '''
import pytest

def test_runs():
    pass

@pytest.mark.parametrize("n", range(3))
def test_needs_a_server(n):
    pytest.skip("no server here")

def test_needs_a_gpu():
    pytest.skip("no GPU")
'''


# `-n 2 --dist load`: the four sample tests spread over two workers, so no one worker saw every skip
modes = pytest.mark.parametrize("workers", [[], ["-n", "2", "--dist", "load"]], ids=["one process", "xdist"])


def _run(tmp_path: Path, workers: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    environ = {k: v for k, v in os.environ.items() if k != "CI" and not k.startswith("PYTEST_")}
    environ.update(PYTHONPATH=str(TESTS), **env)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "conftest",
                           "-rfExX", *workers, "test_sample.py"], cwd=tmp_path, env=environ, capture_output=True,
                          text=True, timeout=300)


@modes
def test_local_run_sums_skips_up_by_reason(tmp_path: Path, workers: list[str]) -> None:
    result = _run(tmp_path, workers)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert "skipped 3 tests: no server here" in lines and "skipped 1 test: no GPU" in lines, result.stdout
    assert not [line for line in lines if line.startswith("SKIPPED")], result.stdout
    assert any(line.startswith("passed: 1 tests, of which MongoDB 0") for line in lines), result.stdout


@modes
def test_ci_lists_every_skip_and_fails(tmp_path: Path, workers: list[str]) -> None:
    result = _run(tmp_path, workers, CI="1")
    assert result.returncode == 1, result.stdout + result.stderr
    listed = [line for line in result.stdout.splitlines() if line.startswith("SKIPPED")]
    assert len(listed) == 2 and "no server here" in result.stdout, result.stdout  # pytest folds equal skips
    assert "4 test(s) skipped; failing the run" in result.stdout
