"""torch is optional: `import microblob` never imports it, and `microblob.torch` without it says what to install.
These run everywhere, with or without torch installed."""

from __future__ import annotations

from collections.abc import Callable


def test_import_microblob_never_imports_torch(run_python: Callable[..., object]) -> None:
    proc = run_python(
        "import sys, microblob, microblob.testing\n"
        "store = microblob.connect('memory://')\n"
        "oid = store.save_or_update_ml_model(b'weights')\n"
        "store.get_ml_model(oid).data\n"
        "print('torch' in sys.modules, 'safetensors' in sys.modules)\n"
    )
    assert proc.stdout.split() == ["False", "False"]  # type: ignore[attr-defined]


def test_microblob_torch_without_torch_names_the_extra(run_python: Callable[..., object]) -> None:
    proc = run_python(
        "import sys\n"
        "sys.modules['torch'] = None  # as if torch were not installed\n"
        "import microblob\n"
        "try:\n"
        "    import microblob.torch\n"
        "except ImportError as exc:\n"
        "    print(type(exc).__name__, exc)\n"
        "store = microblob.connect('memory://')\n"
        "try:\n"
        "    store.load_torch_model(object(), 'x')\n"
        "except ImportError as exc:\n"
        "    print('method', type(exc).__name__)\n"
    )
    out = proc.stdout  # type: ignore[attr-defined]
    assert "ImportError microblob.torch needs PyTorch" in out
    assert "pip install 'microblob[torch]'" in out
    assert "method ImportError" in out
