"""FT: fine-tune the original model on the retain set Dr (constant LR)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from unlearn.data import TensorSet
from unlearn.device import Stopwatch
from unlearn.masks import Masks
from unlearn.methods.base import IterativeConfig, Unlearned, working_copy
from unlearn.train import fit


@dataclass(frozen=True)
class Config(IterativeConfig):
    """Paper defaults (CIFAR-10): 10 epochs, lr 0.01, batch 256."""


# digits: 3 epochs, not the paper's 10. Retrain is 20 epochs here (182 on CIFAR), so 10 would cost
# half a Retrain; 3 stay within `unlearn tune`'s budget (0.2) and finding (c)'s quarter. The paper's
# ratio (20 x 10/182 = 1 epoch) forgets no class on digits without wrecking RA (docs/architecture.md).
# Batch 128 for 1,437 samples (PAPER.md section 0); lr is tuned by `unlearn tune`.
PRESET_DEFAULTS: dict[str, dict] = {"cifar10": {"augment": True}, "digits": {"batch_size": 128, "epochs": 3}}


def run(
    model: nn.Module,
    retain_set: TensorSet,
    forget_set: TensorSet,
    config: Config,
    device: torch.device,
    *,
    masks: Masks | None = None,
) -> Unlearned:
    """Fine-tune a copy of `model` on `retain_set`; `forget_set` is not read."""
    model = working_copy(model)
    with Stopwatch(device) as clock:
        history = fit(model, retain_set, config.train_config(), device, masks=masks)
    return Unlearned(model, clock.seconds, history)
