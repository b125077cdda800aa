"""Named recipes: data set, architecture and training recipe for the original model.

`cifar10` is the paper's recipe. `digits`, the embedded default, is
derived from it: same optimiser and milestones at 50%/75%, scaled to 8x8 images and a
few seconds on two CPU cores (no augmentation: crops and flips change what a digit is).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from unlearn.errors import ConfigError
from unlearn.train import TrainConfig


@dataclass(frozen=True)
class Preset:
    """What trains the original model of a data set."""

    name: str
    dataset: str
    arch: str
    train: TrainConfig
    model_options: dict = field(default_factory=dict)
    rewind_epoch: int = 8  # OMP / IMP weight and LR rewinding point
    # Reference models of the membership audit (unlearn.audit), each a training run on half the data.
    audit_references: int = 32


_CIFAR10 = Preset("cifar10", "cifar10", "resnet18", TrainConfig())

PRESETS: dict[str, Preset] = {
    "cifar10": _CIFAR10,
    "cifar100": replace(_CIFAR10, name="cifar100", dataset="cifar100"),
    "svhn": replace(_CIFAR10, name="svhn", dataset="svhn", train=replace(_CIFAR10.train, epochs=160, augment=False)),
    # 182 -> 20 epochs, batch 256 -> 128 (1,437 samples), lr 0.1 -> 0.05, rewind 8/182 -> 1/20.
    "digits": Preset(
        "digits",
        "digits",
        "digits_resnet",
        replace(_CIFAR10.train, epochs=20, batch_size=128, lr=0.05, augment=False),
        model_options={"width": 32},
        rewind_epoch=1,
        audit_references=16,
    ),
}


def get_preset(name: str) -> Preset:
    """The preset called `name`."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}") from None
