"""Transfer after unlearning: does removing source classes change transfer?

A source model is trained on some classes; a subset of them is unlearned (l1-sparse MU by
default) or retrained without (the reference). Each source is then transferred to a target
task, by a linear probe (frozen backbone, new head) and by full fine-tuning, and the target
accuracy and wall time are reported. The target task is either other classes of the source's
data set (digits 0-4 -> 5-9) or another data set (CIFAR-100 -> CIFAR-10): `TRANSFER_PRESETS`.

Linear probing extracts the penultimate features once, with the backbone in eval mode (its
BatchNorm statistics stay frozen), and trains only a new linear head on them: no backbone
forward pass per epoch. Features are stored as (N, D, 1, 1), so `fit` and `predict` treat
them like images (channels_last needs 4-d inputs) and the head flattens them first.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from unlearn.data import DataBundle, TensorSet
from unlearn.device import Stopwatch
from unlearn.errors import ConfigError
from unlearn.masks import Masks
from unlearn.methods import default_config, run_method
from unlearn.splits import class_wise
from unlearn.train import TrainConfig, accuracy, fit, predict

SOURCES = ("original", "unlearned", "retrained")
MODES = ("linear_probe", "fine_tune")


@dataclass(frozen=True)
class TransferConfig:
    """Which classes form the source and target tasks, what is unlearned, and the transfer recipes.

    Defaults are for digits and take seconds on two CPU cores: the source task is digits 0-4,
    of which 0 and 1 are unlearned; the target task is digits 5-9 (relabelled 0-4).

    Args:
        forget_classes: source classes to unlearn, as original labels (a subset of source_classes).
        cross_dataset: the target classes are another data set's, so they may share numbers with the source's.
        method: the approximate unlearning method; "retrain" is always run as the reference.
        preset: names the methods' preset defaults (`unlearn.methods.default_config`).
        method_config / retrain_config: the methods' configs; their preset defaults when None.
        linear_probe: SGD on the new head over frozen features (no augmentation: features).
        fine_tune: SGD on the whole model, new head included (constant LR, a tenth of the probe's).
    """

    source_classes: tuple[int, ...] = (0, 1, 2, 3, 4)
    target_classes: tuple[int, ...] = (5, 6, 7, 8, 9)
    forget_classes: tuple[int, ...] = (0, 1)
    method: str = "l1_sparse"
    preset: str = "digits"
    method_config: object | None = None
    retrain_config: object | None = None
    linear_probe: TrainConfig = field(
        default_factory=lambda: TrainConfig(epochs=30, lr=0.1, batch_size=128, schedule="cosine", augment=False)
    )
    fine_tune: TrainConfig = field(
        default_factory=lambda: TrainConfig(epochs=10, lr=0.01, batch_size=128, schedule="constant", augment=False)
    )
    cross_dataset: bool = False

    def __post_init__(self) -> None:
        if not self.target_classes:
            raise ConfigError("target_classes must not be empty")
        if not self.cross_dataset and set(self.source_classes) & set(self.target_classes):
            raise ConfigError(f"source {self.source_classes} and target {self.target_classes} classes must not overlap")
        if not self.forget_classes or not set(self.forget_classes) < set(self.source_classes):
            raise ConfigError(
                f"forget_classes {self.forget_classes} must be a non-empty proper "
                f"subset of source_classes {self.source_classes}"
            )


@dataclass(frozen=True)
class TransferPreset:
    """A named source -> target pairing: the data sets, their classes and the source model's recipe.

    Args:
        source: the source data set (`unlearn.data.DATASETS`); None = the prepared one (params' data.preset).
        target: the target data set; None = the source's own data set (its `target_classes`).
        recipe: the preset (`unlearn.presets`) that trains the source model; None = the prepared data set's.
    """

    source: str | None
    target: str | None
    source_classes: tuple[int, ...]
    target_classes: tuple[int, ...]
    forget_classes: tuple[int, ...]
    recipe: str | None = None


# CIFAR-100's two vehicle superclasses (fine labels: bicycle, bus, lawn_mower, motorcycle, pickup_truck,
# rocket, streetcar, tank, tractor, train). Four of CIFAR-10's classes are vehicles, so forgetting these
# is the case where the source's unlearned classes should matter most to the target task.
CIFAR100_VEHICLES = (8, 13, 41, 48, 58, 69, 81, 85, 89, 90)

TRANSFER_PRESETS: dict[str, TransferPreset] = {
    # the prepared data set's classes split in two (on digits: 0-4 -> 5-9), forgetting 0 and 1
    "within": TransferPreset(None, None, (0, 1, 2, 3, 4), (5, 6, 7, 8, 9), (0, 1)),
    # CIFAR-100 (every class, the vehicles forgotten) -> CIFAR-10 (every class), ResNet-18
    "cifar100_to_cifar10": TransferPreset(
        "cifar100", "cifar10", tuple(range(100)), tuple(range(10)), CIFAR100_VEHICLES, recipe="cifar100"
    ),
}


def split_classes(num_classes: int) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """(source, target, forget) classes of a data set of `num_classes` classes split in two, as `within` splits digits.

    The first ceil(C/2) classes are the source task, the rest the target task; the first two
    fifths of the source's (at least one, never all) are forgotten. Ten classes give `within`'s
    0-4 -> 5-9, forgetting 0 and 1; three give 0, 1 -> 2, forgetting 0.
    """
    if num_classes < 3:
        raise ConfigError(
            f"a transfer within one data set needs at least 3 classes (2 for the source task, 1 for the "
            f"target), found {num_classes}"
        )
    cut = (num_classes + 1) // 2
    forget = min(cut - 1, max(1, round(cut * 2 / 5)))
    return tuple(range(cut)), tuple(range(cut, num_classes)), tuple(range(forget))


def get_transfer_preset(name: str) -> TransferPreset:
    """The transfer preset called `name`."""
    try:
        return TRANSFER_PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown transfer preset {name!r}; known: {', '.join(TRANSFER_PRESETS)}") from None


@dataclass
class Transferred:
    """A transferred model, its target test accuracy (percent) and the transfer's wall time."""

    model: nn.Module
    accuracy: float
    seconds: float


@dataclass(frozen=True)
class TransferRow:
    """One source model transferred one way.

    Args:
        source: "original", "unlearned" or "retrained".
        mode: "linear_probe" or "fine_tune".
        unlearn_seconds: wall time that made the source (0 for the original).
    """

    source: str
    mode: str
    target_accuracy: float
    seconds: float
    unlearn_seconds: float


def class_subset(bundle: DataBundle, classes: Sequence[int], relabel: bool = True) -> DataBundle:
    """The bundle restricted to `classes`; with `relabel`, class classes[i] becomes label i.

    Normalisation statistics stay the parent's, so the models' inputs are scaled alike.
    """
    classes = [int(c) for c in classes]
    if len(set(classes)) != len(classes) or any(not 0 <= c < bundle.num_classes for c in classes):
        raise ConfigError(f"classes {classes} must be distinct and in 0..{bundle.num_classes - 1}")
    lookup = torch.full((bundle.num_classes,), -1, dtype=torch.long)
    lookup[classes] = torch.arange(len(classes)) if relabel else torch.tensor(classes)

    def part(data: TensorSet | None) -> TensorSet | None:
        if data is None:
            return None
        rows = torch.isin(data.labels.cpu(), torch.tensor(classes)).nonzero().flatten()
        subset = data.subset(rows)
        return subset.with_labels(lookup[subset.labels.cpu()])

    return replace(
        bundle,
        train=part(bundle.train),
        test=part(bundle.test),
        val=part(bundle.val),
        num_classes=len(classes) if relabel else bundle.num_classes,
        extra={**bundle.extra, "classes": classes, "relabelled": relabel},
    )


def _last_linear(model: nn.Module) -> tuple[str, nn.Linear]:
    """(qualified name, layer) of the last nn.Linear in `model`: the classification head."""
    found = [(name, module) for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not found:
        raise ConfigError(f"{type(model).__name__} has no nn.Linear head to replace")
    return found[-1]


def _with_head(model: nn.Module, head: nn.Module) -> nn.Module:
    """A copy of `model` with its last nn.Linear swapped for `head`."""
    model = copy.deepcopy(model)
    name, _ = _last_linear(model)
    parent_name, _, attribute = name.rpartition(".")
    setattr(model.get_submodule(parent_name), attribute, head)
    return model


def replace_head(model: nn.Module, num_classes: int, seed: int = 0) -> nn.Module:
    """A copy of `model` whose last nn.Linear is a fresh (seeded) one with `num_classes` outputs."""
    _, layer = _last_linear(model)
    torch.manual_seed(seed)
    head = nn.Linear(layer.in_features, num_classes).to(layer.weight.device)
    return _with_head(model, head)


def features(model: nn.Module, data: TensorSet, device: torch.device) -> TensorSet:
    """`data` as the eval-mode penultimate features of `model`, shaped (N, D, 1, 1); same labels, ids."""
    outputs = predict(_with_head(model, nn.Identity()), data, device)
    return TensorSet(outputs.flatten(1)[:, :, None, None], data.labels.cpu(), data.ids)


def linear_probe(
    model: nn.Module,
    target_train: TensorSet,
    target_test: TensorSet,
    num_classes: int,
    config: TrainConfig,
    device: torch.device,
) -> Transferred:
    """Train a new linear head on `model`'s frozen features; the returned model is backbone + head."""
    if config.augment:
        raise ConfigError("a linear probe trains on precomputed features: set augment=False")
    _, layer = _last_linear(model)
    with Stopwatch(device) as clock:
        train_features = features(model, target_train, device)
        torch.manual_seed(config.seed)
        head = nn.Sequential(nn.Flatten(), nn.Linear(layer.in_features, num_classes))
        fit(head, train_features, config, device)
    target_accuracy = accuracy(head, features(model, target_test, device), device)
    return Transferred(_with_head(model, head[1].to(layer.weight.device)), target_accuracy, clock.seconds)


def fine_tune(
    model: nn.Module,
    target_train: TensorSet,
    target_test: TensorSet,
    num_classes: int,
    config: TrainConfig,
    device: torch.device,
    *,
    masks: Masks | None = None,
) -> Transferred:
    """Train a copy of `model` with a new head, every layer included, on the target task.

    Args:
        masks: the source's pruning masks, kept so a sparse source stays sparse.
    """
    transferred = replace_head(model, num_classes, seed=config.seed)
    with Stopwatch(device) as clock:
        fit(transferred, target_train, config, device, masks=masks)
    return Transferred(transferred, accuracy(transferred, target_test, device), clock.seconds)


def transfer(
    model: nn.Module,
    target: DataBundle,
    mode: str,
    config: TransferConfig,
    device: torch.device,
    *,
    masks: Masks | None = None,
) -> Transferred:
    """Transfer `model` to the `target` task by `mode` ("linear_probe" or "fine_tune")."""
    if mode == "linear_probe":
        return linear_probe(model, target.train, target.test, target.num_classes, config.linear_probe, device)
    if mode == "fine_tune":
        return fine_tune(model, target.train, target.test, target.num_classes, config.fine_tune, device, masks=masks)
    raise ConfigError(f"unknown transfer mode {mode!r}; known: {', '.join(MODES)}")


def source_and_target(
    bundle: DataBundle, config: TransferConfig, target_bundle: DataBundle | None = None
) -> tuple[DataBundle, DataBundle]:
    """The source task (source classes, relabelled 0..k-1) and the target task (likewise).

    Args:
        target_bundle: the target's data set when it is not `bundle` (needs `config.cross_dataset`);
            its images must have the source's shape, as the source model takes them.
    """
    if target_bundle is None:
        if config.cross_dataset:
            raise ConfigError("a cross-data-set transfer needs the target data set")
        target_bundle = bundle
    elif target_bundle.input_shape != bundle.input_shape:
        raise ConfigError(
            f"target {target_bundle.name} images are {target_bundle.input_shape}, but the source model "
            f"takes {bundle.name}'s {bundle.input_shape}"
        )
    return class_subset(bundle, config.source_classes), class_subset(target_bundle, config.target_classes)


def unlearn_sources(
    original: nn.Module,
    source: DataBundle,
    config: TransferConfig,
    device: torch.device,
    *,
    masks: Masks | None = None,
) -> dict:
    """{"unlearned": ..., "retrained": ...} `Unlearned` results for forgetting `forget_classes`."""
    position = {c: i for i, c in enumerate(config.source_classes)}
    split = class_wise(source, [position[c] for c in config.forget_classes])
    retain, forget = split.retain_set(source), split.forget_set(source)
    method_config = config.method_config or default_config(config.method, config.preset)
    retrain_config = config.retrain_config or default_config("retrain", config.preset)
    return {
        "unlearned": run_method(config.method, original, retain, forget, device, masks=masks, config=method_config),
        "retrained": run_method("retrain", original, retain, forget, device, masks=masks, config=retrain_config),
    }


def transfer_study(
    original: nn.Module,
    source: DataBundle,
    target: DataBundle,
    config: TransferConfig,
    device: torch.device,
    *,
    masks: Masks | None = None,
) -> list[TransferRow]:
    """Transfer the original, unlearned and retrained sources to `target` both ways; one row each.

    Args:
        original: a model trained on `source` (the source task from `source_and_target`).
        masks: the original's pruning masks, kept through unlearning and fine-tuning.
    """
    made = unlearn_sources(original, source, config, device, masks=masks)
    models = {"original": (original, 0.0), **{k: (v.model, v.seconds) for k, v in made.items()}}
    rows = []
    for name in SOURCES:
        model, unlearn_seconds = models[name]
        for mode in MODES:
            result = transfer(model, target, mode, config, device, masks=masks)
            rows.append(TransferRow(name, mode, result.accuracy, result.seconds, unlearn_seconds))
    return rows
