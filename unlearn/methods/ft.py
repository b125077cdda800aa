"""FT: fine-tune the original model on the retain set Dr (constant LR)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from unlearn.data import TensorSet
from unlearn.device import Stopwatch
from unlearn.masks import Masks
from unlearn.methods.base import IterativeConfig, Unlearned, working_copy
from unlearn.methods.space import LR_SHARE, STEPS_SHARE, LogUniform, PresetSearchSpaces, SearchSpace
from unlearn.methods.spec import MethodSpec
from unlearn.train import fit


@dataclass(frozen=True)
class Config(IterativeConfig):
    """Paper defaults (CIFAR-10): 10 epochs, lr 0.01, batch 256."""


# digits: the paper's proportion of Retrain's epochs (10 of 182 is 1 of digits' 20), at batch 32
# (41 steps over Dr instead of 11) with the LR annealed to zero (cosine) so that the last steps
# settle RA. One epoch at batch 128 or 64 forgot no class without wrecking RA; at batch 32 and
# lr 0.2 the gap to Retrain was 1.1-5.8 on classes 0, 3 and 5, dense and 95% sparse, at
# 0.07-0.09x Retrain's time (benchmarks/unlearn_cost.py; docs/architecture.md, "Choices").
# `unlearn tune` refines lr per scenario and sparsity.
PRESET_DEFAULTS: dict[str, dict] = {
    "cifar10": {"augment": True},
    "digits": {"batch_size": 32, "epochs": 1, "lr": 0.2, "lr_schedule": "cosine"},
}

# `unlearn tune`'s ranges, as shares of the recipe (space.py): the paper's lr range widened, and its run length.
SEARCH_SPACE: SearchSpace = {"lr": LR_SHARE, "epochs": STEPS_SHARE}
# digits: FT does not forget a class at lr 0.01-0.05, so lr may go up to 0.5,
# where fine-tuning starts to overwrite what theta_o knew. Its one epoch is not searched (None): the
# paper's share of Retrain's epochs, issue 3's 8% of its time (a second epoch at batch 32 doubles that).
PRESET_SEARCH_SPACES: PresetSearchSpaces = {"digits": {"lr": LogUniform(1e-3, 0.5), "epochs": None}}


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


SPEC = MethodSpec("ft", "FT", Config, PRESET_DEFAULTS, run, SEARCH_SPACE, PRESET_SEARCH_SPACES)
