"""Training the original model (theta_o) of a preset on a data set."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch
from torch import nn

from unlearn.data import DataBundle, TensorSet
from unlearn.masks import Masks
from unlearn.models import Classifier, build_model
from unlearn.presets import Preset
from unlearn.train import History, TrainConfig, fit


def new_model(preset: Preset, bundle: DataBundle, seed: int) -> Classifier:
    """A freshly initialised model of the preset's architecture, seeded."""
    torch.manual_seed(seed)
    return build_model(
        preset.arch, bundle.input_shape, bundle.num_classes, bundle.mean, bundle.std, **preset.model_options
    )


def original_config(preset: Preset, bundle: DataBundle, seed: int) -> TrainConfig:
    """The preset's recipe for this data set: seeded, augmented only where the data set allows it."""
    return replace(preset.train, seed=seed, augment=preset.train.augment and bundle.augment)


def train_original(
    preset: Preset,
    bundle: DataBundle,
    train_set: TensorSet,
    device: torch.device,
    *,
    seed: int = 0,
    masks: Masks | None = None,
    on_epoch_end: Callable[[int, nn.Module], None] | None = None,
) -> tuple[Classifier, History]:
    """Train a fresh model on `train_set` with the preset's recipe (augmentation per data set)."""
    model = new_model(preset, bundle, seed)
    config = original_config(preset, bundle, seed)
    history = fit(model, train_set, config, device, masks=masks, on_epoch_end=on_epoch_end)
    return model, history
