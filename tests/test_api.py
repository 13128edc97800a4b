"""The curated public API: `__all__` is exactly what is importable and documented."""

from __future__ import annotations

import microblob


def test_all_names_exist_and_are_sorted() -> None:
    assert sorted(microblob.__all__) == microblob.__all__
    for name in microblob.__all__:
        assert hasattr(microblob, name), name


def test_public_names_are_in_all() -> None:
    # dir(), not vars(): the HTTP names load on first use (the package's __getattr__), so they are in the
    # module's namespace only once asked for
    public = {n for n in dir(microblob) if not n.startswith("_")}
    modules = {n for n in public if type(getattr(microblob, n)).__name__ == "module"}
    # LabThings' spellings (`lt.property`, `lt.action`) are attributes only: in __all__, `from microblob
    # import *` would shadow the builtin `property` in the importing module.
    labthings_aliases = {"property", "action"}
    assert microblob.property is microblob.thing_property and microblob.action is microblob.thing_action
    assert public - modules - labthings_aliases == set(microblob.__all__) - {"__version__"}
    assert not labthings_aliases & set(microblob.__all__)


def test_public_objects_have_docstrings() -> None:
    for name in microblob.__all__:
        obj = getattr(microblob, name)
        if callable(obj):
            assert obj.__doc__, f"{name} has no docstring"
