"""Things: Python classes whose `@thing_action` methods and `@thing_property` attributes are served over HTTP.

A Thing is plain Python first: calling an action runs it directly (a Blob passed between actions is not
copied). The decorators only record what the server needs: the type hints become the JSON Schema of the
Thing Description and the validation of input.
"""

from __future__ import annotations

import contextvars
import inspect
import threading
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, overload

from ._exceptions import InvalidArgument, InvocationCancelled
from ._schema import BlobResolver, _jsonable_default, coerce_fields, schema_for

__all__ = [
    "ActionInfo",
    "Thing",
    "ThingProperty",
    "cancellable_sleep",
    "raise_if_cancelled",
    "thing_action",
    "thing_property",
]

F = TypeVar("F", bound=Callable[..., Any])
_cancel_event: contextvars.ContextVar[threading.Event | None] = contextvars.ContextVar(
    "microblob_cancel_event", default=None
)


def raise_if_cancelled() -> None:
    """Inside an action run by a server: raise `InvocationCancelled` if a client cancelled it.

    Long actions call this (or `cancellable_sleep`) between steps; outside a server it does nothing."""
    ev = _cancel_event.get()
    if ev is not None and ev.is_set():
        raise InvocationCancelled("the invocation was cancelled")


def cancellable_sleep(seconds: float) -> None:
    """Sleep, but wake and raise `InvocationCancelled` at once if the invocation is cancelled."""
    ev = _cancel_event.get()
    if ev is None:
        threading.Event().wait(seconds)
        return
    if ev.wait(seconds):
        raise InvocationCancelled("the invocation was cancelled")


@dataclass
class ActionInfo:
    """What the server knows about one action; schemas are built on first use, so hints may name
    classes defined after the Thing."""

    func: Callable[..., Any]
    name: str
    blob_ttl: float | None = None
    description: str = ""
    localns: dict[str, Any] | None = field(default=None, repr=False)
    _params: list[tuple[str, Any, bool, Any]] | None = field(default=None, repr=False)
    _output: Any = field(default=None, repr=False)

    def _resolve(self) -> None:
        if self._params is not None:
            return
        try:
            hints = typing.get_type_hints(self.func, localns=self.localns)
        except Exception as e:
            raise InvalidArgument(f"action {self.name!r}: cannot resolve type hints: {e}") from e
        params = []
        for i, p in enumerate(inspect.signature(self.func).parameters.values()):
            if i == 0:
                continue  # self
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                raise InvalidArgument(f"action {self.name!r}: *args/**kwargs cannot be described")
            required = p.default is p.empty
            params.append((p.name, hints.get(p.name, Any), required, p.default))
        self._output = hints.get("return", Any)
        self._params = params

    @property
    def params(self) -> list[tuple[str, Any, bool, Any]]:
        """(name, hint, required, default) for each parameter after `self`."""
        self._resolve()
        assert self._params is not None
        return self._params

    @property
    def output_hint(self) -> Any:
        self._resolve()
        return self._output

    def input_schema(self) -> dict[str, Any]:
        props: dict[str, Any] = {}
        required = []
        for name, hint, req, default in self.params:
            props[name] = schema_for(hint)
            if req:
                required.append(name)
            elif _jsonable_default(default):
                props[name]["default"] = default
        schema: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False}
        if required:
            schema["required"] = required
        return schema

    def output_schema(self) -> dict[str, Any]:
        return schema_for(self.output_hint)

    def coerce_input(self, body: Any, resolve_blob: BlobResolver | None = None) -> dict[str, Any]:
        """Validate a JSON object of arguments; raises `InvalidInput` naming the field."""
        from ._exceptions import InvalidInput

        if not isinstance(body, dict):
            raise InvalidInput("input", "expected a JSON object of named arguments")
        return coerce_fields(body, [(n, h, r) for n, h, r, _ in self.params], "", resolve_blob)


@overload
def thing_action(func: F) -> F: ...
@overload
def thing_action(*, blob_ttl: float | None = None, name: str | None = None) -> Callable[[F], F]: ...


def thing_action(
    func: F | None = None, *, blob_ttl: float | None = None, name: str | None = None
) -> F | Callable[[F], F]:
    """Mark a Thing method as an action. The method is returned unchanged (calling it runs it).

    Plain or `async def`: the server runs either in its thread pool, an async one on an event loop of its
    own there (it may await; cancelling the invocation cancels it at its next await).

    `blob_ttl` overrides the server's link lifetime (seconds) for Blobs this action returns."""

    def mark(f: F, localns: dict[str, Any] | None) -> F:
        doc = inspect.getdoc(f) or ""
        info = ActionInfo(f, name or f.__name__, blob_ttl, doc, localns)
        f.__microblob_action__ = info  # type: ignore[attr-defined]
        return f

    if func is not None:
        return mark(func, _enclosing_locals())
    localns = _enclosing_locals()
    return lambda f: mark(f, localns)


def _enclosing_locals() -> dict[str, Any] | None:
    """Names local to the function that defines the Thing class (two frames up: the class body, then
    its scope), so hints naming classes defined in that function resolve too."""
    frame = inspect.currentframe()
    try:
        scope = frame.f_back.f_back.f_back if frame and frame.f_back and frame.f_back.f_back else None
        if scope is None or scope.f_code.co_name == "<module>":
            return None
        return dict(scope.f_locals)
    finally:
        del frame


class ThingProperty(property):
    """A `property` that the server exposes (GET to read, PUT to write when it has a setter)."""

    def __init__(self, fget: Any = None, fset: Any = None, fdel: Any = None, doc: str | None = None) -> None:
        super().__init__(fget, fset, fdel, doc)
        self.description = doc if doc is not None else (inspect.getdoc(fget) or "" if fget else "")

    @property
    def hint(self) -> Any:
        hints = typing.get_type_hints(self.fget) if self.fget else {}
        return hints.get("return", Any)

    @property
    def read_only(self) -> bool:
        return self.fset is None

    def schema(self) -> dict[str, Any]:
        return schema_for(self.hint)

def thing_property(fget: Callable[[Any], Any]) -> ThingProperty:
    """Mark a getter as a Thing property; add a setter with `@name.setter` as with `property`."""
    return ThingProperty(fget)


class Thing:
    """Base class of things served by `ThingServer`: subclass it and decorate methods and getters.

    `title` (default: the class name) and the class docstring go into the Thing Description."""

    title: str | None = None

    @classmethod
    def thing_actions(cls) -> dict[str, ActionInfo]:
        """Every `@thing_action` of the class, by name (subclasses may override)."""
        out: dict[str, ActionInfo] = {}
        for klass in reversed(cls.__mro__):
            for attr in vars(klass).values():
                info = getattr(attr, "__microblob_action__", None)
                if isinstance(info, ActionInfo):
                    out[info.name] = info
        return out

    @classmethod
    def thing_properties(cls) -> dict[str, ThingProperty]:
        """Every `@thing_property` of the class, by attribute name."""
        out: dict[str, ThingProperty] = {}
        for klass in reversed(cls.__mro__):
            for name, attr in vars(klass).items():
                if isinstance(attr, ThingProperty):
                    out[name] = attr
        return out
