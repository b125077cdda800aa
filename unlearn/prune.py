"""Model sparsity before unlearning: OMP, IMP and SynFlow pruning of conv weights.

Pruning is global and unstructured over every Conv2d weight (never Linear, BatchNorm or
biases). A mask is a plain {parameter name: 0/1 tensor} dict; `fit` keeps masked weights at
exactly zero through every later training step.
"""

from __future__ import annotations

import copy
import itertools
import logging
import time
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from unlearn.data import DataBundle, TensorSet
from unlearn.errors import ConfigError
from unlearn.masks import Masks, prunable_parameters
from unlearn.masks import sparsity as model_sparsity
from unlearn.models import Classifier
from unlearn.original import new_model, original_config
from unlearn.presets import Preset
from unlearn.train import History, fit

log = logging.getLogger(__name__)

METHODS = ("omp", "imp", "synflow")

StateDict = dict[str, Tensor]


@dataclass
class PruneResult:
    """A sparse original model and how it was made.

    Args:
        model: the sparse model, trained with `masks` applied.
        masks: conv weight name -> 0/1 tensor (0 = pruned).
        sparsity: achieved share of zero conv weights in `model` (a fraction, not percent).
        history: training of the sparse model (the last round for IMP).
        seconds: wall time of pruning and sparse training, dense training excluded.
        dense_model: the dense model OMP / IMP pruned (None for SynFlow).
        dense_history: its training, when this call trained it.
        rewind_state: the weights OMP / IMP rewound to.
        round_sparsities: target sparsity of each pruning round.
    """

    method: str
    model: nn.Module
    masks: Masks
    sparsity: float
    history: History
    seconds: float
    dense_model: nn.Module | None = None
    dense_history: History | None = None
    rewind_state: StateDict | None = None
    round_sparsities: tuple[float, ...] = ()


def check_sparsity(sparsity: float) -> None:
    """Raise `ConfigError` unless 0 <= sparsity < 1 (a fraction of the conv weights)."""
    if not 0 <= sparsity < 1:
        raise ConfigError(f"target sparsity must be a fraction in [0, 1), got {sparsity!r}")


def mask_sparsity(masks: Masks) -> float:
    """Share of masked-out entries over all masks."""
    total = sum(mask.numel() for mask in masks.values())
    return sum(int((mask == 0).sum()) for mask in masks.values()) / total if total else 0.0


def global_masks(scores: dict[str, Tensor], sparsity: float, masks: Masks | None = None) -> Masks:
    """Mask the k = round(sparsity * total) lowest scores across all tensors at once.

    Args:
        scores: non-negative importance per weight, keyed by parameter name.
        masks: an earlier mask; weights it prunes stay pruned (they count among the k).
    """
    check_sparsity(sparsity)
    names = list(scores)
    flat = torch.cat([scores[name].detach().flatten().to(torch.float64) for name in names])
    if masks:
        pruned = torch.cat([masks[name].flatten() for name in names]).to(flat.device) == 0
        if int(pruned.sum()) > round(sparsity * flat.numel()):
            raise ConfigError(f"cannot prune to {sparsity:.4f}: the given masks already prune more")
        flat = torch.where(pruned, -1.0, flat)  # below every real score, so pruned first
    count = round(sparsity * flat.numel())
    keep = torch.ones(flat.numel(), device=flat.device)
    # A stable sort breaks ties by position, so equal scores are pruned the same way every run.
    keep[torch.argsort(flat, stable=True)[:count]] = 0
    parts = keep.split([scores[name].numel() for name in names])
    return {name: part.view_as(scores[name]).clone() for name, part in zip(names, parts, strict=True)}


def magnitude_masks(model: nn.Module, sparsity: float, masks: Masks | None = None) -> Masks:
    """Global magnitude pruning: mask the smallest |w| over all conv weights of `model`."""
    scores = {name: weight.detach().abs() for name, weight in prunable_parameters(model).items()}
    return global_masks(scores, sparsity, masks)


def _snapshot(model: nn.Module) -> StateDict:
    """A detached copy of the full state dict (BatchNorm statistics included)."""
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def _check_rewind(preset: Preset) -> None:
    if not 0 <= preset.rewind_epoch < preset.train.epochs:
        raise ConfigError(
            f"preset {preset.name!r}: rewind_epoch {preset.rewind_epoch} must lie in [0, epochs={preset.train.epochs})"
        )


def train_with_rewind(
    preset: Preset, bundle: DataBundle, train_set: TensorSet, device: torch.device, seed: int = 0
) -> tuple[Classifier, StateDict, History]:
    """Train the dense original and keep its state after `preset.rewind_epoch` epochs.

    Returns the dense model, the rewind state (weights and BatchNorm statistics) and the history.
    """
    _check_rewind(preset)
    model = new_model(preset, bundle, seed)
    captured: dict[str, StateDict] = {}
    if preset.rewind_epoch == 0:  # rewinding to initialisation (lottery tickets)
        captured["state"] = _snapshot(model)

    def capture(epoch: int, trained: nn.Module) -> None:
        if epoch == preset.rewind_epoch - 1:  # the end of epoch e-1 is the start of epoch e
            captured["state"] = _snapshot(trained)

    history = fit(model, train_set, original_config(preset, bundle, seed), device, on_epoch_end=capture)
    return model, captured["state"], history


def retrain_from_rewind(
    masks: Masks,
    rewind_state: StateDict,
    preset: Preset,
    bundle: DataBundle,
    train_set: TensorSet,
    device: torch.device,
    seed: int = 0,
) -> tuple[Classifier, History]:
    """Load the rewind weights into a fresh model, then train it under `masks` from the rewind epoch.

    Starting `fit` at `preset.rewind_epoch` rewinds the LR schedule with the weights; the
    optimiser starts afresh, as the paper builds a new one.
    """
    _check_rewind(preset)
    model = new_model(preset, bundle, seed)
    model.load_state_dict(rewind_state)
    config = original_config(preset, bundle, seed)
    history = fit(model, train_set, config, device, masks=masks, start_epoch=preset.rewind_epoch)
    return model, history


def omp(
    dense_model: nn.Module,
    rewind_state: StateDict,
    preset: Preset,
    bundle: DataBundle,
    train_set: TensorSet,
    device: torch.device,
    sparsity: float,
    seed: int = 0,
) -> PruneResult:
    """One-shot magnitude pruning of a trained dense model, then rewind and retrain (the paper's OMP).

    `dense_model` is left as it is, so one dense model can be pruned to several sparsities.
    """
    started = time.perf_counter()
    masks = magnitude_masks(dense_model, sparsity)
    model, history = retrain_from_rewind(masks, rewind_state, preset, bundle, train_set, device, seed)
    return PruneResult(
        "omp",
        model,
        masks,
        model_sparsity(model),
        history,
        time.perf_counter() - started,
        dense_model=dense_model,
        rewind_state=rewind_state,
        round_sparsities=(sparsity,),
    )


def imp_schedule(sparsity: float, rate: float = 0.2) -> tuple[float, ...]:
    """Sparsity after each IMP round: `rate` of the remaining weights a round, the last exactly `sparsity`."""
    check_sparsity(sparsity)
    if not 0 < rate < 1:
        raise ConfigError(f"IMP rate must lie in (0, 1), got {rate!r}")
    targets = []
    for round_index in itertools.count(1):
        reached = 1 - (1 - rate) ** round_index
        if reached >= sparsity - 1e-9:
            break
        targets.append(reached)
    return (*targets, sparsity)


def imp(
    dense_model: nn.Module,
    rewind_state: StateDict,
    preset: Preset,
    bundle: DataBundle,
    train_set: TensorSet,
    device: torch.device,
    sparsity: float,
    seed: int = 0,
    rate: float = 0.2,
) -> PruneResult:
    """Iterative magnitude pruning: prune `rate` of the remaining conv weights, rewind, retrain; repeat."""
    started = time.perf_counter()
    schedule = imp_schedule(sparsity, rate)
    model, masks, history = dense_model, None, History()
    for round_index, target in enumerate(schedule, 1):
        masks = magnitude_masks(model, target, masks)
        model, history = retrain_from_rewind(masks, rewind_state, preset, bundle, train_set, device, seed)
        log.info("IMP round %d/%d: sparsity %.4f", round_index, len(schedule), model_sparsity(model))
    return PruneResult(
        "imp",
        model,
        masks,
        model_sparsity(model),
        history,
        time.perf_counter() - started,
        dense_model=dense_model,
        rewind_state=rewind_state,
        round_sparsities=schedule,
    )


def _absolute_copy(net: nn.Module) -> nn.Module:
    """A float64, eval-mode copy of `net` with every parameter and buffer made non-negative.

    float64 because the SynFlow signal is a product over all layers and overflows float32
    in deep nets; the copy leaves the caller's signs and values untouched.
    """
    scorer = copy.deepcopy(net).to(torch.float64).eval()
    with torch.no_grad():
        for tensor in itertools.chain(scorer.parameters(), scorer.buffers()):
            if tensor.is_floating_point():
                tensor.abs_()
    return scorer


def _synflow_scores(scorer: nn.Module, magnitudes: dict[str, Tensor], masks: Masks, ones: Tensor) -> dict[str, Tensor]:
    """|d(sum of outputs)/dw * w| for the conv weights of `scorer`, masked weights set to zero first."""
    weights = prunable_parameters(scorer)
    with torch.no_grad():
        for name, weight in weights.items():
            weight.copy_(magnitudes[name] * masks[name])
    scorer.zero_grad(set_to_none=True)
    with torch.enable_grad():
        scorer(ones).sum().backward()
    return {name: (weight.grad * weight).detach().abs() for name, weight in weights.items()}


def synflow_masks(model: nn.Module, input_shape: tuple[int, ...], sparsity: float, rounds: int = 100) -> Masks:
    """Data-free SynFlow masks for the conv weights of `model` at `sparsity`, reached in `rounds` steps.

    Round i prunes to 1 - (1 - sparsity)^(i / rounds), i.e. the same share q of the remaining
    weights each round, and the last round lands exactly on `sparsity`. The input is all ones
    of `input_shape` (C, H, W); no training sample is read.
    """
    check_sparsity(sparsity)
    if rounds < 1:
        raise ConfigError(f"SynFlow needs at least one round, got {rounds}")
    # Normalize subtracts a mean and would make the all-ones input negative, so score the net behind it.
    net, prefix = (model.net, "net.") if isinstance(model, Classifier) else (model, "")
    scorer = _absolute_copy(net)
    magnitudes = {name: weight.detach().clone() for name, weight in prunable_parameters(scorer).items()}
    ones = torch.ones((1, *input_shape), dtype=torch.float64, device=next(scorer.parameters()).device)
    masks: Masks = {name: torch.ones_like(weight) for name, weight in magnitudes.items()}
    for round_index in range(1, rounds + 1):
        target = sparsity if round_index == rounds else 1 - (1 - sparsity) ** (round_index / rounds)
        masks = global_masks(_synflow_scores(scorer, magnitudes, masks, ones), target, masks)
    parameters = dict(model.named_parameters())
    return {prefix + name: mask.to(parameters[prefix + name].dtype) for name, mask in masks.items()}


def synflow(
    preset: Preset,
    bundle: DataBundle,
    train_set: TensorSet,
    device: torch.device,
    sparsity: float,
    seed: int = 0,
    rounds: int = 100,
) -> PruneResult:
    """Prune a fresh model at initialisation with SynFlow, then train it with the preset's recipe."""
    started = time.perf_counter()
    model = new_model(preset, bundle, seed).to(device)
    masks = synflow_masks(model, bundle.input_shape, sparsity, rounds)
    history = fit(model, train_set, original_config(preset, bundle, seed), device, masks=masks)
    return PruneResult(
        "synflow",
        model,
        masks,
        model_sparsity(model),
        history,
        time.perf_counter() - started,
        round_sparsities=(sparsity,),
    )


def prune(
    method: str,
    preset: Preset,
    bundle: DataBundle,
    train_set: TensorSet,
    device: torch.device,
    sparsity: float,
    *,
    seed: int = 0,
    dense: tuple[nn.Module, StateDict] | None = None,
    rounds: int = 100,
    rate: float = 0.2,
) -> PruneResult:
    """A sparse original model by `method` ("omp", "imp" or "synflow").

    Args:
        sparsity: target share of zero conv weights, in [0, 1).
        dense: (trained dense model, rewind state) from `train_with_rewind` for OMP / IMP;
            trained here when not given.
        rounds: SynFlow's pruning rounds.
        rate: IMP's share of the remaining weights pruned per round.
    """
    if method not in METHODS:
        raise ConfigError(f"unknown pruning method {method!r}; known: {', '.join(METHODS)}")
    check_sparsity(sparsity)
    if method == "synflow":
        if dense is not None:
            raise ConfigError("SynFlow prunes at initialisation; it takes no dense model")
        return synflow(preset, bundle, train_set, device, sparsity, seed, rounds)
    dense_history = None
    if dense is None:
        dense_model, rewind_state, dense_history = train_with_rewind(preset, bundle, train_set, device, seed)
    else:
        dense_model, rewind_state = dense
    if method == "omp":
        result = omp(dense_model, rewind_state, preset, bundle, train_set, device, sparsity, seed)
    else:
        result = imp(dense_model, rewind_state, preset, bundle, train_set, device, sparsity, seed, rate)
    result.dense_history = dense_history
    return result
