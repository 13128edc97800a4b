"""How many examples the property tests try: every one in CI, a fifth of them in a local run.

The README's `python -m pytest` is what a developer runs after each change, so it must stay quick; CI
(`CI` set, as `.ci/run` runs) or `MICROBLOB_FULL_FUZZ=1` runs the full counts written in the tests. The
run's summary says which (tests/conftest.py). Only the number of generated examples changes: the
strategies, the properties and the explicit `@example`s are the same in both.
"""

from __future__ import annotations

import os

from hypothesis import settings

FULL = bool(os.environ.get("CI")) or os.environ.get("MICROBLOB_FULL_FUZZ") == "1"
LOCAL_SHARE = 5  # a local run tries 1/LOCAL_SHARE of each count
LOCAL_FLOOR = 10  # and never fewer than this many examples per test
DEFAULT_EXAMPLES = 100  # hypothesis's own default, for tests that name no count

settings.register_profile("microblob-full", max_examples=DEFAULT_EXAMPLES)
settings.register_profile("microblob-local", max_examples=max(LOCAL_FLOOR, DEFAULT_EXAMPLES // LOCAL_SHARE))
settings.load_profile("microblob-full" if FULL else "microblob-local")


def examples(full: int) -> int:
    """The example count for a test whose full search is `full` examples."""
    return full if FULL else max(LOCAL_FLOOR, full // LOCAL_SHARE)


def describe() -> str:
    """One line for the run's summary."""
    if FULL:
        return "hypothesis: full example counts (CI or MICROBLOB_FULL_FUZZ=1)"
    return (f"hypothesis: 1/{LOCAL_SHARE} of each example count (a local run); CI runs them all "
            f"(set MICROBLOB_FULL_FUZZ=1 to do the same here)")
