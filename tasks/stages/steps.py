"""The model steps the study's stages and the deletion batch share: unlearn a checkpoint, evaluate a model.

One copy of each: `tasks.stages.unlearn` (the study) and `tasks.production.deletion` (a batch) unlearn through
`unlearn_checkpoint`, and `tasks.stages.evaluate` and the batch evaluate through `evaluate_split`,
so a checkpoint's metadata and a metric's definition never differ between the two paths.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from tasks.adapters.params import Params, flatten
from tasks.adapters.workspace import device, save_model
from unlearn.checkpoint import Checkpoint
from unlearn.data import DataBundle, TensorSet
from unlearn.methods import Unlearned, run_method
from unlearn.metrics import evaluate
from unlearn.splits import Split


def unlearn_checkpoint(
    params: Params,
    data: DataBundle,
    method: str,
    model: nn.Module,
    checkpoint: Checkpoint,
    sets: tuple[TensorSet, TensorSet],
    config,
    path: Path,
    **metadata,
) -> Unlearned:
    """Unlearn with `method` from `model` (its masks kept), save it at `path` with what made it.

    Args:
        checkpoint: the one `model` was loaded from (its masks).
        sets: the retain and the forget set.
        metadata: what the caller records beside the method, its config, RTE and epochs.
    """
    retain_set, forget_set = sets
    result = run_method(method, model, retain_set, forget_set, device(), masks=checkpoint.masks, config=config)
    meta = dict(
        method=method,
        unlearn_seconds=result.seconds,
        method_config=flatten(config),
        epochs=len(result.history.epochs) if result.history else 0,
        **metadata,
    )
    save_model(path, result.model, params, data, masks=checkpoint.masks, **meta)
    return result


def evaluate_split(model: nn.Module, split: Split, data: DataBundle, seconds: float) -> dict[str, float]:
    """UA, MIA-efficacy, RA, TA and RTE of `model` on the split's forget, retain and test sets."""
    sets = (split.retain_set(data), split.forget_set(data), split.test_set(data))
    return evaluate(model, *sets, device(), seconds=seconds).as_dict()
