"""Unlearning methods: one module each, one common call.

    result = run_method(name, model, retain_set, forget_set, device, masks=masks, config=config)

Every method takes the model (with its masks), the retain set Dr, the forget set Df, its
own typed config and the device, and returns `Unlearned(model, seconds)`: a new model and
the wall time of the unlearning itself. Masked weights stay exactly zero throughout.

The contract is `spec.UnlearnRun`; each method module declares its `MethodSpec` (label, config,
preset defaults, search space) as `SPEC`, and `registry.METHODS` lists them in the study's order.
"""

from __future__ import annotations

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
from unlearn.methods.registry import APPROXIMATE_METHODS, METHOD_NAMES, METHODS, method_spec
from unlearn.methods.spec import MethodSpec, UnlearnRun

__all__ = [
    "APPROXIMATE_METHODS",
    "METHODS",
    "METHOD_NAMES",
    "MethodSpec",
    "UnlearnRun",
    "Unlearned",
    "default_config",
    "method_module",
    "method_spec",
    "run_method",
]


def method_module(name: str) -> ModuleType:
    """The module implementing method `name` (it defines `Config`, `PRESET_DEFAULTS`, `run` and `SPEC`)."""
    return importlib.import_module(method_spec(name).run.__module__)


def default_config(name: str, preset: str = "cifar10", **overrides):
    """The method's config with the preset's documented defaults, then `overrides`.

    Every override is checked against its field's annotation before it is applied: a wrong name
    or type raises `ConfigError` naming the setting (`ft: lr must be a number, got 'fast'`; a
    `SettingError` for types, whose `under(key)` names it under a params key). A mapping for a
    nested config (Retrain's `train: {epochs: 3}`) changes those settings of the preset's.
    """
    spec = method_spec(name)
    known = {f.name for f in fields(spec.config)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(f"method {name!r} has no setting(s) {unknown}; it has {sorted(known)}")
    config = replace_checked(spec.config(), spec.preset_defaults.get(preset, {}), name)
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
    spec = method_spec(name)
    config = spec.config() if config is None else config
    if not isinstance(config, spec.config):
        raise ConfigError(f"method {name!r} takes a {spec.config.__name__}, got {type(config).__name__}")
    return spec.run(model, retain_set, forget_set, config, device, masks=masks)
