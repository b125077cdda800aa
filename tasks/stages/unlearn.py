"""Stage `unlearn` (and `retrain`): one method, one scenario, every sparsity and seed.

Starts from the (pruned) original at each sparsity, keeps its masks, and writes the
unlearned checkpoint with the wall time of the unlearning (RTE) in its metadata. A method runs
with preset defaults < tuned < the values stage `calibrate` found on this data set
(`layout.CALIBRATION_RECORD`) < `unlearn.settings`.
`--sparsity` runs one sparsity only (the Prefect study flow runs them side by side). dvc.yaml
runs every sparsity in one stage: each stage process pays ~6 s of imports and tracking set-up
before any work, and per sparsity the study had 64 of them (docs/architecture.md).
"""

from __future__ import annotations

import itertools
from pathlib import Path

from tasks.adapters import layout
from tasks.adapters.params import Params, method_config
from tasks.adapters.workspace import bundle, load_model, split, study_calibration, tracked
from tasks.stages.entry import sparsities_to_run, stage_main
from tasks.stages.steps import unlearn_checkpoint


def unlearn(params: Params, scenario: str, method: str, sparsity: float | None = None) -> list[Path]:
    """Run `method` on each seed's original at `sparsity` (None: at each of `prune.sparsities`)."""
    data, chosen_split = bundle(), split(scenario)
    sets = (chosen_split.retain_set(data), chosen_split.forget_set(data))
    written = []
    for level, seed in itertools.product(sparsities_to_run(sparsity, params.prune.sparsities), params.train.seeds):
        original_path = layout.pruned_path(level, seed)
        original, checkpoint = load_model(original_path)
        calibration = {} if method == "retrain" else study_calibration(scenario, method, level)
        calibrated = calibration.get("values", {}) if calibration.get("status") == "calibrated" else {}
        config = method_config(params, method, scenario=scenario, sparsity=level, calibrated=calibrated, seed=seed)
        name = f"{method}-{scenario}-s{level}-seed{seed}"
        tags = {"method": method, "scenario": scenario, "sparsity": level, "seed": seed}
        if calibration:
            tags["calibration.status"] = calibration["status"]
        path = layout.unlearned_path(scenario, method, level, seed)
        with tracked(params, "unlearn", name, config, **tags) as tracker:
            result = unlearn_checkpoint(
                params, data, method, original, checkpoint, sets, config, path,
                seed=seed, scenario=scenario, sparsity=level, parent=str(original_path),
                split_digest=chosen_split.digest(),
            )  # fmt: skip
            tracker.log_split(chosen_split, scenario)
            if result.history:
                tracker.log_history(result.history)
            tracker.log_evaluation({"RTE_seconds": result.seconds})
        written.append(path)
    return written


if __name__ == "__main__":
    stage_main(
        __doc__, unlearn, ("scenario", str), ("method", str), ("sparsity", float, "one sparsity (default: every one)")
    )
