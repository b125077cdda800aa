"""Stage `train`: the dense original model (theta_o) for each seed, on the whole training set."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from tasks.adapters import layout
from tasks.adapters.params import Params, original_recipe
from tasks.adapters.workspace import bundle, device, preset, save_model, tracked, training_rows
from tasks.stages.entry import stage_main
from unlearn.prune import train_with_rewind
from unlearn.splits import Manifest
from unlearn.train import accuracy


def train_originals(params: Params, root: str = str(layout.MODELS), excluded: Sequence[str] = ()) -> list[Path]:
    """Train one original per seed; keep its rewind-epoch weights for OMP / IMP.

    Args:
        excluded: sample ids left out of the training set (the production champion leaves out
            every deletion the ledger records).
    """
    data, chosen = bundle(), device()
    recipe = replace(preset(params), train=original_recipe(params))
    rows = training_rows(data, excluded)
    train_set = data.train.subset(rows)
    train_digest = Manifest.of(data.train, rows).digest()
    written = []
    for seed in params.train.seeds:
        with tracked(params, "train", f"train-seed{seed}", recipe.train, seed=seed) as tracker:
            model, rewind_state, history = train_with_rewind(recipe, data, train_set, chosen, seed)
            test_accuracy = accuracy(model, data.test, chosen)
            tracker.log_history(history)
            tracker.log_evaluation({"TA": test_accuracy})
        meta = dict(
            seed=seed,
            epochs=recipe.train.epochs,
            split_digest=train_digest,
            train_seconds=history.seconds,
            test_accuracy=test_accuracy,
            excluded_samples=len(data.train) - len(rows),
        )
        written.append(save_model(layout.original_path(seed, root), model, params, data, **meta))
        model.load_state_dict(rewind_state)
        save_model(
            layout.rewind_path(seed, root),
            model,
            params,
            data,
            seed=seed,
            rewind_epoch=recipe.rewind_epoch,
            split_digest=train_digest,
        )
    return written


if __name__ == "__main__":
    stage_main(__doc__, train_originals)
