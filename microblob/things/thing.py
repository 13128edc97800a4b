"""Things: Python classes whose `@thing_action` methods and `@thing_property` attributes are served over HTTP.

A Thing is plain Python first: calling an action runs it directly (a Blob passed between actions is not
copied). The decorators only record what the server needs: the type hints become the JSON Schema of the
Thing Description and the validation of input.
"""

from __future__ import annotations

import builtins
import contextvars
import inspect
import logging
import threading
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, overload

from .._exceptions import InvalidArgument, InvalidInput, InvalidOutput, InvocationCancelled
from .schema import BlobResolver, Checker, _jsonable_default

__all__ = [
    "ActionInfo",
    "DataProperty",
    "Thing",
    "ThingProperty",
    "cancellable_sleep",
    "raise_if_cancelled",
    "thing_action",
    "thing_property",
]

F = TypeVar("F", bound=Callable[..., Any])
_THING_LOGS = logging.getLogger("microblob.things")
if _THING_LOGS.level == logging.NOTSET:  # INFO from `self.logger` is what an invocation's log is for
    _THING_LOGS.setLevel(logging.INFO)
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
    _checker: Checker | None = field(default=None, repr=False)
    _out_checker: Checker | None = field(default=None, repr=False)
    _extra: bool = field(default=False, repr=False)
    _extra_hint: Any = field(default=Any, repr=False)
    _bound: str = field(default="self", repr=False)
    _positional: tuple[str, ...] = field(default=(), repr=False)

    def _resolve(self) -> None:
        if self._params is not None:
            return
        try:
            # include_extras: `Annotated[int, Field(ge=0, le=10)]` keeps its limits and description.
            hints = typing.get_type_hints(self.func, localns=self.localns, include_extras=True)
        except Exception as e:
            raise InvalidArgument(f"action {self.name!r}: cannot resolve type hints: {e}") from e
        params = []
        positional = []
        for i, p in enumerate(inspect.signature(self.func).parameters.values()):
            if i == 0:
                self._bound = p.name  # `self`: bound already, so never a further named argument
                continue
            if p.kind is p.VAR_KEYWORD:
                # further named arguments: each checked against `**kwargs: T` (unannotated: any JSON value)
                self._extra = True
                self._extra_hint = hints.get(p.name, Any)
                continue
            if p.kind is p.VAR_POSITIONAL:
                continue  # JSON input is named: *args always receives nothing
            if p.kind is p.POSITIONAL_ONLY:
                positional.append(p.name)
            required = p.default is p.empty
            params.append((p.name, hints.get(p.name, Any), required, p.default))
        self._output = hints.get("return", Any)
        self._positional = tuple(positional)
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

    @property
    def checker(self) -> Checker:
        if self._checker is None:
            try:
                params = self.params
                self._checker = Checker(params, extra_allowed=self._extra, extra_hint=self._extra_hint,
                                        name=f"{self.name}_input")
            except TypeError as e:
                raise TypeError(f"action {self.name!r}: {e}") from None
        return self._checker

    def input_schema(self) -> dict[str, Any]:
        schema = self.checker.schema()
        schema.setdefault("properties", {})
        if not self._extra:
            schema["additionalProperties"] = False
        elif schema.get("additionalProperties") is True:
            del schema["additionalProperties"]  # JSON Schema's default: any further field
        return schema

    @property
    def output_checker(self) -> Checker:
        if self._out_checker is None:
            self._out_checker = Checker([("output", self.output_hint, True, None)], name=f"{self.name}_output")
        return self._out_checker

    def output_schema(self) -> dict[str, Any]:
        return dict(self.output_checker.schema()["properties"]["output"])

    def coerce_input(self, body: Any, resolve_blob: BlobResolver | None = None) -> dict[str, Any]:
        """Validate a JSON object of arguments; raises `InvalidInput` naming the field and constraint."""
        checker = self.checker  # resolves the hints, so `_bound` is known
        if self._extra and isinstance(body, dict):
            for key in body:
                if key == self._bound:  # Python would pass it as `self` too: never a further argument
                    raise InvalidInput(key, "unexpected field")
        return checker.arguments(body, resolve_blob)

    def bind(self, arguments: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
        """Checked arguments (from `coerce_input`) as the function takes them: JSON names every input,
        but a positional-only parameter (`def f(self, x, /)`) must be passed by position."""
        self._resolve()
        if not self._positional:
            return [], arguments
        rest = dict(arguments)
        defaults = {name: default for name, _hint, _required, default in self.params}
        given = [i for i, name in enumerate(self._positional) if name in rest]
        args = []
        for name in self._positional[: given[-1] + 1 if given else 0]:
            # one left out before one given is passed its default: a position cannot be skipped
            args.append(rest.pop(name) if name in rest else defaults[name])
        return args, rest

    def check_output(self, value: Any) -> Any:
        """What the action returned, checked against its return annotation: a `-> int` that returns 4.2
        raises `InvalidOutput` (the invocation fails) rather than sending the client a float."""
        hint = self.output_hint
        if hint is Any or hint is object:
            return value
        try:
            return self.output_checker.output(value, "output")
        except InvalidInput as e:
            raise InvalidOutput(e.field, f"action {self.name!r} returned a value that does not match its "
                                f"annotation: {e}") from None


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


class _PropertyMixin:
    """What the server asks of a property, whatever its kind: type, schema, validation, writability."""

    description: str

    @builtins.property
    def hint(self) -> Any:
        raise NotImplementedError

    @builtins.property
    def read_only(self) -> bool:
        raise NotImplementedError

    def checker(self) -> Checker:
        """Built once per property (a hint with a `Field` in it may not be hashable, so not cached by hint)."""
        found = self.__dict__.get("_checker")
        if found is None:
            found = self.__dict__["_checker"] = Checker([("value", self.hint, True, None)], name="value")
        return found

    def schema(self) -> dict[str, Any]:
        return dict(self.checker().schema()["properties"]["value"])

    def coerce(self, value: Any, path: str = "value", resolve_blob: BlobResolver | None = None) -> Any:
        """A JSON value checked against the property's type and constraints (InvalidInput names `path`)."""
        return self.checker().value(value, path, resolve_blob)


class ThingProperty(_PropertyMixin, builtins.property):
    """A `property` that the server exposes (GET to read, PUT to write when it has a setter).

    Its type (and constraints: ``-> Annotated[float, Field(gt=0)]``) is the getter's return annotation."""

    def __init__(self, fget: Any = None, fset: Any = None, fdel: Any = None, doc: str | None = None) -> None:
        super().__init__(fget, fset, fdel, doc)
        self.description = doc if doc is not None else (inspect.getdoc(fget) or "" if fget else "")

    @builtins.property
    def hint(self) -> Any:
        hints = typing.get_type_hints(self.fget, include_extras=True) if self.fget else {}
        return hints.get("return", Any)

    @builtins.property
    def read_only(self) -> bool:
        return self.fset is None


_NO_DEFAULT: Any = object()


class DataProperty(_PropertyMixin):
    """A property that is a value (LabThings' ``count: int = lt.property(default=0)``): the class
    annotation is its type, keyword constraints (``ge=0``) are pydantic `Field` limits the server
    enforces, and each Thing instance holds its own value (a fresh `default_factory()` per instance)."""

    def __init__(self, *, default: Any = _NO_DEFAULT, default_factory: Callable[[], Any] | None = None,
                 readonly: bool = False, description: str = "", **constraints: Any) -> None:
        if (default is _NO_DEFAULT) == (default_factory is None):
            raise InvalidArgument("a data property needs exactly one of default= and default_factory=")
        if default_factory is not None and not callable(default_factory):
            raise InvalidArgument("default_factory must be callable")
        self.default, self.default_factory = default, default_factory
        self.readonly = bool(readonly)
        self.description = description
        self.constraints = constraints
        self.name = ""
        self.owner: type | None = None
        self._hint: Any = None

    def __set_name__(self, owner: type, name: str) -> None:
        self.owner, self.name = owner, name

    @builtins.property
    def hint(self) -> Any:
        if self._hint is None:
            try:
                hints = typing.get_type_hints(self.owner, include_extras=True)
            except Exception as e:
                raise InvalidArgument(f"property {self.name!r}: cannot resolve its annotation: {e}") from e
            hint = hints.get(self.name, Any)
            if self.constraints:
                from pydantic import Field

                try:
                    hint = typing.Annotated[hint, Field(**self.constraints)]
                except TypeError as e:
                    raise InvalidArgument(f"property {self.name!r}: {e}") from None
            self._hint = hint
        return self._hint

    @builtins.property
    def read_only(self) -> bool:
        return self.readonly

    def schema(self) -> dict[str, Any]:
        schema = super().schema()
        if self.default_factory is None and _jsonable_default(self.default):
            schema["default"] = self.default
        return schema

    @overload
    def __get__(self, obj: None, owner: type) -> DataProperty: ...
    @overload
    def __get__(self, obj: object, owner: type) -> Any: ...

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        values = obj.__dict__
        if self.name not in values:
            values.setdefault(self.name, self.default_factory() if self.default_factory else self.default)
        return values[self.name]

    def __set__(self, obj: Any, value: Any) -> None:
        obj.__dict__[self.name] = value  # Python code may set even a read-only one (readonly is for clients)


@overload
def thing_property(fget: Callable[[Any], Any]) -> ThingProperty: ...
@overload
def thing_property(
    *, default: Any = ..., default_factory: Callable[[], Any] | None = None, readonly: bool = False,
    description: str = "", **constraints: Any,
) -> Any: ...


def thing_property(fget: Callable[[Any], Any] | None = None, **options: Any) -> Any:
    """Mark a getter as a Thing property (add a setter with `@name.setter`, under the same name or
    LabThings' ``@x.setter def _set_x``), or, with keywords, make a data property:
    ``steps: int = thing_property(default=0, ge=0, le=10)``."""
    if fget is not None:
        if options:
            raise InvalidArgument("thing_property(getter) takes no other arguments")
        return ThingProperty(fget)
    return DataProperty(**options)


class Thing:
    """Base class of things served by `ThingServer`: subclass it and decorate methods and getters.

    `title` (default: the class name) and the class docstring go into the Thing Description;
    `self.logger` logs into the running invocation's log."""

    title: str | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # `@x.setter def _set_x(...)` leaves `x` getter-only and a second property `_set_x`; the
        # property with the setter becomes `x` (what the user means), and the alias goes.
        for name, attr in list(vars(cls).items()):
            if not isinstance(attr, ThingProperty) or attr.fget is None:
                continue
            target = getattr(attr.fget, "__name__", name)
            other = vars(cls).get(target)
            if target != name and isinstance(other, ThingProperty) and other.fget is attr.fget:
                setattr(cls, target, attr)
                delattr(cls, name)

    @builtins.property
    def logger(self) -> logging.Logger:
        """A logger named after the Thing's class; what it logs during an action lands in that invocation's log."""
        return _THING_LOGS.getChild(type(self).__name__)

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
    def thing_properties(cls) -> dict[str, ThingProperty | DataProperty]:
        """Every `@thing_property` (and data property) of the class, by attribute name."""
        out: dict[str, ThingProperty | DataProperty] = {}
        for klass in reversed(cls.__mro__):
            for name, attr in vars(klass).items():
                if isinstance(attr, (ThingProperty, DataProperty)):
                    out[name] = attr
        return out
