"""Stage `evaluate`: UA, MIA-efficacy, RA, TA, RTE of one method in one scenario, per sparsity.

Writes the method's results (what the report reads): per sparsity the mean and std over seeds of
each headline metric and of the MIA attack's power (`MIA_power`), and under `per_seed` each seed's
own values (seed -> UA, MIA_efficacy, RA, TA, RTE_seconds, MIA_power, sparsity_percent), so the
report can show the worst seed and flag seeds whose attack is near chance. Also a DVC plot file
(UA, MIA-efficacy, RA, TA against sparsity) and the DVC metrics: per sparsity one flat file of the
headline means, so `dvc metrics show` is one table, a row per scenario, method and sparsity.
"""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

from tasks.adapters import layout
from tasks.adapters.params import Params
from tasks.adapters.workspace import bundle, load_model, split, tracked
from tasks.stages.entry import stage_main
from tasks.stages.steps import evaluate_split
from unlearn.metrics import GAP_METRICS, HEADLINE_METRICS

# What each seed's entry of `per_seed` keeps: the headline metrics, the attack's power, the sparsity.
SEED_VALUES = (*HEADLINE_METRICS, "MIA_power", "sparsity_percent")


def summarise(runs: dict[int, dict[str, float]]) -> dict[str, float]:
    """Mean and (sample) std over seeds of each headline metric and of the attack's power (where
    every seed measured it); flat, as trackers log it. `runs` maps each seed to its `Evaluation.as_dict()`."""
    summary: dict[str, float] = {"seeds": len(runs)}
    measured = [name for name in ("MIA_power",) if all(name in run for run in runs.values())]
    for name in (*HEADLINE_METRICS, *measured):
        values = [run[name] for run in runs.values()]
        summary[name] = statistics.fmean(values)
        summary[f"{name}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
    summary["sparsity_percent"] = statistics.fmean(run["sparsity_percent"] for run in runs.values())
    return summary


def per_seed(runs: dict[int, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Each seed's SEED_VALUES, keyed by the seed as text (a JSON object's keys)."""
    return {str(seed): {name: run[name] for name in SEED_VALUES if name in run} for seed, run in runs.items()}


def evaluate_method(params: Params, scenario: str, method: str) -> dict[str, dict[str, float]]:
    """Evaluate every seed's model of `method` at every sparsity; write metrics and plot files."""
    data, chosen_split = bundle(), split(scenario)
    results: dict[str, dict[str, float]] = {}
    for sparsity in params.prune.sparsities:
        runs = {}
        for seed in params.train.seeds:
            model, checkpoint = load_model(layout.unlearned_path(scenario, method, sparsity, seed))
            runs[seed] = evaluate_split(model, chosen_split, data, checkpoint.metadata["unlearn_seconds"])
        summary = {"sparsity": sparsity, **summarise(runs)}
        name = f"evaluate-{method}-{scenario}-s{sparsity}"
        with tracked(params, "evaluate", name, None, method=method, scenario=scenario, sparsity=sparsity) as tracker:
            tracker.log_evaluation(summary)
        results[layout.sparsity_tag(sparsity)] = {**summary, "per_seed": per_seed(runs)}
    write_results(scenario, method, results)
    return results


def headline(summary: dict[str, float]) -> dict[str, float]:
    """The means of the headline metrics, rounded as the report shows them (seconds to 3 decimals)."""
    return {name: round(summary[name], 3 if name == "RTE_seconds" else 2) for name in HEADLINE_METRICS}


def write_results(scenario: str, method: str, results: dict[str, dict[str, float]]) -> Path:
    """The results JSON, the by-sparsity CSV and the summary files of one method in one scenario."""
    path = layout.metrics_path(scenario, method)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    folder = layout.summary_dir(scenario, method)
    for stale in folder.glob("*.json"):  # a sparsity no longer studied leaves no row behind
        stale.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    for row in results.values():
        summary = layout.summary_path(scenario, method, row["sparsity"])
        summary.write_text(json.dumps(headline(row), indent=2) + "\n")
    layout.plot_path(scenario, method).parent.mkdir(parents=True, exist_ok=True)
    with layout.plot_path(scenario, method).open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sparsity", *GAP_METRICS])
        for row in results.values():
            writer.writerow([row["sparsity"], *(round(row[k], 4) for k in GAP_METRICS)])
    return path


if __name__ == "__main__":
    stage_main(__doc__, evaluate_method, ("scenario", str), ("method", str))
