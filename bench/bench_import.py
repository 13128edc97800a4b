"""Start-up cost: `import microblob` and CLI commands beside a bare interpreter, in fresh processes.

    python bench/bench_import.py [--repeat 21]

Every side runs once per round, in turn, so machine noise falls on all of them alike; the medians and
their ratios to the bare interpreter (`python -c pass`) are printed and written to
bench/results/import.json. Bytecode is compiled once first (as `pip install` does), so no side pays
for compiling: PYTHONDONTWRITEBYTECODE is dropped from the children's environment.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=21)
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPATH"] = str(ROOT)
    work = Path(tempfile.mkdtemp(prefix="bench-import-"))
    store = work / "s.db"
    py = sys.executable
    subprocess.run([py, "-c", f"import microblob, microblob.cli; s = microblob.connect({str(store)!r}); "
                    "[s.save_or_update_object(b'x' * 1024, type='t') for _ in range(20)]; s.close()"],
                   env=env, check=True)
    sides = {
        "bare interpreter": [py, "-c", "pass"],
        "import microblob": [py, "-c", "import microblob"],
        "microblob --version": [py, "-m", "microblob", "--version"],
        "microblob ls --limit 5": [py, "-m", "microblob", "ls", "--db", str(store), "--limit", "5"],
    }
    times: dict[str, list[float]] = {name: [] for name in sides}
    try:
        for _ in range(args.repeat):
            for name, argv in sides.items():
                start = time.perf_counter()
                subprocess.run(argv, env=env, check=True, capture_output=True)
                times[name].append(time.perf_counter() - start)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    bare = statistics.median(times["bare interpreter"])
    results = {name: {"median_ms": round(statistics.median(t) * 1000, 1),
                      "x_bare": round(statistics.median(t) / bare, 2)} for name, t in times.items()}
    for name, row in results.items():
        print(f"{name:24s} {row['median_ms']:7.1f} ms  {row['x_bare']:5.2f}x bare")
    out = ROOT / "bench" / "results" / "import.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"repeat": args.repeat, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
