"""What the `$regex` time budget costs per document: a compiled filter's predicate (budgeted, the branch's
engine choice) against the strongest baseline, a bare `re` search of the same field with no budget and
no path walk, interleaved, medians of 9 rounds over 50,000 documents.

    python bench/bench_regex_budget.py
"""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Callable
from typing import Any

from microblob.engine.query import compile_filter

PATTERNS = {
    "literal prefix": "^run-1",
    "one .*": "run-1.*sample",
    "alternation": "^(scan|image)$",
    "nested group": "^(run-\\d+)+-sample$",
}


def _seconds(test: Callable[[Any], bool], docs: list[dict[str, Any]]) -> float:
    start = time.perf_counter()
    for doc in docs:
        test(doc)
    return time.perf_counter() - start


def main() -> None:
    docs = [{"note": f"run-{i}-sample", "kind": "scan" if i % 2 else "image"} for i in range(50_000)]
    print(f"{'pattern':16} {'bare re':>10} {'budgeted':>10} {'ratio':>6}   (us per document)")
    for name, pattern in PATTERNS.items():
        field = "kind" if "scan" in pattern else "note"
        predicate = compile_filter({field: {"$regex": pattern}})
        search = re.compile(pattern).search
        bare = lambda doc, f=field, s=search: s(doc[f]) is not None  # noqa: E731
        assert sum(map(predicate, docs)) == sum(map(bare, docs))
        bare_times, budget_times = [], []
        for _ in range(9):  # interleaved, so load changes hit both sides alike
            bare_times.append(_seconds(bare, docs))
            budget_times.append(_seconds(predicate, docs))
        a, b = statistics.median(bare_times), statistics.median(budget_times)
        print(f"{name:16} {a / len(docs) * 1e6:10.2f} {b / len(docs) * 1e6:10.2f} {b / a:6.2f}")


if __name__ == "__main__":
    main()
