"""Type checks of config dataclasses: every value against its field's annotation.

Method configs are built from user values (params.yaml, through `unlearn.methods.default_config`).
Nothing in Python stops `lr="fast"` reaching a dataclass field, and such a value fails only where it
is first used: mid-batch, after irreversible steps, without naming the setting. `check_config`
compares every field of a config with its annotation when the config is made, and
`replace_checked` checks user changes before they are applied, so the error names the setting:

    ft: lr must be a number, got 'fast'

Supported annotations: int (not bool), float (an int too; not bool, not str, finite), bool,
str, `Literal[...]`, `X | None` and other unions, `tuple[X, ...]`, `tuple[X, Y]` and `list[X]`
(a list or a tuple; tuple fields are stored as tuples), nested config dataclasses (checked
field by field) and `Annotated[X, Range(...)]` for bounds. Any other class is an isinstance check;
`Any` and unknown forms pass. String annotations (`from __future__ import annotations`) are
resolved with `typing.get_type_hints`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from unlearn.errors import ConfigError

__all__ = ["Range", "SettingError", "check_config", "check_value", "replace_checked"]


@dataclass(frozen=True)
class Range:
    """Bounds of a number field: `epochs: Annotated[int, Range(ge=1)]`."""

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None

    def problem(self, value: float) -> str | None:
        """What is wrong with `value` (None: it lies within the bounds)."""
        checks = (
            (self.gt, lambda bound: value > bound, "greater than"),
            (self.ge, lambda bound: value >= bound, "at least"),
            (self.lt, lambda bound: value < bound, "less than"),
            (self.le, lambda bound: value <= bound, "at most"),
        )
        for bound, holds, words in checks:
            if bound is not None and not holds(bound):
                return f"must be {words} {bound:g}, got {value!r}"
        return None


class SettingError(ConfigError):
    """A setting whose value does not fit its field: `ft: lr must be a number, got 'fast'`.

    Args:
        owner: what the config belongs to (the method's name).
        setting: the dotted name within the config (`lr`, `train.lr`, `forget_classes[1]`).
        problem: the rest of the message (`must be a number, got 'fast'`).
    """

    def __init__(self, owner: str, setting: str, problem: str) -> None:
        super().__init__(f"{owner}: {setting} {problem}")
        self.owner, self.setting, self.problem = owner, setting, problem

    def under(self, key: str) -> str:
        """The message with the setting named under `key`: `unlearn.settings.ft.lr: must be a number, ...`."""
        return f"{key}.{self.setting}: {self.problem}"


class _Mismatch(Exception):
    """A value that does not fit an annotation; `path` is where inside the value (`[1]`, `.lr`)."""

    def __init__(self, problem: str, path: str = "") -> None:
        super().__init__(problem)
        self.problem, self.path = problem, path

    def inside(self, part: str) -> _Mismatch:
        return _Mismatch(self.problem, part + self.path)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    """{field: resolved annotation} of the dataclass `cls`, `Annotated` extras kept."""
    hints = typing.get_type_hints(cls, include_extras=True)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls)}


_NAMES = {int: ("an integer", "integers"), float: ("a number", "numbers"), bool: ("true or false", "booleans"),
          str: ("a string", "strings"), type(None): ("None (null)", "None")}  # fmt: skip


def _describe(hint: Any, plural: bool = False) -> str:
    """`a number`, `one of 'cosine', 'constant'`, `a list of integers`: what `hint` asks for."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Annotated:
        return _describe(args[0], plural)
    if isinstance(hint, type) and hint in _NAMES:
        return _NAMES[hint][plural]
    if origin is Literal:
        return ("values of " if plural else "") + "one of " + ", ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a, plural) for a in args)
    if origin in (tuple, list):
        lists = "lists" if plural else "a list"
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            return f"{lists} of {len(args)} items ({', '.join(_describe(a) for a in args)})"
        return f"{lists} of {_describe(args[0], True)}" if args else lists
    if isinstance(hint, type):
        return f"{hint.__name__}s" if plural else f"a {hint.__name__}"
    return str(hint)


def _mismatch(value: Any, hint: Any) -> _Mismatch:
    return _Mismatch(f"must be {_describe(hint)}, got {value!r}")


def _check(value: Any, hint: Any) -> Any:
    """`value` if it fits `hint` (list -> tuple for tuple fields); else `_Mismatch`."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin is Annotated:
        value = _check(value, args[0])
        for extra in args[1:]:
            problem = extra.problem(value) if isinstance(extra, Range) else None
            if problem:
                raise _Mismatch(problem)
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise _mismatch(value, hint)
    if hint is int:
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return value
        raise _mismatch(value, hint)
    if hint is float:
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise _Mismatch(f"must be a finite number, got {value!r}")
            return value
        raise _mismatch(value, hint)
    if hint is str:
        if isinstance(value, str):
            return value
        raise _mismatch(value, hint)
    if hint is type(None):
        if value is None:
            return value
        raise _mismatch(value, hint)
    if origin is Literal:
        if any(value == a and type(value) is type(a) for a in args):
            return value
        raise _mismatch(value, hint)
    if origin in (typing.Union, types.UnionType):
        return _check_union(value, hint, args)
    if origin in (tuple, list):
        return _check_sequence(value, hint, origin, args)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, hint):
            raise _mismatch(value, hint)
        return _checked_fields(value)
    if isinstance(hint, type) and origin is None:
        if isinstance(value, hint):
            return value
        raise _mismatch(value, hint)
    return value  # a form this checker does not know: left to the code that reads it


def _check_union(value: Any, hint: Any, args: tuple) -> Any:
    if value is None and type(None) in args:
        return None
    options = [a for a in args if a is not type(None)]
    if len(options) == 1:  # X | None: X's own message (an item's, inside a list), "or None" added
        try:
            return _check(value, options[0])
        except _Mismatch as error:
            if error.path or type(None) not in args:
                raise
            raise _mismatch(value, hint) from None
    for option in options:
        try:
            return _check(value, option)
        except _Mismatch:
            continue
    raise _mismatch(value, hint)


def _check_sequence(value: Any, hint: Any, origin: type, args: tuple) -> Any:
    if not isinstance(value, list | tuple):
        raise _mismatch(value, hint)
    if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
        if len(value) != len(args):
            raise _Mismatch(f"must be {_describe(hint)}, got {len(value)} item(s): {value!r}")
        item_hints = args
    else:
        item_hints = (args[0] if args else Any,) * len(value)
    items = []
    for index, (item, item_hint) in enumerate(zip(value, item_hints, strict=True)):
        try:
            items.append(_check(item, item_hint))
        except _Mismatch as error:
            raise error.inside(f"[{index}]") from None
    return tuple(items) if origin is tuple else items


def _checked_fields(config: Any) -> Any:
    """`config` if every field fits its annotation (nested configs with lists as tuples: a copy)."""
    changes = {}
    for name, hint in _hints(type(config)).items():
        value = getattr(config, name)
        try:
            checked = _check(value, hint)
        except _Mismatch as error:
            raise error.inside(f".{name}") from None
        if checked is not value:
            changes[name] = checked
    return dataclasses.replace(config, **changes) if changes else config


def check_value(value: Any, hint: Any, owner: str, setting: str) -> Any:
    """`value` if it fits the annotation `hint` (a list as a tuple for tuple fields); else `SettingError`."""
    try:
        return _check(value, hint)
    except _Mismatch as error:
        raise SettingError(owner, _join(setting, error.path), error.problem) from None


def _join(setting: str, path: str) -> str:
    """`train` + `lr` or `.lr` -> `train.lr`; `forget_classes` + `[1]` -> `forget_classes[1]`."""
    if not setting or not path:
        return (setting or path).lstrip(".")
    return setting + path if path[0] in ".[" else f"{setting}.{path}"


def check_config(config: Any, owner: str) -> None:
    """Check every field of the dataclass instance `config` against its annotation, in place.

    Call it first in `__post_init__`: a frozen config's list for a tuple field becomes a tuple
    (`object.__setattr__`), nested configs are checked field by field. Raises `SettingError`.
    """
    for name, hint in _hints(type(config)).items():
        value = getattr(config, name)
        checked = check_value(value, hint, owner, name)
        if checked is not value:
            object.__setattr__(config, name, checked)


def replace_checked(config: Any, changes: Mapping[str, Any], owner: str, prefix: str = "") -> Any:
    """`dataclasses.replace(config, **changes)`, each change checked against its field first.

    A mapping given for a nested config field (`train: {epochs: 3}`) changes those settings of
    the current nested config. Unknown names and wrong types raise `SettingError` naming the
    setting (`prefix` + name: `train.epochs`).
    """
    hints = _hints(type(config))
    unknown = sorted(set(changes) - set(hints))
    if unknown:
        where = _join(prefix, unknown[0])
        raise SettingError(owner, where, f"is not a setting of {type(config).__name__}; it has {sorted(hints)}")
    checked = {}
    for name, value in changes.items():
        hint, setting = hints[name], _join(prefix, name)
        nested = _dataclass_of(hint)
        if nested is not None and isinstance(value, Mapping):
            current = getattr(config, name)
            base = current if isinstance(current, nested) else nested()
            checked[name] = replace_checked(base, value, owner, setting)
        elif nested is not None and not isinstance(value, nested) and value is not None:
            problem = f"must be a mapping of {nested.__name__} settings, got {value!r}"
            raise SettingError(owner, setting, problem)
        else:
            checked[name] = check_value(value, hint, owner, setting)
    return dataclasses.replace(config, **checked)


def _dataclass_of(hint: Any) -> type | None:
    """The config dataclass a field holds (through Annotated and `| None`), else None."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Annotated:
        return _dataclass_of(args[0])
    if origin in (typing.Union, types.UnionType):
        found = [c for c in map(_dataclass_of, args) if c is not None]
        return found[0] if len(found) == 1 else None
    return hint if isinstance(hint, type) and dataclasses.is_dataclass(hint) else None
