"""Stage `transfer`: does unlearning source classes change transfer? (PAPER.md 7.2).

Trains the source model on `transfer.source_classes`, forgets `transfer.forget_classes` with
`transfer.method` (and with Retrain, the reference), then transfers the original, unlearned
and retrained sources to `transfer.target_classes` by a linear probe and by full fine-tuning.
Writes metrics/transfer.json (one row per source and mode) and reports/transfer.md.
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

from tasks import layout
from tasks.common import bundle, device, preset, stage_main, tracked
from tasks.params import Params
from tasks.report import label
from unlearn.errors import ConfigError
from unlearn.methods import default_config, retrain
from unlearn.original import train_original
from unlearn.presets import Preset
from unlearn.train import accuracy
from unlearn.transfer import TransferConfig, TransferRow, source_and_target, transfer_study

METRICS = layout.METRICS / "transfer.json"
REPORT = layout.REPORTS / "transfer.md"
MODE_LABELS = {"linear_probe": "linear probe", "fine_tune": "fine-tune"}


def source_recipe(params: Params) -> Preset:
    """The preset's original-model recipe (seeded), with `transfer.epochs` where given."""
    recipe = preset(params)
    epochs = params.transfer.epochs or recipe.train.epochs
    return replace(recipe, train=replace(recipe.train, epochs=epochs, seed=params.transfer.seed))


def transfer_config(params: Params) -> TransferConfig:
    """`unlearn.transfer.TransferConfig` from the transfer group (recipes: the core's, epochs overridden)."""
    group, base = params.transfer, TransferConfig()
    probe_epochs = group.linear_probe_epochs or base.linear_probe.epochs
    tune_epochs = group.fine_tune_epochs or base.fine_tune.epochs
    return TransferConfig(
        source_classes=tuple(group.source_classes),
        target_classes=tuple(group.target_classes),
        forget_classes=tuple(group.forget_classes),
        method=group.method,
        preset=params.data.preset,
        method_config=default_config(group.method, params.data.preset, seed=group.seed, **group.settings),
        retrain_config=retrain.Config(train=source_recipe(params).train, seed=group.seed),
        linear_probe=replace(base.linear_probe, epochs=probe_epochs, seed=group.seed),
        fine_tune=replace(base.fine_tune, epochs=tune_epochs, seed=group.seed),
    )


def row_dict(row: TransferRow) -> dict:
    return {key: float(value) if isinstance(value, int | float) else value for key, value in asdict(row).items()}


def run_transfer(params: Params) -> Path:
    """Train the source model, run `transfer_study`, write metrics/transfer.json and reports/transfer.md."""
    data, chosen, config = bundle(), device(), transfer_config(params)
    source, target = source_and_target(data, config)
    recipe = source_recipe(params)
    with tracked(params, "train", "transfer-source", recipe.train, application="transfer") as log:
        original, history = train_original(recipe, source, source.train, chosen, seed=params.transfer.seed)
        source_accuracy = accuracy(original, source.test, chosen)
        if log:
            log.log_history(history)
            log.log_evaluation({"source_TA": source_accuracy})
    with tracked(params, "evaluate", "transfer-study", params.transfer, method=config.method,
                 application="transfer") as log:  # fmt: skip
        rows = [row_dict(row) for row in transfer_study(original, source, target, config, chosen)]
        if log:
            log.log_evaluation({f"{r['source']}.{r['mode']}.{k}": r[k] for r in rows
                                for k in ("target_accuracy", "seconds", "unlearn_seconds")})  # fmt: skip
    result = {"source_test_accuracy": source_accuracy, "method": config.method, "rows": rows}
    METRICS.parent.mkdir(parents=True, exist_ok=True)
    METRICS.write_text(json.dumps(result, indent=2) + "\n")
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(render(params, result))
    return REPORT


def table(rows: list[dict]) -> str:
    """A row per source model and transfer mode: target accuracy and wall times."""
    lines = [
        "| Source | Transfer | Target accuracy | Transfer s | Unlearning s |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['source']} | {MODE_LABELS.get(row['mode'], row['mode'])} | {row['target_accuracy']:.2f} "
            f"| {row['seconds']:.2f} | {row['unlearn_seconds']:.2f} |"
        )
    return "\n".join(lines)


def render(params: Params, result: dict) -> str:
    """reports/transfer.md: the tasks, the method and every row."""
    group = params.transfer
    return (
        "# Transfer after unlearning (PAPER.md 7.2)\n\n"
        f"Source task: classes {group.source_classes} (source model's test accuracy "
        f"{result['source_test_accuracy']:.2f}%). Forgotten: classes {group.forget_classes}, by "
        f"{label(result['method'])} (`unlearned`) and by Retrain (`retrained`, the reference). Target task: "
        f"classes {group.target_classes}. Linear probe: a new head on frozen features; fine-tune: every "
        "layer. Accuracies are target test top-1, in percent.\n\n" + table(result["rows"]) + "\n"
    )


def report_tables(params: Params) -> str:
    """The report's markdown, from metrics/transfer.json."""
    if not METRICS.is_file():
        raise ConfigError(f"{METRICS} is missing: run `dvc repro transfer` first")
    return render(params, json.loads(METRICS.read_text()))


if __name__ == "__main__":
    stage_main(__doc__, run_transfer)
