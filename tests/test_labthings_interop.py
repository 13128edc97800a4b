"""microblob and a real LabThings-FastAPI 0.3.0, both directions, over sockets on 127.0.0.1.

LabThings pins its own FastAPI and pydantic, so it runs in its own virtualenv (`labthings_python` in
conftest: ``MICROBLOB_LABTHINGS_PYTHON`` or ./.venv-labthings; `.ci/run` makes it, and CI fails without
it). One way, tests/_labthings_app.py serves a Camera written for LabThings in a child process and
microblob's `ThingClient` drives it; the other way, LabThings' own `ThingClient` (tests/_labthings_client.py,
in a child) drives the same Camera written with ``import microblob as lt`` on a microblob `ThingServer`.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import selectors
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import httpx
import pytest
from _labthings_frames import frame
from pydantic import Field

import microblob as lt
from microblob import RemoteBlob, RemoteError, RemoteInvalidInput, ThingClient

HERE = Path(__file__).resolve().parent
START_DEADLINE = 120.0  # a cold LabThings import (FastAPI, numpy, zeroconf) on a loaded 2-core machine
STOP_DEADLINE = 30.0


# -- the Camera of tests/_labthings_app.py, written for microblob: only the import differs -----------


class PNGBlob(lt.blob.Blob):
    media_type = "image/png"


class Camera(lt.Thing):
    """A camera whose frames are Blobs."""

    exposure: int = lt.property(default=10, ge=1, le=1000)

    def __init__(self) -> None:
        self.moves: list[int] = []

    @lt.action
    def capture(self, label: str = "frame", size: int = 300_000) -> PNGBlob:
        """Take a frame: a Blob the client downloads when it reads it."""
        return PNGBlob.from_bytes(frame(label, size), media_type="image/png")

    @lt.action
    def measure(self, image: lt.blob.Blob) -> dict[str, object]:
        """Read a Blob given back to the server and say what it holds."""
        data = image.content
        return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "media_type": image.media_type}

    @lt.action
    def move(self, steps: Annotated[int, Field(ge=0, le=10, description="steps forward")]) -> int:
        """A motor move whose input has limits."""
        self.moves.append(steps)
        return steps * 2


# -- a LabThings server in a child process -------------------------------------------------------------


def _read_port(proc: subprocess.Popen[str], deadline: float) -> int:
    """The ``PORT <n>`` line the app prints once it listens (or why it never came)."""
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not sel.select(timeout=0.5):
                if proc.poll() is not None:
                    break
                continue
            line = proc.stdout.readline()
            if not line:
                break
            if line.startswith("PORT "):
                return int(line.split()[1])
    raise RuntimeError(f"the LabThings server did not start (exit status {proc.poll()})")


def _stop(proc: subprocess.Popen[str]) -> None:
    """SIGTERM (uvicorn shuts down cleanly on it), then SIGKILL if it hangs; always reaped."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_DEADLINE)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=STOP_DEADLINE)


@pytest.fixture(scope="module")
def labthings_url(labthings_python: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``http://127.0.0.1:<port>/camera/`` of a LabThings 0.3.0 server serving the LabThings Camera."""
    work = tmp_path_factory.mktemp("labthings")
    log = open(work / "server.log", "w+")  # noqa: SIM115 - read back if it fails to start
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.Popen(
        [labthings_python, str(HERE / "_labthings_app.py"), str(work / "settings")],
        stdout=subprocess.PIPE, stderr=log, text=True, cwd=work, env=env,
    )
    try:
        deadline = time.monotonic() + START_DEADLINE
        try:
            port = _read_port(proc, deadline)
            url = f"http://127.0.0.1:{port}/camera/"
            while True:  # the port listens before uvicorn has run LabThings' start-up
                try:
                    if httpx.get(url, timeout=5).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the LabThings server never answered (exit status {proc.poll()})")
                time.sleep(0.1)
        except RuntimeError as e:
            log.seek(0)
            raise RuntimeError(f"{e}; its log:\n{log.read()[-4000:]}") from None
        yield url
    finally:
        _stop(proc)
        log.close()
    assert proc.returncode is not None


class Recorder:
    """The requests an httpx client sent: (method, path, JSON body or None)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, Any]] = []
        self.lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> None:
        body = None
        if request.headers.get("content-type", "").startswith("application/json"):
            body = json.loads(request.content or b"null")
        with self.lock:
            self.requests.append((request.method, request.url.path, body))

    def paths(self, method: str, contains: str) -> list[str]:
        with self.lock:
            return [p for m, p, _ in self.requests if m == method and contains in p]

    def body_of(self, path_end: str) -> Any:
        with self.lock:
            return [b for m, p, b in self.requests if m == "POST" and p.endswith(path_end)][-1]


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def camera_client(labthings_url: str, recorder: Recorder) -> Iterator[Any]:
    """microblob's ThingClient on the LabThings Camera, through an httpx client that records requests."""
    http = httpx.Client(timeout=httpx.Timeout(30.0, read=120.0), event_hooks={"request": [recorder]})
    with http, ThingClient.from_url(labthings_url, client=http) as client:
        yield client


# -- microblob's ThingClient -> LabThings' server -------------------------------------------------------


def test_a_labthings_blob_output_downloads_lazily_with_its_bytes_and_type(
    camera_client: Any, recorder: Recorder, tmp_path: Path
) -> None:
    blob = camera_client.capture(label="lazy", size=300_000)
    assert isinstance(blob, RemoteBlob)
    assert blob.content_type == "image/png" and blob.media_type == "image/png"
    assert blob.downloads == 0 and recorder.paths("GET", "/blob/") == []  # nothing fetched yet
    assert bytes(blob.data) == frame("lazy", 300_000)
    assert blob.downloads == 1 and len(recorder.paths("GET", "/blob/")) == 1
    assert bytes(blob.content) == bytes(blob.data) and blob.downloads == 1  # read once, kept
    blob.save(tmp_path / "frame.png")  # saving streams from the server again
    assert (tmp_path / "frame.png").read_bytes() == frame("lazy", 300_000)


def test_a_blob_passed_back_to_labthings_is_accepted_with_href_and_url(
    camera_client: Any, recorder: Recorder
) -> None:
    blob = camera_client.capture(label="back", size=123_457)
    measured = camera_client.measure(image=blob)
    expected = frame("back", 123_457)
    assert measured == {"size": len(expected), "sha256": hashlib.sha256(expected).hexdigest(),
                        "media_type": "image/png"}
    sent = recorder.body_of("/camera/measure")["image"]
    assert sent["href"] == sent["url"] == blob.url and sent["media_type"] == "image/png"
    assert blob.downloads == 0  # only the link travelled, never the bytes


def test_a_labthings_action_constraint_violation_is_a_typed_error_naming_the_field(camera_client: Any) -> None:
    with pytest.raises(RemoteInvalidInput) as low:
        camera_client.move(steps=-3)
    assert low.value.status == 422
    assert "steps: Input should be greater than or equal to 0 (ge=0)" in str(low.value)
    with pytest.raises(RemoteInvalidInput, match=r"steps: .*less than or equal to 10 \(le=10\)"):
        camera_client.move(steps=11)
    assert camera_client.move(steps=4) == 8  # within the limits it runs


def test_a_labthings_property_with_constraints_is_read_written_and_guarded(camera_client: Any) -> None:
    camera_client.exposure = 25
    assert camera_client.exposure == 25
    with pytest.raises(RemoteInvalidInput, match=r"greater than or equal to 1 \(ge=1\)") as low:
        camera_client.exposure = 0
    assert low.value.status == 422
    with pytest.raises(RemoteInvalidInput, match=r"le=1000"):
        camera_client.exposure = 1001
    assert camera_client.exposure == 25  # the refused writes changed nothing


def test_polling_a_server_that_answers_at_once_is_paced(
    labthings_url: str, tmp_path: Path
) -> None:
    """LabThings answers a poll at once (no long-poll): the client must wait between polls, not spin.
    The action runs until a file exists, which the client's own request hook makes at the fourth poll."""
    flag = tmp_path / "go"
    polls: list[float] = []

    def hook(request: httpx.Request) -> None:
        if request.method == "GET" and "invocation" in request.url.path:
            polls.append(time.monotonic())
            if len(polls) == 4:
                flag.touch()

    with httpx.Client(timeout=30.0, event_hooks={"request": [hook]}) as http, \
            ThingClient.from_url(labthings_url, client=http) as client:
        assert client.wait_for(path=str(flag)) == "seen"
    assert len(polls) >= 4
    gaps = [b - a for a, b in itertools.pairwise(polls)]
    # a lower bound only (a sleep never ends early): at least the first pause between any two polls
    assert min(gaps) >= 0.05, gaps


def test_a_local_blob_given_to_labthings_is_a_clear_error(camera_client: Any) -> None:
    """LabThings 0.3.0 has no upload route: it takes back only Blobs it issued."""
    with pytest.raises(RemoteError, match="takes no uploads") as e:
        camera_client.measure(image=lt.Blob.from_bytes(b"\x89PNG local", "image/png"))
    assert e.value.status in (404, 405) and e.value.error == "NoUploads"


# -- LabThings' ThingClient -> microblob's server ------------------------------------------------------


def test_labthings_own_client_drives_a_microblob_thing_server(
    labthings_python: str, make_server: Any, live: Any, tmp_path: Path
) -> None:
    camera = Camera()
    url = live(make_server({"camera": camera}).app) + "camera/"  # `.app`, as LabThings users write it
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([labthings_python, str(HERE / "_labthings_client.py"), url], capture_output=True,
                          text=True, timeout=START_DEADLINE, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-4000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["client_class"] == "labthings_fastapi.client"  # really LabThings' client

    assert seen["exposure_before"] == 10 and seen["exposure_after"] == 20
    assert seen["exposure_too_low"]["raised"] == "ClientPropertyError"
    assert "ge=1" in seen["exposure_too_low"]["message"]  # our 422's detail reaches a LabThings user
    assert seen["exposure_kept"] == 20 and camera.exposure == 20

    assert seen["move"] == {"value": 6}
    assert seen["move_too_far"]["raised"] == "FailedToInvokeActionError"
    assert "steps" in seen["move_too_far"]["message"] and "le=10" in seen["move_too_far"]["message"]
    assert camera.moves == [3]  # the refused call never ran

    expected = frame("lt", 300_000)
    assert seen["blob_class"] == "labthings_fastapi.outputs.blob.Blob"
    assert seen["blob_media_type"] == "image/png"
    assert seen["blob_size"] == len(expected)
    assert seen["blob_sha256"] == hashlib.sha256(expected).hexdigest()
    # LabThings' client passes its Blob back as {"href", "media_type", "rel", "description"}: accepted
    assert seen["measured"] == {"value": {"size": len(expected), "sha256": hashlib.sha256(expected).hexdigest(),
                                          "media_type": "image/png"}}

