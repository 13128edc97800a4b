"""`thing_slot`: a Thing that uses other Things of the same server, written as LabThings users write it.

    class Stage(Thing):
        camera: Camera = thing_slot()                  # the one Camera the server serves
        backup: Camera | None = thing_slot(None)       # None unless the server is told which
        lights: Mapping[str, Light] = thing_slot()     # every Light, by name

The annotation says what the slot holds: one Thing of a class, an optional one (``X | None``) or a
``Mapping[str, X]`` of them. The default says which: ``...`` (by class), a Thing's name, a list of names
(mappings), or None. `ThingServer` connects every slot once all its Things exist (so two Things may use
each other), and refuses to build with `ThingSlotError` when a slot cannot be filled: no Thing of that
class, several where one is wanted, a name it does not serve, a Thing of the wrong class. Outside a
server a slot is plain Python: assign it (``stage.camera = Camera()``).
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

from .._exceptions import ThingSlotError

__all__ = ["ThingSlot", "connect_slots", "thing_slot"]

Target = Any  # ... | str | Iterable[str] | None


class ThingSlot:
    """The descriptor `thing_slot` makes; its value lives in each host Thing's ``__dict__``."""

    def __init__(self, default: Target = ..., localns: dict[str, Any] | None = None) -> None:
        if not (default is ... or default is None or isinstance(default, str) or _names(default) is not None):
            raise ThingSlotError(f"thing_slot(default=...) takes ..., None, a Thing's name or a list of names, "
                                 f"not {default!r}")
        self.default = default
        self.localns = localns  # names local to the function defining the Thing class, for its annotation
        self.name = ""
        self.owner: type | None = None

    def __set_name__(self, owner: type, name: str) -> None:
        self.owner, self.name = owner, name

    @property
    def _key(self) -> str:
        return f"__thing_slot_{self.name}"

    def kind(self, known: Any = ()) -> tuple[tuple[type, ...], bool, bool]:
        """(Thing classes accepted, is a mapping, may be None) from the annotation. The classes of
        `known` objects resolve by name too: two Things defined in one function may name each other."""
        where = f"{getattr(self.owner, '__name__', '?')}.{self.name}"
        try:
            local = {type(k).__name__: type(k) for k in known}
            local.update(self.localns or {})
            local.update(vars(self.owner))
            hint = typing.get_type_hints(self.owner, localns=local).get(self.name)
        except Exception as e:
            raise ThingSlotError(f"thing_slot {where}: cannot resolve its annotation: {e}") from e
        if hint is None:
            raise ThingSlotError(f"thing_slot {where} needs an annotation: the Thing class it holds")
        mapping = typing.get_origin(hint) in (Mapping, dict, MappingProxyType) or hint is Mapping
        if mapping:
            args = typing.get_args(hint)
            if len(args) != 2 or args[0] is not str:
                raise ThingSlotError(f"thing_slot {where}: a mapping slot is Mapping[str, SomeThing], not {hint!r}")
            hint = args[1]
        optional = False
        if typing.get_origin(hint) in (typing.Union, types.UnionType):
            arms = [a for a in typing.get_args(hint) if a is not type(None)]
            optional = len(arms) < len(typing.get_args(hint))
            classes = tuple(arms)
        else:
            classes = (hint,)
        from .thing import Thing

        for cls in classes:
            if not (isinstance(cls, type) and issubclass(cls, Thing)):
                raise ThingSlotError(f"thing_slot {where}: {cls!r} is not a Thing class")
        return classes, mapping, optional

    def connect(self, host: Any, things: Mapping[str, Any], target: Target = ...) -> None:
        """Fill the slot of `host` from the server's Things (`target` from the server's configuration,
        else the slot's default). Raises `ThingSlotError` saying what is wrong and how to fix it."""
        classes, mapping, optional = self.kind(things.values())
        chosen = self.default if target is ... else target
        where = f"{type(host).__name__}.{self.name}"
        wanted = " | ".join(c.__name__ for c in classes)
        if chosen is ...:
            picked = {n: t for n, t in things.items() if isinstance(t, classes) and t is not host}
        elif chosen is None:
            picked = {}
        else:
            names = [chosen] if isinstance(chosen, str) else _names(chosen)
            if names is None:
                raise ThingSlotError(f"thing slot {where}: the target is a Thing's name or a list of names, "
                                     f"not {chosen!r}")
            picked = {}
            for n in names:
                if n not in things:
                    raise ThingSlotError(f"thing slot {where} names {n!r}, but the server serves no Thing of that "
                                         f"name (it serves {sorted(things)})")
                if not isinstance(things[n], classes):
                    raise ThingSlotError(f"thing slot {where} names {n!r}, a {type(things[n]).__name__}, "
                                         f"not a {wanted}")
                picked[n] = things[n]
        if mapping:
            host.__dict__[self._key] = MappingProxyType(dict(picked))
            return
        if len(picked) > 1:
            raise ThingSlotError(f"thing slot {where} holds one {wanted}, but the server serves {len(picked)} "
                                 f"({sorted(picked)}): name one, thing_slot({sorted(picked)[0]!r}) or the server's "
                                 "thing_slots= option")
        if not picked and not optional:
            how = "it was given None" if chosen is None else f"the server serves no {wanted}"
            raise ThingSlotError(f"thing slot {where} needs a {wanted}, but {how}; serve one, or annotate the "
                                 f"slot `{wanted} | None`")
        host.__dict__[self._key] = next(iter(picked.values()), None)

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        try:
            return obj.__dict__[self._key]
        except KeyError:
            raise ThingSlotError(f"thing slot {type(obj).__name__}.{self.name} is not connected yet: a ThingServer "
                                 "connects it when it is built (after every Thing's __init__), or assign it") from None

    def __set__(self, obj: Any, value: Any) -> None:
        """Wire a slot by hand (a Thing used without a server, a test)."""
        classes, mapping, optional = self.kind(value.values() if isinstance(value, Mapping) else [value])
        where = f"{type(obj).__name__}.{self.name}"
        if mapping:
            if not isinstance(value, Mapping) or not all(isinstance(v, classes) for v in value.values()):
                raise ThingSlotError(f"thing slot {where} holds a mapping of names to "
                                     f"{' | '.join(c.__name__ for c in classes)}")
            value = MappingProxyType(dict(value))
        elif not (isinstance(value, classes) or (value is None and optional)):
            raise ThingSlotError(f"thing slot {where} holds a {' | '.join(c.__name__ for c in classes)}, "
                                 f"not {type(value).__name__}")
        obj.__dict__[self._key] = value


def _names(value: Any) -> list[str] | None:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        return None
    names = list(value)
    return names if all(isinstance(n, str) for n in names) else None


def thing_slot(default: Target = ...) -> Any:
    """Declare that a Thing uses another Thing of the same server (typed `Any`, as LabThings does, so
    ``camera: Camera = thing_slot()`` type-checks). See the module docstring."""
    frame = inspect.currentframe()
    try:
        scope = frame.f_back.f_back if frame and frame.f_back else None  # the class body's enclosing scope
        localns = None if scope is None or scope.f_code.co_name == "<module>" else dict(scope.f_locals)
    finally:
        del frame
    return ThingSlot(default, localns)


def slots_of(cls: type) -> dict[str, ThingSlot]:
    """Every thing slot of a Thing class, by attribute name."""
    out: dict[str, ThingSlot] = {}
    for klass in reversed(cls.__mro__):
        for name, attr in vars(klass).items():
            if isinstance(attr, ThingSlot):
                out[name] = attr
    return out


def connect_slots(things: Mapping[str, Any], config: Mapping[str, Mapping[str, Target]] | None = None) -> None:
    """Connect every slot of every Thing a server serves; `config` maps a Thing's name to
    ``{slot: target}`` for the slots its defaults do not fill (LabThings' ``thing_slots`` configuration)."""
    config = dict(config or {})
    for name, spec in config.items():
        if name not in things:
            raise ThingSlotError(f"thing_slots= names the Thing {name!r}, which the server does not serve")
        unknown = sorted(set(spec) - set(slots_of(type(things[name]))))
        if unknown:
            raise ThingSlotError(f"thing_slots= names {unknown} on {name!r}, a {type(things[name]).__name__} "
                                 f"with the slots {sorted(slots_of(type(things[name])))}")
    for name, thing in things.items():
        targets = config.get(name, {})
        for attr, slot in slots_of(type(thing)).items():
            slot.connect(thing, things, targets.get(attr, ...))
