"""The layers stay true: each part of microblob imports only the layers below it, no import cycles (not
even through imports inside functions), and `import microblob` does not load the HTTP stack.

Read from the source with `ast` (no import needed), so a violation names the file and line. The layers,
bottom to top, are in LAYERS; docs/ARCHITECTURE.md explains them.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import microblob

PACKAGE = Path(microblob.__file__).parent

# Bottom to top. A module belongs to the first entry that is its name or a package above it; it may import
# modules of its own layer and of the layers before it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("microblob._exceptions", "microblob._version", "microblob._paths", "microblob._media_types")),
    ("value", ("microblob.blob", "microblob._blob_sources", "microblob._blob_url", "microblob._outfile")),
    ("engine", ("microblob.engine",)),
    ("store", ("microblob.store",)),
    ("things", ("microblob.things",)),
    ("http", ("microblob.http",)),
    # the facade: the package itself, the command line, the pytest plugin and the old public paths
    ("facade", ("microblob", "microblob.__main__", "microblob.cli", "microblob.testing", "microblob.files",
                "microblob.client", "microblob.torch", "microblob.flowcept")),
]
HTTP_STACK = ("starlette", "httpx", "uvicorn", "anyio")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> int | None:
    best: tuple[int, int] | None = None  # (length of the matching entry, layer index)
    for index, (_name, entries) in enumerate(LAYERS):
        for entry in entries:
            matches = module == entry or (module.startswith(entry + ".") and entry != "microblob")
            if matches and (best is None or len(entry) > best[0]):
                best = (len(entry), index)
    return None if best is None else best[1]


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports(module: str) -> list[tuple[str, int, bool]]:
    """(imported microblob module, line, only for type checkers) for every import anywhere in the module."""
    path = MODULES[module]
    return imports_in(path.read_text(encoding="utf-8"), module, path.name == "__init__.py", set(MODULES))


def imports_in(source: str, module: str, is_package: bool, known: set[str]) -> list[tuple[str, int, bool]]:
    package = module if is_package else module.rpartition(".")[0]
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, typing_only: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.body:
                    visit_stmt(stmt, True)
                for stmt in child.orelse:
                    visit_stmt(stmt, typing_only)
                continue
            visit_stmt(child, typing_only)

    def visit_stmt(child: ast.AST, typing_only: bool) -> None:
        if isinstance(child, ast.ImportFrom):
            if child.level:
                base = package.split(".")
                base = base[: len(base) - (child.level - 1)]
                target = ".".join(base + ([child.module] if child.module else []))
            else:
                target = child.module or ""
            subs = [f"{target}.{a.name}" for a in child.names if f"{target}.{a.name}" in known]
            for name in subs or [target]:
                if name in known:
                    found.append((name, child.lineno, typing_only))
        elif isinstance(child, ast.Import):
            for alias in child.names:
                if alias.name in known:
                    found.append((alias.name, child.lineno, typing_only))
        visit(child, typing_only)

    visit(ast.parse(source), False)
    # a module's parent packages are always imported before it: an edge to them says nothing
    return [(t, line, tc) for t, line, tc in found if t != module and not module.startswith(t + ".")]


def test_every_module_has_a_layer() -> None:
    unplaced = [m for m in MODULES if layer_of(m) is None]
    assert not unplaced, f"modules in no layer (add them to LAYERS, or move them into a layer's package): {unplaced}"


def test_imports_only_go_down() -> None:
    upward = []
    for module in MODULES:
        mine = layer_of(module)
        for target, line, _typing_only in imports(module):
            theirs = layer_of(target)
            if mine is not None and theirs is not None and theirs > mine:
                upward.append(f"{MODULES[module].relative_to(PACKAGE.parent)}:{line}: {LAYERS[mine][0]} "
                              f"{module} imports {LAYERS[theirs][0]} {target}")
    assert not upward, "imports that go up a layer:\n" + "\n".join(upward)


def runtime_graph() -> dict[str, list[str]]:
    """Who imports whom when the code runs: function-level imports included (such an import still ties the
    two modules into one), imports only for type checkers left out."""
    return {m: sorted({t for t, _line, typing_only in imports(m) if not typing_only}) for m in MODULES}


def cycles(graph: dict[str, list[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = 0

    def connect(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in graph:
        if v not in index:
            connect(v)
    return components


def test_no_import_cycles() -> None:
    assert cycles(runtime_graph()) == []


def test_the_cycle_finder_sees_through_function_level_imports() -> None:
    """The check above can fail: a cycle closed by an import inside a function is found; one closed only
    by an import for type checkers is not a cycle."""
    fake = {
        "microblob.x.a": "from .b import f\n",
        "microblob.x.b": "def f():\n    from ..c import g\n",
        "microblob.c": "from typing import TYPE_CHECKING\nfrom .x import a\nif TYPE_CHECKING:\n    from .d import h\n",
        "microblob.d": "from . import c\n",
    }
    known = set(fake)
    graph = {m: sorted({t for t, _line, tc in imports_in(src, m, False, known) if not tc}) for m, src in fake.items()}
    assert graph["microblob.x.b"] == ["microblob.c"]
    assert cycles(graph) == [["microblob.c", "microblob.x.a", "microblob.x.b"]]


def test_import_microblob_does_not_load_the_http_stack() -> None:
    code = ("import sys, microblob\n"
            f"print(sorted(m for m in {HTTP_STACK!r} if m in sys.modules))\n"
            "microblob.Store, microblob.Blob, microblob.connect\n"
            f"print(sorted(m for m in {HTTP_STACK!r} if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == ["[]", "[]"]


def test_http_names_load_on_first_use() -> None:
    code = ("import sys, microblob\n"
            "assert 'starlette' not in sys.modules\n"
            "server = microblob.ThingServer\n"
            "from microblob import ThingClient, Thing, thing_action\n"
            "print(server.__name__, ThingClient.__name__, Thing.__name__, thing_action.__name__,"
            " 'starlette' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["ThingServer", "ThingClient", "Thing", "thing_action", "True"]
    # LabThings' spellings load the Thing model on first use too, and are the same objects
    code = ("import sys, microblob as lt\n"
            "assert 'starlette' not in sys.modules\n"
            "print(lt.action is lt.thing_action, lt.property is lt.thing_property, 'action' in dir(lt))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "True", "True"]
    with pytest.raises(AttributeError, match="no attribute 'NoSuchName'"):
        microblob.NoSuchName  # noqa: B018 - the attribute access is the test


def test_all_is_complete_and_every_name_resolves() -> None:
    assert sorted(microblob.__all__) == microblob.__all__
    for name in microblob.__all__:
        assert getattr(microblob, name) is not None, name
    for name in ("ThingServer", "ThingClient", "Thing", "thing_action", "thing_property", "RemoteBlob",
                 "cancellable_sleep", "raise_if_cancelled"):
        assert name in microblob.__all__, name


def test_old_public_import_paths_keep_working() -> None:
    import microblob.blob
    import microblob.client
    import microblob.files
    import microblob.flowcept
    import microblob.store
    import microblob.testing

    assert microblob.store.Store is microblob.Store
    assert microblob.blob.Blob is microblob.Blob
    assert microblob.files.FilesBucket is microblob.FilesBucket
    assert microblob.client.ThingClient is microblob.ThingClient
    assert callable(microblob.testing.file_store)
    assert microblob.flowcept.Flowcept.__name__ == "Flowcept"
