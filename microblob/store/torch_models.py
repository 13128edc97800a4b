"""PyTorch models as versioned objects, stored without pickle (docs/ARCHITECTURE.md, "Objects and versions").

    from microblob.torch import save_or_update_torch_model, load_torch_model

    oid = save_or_update_torch_model(model, store=store, task_id="train-1",
                                     custom_metadata={"loss": 0.12}, control_version=True)
    meta = load_torch_model(fresh_model, oid, store=store)            # latest; or version=N

A model's `state_dict` is written in the safetensors format (a JSON header and raw tensor bytes) as an
object of `type="ml_model"` with content type `application/x-safetensors`. Loading parses those bytes with
safetensors' own parser and nothing else: no pickle, no `torch.load`, so a stored payload can never run
code. Anything that is not a safetensors payload is refused with a typed error before the model is touched.

Tied (shared) weights are stored once and restored under every name; non-contiguous tensors and views
are packed; keys and shapes are checked against the model before any weight is copied, so a mismatch
leaves the model as it was.

Needs the `torch` extra (`pip install 'microblob[torch]'`: torch, safetensors, numpy). Importing
`microblob` never imports torch; only importing this module does.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .._exceptions import IntegrityError, InvalidArgument

try:
    import safetensors
    import safetensors.torch
    import torch
except ImportError as _exc:  # pragma: no cover - exercised in a subprocess without torch
    raise ImportError(
        "microblob.torch needs PyTorch, safetensors and numpy: pip install 'microblob[torch]' "
        f"(import failed: {_exc})"
    ) from _exc

if TYPE_CHECKING:  # pragma: no cover
    from .core import Store

__all__ = ["CONTENT_TYPE", "FORMAT", "load_torch_model", "save_or_update_torch_model", "state_dict_from_bytes",
           "state_dict_to_bytes"]

CONTENT_TYPE = "application/x-safetensors"
FORMAT = "safetensors"
_ALIASES_KEY = "microblob.aliases"  # {"name": "stored name"} for tied weights, in the safetensors header
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on the JSON header


def save_or_update_torch_model(
    model: torch.nn.Module,
    object_id: str | None = None,
    *,
    store: Store,
    workflow_id: str | None = None,
    task_id: str | None = None,
    custom_metadata: Mapping[str, Any] | None = None,
    save_data_in_collection: bool = False,
    control_version: bool = False,
    tags: list[str] | None = None,
    type: str | None = None,
    object_type: str | None = None,
) -> str:
    """Save `model.state_dict()` as an `ml_model` object (a new one, or the next version of `object_id`).

    Arguments are those of `Store.save_or_update_object`, except that `type` (or `object_type`) can only be
    `"ml_model"` and the content type is always safetensors. Returns the object id."""
    cls = model.__class__  # (`type` is an argument here)
    if not isinstance(model, torch.nn.Module):
        raise InvalidArgument(f"model must be a torch.nn.Module, not {cls.__name__}")
    _check_store(store)
    metadata = {"microblob.model_class": f"{cls.__module__}.{cls.__qualname__}",
                "microblob.torch_version": str(torch.__version__)}
    data = state_dict_to_bytes(model.state_dict(), metadata=metadata)
    return store.save_or_update_ml_model(
        data,
        object_id=object_id,
        workflow_id=workflow_id,
        task_id=task_id,
        custom_metadata=custom_metadata,
        save_data_in_collection=save_data_in_collection,
        control_version=control_version,
        content_type=CONTENT_TYPE,
        tags=tags,
        **{k: v for k, v in (("type", type), ("object_type", object_type)) if v is not None},
    )


def load_torch_model(
    model: torch.nn.Module,
    object_id: str,
    version: int | None = None,
    *,
    store: Store,
    strict: bool = True,
) -> dict[str, Any]:
    """Load the weights of `object_id` (latest, or exactly `version`) into `model`; return the record's
    metadata as a dict (`object_id, version, custom_metadata, ...`).

    Raises `ObjectNotFound`/`VersionNotFound`; `InvalidArgument` if the object is not a safetensors model or
    its keys (with `strict=True`) or shapes do not match `model`; `IntegrityError` if its bytes are damaged
    or not safetensors at all. All of these are raised before any weight is copied into `model`."""
    if not isinstance(model, torch.nn.Module):
        raise InvalidArgument(f"model must be a torch.nn.Module, not {type(model).__name__}")
    _check_store(store)
    obj = store.get_blob_object(object_id, version)
    where = f"object {obj.object_id!r} v{obj.version}"
    content_type = (obj.content_type or "").split(";")[0].strip().lower()
    if content_type != CONTENT_TYPE:
        raise InvalidArgument(
            f"{where} is not a torch model saved by microblob (content type {obj.content_type!r}, "
            f"expected {CONTENT_TYPE!r}); refusing to load it"
        )
    data = obj.data
    if obj.sha256 is not None and hashlib.sha256(data).hexdigest() != obj.sha256:
        raise IntegrityError(f"{where}: stored bytes do not match their sha256")
    state = state_dict_from_bytes(data, where=where)
    _check_matches(model, state, strict=strict, where=where)
    try:
        model.load_state_dict(state, strict=strict)
    except RuntimeError as exc:  # what _check_matches cannot foresee, e.g. a custom _load_from_state_dict
        raise InvalidArgument(f"{where} cannot be loaded into {type(model).__name__}: {exc}") from None
    return obj.to_dict()


def state_dict_to_bytes(state_dict: Mapping[str, Any], metadata: Mapping[str, str] | None = None) -> bytes:
    """A flat `{name: tensor}` mapping as safetensors bytes. Tensors that are the same view of the same
    memory (tied weights) are written once and recorded as aliases; other tensors that share memory are
    copied apart; non-contiguous ones are packed; everything is moved to the CPU."""
    if not isinstance(state_dict, Mapping):
        raise InvalidArgument(f"state_dict must be a mapping, not {type(state_dict).__name__}")
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    identical: dict[tuple[Any, ...], str] = {}
    by_storage: dict[tuple[Any, ...], list[str]] = {}
    for name, value in state_dict.items():
        if not isinstance(name, str):
            raise InvalidArgument(f"state_dict keys must be str, not {type(name).__name__}")
        if not isinstance(value, torch.Tensor):
            raise InvalidArgument(
                f"state_dict[{name!r}] is a {type(value).__name__}, not a tensor: only tensors can be stored "
                "without pickle (extra state from get_extra_state() is not supported)"
            )
        if value.layout != torch.strided:
            raise InvalidArgument(f"state_dict[{name!r}] is a {value.layout} tensor; only dense tensors can be stored")
        if value.device.type == "meta":
            raise InvalidArgument(f"state_dict[{name!r}] is on the meta device: it has no data to store")
        tensor = value.detach()
        if tensor.numel() == 0:
            tensors[name] = tensor.cpu().contiguous()
            continue
        view = (tensor.device, tensor.data_ptr(), tensor.dtype, tuple(tensor.shape), tensor.stride())
        if view in identical:  # a tied weight: the very same tensor under a second name
            aliases[name] = identical[view]
            continue
        identical[view] = name
        tensors[name] = tensor
        by_storage.setdefault((tensor.device, tensor.untyped_storage().data_ptr()), []).append(name)
    for names in by_storage.values():
        for i, name in enumerate(names):
            tensor = tensors[name]
            if i > 0:  # another view of memory already stored: give it memory of its own
                tensor = tensor.clone(memory_format=torch.contiguous_format)
            tensors[name] = tensor.cpu().contiguous()
    header = {"format": "pt", **{str(k): str(v) for k, v in (metadata or {}).items()}}
    if aliases:
        header[_ALIASES_KEY] = json.dumps(aliases, sort_keys=True)
    try:
        return safetensors.torch.save(tensors, metadata=header)
    except (ValueError, RuntimeError, TypeError, KeyError) as exc:  # e.g. a dtype safetensors cannot hold
        raise InvalidArgument(f"cannot store this state_dict as safetensors: {exc}") from None


def state_dict_from_bytes(data: bytes | bytearray | memoryview, *, where: str = "payload") -> dict[str, torch.Tensor]:
    """Parse safetensors bytes into `{name: tensor}` (CPU), restoring tied-weight aliases. Never unpickles:
    anything that is not a well-formed safetensors payload raises `IntegrityError`."""
    data = bytes(data)
    if len(data) < 8:
        raise IntegrityError(f"{where} is not a safetensors payload ({len(data)} bytes)")
    header_size = int.from_bytes(data[:8], "little")
    if header_size > min(_MAX_HEADER, len(data) - 8) or data[8:9] != b"{":
        raise IntegrityError(f"{where} is not a safetensors payload (no JSON header at the start)")
    try:
        header = json.loads(data[8:8 + header_size])
        state = safetensors.torch.load(data)
    except Exception as exc:  # safetensors raises its own SafetensorError, json a ValueError
        raise IntegrityError(f"{where} is not a valid safetensors payload: {exc}") from None
    metadata = (header.get("__metadata__") or {}) if isinstance(header, dict) else {}
    aliases_text = metadata.get(_ALIASES_KEY) if isinstance(metadata, dict) else None
    if aliases_text:
        try:
            aliases = json.loads(aliases_text)
            if not isinstance(aliases, dict):
                raise ValueError("not an object")
            for name, target in aliases.items():
                if name in state:
                    raise ValueError(f"alias {name!r} is also a stored tensor")
                state[name] = state[target]
        except (ValueError, KeyError, TypeError) as exc:
            raise IntegrityError(f"{where}: malformed tied-weight aliases in the header: {exc}") from None
    return state


def _check_matches(model: torch.nn.Module, state: Mapping[str, torch.Tensor], *, strict: bool, where: str) -> None:
    """Refuse, before anything is copied, a state that `load_state_dict` would reject halfway through."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if strict and (missing or unexpected):
        parts = []
        if missing:
            parts.append(f"missing from the stored model: {_names(missing)}")
        if unexpected:
            parts.append(f"not in this model: {_names(unexpected)}")
        raise InvalidArgument(f"{where} does not match {type(model).__name__} (strict=True): {'; '.join(parts)}")
    mismatched = [
        f"{name}: stored {tuple(state[name].shape)}, model {tuple(expected[name].shape)}"
        for name in sorted(set(expected) & set(state))
        if isinstance(expected[name], torch.Tensor) and tuple(state[name].shape) != tuple(expected[name].shape)
    ]
    if mismatched:
        raise InvalidArgument(f"{where} does not match {type(model).__name__}: shape mismatch for {_names(mismatched)}")


def _names(items: list[str], limit: int = 10) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _check_store(store: Any) -> None:
    if not hasattr(store, "save_or_update_ml_model") or not hasattr(store, "get_blob_object"):
        raise InvalidArgument(f"store must be a microblob Store, not {type(store).__name__}")
