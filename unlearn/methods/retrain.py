"""Retrain: the gold standard. A fresh initialisation trained on the retain set Dr only."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from unlearn.data import TensorSet
from unlearn.device import Stopwatch
from unlearn.masks import Masks
from unlearn.methods.base import Unlearned, check_method_config, working_copy
from unlearn.methods.spec import MethodSpec
from unlearn.presets import PRESETS
from unlearn.train import TrainConfig, fit


@dataclass(frozen=True)
class Config:
    """A full training recipe (default: the paper's CIFAR-10 one, 182 epochs) and the seed.

    `seed` seeds the fresh initialisation and the data order; it overrides `train.seed`.
    """

    train: TrainConfig = TrainConfig()
    seed: int = 0

    def __post_init__(self) -> None:
        check_method_config(self)


# Retrain repeats each preset's original-model recipe, so Retrain and theta_o are comparable.
PRESET_DEFAULTS: dict[str, dict] = {name: {"train": preset.train} for name, preset in PRESETS.items()}


def reinitialise(model: nn.Module, seed: int) -> nn.Module:
    """A copy of `model` with every layer's parameters (and BatchNorm statistics) drawn afresh.

    Note: this is each layer's own `reset_parameters` initialisation, which for torchvision's
    ResNet-18 differs from the constructor's Kaiming-normal one.
    """
    model = working_copy(model)
    torch.manual_seed(seed)
    for module in model.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    return model


def run(
    model: nn.Module,
    retain_set: TensorSet,
    forget_set: TensorSet,
    config: Config,
    device: torch.device,
    *,
    masks: Masks | None = None,
) -> Unlearned:
    """Train a fresh copy of `model`'s architecture (same masks) on `retain_set`.

    `forget_set` is never read: exact unlearning is training as if Df never existed.
    """
    with Stopwatch(device) as clock:
        model = reinitialise(model, config.seed)
        history = fit(model, retain_set, replace(config.train, seed=config.seed), device, masks=masks)
    return Unlearned(model, clock.seconds, history)


SPEC = MethodSpec("retrain", "Retrain", Config, PRESET_DEFAULTS, run, approximate=False)
