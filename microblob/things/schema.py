"""Type hints → JSON Schema, and JSON input → Python values checked against the same hints.

pydantic v2 is the engine for both, so what the Thing Description promises is exactly what the server
accepts: every hint pydantic knows (int, float, str, bool, None, list/tuple/set/dict, Optional/Union,
Literal, enums, datetimes, dataclasses, TypedDicts, BaseModels, ``Annotated[int, Field(ge=0)]`` with its
constraints and description) plus Blob subclasses (`microblob.blob.Blob.__get_pydantic_core_schema__`).
The schemas are post-processed into Thing Description form: `$defs` inlined, one string per ``type``.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import decimal
import enum
import json
import math
import pathlib
import secrets
import uuid
from collections.abc import Callable, Mapping
from typing import Annotated, Any, get_args, get_origin

import pydantic
from pydantic.errors import PydanticInvalidForJsonSchema
from pydantic.fields import FieldInfo
from pydantic.json_schema import GenerateJsonSchema
from pydantic_core import PydanticUndefined, to_jsonable_python

from .._exceptions import InvalidInput
from ..blob import Blob

__all__ = [
    "BlobResolver",
    "Checker",
    "coerce",
    "map_blobs",
    "schema_for",
    "to_jsonable",
]

BlobResolver = Callable[[str, type[Blob], str], Blob]
"""Turns a Blob reference (a URL) into a Blob of this server, or raises InvalidInput."""

_NONE = type(None)
_FORBID = pydantic.ConfigDict(extra="forbid", arbitrary_types_allowed=False)
_MAX_ERRORS = 5


# -- JSON Schema in Thing Description form ------------------------------------------------------------


class _TDSchema(GenerateJsonSchema):
    """pydantic's generator without the titles it makes up for every field ("Gain" for `gain`)."""

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False


def _inline(node: Any, defs: Mapping[str, Any], seen: tuple[str, ...] = ()) -> Any:
    """Replace every ``$ref`` into `defs` by the definition: TD consumers do not resolve references."""
    if isinstance(node, list):
        return [_inline(v, defs, seen) for v in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        name = ref[len("#/$defs/") :]
        if name in seen:
            raise TypeError(f"the recursive type {name!r} cannot be described in a Thing Description")
        target = dict(_inline(defs[name], defs, (*seen, name)))
        target.update({k: _inline(v, defs, seen) for k, v in node.items() if k != "$ref"})
        return target
    out = {}
    for key, value in node.items():
        if key == "type" and isinstance(value, list):  # a TD "type" is one string
            arms = [{"type": t} for t in value]
            out.setdefault("oneOf", arms)
            continue
        out[key] = _inline(value, defs, seen)
    return out


def _closed_objects(node: Any) -> None:
    """Objects with named fields take no others (nested plain dataclasses get ``extra="forbid"`` from
    the enclosing model, which pydantic's schema does not show); say so where nothing else is said."""
    if isinstance(node, list):
        for v in node:
            _closed_objects(v)
    elif isinstance(node, dict):
        if "properties" in node and node.get("type") == "object" and "contentMediaType" not in node:
            node.setdefault("additionalProperties", False)
        for v in node.values():
            _closed_objects(v)


def _refuse(hint: Any) -> None:
    """Hints pydantic accepts but that have no honest JSON form: bytes (send a Blob) and non-str dict keys."""
    if hint in (bytes, bytearray, memoryview):
        raise TypeError(f"{hint.__name__} cannot travel as JSON: use a Blob")
    origin, args = get_origin(hint), get_args(hint)
    if origin in (dict, Mapping) and args and args[0] is not str:
        raise TypeError(f"dict keys must be str in JSON, not {args[0]!r}")
    for arg in args:
        if not isinstance(arg, (str, int, float, bool, type(None), enum.Enum)) and arg is not Ellipsis:
            _refuse(arg)


def _field_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _message(err: Mapping[str, Any]) -> str:
    msg = str(err.get("msg", "invalid"))
    if err.get("type") == "extra_forbidden":
        return "unexpected field"
    if err.get("type") == "missing":
        return "field required"
    if err.get("type") == "blob_link" and msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    ctx = err.get("ctx") or {}
    shown = {k: v for k, v in ctx.items() if k in _CONSTRAINTS}
    if shown:
        msg += " (" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"
    return msg


_CONSTRAINTS = frozenset(
    {"gt", "ge", "lt", "le", "multiple_of", "min_length", "max_length", "pattern", "max_digits", "decimal_places"}
)


def invalid_input(error: pydantic.ValidationError, prefix: str, drop: int = 0) -> InvalidInput:
    """A pydantic error as `InvalidInput`: `field` names the first failing place (``"config.gain"``),
    the message says what every failing place needs (``"steps: ... greater than or equal to 0 (ge=0)"``)."""
    parts: list[str] = []
    first = ""
    for i, err in enumerate(error.errors(include_url=False)):
        loc = tuple(err.get("loc", ()))[drop:]
        where = _field_path(((prefix,) if prefix else ()) + loc) or "input"
        if i == 0:
            first = where
        if i < _MAX_ERRORS:
            parts.append(f"{where}: {_message(err)}")
    count = error.error_count()
    if count > _MAX_ERRORS:
        parts.append(f"and {count - _MAX_ERRORS} more")
    exc = InvalidInput(first, "; ".join(parts))
    exc.args = ("; ".join(parts),)  # each part already names its field
    return exc


class Checker:
    """Schema and validation of a JSON object of named values (an action's arguments; one value).

    One pydantic model per use, with the JSON names as aliases (so a parameter may be called `json` or
    `_raw`) and ``extra="forbid"``, which pydantic also applies to the plain dataclasses nested inside."""

    def __init__(
        self, fields: list[tuple[str, Any, bool, Any]], *, extra_allowed: bool = False, name: str = "input",
        extra_hint: Any = Any,
    ) -> None:
        """`extra_allowed`: further named values are taken (an action's ``**kwargs``), each checked against
        `extra_hint` (the annotation of ``**kwargs: int``; `Any` takes any JSON value)."""
        self.names = [f[0] for f in fields]
        # The model's own field names: pydantic drops an input key equal to one of them (neither a value nor
        # an extra one), so a client sending {"f1": 40} had it ignored even with extra="forbid", and lost a
        # **kwargs value. A random suffix makes them names no client can know.
        self._fields = [f"f{i}_{secrets.token_hex(8)}" for i in range(len(fields))]
        spec: dict[str, Any] = {}
        for i, (key, hint, required, default) in enumerate(fields):
            _refuse(hint)
            if isinstance(default, FieldInfo):  # `steps: int = Field(1, ge=0)`
                hint, default = Annotated[hint, default], default.default
                required = required or default is PydanticUndefined
            if required:
                spec[self._fields[i]] = (hint, pydantic.Field(alias=key))
            else:
                spec[self._fields[i]] = (hint, pydantic.Field(default=default, alias=key))
        # allow_inf_nan=False: JSON has no NaN or Infinity, and a 400-digit integer must not become inf.
        config = pydantic.ConfigDict(extra="allow" if extra_allowed else "forbid", allow_inf_nan=False)
        try:
            if extra_allowed and extra_hint is not Any:
                _refuse(extra_hint)
                # pydantic checks each extra value against the annotation of `__pydantic_extra__`
                base = type(f"{name}_base", (pydantic.BaseModel,), {
                    "__annotations__": {"__pydantic_extra__": dict[str, extra_hint]},  # type: ignore[valid-type]
                    "model_config": config, "__module__": __name__,
                })
                self.model: type[pydantic.BaseModel] = pydantic.create_model(name, __base__=base, **spec)
            else:
                self.model = pydantic.create_model(name, __config__=config, **spec)
        except (pydantic.PydanticSchemaGenerationError, pydantic.PydanticUserError) as e:
            raise TypeError(str(e).split("\n", 1)[0]) from None

    def schema(self) -> dict[str, Any]:
        """The object's JSON Schema, in Thing Description form."""
        try:
            raw = self.model.model_json_schema(by_alias=True, schema_generator=_TDSchema)
        except PydanticInvalidForJsonSchema as e:
            raise TypeError(str(e).split("\n", 1)[0]) from None
        defs = raw.pop("$defs", {})
        raw.pop("title", None)
        out = _inline(raw, defs)
        _closed_objects(out)
        for prop in out.get("properties", {}).values():
            if "default" in prop and not _jsonable_default(prop["default"]):
                del prop["default"]
        return out

    def validate_json_value(self, body: Mapping[str, Any], prefix: str = "", drop: int = 0,
                            resolve_blob: BlobResolver | None = None) -> pydantic.BaseModel:
        try:
            text = json.dumps(body, allow_nan=False)
        except (TypeError, ValueError):  # not JSON (a Python caller): pydantic's lax Python mode then
            return self._validate_python(body, prefix, drop, resolve_blob, strict=True)
        try:
            return self.model.model_validate_json(text, strict=True, context={"resolve_blob": resolve_blob})
        except pydantic.ValidationError as e:
            raise invalid_input(e, prefix, drop) from None

    def _validate_python(self, body: Mapping[str, Any], prefix: str, drop: int,
                         resolve_blob: BlobResolver | None, strict: bool) -> pydantic.BaseModel:
        try:
            return self.model.model_validate(body, strict=strict, context={"resolve_blob": resolve_blob})
        except pydantic.ValidationError as e:
            raise invalid_input(e, prefix, drop) from None

    def arguments(self, body: Any, resolve_blob: BlobResolver | None = None) -> dict[str, Any]:
        """Validate a JSON object of arguments into keyword arguments (defaults filled in); raises
        `InvalidInput` naming the field, and nothing is called."""
        if not isinstance(body, Mapping):
            raise InvalidInput("input", "expected a JSON object of named arguments")
        model = self.validate_json_value(body, resolve_blob=resolve_blob)
        out = {key: getattr(model, field) for key, field in zip(self.names, self._fields, strict=True)}
        out.update(model.model_extra or {})
        return out

    def value(self, value: Any, path: str, resolve_blob: BlobResolver | None = None) -> Any:
        """Validate one JSON value (this checker has one field)."""
        model = self.validate_json_value({self.names[0]: value}, path, 1, resolve_blob)
        return getattr(model, self._fields[0])

    def output(self, value: Any, path: str = "output") -> Any:
        """Check a Python value an action returned (lax: 3 for a float is fine, 4.2 for an int is not)."""
        try:
            model = self.model.model_validate({self.names[0]: value})
        except pydantic.ValidationError as e:
            raise invalid_input(e, path, 1) from None
        return getattr(model, self._fields[0])


_single: dict[Any, Checker] = {}


def single(hint: Any) -> Checker:
    """The (cached) checker of one value of type `hint`."""
    try:
        found = _single.get(hint)
    except TypeError:  # an unhashable hint (Annotated with an unhashable marker): not cached
        return Checker([("value", hint, True, None)], name="value")
    if found is None:
        found = _single[hint] = Checker([("value", hint, True, None)], name="value")
    return found


def schema_for(hint: Any) -> dict[str, Any]:
    """JSON Schema (TD form) for a type hint. Raises TypeError for hints it cannot describe."""
    return single(hint).schema()["properties"]["value"]


def coerce(value: Any, hint: Any, path: str = "", resolve_blob: BlobResolver | None = None) -> Any:
    """Check a JSON value against a hint and build the Python value (dataclasses, models, Blobs, ...).

    Raises `InvalidInput` whose `field` names where it went wrong (``"config.gain"``, ``"frames[2]"``)."""
    return single(hint).value(value, path, resolve_blob)


def _jsonable_default(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, str)) or (
        isinstance(value, float) and math.isfinite(value)
    )


def to_jsonable(value: Any, path: str = "output") -> Any:
    """A value as a JSON-ready tree; Blobs stay Blob objects (links are made per request, since their
    URLs depend on the address the client used). Leaves pydantic can serialise (datetimes, UUIDs,
    Decimals, paths, ...) take its JSON form."""
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
    if isinstance(value, pydantic.BaseModel):
        fields = type(value).model_fields
        tree = {
            (f.serialization_alias or f.alias or name): to_jsonable(getattr(value, name), f"{path}.{name}")
            for name, f in fields.items()
        }
        for k, v in (value.model_extra or {}).items():
            tree[k] = to_jsonable(v, f"{path}.{k}")
        return tree
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name), f"{path}.{f.name}") for f in dataclasses.fields(value)}
    if isinstance(value, (_dt.date, _dt.time, _dt.timedelta, uuid.UUID, decimal.Decimal, pathlib.PurePath)):
        return to_jsonable_python(value)
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
