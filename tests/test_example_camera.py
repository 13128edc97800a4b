"""examples/camera.py and camera_client.py: the LabThings documentation's camera, both client flows, over a
real socket."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "camera.py"
CLIENT = EXAMPLE.with_name("camera_client.py")


def load(path: Path, name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def example() -> Any:
    return load(EXAMPLE, "camera_example")


@pytest.fixture(scope="module")
def client_example() -> Any:
    return load(CLIENT, "camera_client_example")


def test_local_calls_pass_the_same_blob(example: Any) -> None:
    from PIL import Image

    cam = example.Camera(width=64, height=48)
    raw = cam.capture_raw_image()
    assert raw.size == 10 + 64 * 48
    jpeg = cam.convert_raw_to_jpeg(raw)
    img = Image.open(jpeg.open())
    assert img.format == "JPEG" and img.size == (32, 24) and img.mode == "RGB"


def test_both_flows_against_a_server(example: Any, client_example: Any, make_server: Any, live: Any,
                                     tmp_path: Path) -> None:
    from PIL import Image

    base = live(make_server({"camera": example.Camera()}))
    result = client_example.run_client(base + "camera/", tmp_path)
    assert result["raw_downloads_before_save"] == 0  # flow 1 never downloaded the RAW frame
    assert result["frames"] == 2
    for name in ("converted_image.jpg", "captured_image.jpg"):
        img = Image.open(tmp_path / name)
        assert img.format == "JPEG" and img.size == (160, 120)
    assert (tmp_path / "raw_image.raw").read_bytes().startswith(example.RAW_MAGIC)


def test_bad_raw_input_is_an_action_error(example: Any, make_server: Any, live: Any) -> None:
    from microblob import ActionError, Blob, ThingClient

    base = live(make_server({"camera": example.Camera(width=8, height=8)}))
    cam = ThingClient.from_url(base + "camera/")
    with pytest.raises(ActionError, match="not a RAW frame"):
        cam.convert_raw_to_jpeg(Blob.from_bytes(b"garbage"))


def test_demo_script_runs(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(EXAMPLE.parents[1]))
    proc = subprocess.run([sys.executable, str(EXAMPLE), "demo", str(tmp_path)], capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "downloads: 0" in proc.stdout
    assert (tmp_path / "captured_image.jpg").stat().st_size > 1000


def test_client_with_a_token(example: Any, client_example: Any, make_server: Any, live: Any, tmp_path: Path,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    base = live(make_server({"camera": example.Camera(width=16, height=16)}, token="s3cret"))
    from microblob import Unauthorized

    with pytest.raises(Unauthorized):
        client_example.run_client(base + "camera/", tmp_path)
    monkeypatch.setenv("MICROBLOB_TOKEN", "s3cret")
    assert client_example.run_client(base + "camera/", tmp_path)["frames"] == 2
