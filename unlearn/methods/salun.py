"""SalUn: random labelling restricted to the weights most salient for forgetting.

theta_u = m_S * (theta_o + delta) + (1 - m_S) * theta_o, with m_S the top-rho fraction of
|grad of -CE on Df at theta_o|, ranked globally across every parameter tensor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from unlearn.data import TensorSet, batches
from unlearn.device import Stopwatch
from unlearn.errors import ConfigError
from unlearn.masks import Masks, apply_masks, masks_to
from unlearn.methods.base import IterativeConfig, PositiveFloat, Unlearned, working_copy
from unlearn.methods.rl import fit_random_labels
from unlearn.methods.space import EPOCHS, LR_SHARE, STEPS_SHARE, LogUniform, PresetSearchSpaces, SearchSpace, Uniform
from unlearn.methods.spec import MethodSpec
from unlearn.train import prepare_model


@dataclass(frozen=True)
class Config(IterativeConfig):
    """Saliency fraction `rho` plus RL's settings.

    Defaults: the SalUn README's CIFAR-10 example (rho 0.5, 10 epochs, lr 0.013, batch 256).
    """

    rho: float = 0.5
    lr: PositiveFloat = 0.013

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.rho <= 1:
            raise ConfigError(f"rho is the fraction of weights that may move, in (0, 1]; got {self.rho}")


# digits, class 0 from the preset's theta_o, rho 0.5, lr 0.013: UA 89.4 / RA 100 / TA 99.1 (as RL).
PRESET_DEFAULTS: dict[str, dict] = {
    "cifar10": {"augment": True},
    "digits": {"batch_size": 128, "epochs": 3},  # within tune's budget (0.2 of Retrain)
}

# `unlearn tune`'s ranges: FT's lr range, the saliency fraction rho over the
# SalUn paper's values and up to 10 epochs.
SEARCH_SPACE: SearchSpace = {"lr": LR_SHARE, "rho": Uniform(0.1, 0.9), "epochs": STEPS_SHARE}
# digits: lr may go up to 0.2, as RL's (rl.py); up to 10 epochs (absolute, as tuned).
PRESET_SEARCH_SPACES: PresetSearchSpaces = {"digits": {"lr": LogUniform(1e-3, 0.2), "epochs": EPOCHS}}


def forget_gradients(
    model: nn.Module, forget_set: TensorSet, batch_size: int, device: torch.device
) -> dict[str, torch.Tensor]:
    """Sum over Df's batches of the gradient of -CE (batch mean), in eval mode; zeros where unused."""
    model.eval()
    model.zero_grad(set_to_none=True)
    for inputs, labels in batches(forget_set.to(device), batch_size):
        (-F.cross_entropy(model(inputs), labels)).backward()
    gradients = {
        name: torch.zeros_like(p) if p.grad is None else p.grad.detach().clone() for name, p in model.named_parameters()
    }
    model.zero_grad(set_to_none=True)
    return gradients


def top_fraction(scores: dict[str, torch.Tensor], rho: float) -> Masks:
    """0/1 masks marking the `rho` fraction of entries with the largest scores, ranked globally."""
    flat = torch.cat([score.flatten() for score in scores.values()])
    chosen = torch.zeros_like(flat, dtype=torch.bool)
    chosen[torch.topk(flat, int(len(flat) * rho), sorted=False).indices] = True
    sizes = [score.numel() for score in scores.values()]
    return {
        name: part.view_as(score).float()
        for (name, score), part in zip(scores.items(), chosen.split(sizes), strict=True)
    }


def saliency_masks(
    model: nn.Module,
    forget_set: TensorSet,
    rho: float,
    batch_size: int,
    device: torch.device,
    masks: Masks | None = None,
) -> Masks:
    """SalUn's m_S over every parameter; pruned weights score 0, since they cannot move anyway."""
    gradients = forget_gradients(model, forget_set, batch_size, device)
    for name, mask in (masks or {}).items():
        gradients[name].mul_(mask)
    return top_fraction({name: grad.abs() for name, grad in gradients.items()}, rho)


def freeze_outside(model: nn.Module, salient: Masks) -> Callable[[nn.Module], None]:
    """An after-step hook that puts every non-salient weight back to its value now (theta_o).

    Masking their gradients alone would not do: weight decay and momentum still move them
    (SalUn PR #33). SGD is elementwise, so restoring after every step gives exactly
    m_S * (theta_o + delta) + (1 - m_S) * theta_o, the same as masking the gradients too.
    """
    parameters = dict(model.named_parameters())
    frozen = {
        name: (mask.bool(), parameters[name].detach().clone()) for name, mask in salient.items() if not bool(mask.all())
    }

    @torch.no_grad()
    def restore(trained: nn.Module) -> None:
        current = dict(trained.named_parameters())
        for name, (keep, original) in frozen.items():
            current[name].copy_(torch.where(keep, current[name], original))

    return restore


def run(
    model: nn.Module,
    retain_set: TensorSet,
    forget_set: TensorSet,
    config: Config,
    device: torch.device,
    *,
    masks: Masks | None = None,
) -> Unlearned:
    """Saliency mask from Df at theta_o, then random labelling that moves only the salient weights.

    The wall time includes the saliency mask (SalUn's repository computes it in a separate script).
    """
    model = prepare_model(working_copy(model), device)
    masks = masks_to(masks, device)
    with Stopwatch(device) as clock:
        apply_masks(model, masks)  # theta_o as the pruned model it is, so restored weights stay pruned
        salient = saliency_masks(model, forget_set, config.rho, config.batch_size, device, masks)
        history = fit_random_labels(
            model, retain_set, forget_set, config, device, masks=masks, after_step=freeze_outside(model, salient)
        )
    return Unlearned(model, clock.seconds, history)


SPEC = MethodSpec("salun", "SalUn", Config, PRESET_DEFAULTS, run, SEARCH_SPACE, PRESET_SEARCH_SPACES)
