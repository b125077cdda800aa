"""What every unlearning method shares: its result type and the iterative-method recipe."""

from __future__ import annotations

import copy
from dataclasses import dataclass

from torch import nn

from unlearn.errors import ConfigError
from unlearn.train import SCHEDULES, History, TrainConfig


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

    epochs: int = 10
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 256
    augment: bool = False
    seed: int = 0
    lr_schedule: str = "constant"

    def __post_init__(self) -> None:
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
