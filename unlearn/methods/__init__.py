"""Unlearning methods: one module each, one common call.

    result = run_method(name, model, retain_set, forget_set, device, masks=masks, config=config)

Every method takes the model (with its masks), the retain set Dr, the forget set Df, its
own typed config and the device, and returns `Unlearned(model, seconds)`: a new model and
the wall time of the unlearning itself. Masked weights stay exactly zero throughout.
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import fields
from types import ModuleType

import torch
from torch import nn

from unlearn.config import replace_checked
from unlearn.data import TensorSet
from unlearn.errors import ConfigError
from unlearn.masks import Masks
from unlearn.methods.base import Unlearned

METHOD_NAMES = ("retrain", "ft", "ga", "rl", "iu", "ff", "l1_sparse", "salun")


def method_module(name: str) -> ModuleType:
    """The module implementing method `name` (it defines `Config`, `PRESET_DEFAULTS` and `run`)."""
    if name not in METHOD_NAMES:
        raise ConfigError(f"unknown unlearning method {name!r}; known: {', '.join(METHOD_NAMES)}")
    return importlib.import_module(f"unlearn.methods.{name}")


def default_config(name: str, preset: str = "cifar10", **overrides):
    """The method's config with the preset's documented defaults, then `overrides`.

    Every override is checked against its field's annotation before it is applied: a wrong name
    or type raises `ConfigError` naming the setting (`ft: lr must be a number, got 'fast'`; a
    `SettingError` for types, whose `under(key)` names it under a params key). A mapping for a
    nested config (Retrain's `train: {epochs: 3}`) changes those settings of the preset's.
    """
    module = method_module(name)
    known = {f.name for f in fields(module.Config)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(f"method {name!r} has no setting(s) {unknown}; it has {sorted(known)}")
    config = replace_checked(module.Config(), module.PRESET_DEFAULTS.get(preset, {}), name)
    return replace_checked(config, overrides, name)


def run_method(
    name: str,
    model: nn.Module,
    retain_set: TensorSet,
    forget_set: TensorSet,
    device: torch.device,
    *,
    masks: Masks | None = None,
    config=None,
) -> Unlearned:
    """Unlearn `forget_set` from `model` with method `name`."""
    module = method_module(name)
    config = module.Config() if config is None else config
    if not isinstance(config, module.Config):
        raise ConfigError(f"method {name!r} takes a {module.Config.__name__}, got {type(config).__name__}")
    ready_for_timing()
    return module.run(model, retain_set, forget_set, config, device, masks=masks)


@functools.cache
def ready_for_timing() -> None:
    """Build one throw-away optimizer, once per process, before any method is timed.

    torch.optim imports torch._dynamo when the first optimizer is made (~1.7 s on two cores):
    without this, that import lands in the RTE of the first method a process runs (a digits GA
    measured 1.6 s instead of 0.1 s as the first of three seeds).
    """
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
