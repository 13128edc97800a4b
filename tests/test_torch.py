"""microblob.torch: real small networks trained, saved as versions, reloaded; payloads that are not
safetensors refused without ever being unpickled. Runs where torch is installed (`tox -e torch`, CI)."""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path
from typing import Any

import pytest

import microblob

torch = pytest.importorskip("torch")
mbtorch = pytest.importorskip("microblob.torch")

pytestmark = pytest.mark.torch

nn = torch.nn


class MLP(nn.Module):
    def __init__(self, hidden: int = 16) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(4, hidden), nn.ReLU(), nn.BatchNorm1d(hidden), nn.Linear(hidden, 1))

    def forward(self, x: Any) -> Any:
        return self.layers(x)


def synthetic_data(seed: int = 0) -> tuple[Any, Any]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(256, 4, generator=g)
    y = (x @ torch.tensor([[1.5], [-2.0], [0.5], [1.0]]) + 0.3 * torch.sin(3 * x[:, :1]))
    return x, y


def train(model: nn.Module, steps: int, lr: float = 0.05) -> list[float]:
    x, y = synthetic_data()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    return losses


def outputs(model: nn.Module) -> Any:
    x, _ = synthetic_data(seed=1)
    model.eval()
    with torch.no_grad():
        return model(x)


def fresh(seed: int, **kwargs: Any) -> MLP:
    torch.manual_seed(seed)
    return MLP(**kwargs)


def params_snapshot(model: nn.Module) -> dict[str, Any]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def same_state(model: nn.Module, snapshot: dict[str, Any]) -> bool:
    state = model.state_dict()
    return set(state) == set(snapshot) and all(torch.equal(state[k], snapshot[k]) for k in state)


@pytest.fixture(params=["microblob_store", "microblob_file_store"])
def any_store(request: pytest.FixtureRequest) -> microblob.Store:
    """Both of the plugin's stores: memory and a temporary LMDB file."""
    return request.getfixturevalue(request.param)


# --- round trips -----------------------------------------------------------------------------------------


def test_trained_model_reloads_into_a_fresh_model_with_equal_outputs(any_store: microblob.Store) -> None:
    model = fresh(0)
    losses = train(model, steps=30)
    assert losses[-1] < losses[0] / 2  # it really learned something
    oid = mbtorch.save_or_update_torch_model(model, store=any_store, task_id="train-1",
                                             custom_metadata={"loss": losses[-1]}, tags=["mlp"])
    other = fresh(1)
    assert not torch.equal(outputs(other), outputs(model))
    meta = mbtorch.load_torch_model(other, oid, store=any_store)
    assert torch.equal(outputs(other), outputs(model))
    assert same_state(other, params_snapshot(model))  # BatchNorm running stats and its int64 counter too
    assert meta["object_id"] == oid and meta["version"] == 0
    assert meta["type"] == "ml_model" and meta["content_type"] == mbtorch.CONTENT_TYPE
    assert meta["task_id"] == "train-1" and meta["tags"] == ["mlp"]
    assert meta["custom_metadata"] == {"loss": losses[-1]}
    assert "data" not in meta and isinstance(meta, dict)
    assert [m.object_id for m in any_store.ml_model_query({"custom_metadata.loss": {"$lt": losses[0]}})] == [oid]


def test_versions_load_the_exact_snapshot(any_store: microblob.Store) -> None:
    model = fresh(0)
    train(model, steps=10)
    first = outputs(model).clone()
    oid = mbtorch.save_or_update_torch_model(model, object_id="mlp", store=any_store, control_version=True,
                                             custom_metadata={"epoch": 1})
    train(model, steps=10)
    second = outputs(model).clone()
    assert not torch.equal(first, second)
    assert mbtorch.save_or_update_torch_model(model, object_id="mlp", store=any_store, control_version=True,
                                              custom_metadata={"epoch": 2}) == oid

    v0, v1, latest = fresh(5), fresh(6), fresh(7)
    assert mbtorch.load_torch_model(v0, oid, version=0, store=any_store)["custom_metadata"] == {"epoch": 1}
    assert torch.equal(outputs(v0), first)
    meta1 = mbtorch.load_torch_model(v1, oid, version=1, store=any_store)
    assert meta1["version"] == 1 and meta1["prev_version"] == 0
    assert torch.equal(outputs(v1), second)
    assert mbtorch.load_torch_model(latest, oid, store=any_store)["version"] == 1
    assert torch.equal(outputs(latest), second)
    history = any_store.get_object_history(oid)
    assert [(h["version"], h["custom_metadata"]) for h in history] == [(1, {"epoch": 2}), (0, {"epoch": 1})]
    with pytest.raises(microblob.VersionNotFound):
        mbtorch.load_torch_model(fresh(8), oid, version=2, store=any_store)
    with pytest.raises(microblob.ObjectNotFound):
        mbtorch.load_torch_model(fresh(8), "no-such-model", store=any_store)


def test_store_methods_and_workflow_linkage(microblob_store: microblob.Store) -> None:
    model = fresh(0)
    with microblob.Workflow(name="training", store=microblob_store) as wf:
        oid = microblob_store.save_or_update_torch_model(model, task_id="t", save_data_in_collection=True)
    record = microblob_store.get_ml_model(oid)
    assert record.workflow_id == wf.workflow_id and record.storage == "inline"
    other = fresh(1)
    meta = microblob_store.load_torch_model(other, oid)
    assert meta["workflow_id"] == wf.workflow_id
    assert torch.equal(outputs(other), outputs(model))


def test_tied_weights_are_stored_once_and_come_back_tied(microblob_store: microblob.Store) -> None:
    class TiedLM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(50, 8)
            self.head = nn.Linear(8, 50, bias=False)
            self.head.weight = self.embed.weight  # weight tying

        def forward(self, tokens: Any) -> Any:
            return self.head(self.embed(tokens))

    torch.manual_seed(0)
    model = TiedLM()
    tokens = torch.randint(0, 50, (4, 7))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(3):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(tokens).reshape(-1, 50), tokens.reshape(-1)).backward()
        optimizer.step()
    oid = mbtorch.save_or_update_torch_model(model, store=microblob_store)
    data = microblob_store.get_blob_object(oid).data
    header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])
    assert sorted(k for k in header if k != "__metadata__") == ["embed.weight"]  # one copy of the bytes
    assert json.loads(header["__metadata__"]["microblob.aliases"]) == {"head.weight": "embed.weight"}
    assert len(data) < 50 * 8 * 4 * 1.5

    torch.manual_seed(1)
    other = TiedLM()
    mbtorch.load_torch_model(other, oid, store=microblob_store)
    assert other.head.weight is other.embed.weight
    assert torch.equal(other.embed.weight, model.embed.weight)
    assert torch.equal(other(tokens), model(tokens))


def test_views_non_contiguous_and_overlapping_tensors_round_trip(microblob_store: microblob.Store) -> None:
    class Views(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.randn(6, 5))
            self.register_buffer("transposed", torch.randn(5, 3).t())  # non-contiguous
            base = torch.arange(40, dtype=torch.float64).reshape(8, 5)
            self.register_buffer("rows", base[2:6])  # a contiguous view into a larger storage
            self.register_buffer("cols", base[:, 1:3])  # another view of the same storage, overlapping
            self.register_buffer("f16", torch.randn(3, 3).to(torch.float16))
            self.register_buffer("bf16", torch.randn(2, 2).to(torch.bfloat16))
            self.register_buffer("mask", torch.tensor([True, False, True]))
            self.register_buffer("empty", torch.zeros(0, 4))

    torch.manual_seed(0)
    model = Views()
    assert not model.transposed.is_contiguous()
    oid = mbtorch.save_or_update_torch_model(model, store=microblob_store)
    other = Views()
    for tensor in other.state_dict().values():
        if tensor.numel() and tensor.dtype != torch.bool:
            tensor.zero_()
    mbtorch.load_torch_model(other, oid, store=microblob_store)
    for name, value in model.state_dict().items():
        assert torch.equal(other.state_dict()[name], value), name
        assert other.state_dict()[name].dtype == value.dtype
    assert torch.equal(model.state_dict()["weight"], model.weight)  # saving did not touch the model


# --- mismatches leave the model unchanged --------------------------------------------------------------


def test_strict_key_mismatch_is_a_clear_typed_error(microblob_store: microblob.Store) -> None:
    oid = mbtorch.save_or_update_torch_model(fresh(0), store=microblob_store)

    class Renamed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.BatchNorm1d(16), nn.Linear(16, 1))
            self.extra = nn.Linear(1, 1)

    target = Renamed()
    before = params_snapshot(target)
    with pytest.raises(microblob.InvalidArgument, match=r"strict=True.*missing from the stored model: extra\.bias"):
        mbtorch.load_torch_model(target, oid, store=microblob_store)
    assert same_state(target, before)

    smaller = nn.Sequential(nn.Linear(4, 16))
    with pytest.raises(microblob.InvalidArgument, match=r"not in this model: layers\.0\.bias"):
        mbtorch.load_torch_model(smaller, oid, store=microblob_store)

    # strict=False loads what matches and leaves the rest
    mbtorch.load_torch_model(target, oid, store=microblob_store, strict=False)
    assert torch.equal(target.layers[0].weight, microblob_store_model_weight(microblob_store, oid))
    assert torch.equal(target.extra.weight, before["extra.weight"])


def microblob_store_model_weight(store: microblob.Store, oid: str) -> Any:
    return mbtorch.state_dict_from_bytes(store.get_blob_object(oid).data)["layers.0.weight"]


def test_shape_mismatch_is_a_clear_typed_error(microblob_store: microblob.Store) -> None:
    oid = mbtorch.save_or_update_torch_model(fresh(0, hidden=16), store=microblob_store)
    target = fresh(1, hidden=8)
    before = params_snapshot(target)
    for strict in (True, False):
        with pytest.raises(microblob.InvalidArgument, match=r"shape mismatch for layers\.0\.bias: stored \(16,\), "
                                                            r"model \(8,\)"):
            mbtorch.load_torch_model(target, oid, store=microblob_store, strict=strict)
        assert same_state(target, before)


def test_unstorable_state_is_refused_before_anything_is_written(microblob_store: microblob.Store) -> None:
    class WithExtraState(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(2, 2)

        def get_extra_state(self) -> Any:
            return {"calibration": [1, 2, 3]}

        def set_extra_state(self, state: Any) -> None:
            pass

    with pytest.raises(microblob.InvalidArgument, match="only tensors can be stored without pickle"):
        mbtorch.save_or_update_torch_model(WithExtraState(), store=microblob_store)
    assert microblob_store.count_objects() == 0
    with pytest.raises(microblob.InvalidArgument, match="torch.nn.Module"):
        mbtorch.save_or_update_torch_model({"w": torch.zeros(1)}, store=microblob_store)
    with pytest.raises(microblob.InvalidArgument, match="Store"):
        mbtorch.save_or_update_torch_model(fresh(0), store="memory://")
    with pytest.raises(microblob.InvalidArgument, match="ml_model"):
        microblob_store.save_or_update_torch_model(fresh(0), type="image")


# --- no pickle, ever -----------------------------------------------------------------------------------


class Exploit:
    """Unpickling this writes a file: the proof that a payload would run code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (Path.write_text, (self.marker, "code ran"))


@pytest.fixture
def no_unpickling(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every way to unpickle, made to record and fail while the test runs."""
    calls: list[str] = []

    def forbidden(name: str) -> Any:
        def fail(*args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            raise AssertionError(f"{name} was called")

        return fail

    monkeypatch.setattr(pickle, "loads", forbidden("pickle.loads"))
    monkeypatch.setattr(pickle, "load", forbidden("pickle.load"))
    monkeypatch.setattr(pickle, "Unpickler", forbidden("pickle.Unpickler"))
    monkeypatch.setattr(torch, "load", forbidden("torch.load"))
    return calls


def payloads(marker: Path) -> dict[str, bytes]:
    """Payloads that run code when unpickled: a bare pickle and a torch.save checkpoint."""
    buffer = io.BytesIO()
    torch.save({"layers.0.weight": torch.zeros(16, 4), "exploit": Exploit(marker)}, buffer)
    return {"pickle": pickle.dumps(Exploit(marker)), "torch.save": buffer.getvalue()}


def test_the_exploit_payload_is_live(tmp_path: Path) -> None:
    """Guard for the tests below: unpickling these payloads does run code."""
    marker = tmp_path / "pwned"
    pickle.loads(payloads(marker)["pickle"])
    assert marker.read_text() == "code ran"
    marker.unlink()
    torch.load(io.BytesIO(payloads(marker)["torch.save"]), weights_only=False)
    assert marker.exists()


@pytest.fixture
def trained() -> MLP:
    """A model trained before `no_unpickling` takes effect (the optimizer's lazy imports subclass
    pickle.Unpickler, which the fixture replaces)."""
    model = fresh(0)
    train(model, steps=5)
    return model


def test_saved_models_load_with_every_unpickler_forbidden(any_store: microblob.Store, trained: MLP,
                                                         no_unpickling: list[str]) -> None:
    """The positive half of "never through pickle": with `pickle.load(s)`, `pickle.Unpickler` and
    `torch.load` all made to fail, a trained model (BatchNorm buffers too) saves and reloads exactly."""
    model = trained
    oid = mbtorch.save_or_update_torch_model(model, store=any_store)
    other = fresh(1)
    assert not same_state(other, params_snapshot(model))
    mbtorch.load_torch_model(other, oid, store=any_store)
    assert same_state(other, params_snapshot(model))
    assert torch.equal(outputs(other), outputs(model))
    assert no_unpickling == []


@pytest.mark.parametrize("kind", ["pickle", "torch.save"])
def test_a_pickle_saved_as_a_model_is_refused_unread(
    microblob_store: microblob.Store, tmp_path: Path, no_unpickling: list[str], kind: str
) -> None:
    marker = tmp_path / "pwned"
    oid = microblob_store.save_or_update_ml_model(payloads(marker)[kind])
    target = fresh(0)
    before = params_snapshot(target)
    with pytest.raises(microblob.InvalidArgument, match="not a torch model saved by microblob"):
        mbtorch.load_torch_model(target, oid, store=microblob_store)
    assert not marker.exists() and no_unpickling == []
    assert same_state(target, before)


@pytest.mark.parametrize("kind", ["pickle", "torch.save"])
def test_a_pickle_forged_as_safetensors_is_refused_unpickled(
    microblob_store: microblob.Store, tmp_path: Path, no_unpickling: list[str], kind: str
) -> None:
    """The content type is no proof: the bytes are parsed as safetensors or not at all."""
    marker = tmp_path / "pwned"
    forged = microblob_store.save_or_update_ml_model(payloads(marker)[kind], content_type=mbtorch.CONTENT_TYPE)
    # the realistic route: a real torch model whose next version is written by other code (the content
    # type is inherited from the previous version)
    real = mbtorch.save_or_update_torch_model(fresh(0), store=microblob_store, control_version=True)
    microblob_store.save_or_update_object(payloads(marker)[kind], object_id=real, control_version=True)
    assert microblob_store.get_blob_object(real).content_type == mbtorch.CONTENT_TYPE
    target = fresh(1)
    before = params_snapshot(target)
    for oid in (forged, real):
        with pytest.raises(microblob.IntegrityError, match="not a (valid )?safetensors payload"):
            mbtorch.load_torch_model(target, oid, store=microblob_store)
    assert not marker.exists() and no_unpickling == []
    assert same_state(target, before)
    mbtorch.load_torch_model(target, real, version=0, store=microblob_store)  # the real version still loads


@pytest.mark.parametrize("inline", [False, True])
def test_tampered_bytes_are_refused(microblob_store: microblob.Store, inline: bool) -> None:
    model = fresh(0)
    oid = mbtorch.save_or_update_torch_model(model, store=microblob_store, save_data_in_collection=inline)
    record = microblob_store.get_blob_object(oid)
    data = bytearray(record.data)
    data[-3] ^= 0xFF  # one flipped bit pattern in a weight: still parses, but is not what was saved
    if inline:
        microblob_store.backend.collection("objects").update_one({"_id": oid}, {"$set": {"data": bytes(data)}})
    else:
        microblob_store.backend.chunks.put(record.file_id, 0, bytes(data))
    target = fresh(1)
    before = params_snapshot(target)
    with pytest.raises(microblob.IntegrityError, match="sha256"):
        mbtorch.load_torch_model(target, oid, store=microblob_store)
    assert same_state(target, before)


@pytest.mark.parametrize(
    "garbage",
    [b"", b"short", (10**12).to_bytes(8, "little") + b"{}", (2).to_bytes(8, "little") + b"[]",
     (30).to_bytes(8, "little") + b'{"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}'[:30],
     (63).to_bytes(8, "little") + b'{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,1600]}}      ' + b"\0" * 16],
)
def test_malformed_safetensors_is_an_integrity_error(garbage: bytes) -> None:
    with pytest.raises(microblob.IntegrityError):
        mbtorch.state_dict_from_bytes(garbage)


def test_malformed_aliases_are_an_integrity_error() -> None:
    import safetensors.torch

    data = safetensors.torch.save({"w": torch.zeros(2)}, metadata={"microblob.aliases": '{"v": "missing"}'})
    with pytest.raises(microblob.IntegrityError, match="aliases"):
        mbtorch.state_dict_from_bytes(data)
    data = safetensors.torch.save({"w": torch.zeros(2)}, metadata={"microblob.aliases": '{"w": "w"}'})
    with pytest.raises(microblob.IntegrityError, match="aliases"):
        mbtorch.state_dict_from_bytes(data)
