"""Stage `prune`: the sparse original at one sparsity for each seed (0 = the dense original itself)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from tasks.adapters import layout
from tasks.adapters.params import Params, original_recipe
from tasks.adapters.workspace import bundle, device, load_model, preset, save_model, tracked, training_rows
from tasks.stages.entry import stage_main
from unlearn.prune import prune
from unlearn.train import accuracy


def prune_originals(
    params: Params, sparsity: float, root: str = str(layout.MODELS), excluded: Sequence[str] = ()
) -> list[Path]:
    """Prune each seed's original with `prune.method`; at sparsity 0 the dense original is passed on.

    Args:
        excluded: sample ids left out of the (re)training, as for `train_originals`.
    """
    data, chosen = bundle(), device()
    recipe = replace(preset(params), train=original_recipe(params))
    train_set = data.train.subset(training_rows(data, excluded))
    written = []
    for seed in params.train.seeds:
        dense, checkpoint = load_model(layout.original_path(seed, root))
        meta = {**checkpoint.metadata, "sparsity": sparsity, "pruner": params.prune.method}
        if sparsity == 0:
            written.append(save_model(layout.pruned_path(sparsity, seed, root), dense, params, data, **meta))
            continue
        rewind, _ = load_model(layout.rewind_path(seed, root))
        given = None if params.prune.method == "synflow" else (dense, rewind.state_dict())
        name = f"prune-{params.prune.method}-s{sparsity}-seed{seed}"
        with tracked(params, "prune", name, params.prune, seed=seed) as tracker:
            result = prune(params.prune.method, recipe, data, train_set, chosen, sparsity, seed=seed, dense=given)
            test_accuracy = accuracy(result.model, data.test, chosen)
            tracker.log_history(result.history)
            tracker.log_evaluation({"TA": test_accuracy, "sparsity": result.sparsity})
        meta.update(achieved_sparsity=result.sparsity, prune_seconds=result.seconds, test_accuracy=test_accuracy)
        path = layout.pruned_path(sparsity, seed, root)
        written.append(save_model(path, result.model, params, data, masks=result.masks, **meta))
    return written


if __name__ == "__main__":
    stage_main(__doc__, prune_originals, ("sparsity", float))
