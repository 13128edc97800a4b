"""Type hints → JSON Schema, and JSON input → Python values checked against the same hints.

One walk over the hint serves both jobs, so what the Thing Description promises is exactly what the
server accepts. Supported: int, float, str, bool, None, list[...], dict[str, ...], Optional/Union,
Literal, Blob subclasses and dataclasses (nested freely), and Any.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, Union, get_args, get_origin

from ._exceptions import InvalidInput
from .blob import Blob

__all__ = ["BlobResolver", "coerce", "schema_for", "to_jsonable"]

BlobResolver = Callable[[str, type[Blob], str], Blob]
"""Turns a Blob reference (a URL) into a Blob of this server, or raises InvalidInput naming the field."""

_NONE = type(None)


def _is_union(origin: Any) -> bool:
    return origin is Union or origin is types.UnionType


def _is_blob(hint: Any) -> bool:
    return isinstance(hint, type) and issubclass(hint, Blob)


def blob_schema(cls: type[Blob]) -> dict[str, Any]:
    """The JSON form of a Blob link (what servers send and accept)."""
    string = {"type": "string"}
    schema: dict[str, Any] = {
        "type": "object",
        "title": cls.__name__,
        "description": f"A link to binary data ({cls.content_type}); download it with GET on url/href.",
        "properties": {
            "url": {"type": "string", "format": "uri-reference"},
            "href": {"type": "string", "format": "uri-reference"},
            "content_type": dict(string),
            "media_type": dict(string),
            "rel": dict(string),
            "size": {"type": "integer", "minimum": 0},
            "sha256": dict(string),
            "expires_at": {"type": ["string", "null"], "format": "date-time"},
        },
        "anyOf": [{"required": ["url"]}, {"required": ["href"]}],
        "contentMediaType": cls.content_type,
    }
    if "*" not in cls.content_type and cls.content_type != Blob.content_type:
        schema["properties"]["content_type"]["const"] = cls.content_type
    return schema


def schema_for(hint: Any) -> dict[str, Any]:
    """JSON Schema for a resolved type hint. Raises TypeError for hints it cannot describe."""
    if hint is Any or hint is object:
        return {}
    if hint is None or hint is _NONE:
        return {"type": "null"}
    origin, args = get_origin(hint), get_args(hint)
    if _is_union(origin):
        arms = [schema_for(a) for a in args]
        return {"anyOf": arms}
    if origin is Literal:
        schema: dict[str, Any] = {"enum": list(args)}
        kinds = {_json_type(a) for a in args}
        if len(kinds) == 1:
            schema["type"] = kinds.pop()
        return schema
    if origin in (list, Sequence, set, frozenset) or hint in (list, set, frozenset):
        out: dict[str, Any] = {"type": "array"}
        if args:
            out["items"] = schema_for(args[0])
        if origin in (set, frozenset):
            out["uniqueItems"] = True
        return out
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return {"type": "array", "items": schema_for(args[0])}
        items = [schema_for(a) for a in args]
        return {"type": "array", "prefixItems": items, "minItems": len(items), "maxItems": len(items)}
    if origin in (dict, Mapping) or hint is dict:
        out = {"type": "object"}
        if args:
            if args[0] is not str:
                raise TypeError(f"dict keys must be str in JSON, not {args[0]!r}")
            out["additionalProperties"] = schema_for(args[1])
        return out
    if hint is bool:
        return {"type": "boolean"}
    if hint is int:
        return {"type": "integer"}
    if hint is float:
        return {"type": "number"}
    if hint is str:
        return {"type": "string"}
    if _is_blob(hint):
        return blob_schema(hint)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return {"title": hint.__name__, "enum": [m.value for m in hint]}
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        hints = typing.get_type_hints(hint)
        props, required = {}, []
        for f in dataclasses.fields(hint):
            props[f.name] = schema_for(hints.get(f.name, Any))
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                required.append(f.name)
            elif f.default is not dataclasses.MISSING and _jsonable_default(f.default):
                props[f.name]["default"] = f.default
        out = {"type": "object", "title": hint.__name__, "properties": props, "additionalProperties": False}
        if required:
            out["required"] = required
        return out
    raise TypeError(f"cannot describe type hint {hint!r} in JSON Schema")


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    return "string"


def _jsonable_default(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, str)) or (
        isinstance(value, float) and math.isfinite(value)
    )


def _where(path: str) -> str:
    return path or "input"


def _type_name(value: Any) -> str:
    return {type(None): "null", bool: "boolean", int: "integer", float: "number", str: "string",
            list: "array", dict: "object"}.get(type(value), type(value).__name__)


def coerce(value: Any, hint: Any, path: str = "", resolve_blob: BlobResolver | None = None) -> Any:
    """Check a JSON value against a hint and build the Python value (dataclasses, Blobs, ...).

    Raises `InvalidInput` whose `field` names where it went wrong (``"config.gain"``, ``"frames[2]"``)."""
    if hint is Any or hint is object:
        return value
    if hint is None or hint is _NONE:
        if value is not None:
            raise InvalidInput(_where(path), f"expected null, got {_type_name(value)}")
        return None
    origin, args = get_origin(hint), get_args(hint)
    if _is_union(origin):
        if value is None and _NONE in args:
            return None
        errors = []
        for arm in args:
            if arm is _NONE:
                continue
            try:
                return coerce(value, arm, path, resolve_blob)
            except InvalidInput as e:
                errors.append(e)
        if len(errors) == 1:
            raise errors[0]
        raise InvalidInput(_where(path), "matches none of: " + "; ".join(str(e) for e in errors))
    if origin is Literal:
        for allowed in args:
            if value == allowed and type(value) is type(allowed):
                return value
        raise InvalidInput(_where(path), f"must be one of {list(args)!r}, got {value!r}")
    if hint is bool:
        if not isinstance(value, bool):
            raise InvalidInput(_where(path), f"expected boolean, got {_type_name(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise InvalidInput(_where(path), f"expected integer, got {_type_name(value)}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidInput(_where(path), f"expected number, got {_type_name(value)}")
        try:
            return float(value)
        except OverflowError:  # a JSON integer of 400 digits is valid JSON but no float: the input's fault
            raise InvalidInput(_where(path), f"{value} is out of range for a number") from None
    if hint is str:
        if not isinstance(value, str):
            raise InvalidInput(_where(path), f"expected string, got {_type_name(value)}")
        return value
    if origin in (list, Sequence, set, frozenset, tuple) or hint in (list, set, frozenset, tuple):
        if not isinstance(value, list):
            raise InvalidInput(_where(path), f"expected array, got {_type_name(value)}")
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise InvalidInput(_where(path), f"expected {len(args)} items, got {len(value)}")
            pairs = enumerate(zip(value, args, strict=True))
            return tuple(coerce(v, a, f"{path}[{i}]", resolve_blob) for i, (v, a) in pairs)
        item = args[0] if args else Any
        items = [coerce(v, item, f"{path}[{i}]", resolve_blob) for i, v in enumerate(value)]
        if origin in (set, frozenset) or hint in (set, frozenset):
            try:
                return (origin or hint)(items)
            except TypeError:  # unhashable items (arrays, objects) in a bare `set`: the input's fault
                raise InvalidInput(_where(path), "expected an array of numbers, strings or booleans") from None
        return tuple(items) if origin is tuple or hint is tuple else items
    if origin in (dict, Mapping) or hint is dict:
        if not isinstance(value, dict):
            raise InvalidInput(_where(path), f"expected object, got {_type_name(value)}")
        vhint = args[1] if args else Any
        return {k: coerce(v, vhint, f"{path}.{k}" if path else k, resolve_blob) for k, v in value.items()}
    if _is_blob(hint):
        return _coerce_blob(value, hint, path, resolve_blob)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        try:
            return hint(value)
        except ValueError:
            raise InvalidInput(_where(path), f"must be one of {[m.value for m in hint]!r}") from None
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        if not isinstance(value, dict):
            raise InvalidInput(_where(path), f"expected object, got {_type_name(value)}")
        return coerce_fields(value, _dataclass_params(hint), path, resolve_blob, hint)
    raise InvalidInput(_where(path), f"unsupported type {hint!r}")


def _dataclass_params(cls: type) -> list[tuple[str, Any, bool]]:
    hints = typing.get_type_hints(cls)
    return [
        (f.name, hints.get(f.name, Any), f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
        for f in dataclasses.fields(cls)
        if f.init
    ]


def coerce_fields(
    value: Mapping[str, Any],
    params: list[tuple[str, Any, bool]],
    path: str,
    resolve_blob: BlobResolver | None,
    build: Callable[..., Any] | None = None,
) -> Any:
    """Check an object's fields (name, hint, required) and build `build(**fields)`, or return the dict."""
    known = {name for name, _, _ in params}
    for key in value:
        if key not in known:
            raise InvalidInput(f"{path}.{key}" if path else key, "unexpected field")
    out = {}
    for name, hint, required in params:
        field = f"{path}.{name}" if path else name
        if name in value:
            out[name] = coerce(value[name], hint, field, resolve_blob)
        elif required:
            raise InvalidInput(field, "field required")
    return build(**out) if build is not None else out


def _coerce_blob(value: Any, cls: type[Blob], path: str, resolve_blob: BlobResolver | None) -> Blob:
    if isinstance(value, Blob):
        blob = value
    else:
        url = value if isinstance(value, str) else None
        if isinstance(value, dict):
            url = value.get("url") or value.get("href")
        if not isinstance(url, str) or not url:
            raise InvalidInput(_where(path), "expected a Blob link: an object with a 'url' (or 'href') string")
        if resolve_blob is None:
            raise InvalidInput(_where(path), "Blob links are not accepted here")
        blob = resolve_blob(url, cls, _where(path))
    generic = Blob.content_type
    if isinstance(blob, cls):
        return blob
    if cls.content_type == generic or blob.content_type == generic or _same_type(blob.content_type, cls.content_type):
        return blob.as_type(cls)
    raise InvalidInput(_where(path), f"expected {cls.content_type} data, got {blob.content_type}")


def _same_type(a: str, pattern: str) -> bool:
    from .blob import _matches

    return _matches(a, pattern)


def to_jsonable(value: Any, path: str = "output") -> Any:
    """An action's return value as a JSON-ready tree; Blobs stay Blob objects (links are made per
    request, since their URLs depend on the address the client used)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TypeError(f"{path}: {value!r} cannot be sent as JSON")
        return value
    if isinstance(value, Blob):
        return value
    if isinstance(value, enum.Enum):
        return to_jsonable(value.value, path)
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_jsonable(v, f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{path}: dict keys must be str, not {type(k).__name__}")
            out[k] = to_jsonable(v, f"{path}.{k}")
        return out
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name), f"{path}.{f.name}") for f in dataclasses.fields(value)}
    raise TypeError(f"{path}: a {type(value).__name__} cannot be sent as JSON")


def map_blobs(tree: Any, fn: Callable[[Any], Any]) -> Any:
    """A copy of the tree with every Blob (or placeholder) replaced by `fn(blob)`."""
    if isinstance(tree, dict):
        return {k: map_blobs(v, fn) for k, v in tree.items()}
    if isinstance(tree, list):
        return [map_blobs(v, fn) for v in tree]
    if tree is None or isinstance(tree, (bool, int, float, str)):
        return tree
    return fn(tree)
