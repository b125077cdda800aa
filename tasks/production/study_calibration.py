"""Stage `calibrate`: the study's method settings searched on its own data set, where it has no tuned values.

For every scenario, sparsity and tunable method of `unlearn.methods`, in one process (each stage
process pays ~6 s before any work):
- `skipped` where params.yaml's `tuned` holds values for the data set, method and scenario and
  `calibrate.skip_tuned` is true (digits: `unlearn tune` found them; a sparsity without its own
  tuned values runs the preset defaults, as before);
- `uncalibrated` where `calibrate.enabled` is false: the method runs its preset defaults;
- `calibrated` otherwise: `tune.calibrate` searches the methods on the pruned original of the first
  seed (`train.seeds[0]`) at that sparsity, on `calibrate.seeds` x `calibrate.folds` tuning folds of
  the scenario's kind, disjoint from the reported forget set (`tune.tuning_splits`), within
  `calibrate.max_retrains` Retrains per scenario and sparsity.

A skipped or uncalibrated entry holds no values and no date, so a change to one method's settings
(which reruns this stage) leaves the record, and the other methods' unlearn stages, as they were.
The record (`layout.CALIBRATION_RECORD`) is what the unlearn stage takes its values from
(`workspace.study_calibration`; preset defaults < tuned < calibrated < unlearn.settings) and what the
report states per method. It lives in tasks.production because the search is the tuning service's
(stages import no service); flows/study.py runs the same function as a task.
"""

from __future__ import annotations

# First, as in every stage module: in a stage process it sets params.yaml's OpenMP wait policy before
# the imports below load torch (the OpenMP runtime reads it once, when torch loads it).
import tasks.stages  # noqa: F401  isort: skip

import json
import logging
from pathlib import Path

from tasks.adapters import layout
from tasks.adapters.params import Params
from tasks.production.tune import SEARCH_SPACES, calibrate

log = logging.getLogger(__name__)


def tuned_for_dataset(params: Params, method: str, scenario: str) -> list[str]:
    """The sparsity tags `tuned` holds values at for the data set, `method` and `scenario`."""
    return sorted(params.tuned.get(method, {}).get(params.data.dataset, {}).get(scenario, {}))


def calibrate_study(params: Params, path: str | Path | None = None) -> Path:
    """Calibrate (or skip) every tunable method of the study per scenario and sparsity; write the record."""
    from tasks.adapters.workspace import bundle, device, load_model

    path = Path(path or layout.CALIBRATION_RECORD)
    dataset, group = params.data.dataset, params.calibrate
    methods = [method for method in params.unlearn.methods if method in SEARCH_SPACES]
    entries: dict[str, dict[str, dict[str, dict]]] = {}
    data = None
    for scenario in params.split.scenarios:
        by_method = entries.setdefault(scenario, {method: {} for method in methods})
        for sparsity in params.prune.sparsities:
            tag, searched = layout.sparsity_tag(sparsity), []
            for method in methods:
                tuned_at = tuned_for_dataset(params, method, scenario)
                base = {"dataset": dataset}  # no values, no date: the file changes only where a search ran
                if not group.enabled:
                    by_method[method][tag] = {**base, "status": "uncalibrated", "reason": "calibrate.enabled false"}
                elif group.skip_tuned and tuned_at:
                    # Not which sparsities: tuned values added at another one leave the record (and so every
                    # other method's unlearn stage) as it was; the report reads `tuned` for what ran where.
                    reason = f"tuned values for {dataset} ({scenario})"
                    by_method[method][tag] = {**base, "status": "skipped", "reason": reason}
                else:
                    searched.append(method)
            for method in methods:
                if method not in searched:
                    log.info("calibrate %s %s %s: %s (%s)", scenario, method, tag, by_method[method][tag]["status"],
                             by_method[method][tag]["reason"])  # fmt: skip
            if not searched:
                continue
            if data is None:
                data = bundle()
            model, checkpoint = load_model(layout.pruned_path(sparsity, params.train.seeds[0]))
            found = calibrate(params, model, data, masks=checkpoint.masks, sparsity=sparsity, enabled=True,
                              device=device(), scenario=scenario, methods=searched)  # fmt: skip
            for method in searched:
                record = found.methods[method]
                values = record.get("values") or {}
                status = "calibrated" if values else "uncalibrated"
                by_method[method][tag] = {
                    "dataset": dataset, "date": found.date, "status": status, "values": values,
                    "reason": record.get("reason", ""), "gap": record.get("gap"), "score": record.get("score"),
                    "seed_gaps": record.get("seed_gaps"), "trials": record.get("trials"), "start": record.get("start"),
                    "cost_retrains": found.cost_retrains, "seconds": found.seconds, "seeds": list(found.seeds),
                    "folds": found.folds, "max_retrains": found.max_retrains,
                }  # fmt: skip
                log.info("calibrate %s %s %s: %s %s (%.2f Retrains for the scenario and sparsity)", scenario,
                         method, tag, status, values, found.cost_retrains)  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"dataset": dataset, "methods": methods, "entries": entries}
    path.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    return path


if __name__ == "__main__":
    from tasks.stages.entry import stage_main

    stage_main(__doc__, calibrate_study)
