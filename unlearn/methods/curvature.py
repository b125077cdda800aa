"""Per-sample gradients and curvature pieces shared by IU (`iu`) and FF (`ff`).

Both methods need gradients of one sample at a time. `torch.func` computes a whole batch
of them in one vectorised pass (functional_call + vmap), instead of one backward per
sample as the official code does. The model must be in eval mode: BatchNorm then uses its
running statistics, so a sample's gradient does not depend on the rest of its batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, jacrev, vmap

from unlearn.errors import ConfigError
from unlearn.masks import Masks

Parameters = dict[str, Tensor]


def trainable_parameters(model: nn.Module) -> Parameters:
    """Detached copies of the weights that train (the tensors the methods differentiate)."""
    return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}


def _buffers(model: nn.Module) -> Parameters:
    return {name: b.detach() for name, b in model.named_buffers()}


def _logits(model: nn.Module, params: Parameters, buffers: Parameters, sample: Tensor) -> Tensor:
    """Logits (C,) of one sample (C, H, W) under `params`."""
    return functional_call(model, (params, buffers), (sample.unsqueeze(0),)).squeeze(0)


def per_sample_loss_gradients(model: nn.Module, inputs: Tensor, labels: Tensor) -> Parameters:
    """Gradient of CE(x_i, y_i) for every sample: {name: (B, *shape)}."""
    params, buffers = trainable_parameters(model), _buffers(model)

    def loss(params: Parameters, sample: Tensor, label: Tensor) -> Tensor:
        return F.cross_entropy(_logits(model, params, buffers, sample), label)

    return vmap(grad(loss), in_dims=(None, 0, 0))(params, inputs, labels)


def per_sample_log_prob_jacobians(model: nn.Module, inputs: Tensor) -> tuple[Parameters, Tensor]:
    """Gradients of log p(y|x_i) for every sample and every class y, and p(y|x_i).

    Returns ({name: (B, C, *shape)}, probabilities (B, C)).
    """
    params, buffers = trainable_parameters(model), _buffers(model)

    def log_probs(params: Parameters, sample: Tensor) -> tuple[Tensor, Tensor]:
        values = torch.log_softmax(_logits(model, params, buffers, sample), dim=-1)
        return values, values.detach()

    jacobians, log_p = vmap(jacrev(log_probs, has_aux=True), in_dims=(None, 0))(params, inputs)
    return jacobians, log_p.exp()


def flatten_rows(per_sample: Parameters, names: Sequence[str]) -> Tensor:
    """{name: (B, *shape)} as one (B, d) matrix, tensors in `names` order."""
    return torch.cat([per_sample[name].flatten(1) for name in names], dim=1)


def flat_mask(params: Parameters, masks: Masks | None) -> Tensor | None:
    """A (d,) 0/1 vector over `params` in order: 0 where a mask prunes the weight."""
    if not masks:
        return None
    parts = [
        masks[name].flatten().to(p.device, p.dtype) if name in masks else torch.ones_like(p).flatten()
        for name, p in params.items()
    ]
    return torch.cat(parts)


def inverse_fisher_product(vector: Tensor, gradient_blocks: Sequence[Callable[[], Tensor]], damping: float) -> Tensor:
    """(damping I + G^T G / m)^{-1} vector, exactly, by the Woodbury identity.

    G is the (m, d) matrix of per-sample gradients, handed over as row blocks that are
    computed on demand, so at most two blocks are in memory at once (a block is recomputed
    where G does not fit). With F = damping I + G^T G / m:

        F^{-1} v = (v - G^T (damping m I + G G^T)^{-1} G v) / damping.

    Only the m x m system is solved (in float64): O(m^2 d) work, no d x d matrix.
    """
    if damping <= 0:
        raise ConfigError(f"damping must be positive, got {damping}")
    gram, projected, only_block = _gram_and_projection(vector, gradient_blocks)
    count = gram.shape[0]
    system = gram.double() + damping * count * torch.eye(count, dtype=torch.float64, device=gram.device)
    weights = torch.linalg.solve(system, projected.double()).to(vector.dtype)
    correction = torch.zeros_like(vector)
    start = 0
    for block in gradient_blocks:
        rows = only_block if only_block is not None else block()
        correction += rows.T @ weights[start : start + len(rows)]
        start += len(rows)
    return (vector - correction) / damping


def _gram_and_projection(
    vector: Tensor,
    gradient_blocks: Sequence[Callable[[], Tensor]],
) -> tuple[Tensor, Tensor, Tensor | None]:
    """G G^T, G v and, when G is a single block, G itself (so it is not recomputed)."""
    count = len(gradient_blocks)
    parts: dict[tuple[int, int], Tensor] = {}
    projected = []
    left = None
    for i, block in enumerate(gradient_blocks):
        left = block()
        projected.append(left @ vector)
        parts[i, i] = left @ left.T
        for j in range(i + 1, count):
            parts[i, j] = left @ gradient_blocks[j]().T
            parts[j, i] = parts[i, j].T
    gram = torch.cat([torch.cat([parts[i, j] for j in range(count)], dim=1) for i in range(count)])
    return gram, torch.cat(projected), left if count == 1 else None
