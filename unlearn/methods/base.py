"""What every unlearning method shares: its result type and the iterative-method recipe."""

from __future__ import annotations

import copy
from dataclasses import dataclass

from torch import nn

from unlearn.train import History, TrainConfig


@dataclass
class Unlearned:
    """An unlearned model (a new object: the input model is never changed) and its wall time."""

    model: nn.Module
    seconds: float
    history: History | None = None


@dataclass(frozen=True)
class IterativeConfig:
    """SGD settings shared by the iterative methods (constant LR, as the official code's short runs)."""

    epochs: int = 10
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 256
    augment: bool = False
    seed: int = 0

    def train_config(self, **changes) -> TrainConfig:
        """The `TrainConfig` these settings describe (constant schedule unless changed)."""
        values = dict(
            epochs=self.epochs,
            lr=self.lr,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            batch_size=self.batch_size,
            schedule="constant",
            augment=self.augment,
            seed=self.seed,
        )
        return TrainConfig(**{**values, **changes})


def working_copy(model: nn.Module) -> nn.Module:
    """A deep copy to unlearn on, so the caller's model stays the original."""
    return copy.deepcopy(model)
