"""RL: random labelling. Df with fresh uniform random labels each epoch, shuffled into Dr, trained with CE."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from unlearn.data import TensorSet, concatenate
from unlearn.device import Stopwatch
from unlearn.errors import ConfigError
from unlearn.masks import Masks
from unlearn.methods.base import IterativeConfig, Unlearned, working_copy
from unlearn.methods.space import EPOCHS, LR_SHARE, STEPS_SHARE, LogUniform, PresetSearchSpaces, SearchSpace
from unlearn.methods.spec import MethodSpec
from unlearn.train import History, fit


@dataclass(frozen=True)
class Config(IterativeConfig):
    """Defaults of the official repository's RL before its removal: 10 epochs, lr 0.01, batch 256."""


# digits, class 0 from the preset's theta_o, UA / RA / TA: lr 0.01 88.7 / 100 / 99.1, lr 0.05
# 73.9 / 100 / 98.8. UA stays near 90: a uniform random label is the true one one time in ten.
PRESET_DEFAULTS: dict[str, dict] = {
    "cifar10": {"augment": True},
    "digits": {"batch_size": 128, "epochs": 3},  # within tune's budget (0.2 of Retrain)
}

# `unlearn tune`'s ranges, as shares of the recipe (space.py): FT's lr and run length.
SEARCH_SPACE: SearchSpace = {"lr": LR_SHARE, "epochs": STEPS_SHARE}
# digits: FT does not forget a class at lr 0.01-0.05, so RL may go up to lr
# 0.2, where fine-tuning starts to overwrite what theta_o knew; up to 10 epochs (absolute, as tuned).
PRESET_SEARCH_SPACES: PresetSearchSpaces = {"digits": {"lr": LogUniform(1e-3, 0.2), "epochs": EPOCHS}}


def output_classes(model: nn.Module) -> int:
    """Number of classes the model predicts: the width of its last linear layer."""
    linears = [module for module in model.modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise ConfigError("random labelling needs a model whose last layer is nn.Linear")
    return linears[-1].out_features


def random_labeller(forget_size: int, retain_labels: Tensor, classes: int, seed: int) -> Callable[[int], Tensor]:
    """Labels for Df then Dr at an epoch: Df's drawn uniformly afresh, seeded by (seed, epoch)."""

    def labels(epoch: int) -> Tensor:
        generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
        forget_labels = torch.randint(classes, (forget_size,), generator=generator)
        return torch.cat([forget_labels, retain_labels.cpu()])

    return labels


def fit_random_labels(
    model: nn.Module,
    retain_set: TensorSet,
    forget_set: TensorSet,
    config: IterativeConfig,
    device: torch.device,
    *,
    masks: Masks | None = None,
    after_step: Callable[[nn.Module], None] | None = None,
) -> History:
    """Train `model` in place with CE on Df (random labels, new each epoch) and Dr, shuffled together."""
    labeller = random_labeller(len(forget_set), retain_set.labels, output_classes(model), config.seed)
    return fit(
        model,
        concatenate(forget_set, retain_set),
        config.train_config(),
        device,
        masks=masks,
        epoch_labels=labeller,
        after_step=after_step,
    )


def run(
    model: nn.Module,
    retain_set: TensorSet,
    forget_set: TensorSet,
    config: Config,
    device: torch.device,
    *,
    masks: Masks | None = None,
) -> Unlearned:
    """Random-label `forget_set` and fine-tune a copy of `model` on it together with `retain_set`."""
    model = working_copy(model)
    with Stopwatch(device) as clock:
        history = fit_random_labels(model, retain_set, forget_set, config, device, masks=masks)
    return Unlearned(model, clock.seconds, history)


SPEC = MethodSpec("rl", "RL", Config, PRESET_DEFAULTS, run, SEARCH_SPACE, PRESET_SEARCH_SPACES)
