"""Stage `transfer`: does unlearning source classes change transfer?

Trains the source model on the source classes, forgets the forget classes with `transfer.method`
(and with Retrain, the reference), then transfers the original, unlearned and retrained sources
to the target classes by a linear probe and by full fine-tuning. The tasks are
`transfer.preset`'s with the group's overrides: classes of the prepared data set (the default),
or a source and a target data set read from their own roots (CIFAR-100 -> CIFAR-10). On the
user's own data set (`data.source` npz or images), `within` splits its own classes in two
(`unlearn.transfer.split_classes`) wherever the group leaves the class fields null.
Writes metrics/transfer.json (one row per source and mode) and reports/transfer.md.
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

from tasks.adapters import layout
from tasks.adapters.params import Params
from tasks.adapters.workspace import bundle, device, preset, tracked
from tasks.stages.entry import stage_main
from tasks.stages.findings import label
from unlearn.data import DataBundle, load_dataset
from unlearn.errors import ConfigError
from unlearn.methods import default_config, retrain
from unlearn.original import train_original
from unlearn.presets import Preset, get_preset
from unlearn.train import accuracy
from unlearn.transfer import TransferConfig, TransferRow, source_and_target, split_classes, transfer_study

METRICS = layout.TRANSFER_METRICS
REPORT = layout.TRANSFER_REPORT
MODE_LABELS = {"linear_probe": "linear probe", "fine_tune": "fine-tune"}
CLASS_FIELDS = ("source_classes", "target_classes", "forget_classes")


def source_recipe(params: Params) -> Preset:
    """The source model's recipe (`transfer.recipe`, else data.preset), seeded, with `transfer.epochs`."""
    recipe = get_preset(params.transfer.spec().recipe or params.data.preset)
    epochs = params.transfer.epochs or recipe.train.epochs
    return replace(recipe, train=replace(recipe.train, epochs=epochs, seed=params.transfer.seed))


def data_sources(params: Params) -> tuple[tuple[str, str] | None, tuple[str, str] | None]:
    """(data set, root) of the source and of the target; None = the prepared data set.

    A target equal to its source is no other data set: it stays None (classes of the source's).
    """
    group, spec = params.transfer, params.transfer.spec()
    source = None if spec.source is None else (spec.source, group.source_root or params.data.root)
    target = None if spec.target is None else (spec.target, group.target_root or params.data.root)
    return source, None if target in (source or prepared_source(params), None) else target


def prepared_source(params: Params) -> tuple[str, str | None]:
    """(data set, root) the prepare stage read: the preset's from data.root, or the user's npz file or image folder."""
    data = params.data
    return (preset(params).dataset, data.root) if data.source == "preset" else (data.source, data.path)


def task_classes(params: Params, num_classes: int) -> dict[str, tuple[int, ...]]:
    """The source, target and forget classes of a source data set with `num_classes` classes.

    The transfer preset's, with the group's overrides. On the user's own data set, when both tasks
    are its classes (`within`: neither `transfer.source` nor `transfer.target` set), every class
    field left null comes from `unlearn.transfer.split_classes` instead: the preset's are digits'.
    """
    group, spec = params.transfer, params.transfer.spec()
    chosen = {name: getattr(spec, name) for name in CLASS_FIELDS}
    if params.data.source != "preset" and spec.source is None and spec.target is None:
        try:
            derived = dict(zip(CLASS_FIELDS, split_classes(num_classes), strict=True))
        except ConfigError as error:
            raise ConfigError(f"transfer on {params.data.dataset}: {error}; set transfer.*_classes") from error
        chosen = {name: chosen[name] if getattr(group, name) is not None else derived[name] for name in CLASS_FIELDS}
    return chosen


def transfer_config(params: Params, classes: dict[str, tuple[int, ...]] | None = None) -> TransferConfig:
    """`unlearn.transfer.TransferConfig` from the transfer group (recipes: the core's, epochs overridden).

    Args:
        classes: the tasks' classes (`task_classes`); default: the preset's with the group's overrides.
    """
    group, base, spec = params.transfer, TransferConfig(), params.transfer.spec()
    classes = classes or {name: getattr(spec, name) for name in CLASS_FIELDS}
    recipe = source_recipe(params)
    probe_epochs = group.linear_probe_epochs or base.linear_probe.epochs
    tune_epochs = group.fine_tune_epochs or base.fine_tune.epochs
    try:
        return TransferConfig(
            **classes,
            method=group.method,
            preset=recipe.name,
            method_config=default_config(group.method, recipe.name, seed=group.seed, **group.settings),
            retrain_config=retrain.Config(train=recipe.train, seed=group.seed),
            linear_probe=replace(base.linear_probe, epochs=probe_epochs, seed=group.seed),
            # crops and flips where the source recipe uses them (CIFAR), as the paper's full fine-tune
            fine_tune=replace(base.fine_tune, epochs=tune_epochs, seed=group.seed, augment=recipe.train.augment),
            cross_dataset=data_sources(params)[1] is not None,
        )
    except (ConfigError, TypeError) as error:
        raise ConfigError(f"transfer: {error}") from error


def load_data(where: tuple[str, str] | None, params: Params) -> DataBundle:
    """The prepared data set (None), or a data set read from its root (torchvision folder or npz file)."""
    if where is None:
        return bundle()
    name, root = where
    return load_dataset(name, root, seed=params.data.seed, download=params.data.download)


def tasks(params: Params) -> tuple[TransferConfig, DataBundle, DataBundle]:
    """The transfer's config and its source and target tasks (`unlearn.transfer.source_and_target`)."""
    source_where, target_where = data_sources(params)
    source_data = load_data(source_where, params)
    target_data = None if target_where is None else load_data(target_where, params)
    config = transfer_config(params, task_classes(params, source_data.num_classes))
    try:
        return config, *source_and_target(source_data, config, target_data)
    except ConfigError as error:
        raise ConfigError(f"transfer (preset {params.transfer.preset!r}): {error}") from error


def row_dict(row: TransferRow) -> dict:
    return {key: float(value) if isinstance(value, int | float) else value for key, value in asdict(row).items()}


def run_transfer(params: Params) -> Path:
    """Train the source model, run `transfer_study`, write metrics/transfer.json and reports/transfer.md."""
    chosen = device()
    config, source, target = tasks(params)
    recipe = source_recipe(params)
    tags = {"application": "transfer", "dataset": source.name, "arch": recipe.arch, "target_dataset": target.name}
    with tracked(params, "train", "transfer-source", recipe.train, **tags) as tracker:
        original, history = train_original(recipe, source, source.train, chosen, seed=params.transfer.seed)
        source_accuracy = accuracy(original, source.test, chosen)
        tracker.log_history(history)
        tracker.log_evaluation({"source_TA": source_accuracy})
    with tracked(params, "evaluate", "transfer-study", params.transfer, method=config.method, **tags) as tracker:
        rows = [row_dict(row) for row in transfer_study(original, source, target, config, chosen)]
        tracker.log_evaluation({f"{r['source']}.{r['mode']}.{k}": r[k] for r in rows
                                for k in ("target_accuracy", "seconds", "unlearn_seconds")})  # fmt: skip
    result = {"source_test_accuracy": source_accuracy, "method": config.method, "source_dataset": source.name,
              "target_dataset": target.name, **{name: list(getattr(config, name)) for name in CLASS_FIELDS},
              "rows": rows}  # fmt: skip
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


def class_list(classes: tuple[int, ...]) -> str:
    """Classes as runs: (0, 1, 2, 3, 7, 9) -> "0-3, 7, 9"."""
    runs: list[list[int]] = []
    for value in classes:
        if runs and value == runs[-1][-1] + 1:
            runs[-1].append(value)
        else:
            runs.append([value])
    return ", ".join(f"{run[0]}-{run[-1]}" if len(run) > 2 else ", ".join(map(str, run)) for run in runs)


def render(params: Params, result: dict) -> str:
    """reports/transfer.md: the tasks (the classes the run recorded, else the preset's), the method and every row."""
    spec = params.transfer.spec()
    source_name = result.get("source_dataset", params.data.dataset)
    target_name = result.get("target_dataset", source_name)
    source_classes, target_classes, forget_classes = (
        tuple(result.get(name, getattr(spec, name))) for name in CLASS_FIELDS
    )
    return (
        "# Transfer after unlearning\n\n"
        f"Source task: {source_name} classes {class_list(source_classes)} (source model's test accuracy "
        f"{result['source_test_accuracy']:.2f}%). Forgotten: classes {class_list(forget_classes)}, by "
        f"{label(result['method'])} (`unlearned`) and by Retrain (`retrained`, the reference). Target task: "
        f"{target_name} classes {class_list(target_classes)}. Linear probe: a new head on frozen features; "
        "fine-tune: every layer. Accuracies are target test top-1, in percent.\n\n" + table(result["rows"]) + "\n"
    )


def report_tables(params: Params) -> str:
    """The report's markdown, from metrics/transfer.json."""
    if not METRICS.is_file():
        raise ConfigError(f"{METRICS} is missing: run `dvc repro transfer` first")
    return render(params, json.loads(METRICS.read_text()))


if __name__ == "__main__":
    stage_main(__doc__, run_transfer)
