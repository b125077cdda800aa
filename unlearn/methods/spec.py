"""The contract of an unlearning method, and the spec each method module declares (`SPEC`).

A method is one module, `unlearn/methods/<name>.py` (dvc.yaml's stages depend on that file by
name), that defines its typed `Config`, its `PRESET_DEFAULTS` and a `run` meeting `UnlearnRun`,
and ends with

    SPEC = MethodSpec("ft", "FT", Config, PRESET_DEFAULTS, run, search_space={...})

`unlearn.methods.registry.METHODS` lists the specs; everything that names methods (params.yaml's
validation, `unlearn tune`'s search spaces, the report's labels) reads it.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from unlearn.data import TensorSet
from unlearn.masks import Masks
from unlearn.methods.base import Unlearned
from unlearn.methods.space import Range


@runtime_checkable
class UnlearnRun(Protocol):
    """What every method's `run` is: unlearn `forget_set` from a copy of `model`.

    Takes the model (with its `masks`: masked weights stay exactly zero), the retain set Dr, the
    forget set Df, the method's own `Config` and the device; returns `Unlearned(model, seconds)`,
    a new model (the input is never changed) and the wall time of the unlearning itself.
    `isinstance` checks only that it is callable: `check_run` checks the signature.
    """

    def __call__(
        self,
        model: nn.Module,
        retain_set: TensorSet,
        forget_set: TensorSet,
        config: Any,
        device: torch.device,
        *,
        masks: Masks | None = None,
    ) -> Unlearned: ...


def _contract() -> list[inspect.Parameter]:
    return list(inspect.signature(UnlearnRun.__call__).parameters.values())[1:]  # without self


def check_run(run: object) -> None:
    """Raise `TypeError` unless `run`'s parameters (names, kinds, defaults) and return type are `UnlearnRun`'s."""
    if not callable(run):
        raise TypeError(f"{run!r} is not callable")
    signature = inspect.signature(run, eval_str=True)
    expected = [(p.name, p.kind, p.default) for p in _contract()]
    actual = [(p.name, p.kind, p.default) for p in signature.parameters.values()]
    if actual != expected or signature.return_annotation is not Unlearned:
        wanted = "(model, retain_set, forget_set, config, device, *, masks=None) -> Unlearned"
        raise TypeError(f"{run.__module__}.{run.__qualname__}{signature} does not match UnlearnRun{wanted}")


@dataclass(frozen=True)
class MethodSpec:
    """One unlearning method as the rest of the project sees it.

    Args:
        name: the method's name in params.yaml, the CLI and file names; its module's name.
        label: how reports and figures name it ("ℓ1-sparse").
        config: its config dataclass; `preset_defaults` maps a preset to overrides of its defaults.
        run: the method itself (`UnlearnRun`).
        search_space: the settings `unlearn tune` searches and their ranges (`unlearn.methods.space`),
            in sampling order; empty: not tunable.
        preset_search_spaces: per preset, ranges replacing the search space's (in its place in the
            order; a new setting goes last), None dropping a setting from that preset's search.
        approximate: False for Retrain alone, the exact method the others are measured against.
    """

    name: str
    label: str
    config: type
    preset_defaults: Mapping[str, Mapping[str, Any]]
    run: UnlearnRun
    search_space: Mapping[str, Range] = field(default_factory=dict)
    preset_search_spaces: Mapping[str, Mapping[str, Range | None]] = field(default_factory=dict)
    approximate: bool = True

    def __post_init__(self) -> None:
        if not self.name.isidentifier() or not self.label.strip():
            raise TypeError(f"method spec {self.name!r}: the name must be an identifier and the label non-empty")
        if not (is_dataclass(self.config) and isinstance(self.config, type)):
            raise TypeError(f"method {self.name!r}: config {self.config!r} is not a dataclass")
        check_run(self.run)
        settings = {f.name for f in fields(self.config)}
        searched = [*self.search_space, *(name for space in self.preset_search_spaces.values() for name in space)]
        unknown = sorted(set(searched) - settings)
        if unknown:
            raise TypeError(f"method {self.name!r} searches {unknown}, which {self.config.__name__} does not have")
        if not self.approximate and searched:
            raise TypeError(f"method {self.name!r} is the reference: it is not tuned")

    @property
    def tunable(self) -> bool:
        """Whether `unlearn tune` can search it (it has a search space)."""
        return bool(self.search_space)

    def space(self, preset: str) -> dict[str, Range]:
        """The ranges searched under `preset`: the search space, with the preset's replaced or dropped."""
        merged = {**self.search_space, **self.preset_search_spaces.get(preset, {})}
        return {name: searched for name, searched in merged.items() if searched is not None}
