"""Stages `backdoor_train`, `backdoor_prune`, `backdoor_cleanse`, `backdoor_report`.

    python -m tasks.stages.backdoor train                                  the dense Trojan model
    python -m tasks.stages.backdoor prune [--sparsity S]                   the Trojan model, OMP-pruned
    python -m tasks.stages.backdoor cleanse --method M [--sparsity S]      unlearn the poisoned samples
    python -m tasks.stages.backdoor report                                 reports/backdoor.md + figure

The poisoned training set is made from the prepared data set (data/raw/dataset.npz) in every
stage: poisoning is seeded (`backdoor.seed`), so each stage sees the same poisoned rows, and
the checkpoints record their digest so a stale Trojan model is caught, not silently cleansed.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, replace
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from tasks.adapters import layout
from tasks.adapters.params import Params, flatten
from tasks.adapters.workspace import bundle, device, load_model, preset, save_model, tracked
from tasks.stages.entry import sparsities_to_run, stage_main
from tasks.stages.findings import label, sparsity_label
from unlearn.backdoor import (
    BackdoorConfig,
    Poisoned,
    backdoor_metrics,
    cleanse,
    cleanse_config,
    default_backdoor_config,
    fitted_backdoor_config,
    poison,
)
from unlearn.data import DataBundle
from unlearn.errors import ConfigError
from unlearn.presets import Preset
from unlearn.prune import prune, train_with_rewind
from unlearn.splits import Manifest

SUMMARY = layout.BACKDOOR_SUMMARY  # every cleanse's SA and ASR, by method and sparsity: the DVC metric
REPORT = layout.BACKDOOR_REPORT
FIGURE = layout.BACKDOOR_FIGURES / "asr_sa_by_sparsity.png"
# The paper's application trains its Trojan models with OMP.
PRUNER = "omp"


# --- where things live ---------------------------------------------------------------------


# (tasks/adapters/layout.py owns them; these names are the stage's.)


def dense_path() -> Path:
    return layout.BACKDOOR_DENSE


def rewind_path() -> Path:
    """The dense Trojan model's weights at the rewind epoch (OMP rewinds to them)."""
    return layout.BACKDOOR_REWIND


def trojan_path(sparsity: float) -> Path:
    return layout.trojan_path(sparsity)


def cleansed_path(method: str, sparsity: float) -> Path:
    return layout.cleansed_path(method, sparsity)


def metrics_path(method: str, sparsity: float) -> Path:
    return layout.backdoor_metrics_path(method, sparsity)


# --- the attack ----------------------------------------------------------------------------


def attack_config(params: Params, data: DataBundle | None = None) -> BackdoorConfig:
    """The attack, with params.yaml's overrides: the preset's (`unlearn.backdoor.BACKDOOR_DEFAULTS`),
    or on the user's own data set (`data.source` npz or images) one fitted to its images
    (`unlearn.backdoor.fitted_backdoor_config`: trigger size and place from the image size, its
    value from the images' brightness). `data` is the prepared data set (read when None and needed).
    """
    group = params.backdoor
    overrides = {
        name: getattr(group, name)
        for name in ("trigger_size", "patch_value", "poison_ratio", "target_class")
        if getattr(group, name) is not None
    }
    if params.data.source != "preset":
        return fitted_backdoor_config((data or bundle()).train, seed=group.seed, **overrides)
    return default_backdoor_config(params.data.preset, seed=group.seed, **overrides)


def poisoned_data(params: Params) -> tuple[DataBundle, Poisoned]:
    """The prepared data set and its poisoned training set (seeded: the same in every stage)."""
    data = bundle()
    attack = attack_config(params, data)
    if attack.target_class >= data.num_classes:
        raise ConfigError(f"backdoor.target_class {attack.target_class} is not a class of {data.name}")
    return data, poison(data.train, attack)


def poison_digest(poisoned: Poisoned) -> str:
    """sha256 of the poisoned rows' manifest (ids, positions, target labels)."""
    return Manifest.of(poisoned.train_set, poisoned.poisoned_indices).digest()


def trojan_recipe(params: Params) -> Preset:
    """The preset's original-model recipe, with `backdoor.epochs` where given."""
    recipe = preset(params)
    if params.backdoor.epochs is None:
        return recipe
    return replace(recipe, train=replace(recipe.train, epochs=params.backdoor.epochs))


def attack_meta(poisoned: Poisoned) -> dict:
    return {
        "attack": asdict(poisoned.config),
        "poisoned_count": len(poisoned.poisoned_indices),
        "poison_digest": poison_digest(poisoned),
    }


def log_attack(tracker, poisoned: Poisoned) -> None:
    tracker.set_tags({"backdoor.poison_digest": poison_digest(poisoned)})
    tracker.log_params({"attack": asdict(poisoned.config), "poisoned_count": len(poisoned.poisoned_indices)})


# --- stages --------------------------------------------------------------------------------


def train_trojan(params: Params) -> Path:
    """Train the dense Trojan model on the poisoned training set; keep its rewind-epoch weights."""
    (data, poisoned), chosen = poisoned_data(params), device()
    recipe, seed = trojan_recipe(params), params.backdoor.seed
    with tracked(params, "train", "backdoor-trojan-dense", recipe.train, seed=seed, application="backdoor") as tracker:
        model, rewind_state, history = train_with_rewind(recipe, data, poisoned.train_set, chosen, seed)
        metrics = backdoor_metrics(model, data.test, poisoned.config, chosen)
        log_attack(tracker, poisoned)
        tracker.log_history(history)
        tracker.log_evaluation({"SA": metrics.standard_accuracy, "ASR": metrics.attack_success_rate})
    meta = dict(seed=seed, epochs=recipe.train.epochs, train_seconds=history.seconds, **attack_meta(poisoned))
    written = save_model(dense_path(), model, params, data, SA=metrics.standard_accuracy,
                         ASR=metrics.attack_success_rate, **meta)  # fmt: skip
    model.load_state_dict(rewind_state)
    save_model(rewind_path(), model, params, data, rewind_epoch=recipe.rewind_epoch, **meta)
    return written


def load_trojan(path: Path, poisoned: Poisoned):
    """A Trojan checkpoint, refused if it was trained on other poisoned rows than `poisoned`'s."""
    if not path.is_file():
        raise ConfigError(f"{path} is missing: run the backdoor_train and backdoor_prune stages first")
    model, checkpoint = load_model(path)
    if checkpoint.metadata.get("poison_digest") != poison_digest(poisoned):
        raise ConfigError(f"{path} was trained on another poisoning: rerun `dvc repro backdoor_train`")
    return model, checkpoint


def prune_trojan(params: Params, sparsity: float | None = None) -> list[Path]:
    """The Trojan model OMP-pruned to `sparsity` (None: to each of `backdoor.sparsities`, in one process)."""
    return [prune_trojan_to(params, level) for level in sparsities_to_run(sparsity, params.backdoor.sparsities)]


def prune_trojan_to(params: Params, sparsity: float) -> Path:
    """The Trojan model OMP-pruned to `sparsity` (rewind, retrain on the poisoned set); 0 = the dense one."""
    (data, poisoned), chosen = poisoned_data(params), device()
    dense, checkpoint = load_trojan(dense_path(), poisoned)
    meta = {**checkpoint.metadata, "sparsity": sparsity, "pruner": PRUNER}
    if sparsity == 0:
        return save_model(trojan_path(sparsity), dense, params, data, **meta)
    rewind, _ = load_model(rewind_path())
    seed, recipe = params.backdoor.seed, trojan_recipe(params)
    name = f"backdoor-trojan-{PRUNER}-s{sparsity}"
    with tracked(params, "prune", name, recipe.train, seed=seed, sparsity=sparsity, application="backdoor") as tracker:
        result = prune(PRUNER, recipe, data, poisoned.train_set, chosen, sparsity, seed=seed,
                       dense=(dense, rewind.state_dict()))  # fmt: skip
        metrics = backdoor_metrics(result.model, data.test, poisoned.config, chosen)
        log_attack(tracker, poisoned)
        tracker.log_history(result.history)
        tracker.log_evaluation({"SA": metrics.standard_accuracy, "ASR": metrics.attack_success_rate,
                                "sparsity": result.sparsity})  # fmt: skip
    meta.update(achieved_sparsity=result.sparsity, prune_seconds=result.seconds,
                SA=metrics.standard_accuracy, ASR=metrics.attack_success_rate)  # fmt: skip
    return save_model(trojan_path(sparsity), result.model, params, data, masks=result.masks, **meta)


def method_settings(params: Params, method: str):
    """The method's cleanse config (`unlearn.backdoor.cleanse_config`) with `backdoor.settings`."""
    settings = {"seed": params.backdoor.seed, **params.backdoor.settings.get(method, {})}
    try:
        return cleanse_config(method, params.data.preset, **settings)
    except TypeError as error:
        raise ConfigError(f"backdoor.settings.{method}: {error}") from error


def cleanse_trojan(params: Params, method: str, sparsity: float | None = None) -> list[Path]:
    """Unlearn the poisoned samples with `method` at `sparsity` (None: at each of `backdoor.sparsities`)."""
    every = params.backdoor.sparsities
    return [cleanse_trojan_at(params, method, level) for level in sparsities_to_run(sparsity, every)]


def cleanse_trojan_at(params: Params, method: str, sparsity: float) -> Path:
    """Unlearn the poisoned samples from the Trojan model at `sparsity`; SA and ASR before and after."""
    (data, poisoned), chosen = poisoned_data(params), device()
    trojan, checkpoint = load_trojan(trojan_path(sparsity), poisoned)
    config = method_settings(params, method)
    name = f"backdoor-cleanse-{method}-s{sparsity}"
    tags = {"method": method, "sparsity": sparsity, "application": "backdoor"}
    with tracked(params, "unlearn", name, config, **tags) as tracker:
        result = cleanse(trojan, poisoned, data.test, method, chosen, masks=checkpoint.masks, config=config)
        row = cleanse_row(method, sparsity, result, poisoned)
        log_attack(tracker, poisoned)
        if result.unlearned.history:
            tracker.log_history(result.unlearned.history)
        tracker.log_evaluation({k: v for k, v in row.items() if isinstance(v, float)})
    meta = dict(method=method, sparsity=sparsity, parent=str(trojan_path(sparsity)),
                unlearn_seconds=result.unlearned.seconds, method_config=flatten(config),
                **attack_meta(poisoned), **{k: row[k] for k in ("SA_before", "ASR_before", "SA", "ASR")})  # fmt: skip
    save_model(cleansed_path(method, sparsity), result.unlearned.model, params, data,
               masks=checkpoint.masks, **meta)  # fmt: skip
    path = metrics_path(method, sparsity)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(row, indent=2) + "\n")
    return path


def cleanse_row(method: str, sparsity: float, result, poisoned: Poisoned) -> dict:
    """One metrics file: SA and ASR (percent) of the Trojan model and of the cleansed one, and the attack."""
    return {
        "method": method,
        "sparsity": float(sparsity),
        "SA_before": result.before.standard_accuracy,
        "ASR_before": result.before.attack_success_rate,
        "SA": result.after.standard_accuracy,
        "ASR": result.after.attack_success_rate,
        "SA_drop": result.before.standard_accuracy - result.after.standard_accuracy,
        "ASR_drop": result.before.attack_success_rate - result.after.attack_success_rate,
        "RTE_seconds": float(result.unlearned.seconds),
        "poisoned_count": len(poisoned.poisoned_indices),
        "attack": asdict(poisoned.config),
    }


# --- report --------------------------------------------------------------------------------

Rows = dict[str, list[dict]]  # method -> one row per sparsity, in params order


def load_rows(params: Params) -> Rows:
    """Every cleanse's metrics, checked to cover `backdoor.methods` x `backdoor.sparsities`."""
    rows: Rows = {}
    for method in params.backdoor.methods:
        for sparsity in params.backdoor.sparsities:
            path = metrics_path(method, sparsity)
            if not path.is_file():
                raise ConfigError(f"{path} is missing: run `dvc repro backdoor_cleanse` first")
            rows.setdefault(method, []).append(json.loads(path.read_text()))
    return rows


def table(rows: Rows) -> str:
    """A row per method and sparsity: SA and ASR before and after the cleanse, and its time."""
    lines = [
        "| Method | Sparsity | SA before | ASR before | SA after | ASR after | SA drop | RTE s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for method, by_sparsity in rows.items():
        for row in by_sparsity:
            cells = [row[k] for k in ("SA_before", "ASR_before", "SA", "ASR", "SA_drop", "RTE_seconds")]
            lines.append(f"| {label(method)} | {sparsity_label(row['sparsity'])} | "
                         + " | ".join(f"{c:.2f}" for c in cells) + " |")  # fmt: skip
    return "\n".join(lines)


def figure(rows: Rows, path: Path) -> Path:
    """ASR and SA against sparsity: the Trojan models and each method's cleansed models (paper's figure)."""
    plot = Figure(figsize=(10, 4))
    FigureCanvasAgg(plot)
    first = next(iter(rows.values()))
    percents = [100 * r["sparsity"] for r in first]
    for axes, metric in zip(plot.subplots(1, 2), ("ASR", "SA"), strict=True):
        axes.plot(percents, [r[f"{metric}_before"] for r in first], "k--", marker="s", label="Trojan model")
        for method, by_sparsity in rows.items():
            axes.plot([100 * r["sparsity"] for r in by_sparsity], [r[metric] for r in by_sparsity],
                      marker="o", label=f"after {label(method)}")  # fmt: skip
        axes.set(xlabel="sparsity (%)", ylabel=f"{metric} (%)", title=metric)
    axes.legend(fontsize="small")
    plot.suptitle("Trojan-model cleanse: attack success rate and standard accuracy against sparsity")
    path.parent.mkdir(parents=True, exist_ok=True)
    plot.savefig(path, dpi=110, bbox_inches="tight")
    return path


def render(params: Params, rows: Rows, figure_path: Path | None = None) -> str:
    """reports/backdoor.md: the attack (as the cleanses recorded it), the table and the figure."""
    first = next(iter(rows.values()))[0]
    attack = BackdoorConfig(**first["attack"]) if "attack" in first else attack_config(params)
    count = first["poisoned_count"]
    text = (
        "# Trojan-model cleanse\n\n"
        f"BadNets attack: {count} training images ({attack.poison_ratio:.0%}, seed {attack.seed}) carry a "
        f"{attack.trigger_size} px patch of value {attack.patch_value:g}, {attack.border} px from the "
        f"bottom-right border, and the label {attack.target_class}. Trojan models: trained on the "
        f"poisoned set, OMP-pruned at each sparsity. Cleanse: unlearn the poisoned samples (Df), the "
        "clean rest as Dr. SA = clean test accuracy; ASR = triggered test images classified as the "
        "target (whole test set), in percent.\n\n" + table(rows) + "\n"
    )
    if figure_path is not None:
        text += f"\n![ASR and SA against sparsity]({figure_path.relative_to(REPORT.parent).as_posix()})\n"
    return text


def report_tables(params: Params) -> str:
    """The report without the figure link (what a flow publishes as its artifact)."""
    return render(params, load_rows(params))


def build_report(params: Params) -> Path:
    """Write reports/backdoor.md, its figure and metrics/backdoor.json (every cleanse's SA and ASR)."""
    rows = load_rows(params)
    with tracked(params, "report", "backdoor-report", params.backdoor, application="backdoor") as tracker:
        drawn = figure(rows, FIGURE)
        REPORT.parent.mkdir(parents=True, exist_ok=True)
        REPORT.write_text(render(params, rows, drawn))
        summary = {method: {layout.sparsity_tag(row["sparsity"]): row for row in by_sparsity}
                   for method, by_sparsity in rows.items()}  # fmt: skip
        SUMMARY.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
        tracker.log_artifacts([REPORT, drawn], "backdoor")
    return REPORT


STAGES = {
    "train": (train_trojan, ()),
    "prune": (prune_trojan, (("sparsity", float, "one sparsity (default: every one)"),)),
    "cleanse": (cleanse_trojan, (("method", str), ("sparsity", float, "one sparsity (default: every one)"))),
    "report": (build_report, ()),
}


def main(argv: list[str]) -> None:
    """`python -m tasks.stages.backdoor <stage> [--params P] [stage options]`."""
    if not argv or argv[0] not in STAGES:
        raise SystemExit(f"usage: python -m tasks.stages.backdoor {{{','.join(STAGES)}}} [options]\n\n{__doc__}")
    run, arguments = STAGES[argv[0]]
    sys.argv = [f"{sys.argv[0]} {argv[0]}", *argv[1:]]
    stage_main(run.__doc__ or __doc__, run, *arguments)


if __name__ == "__main__":
    main(sys.argv[1:])
