"""Weight masks: plain {parameter name: 0/1 tensor} dicts that stay applied through training."""

from __future__ import annotations

import torch
from torch import Tensor, nn

Masks = dict[str, Tensor]


def prunable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The weights pruning acts on: every Conv2d weight, never Linear, BatchNorm or biases."""
    return {
        f"{name}.weight" if name else "weight": module.weight
        for name, module in model.named_modules()
        if isinstance(module, nn.Conv2d)
    }


@torch.no_grad()
def apply_masks(model: nn.Module, masks: Masks | None) -> None:
    """Zero every masked weight in place."""
    if not masks:
        return
    parameters = dict(model.named_parameters())
    for name, mask in masks.items():
        parameters[name].mul_(mask)


def mask_gradients(model: nn.Module, masks: Masks | None) -> None:
    """Zero the gradients of masked weights, so momentum never builds up on them."""
    if not masks:
        return
    parameters = dict(model.named_parameters())
    for name, mask in masks.items():
        grad = parameters[name].grad
        if grad is not None:
            grad.mul_(mask)


def masks_to(masks: Masks | None, device: torch.device | str) -> Masks | None:
    """The same masks on `device`."""
    return None if masks is None else {name: m.to(device) for name, m in masks.items()}


def sparsity(model: nn.Module) -> float:
    """Share of Conv2d weights that are exactly zero (the paper's sparsity, over conv weights)."""
    weights = prunable_parameters(model).values()
    total = sum(w.numel() for w in weights)
    zeros = sum(int((w == 0).sum()) for w in weights)
    return zeros / total if total else 0.0
