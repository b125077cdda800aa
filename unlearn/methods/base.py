"""What every unlearning method shares: its result type and the iterative-method recipe."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Annotated

from torch import nn

from unlearn.config import Range, check_config
from unlearn.errors import ConfigError
from unlearn.train import SCHEDULES, History, TrainConfig

# Field types with the bounds the training loop and SGD enforce, checked when a config is made
# (`unlearn.config.check_config`) instead of when the method first runs.
PositiveInt = Annotated[int, Range(ge=1)]
PositiveFloat = Annotated[float, Range(gt=0)]
NonNegativeFloat = Annotated[float, Range(ge=0)]


def method_of(config: object) -> str:
    """The method a config belongs to: the name of the module defining its class (`ft`)."""
    return type(config).__module__.rsplit(".", 1)[-1]


def check_method_config(config: object) -> None:
    """Check every setting of a method's config against its annotation (`SettingError` naming it)."""
    check_config(config, method_of(config))


@dataclass
class Unlearned:
    """An unlearned model (a new object: the input model is never changed) and its wall time."""

    model: nn.Module
    seconds: float
    history: History | None = None


@dataclass(frozen=True)
class IterativeConfig:
    """SGD settings shared by the iterative methods.

    `lr_schedule` is constant by default, as in the official code's short runs (its milestones
    lie past their last epoch); "cosine" anneals the LR to zero over the run (digits' one-epoch
    FT and l1-sparse, see ft.py).
    """

    epochs: PositiveInt = 10
    lr: PositiveFloat = 0.01
    momentum: NonNegativeFloat = 0.9
    weight_decay: NonNegativeFloat = 5e-4
    batch_size: PositiveInt = 256
    augment: bool = False
    seed: int = 0
    lr_schedule: str = "constant"

    def __post_init__(self) -> None:
        check_method_config(self)
        if self.lr_schedule not in SCHEDULES:
            raise ConfigError(f"lr_schedule {self.lr_schedule!r} is not one of {SCHEDULES}")

    def train_config(self, **changes) -> TrainConfig:
        """The `TrainConfig` these settings describe, with `changes` applied."""
        values = dict(
            epochs=self.epochs,
            lr=self.lr,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            batch_size=self.batch_size,
            schedule=self.lr_schedule,
            augment=self.augment,
            seed=self.seed,
        )
        return TrainConfig(**{**values, **changes})


def working_copy(model: nn.Module) -> nn.Module:
    """A deep copy to unlearn on, so the caller's model stays the original."""
    return copy.deepcopy(model)
