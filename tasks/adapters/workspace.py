"""The project folder as stages and services see it: the prepared data, splits, checkpoints, the device."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path

import torch

from tasks.adapters import layout
from tasks.adapters.params import Params
from unlearn.checkpoint import Checkpoint, load_checkpoint, model_metadata, restore_model, save_checkpoint
from unlearn.data import DataBundle
from unlearn.device import pick_device
from unlearn.presets import Preset, get_preset
from unlearn.splits import Split, resolve_ids


def device() -> torch.device:
    """The device stages run on: `UNLEARN_DEVICE` (auto, cpu, cuda[:N]) or auto."""
    return pick_device(os.environ.get("UNLEARN_DEVICE", "auto"))


def preset(params: Params) -> Preset:
    return get_preset(params.data.preset)


def bundle() -> DataBundle:
    """The prepared data set (the prepare stage writes it once; every stage reuses its split)."""
    return DataBundle.load(layout.RAW)


def split(scenario: str) -> Split:
    return Split.load(layout.split_dir(scenario))


def study_calibration(scenario: str, method: str, sparsity: float, path: str | Path | None = None) -> dict:
    """The study's calibration of `method` for `scenario` at `sparsity` (stage `calibrate`; {} if none).

    `status` calibrated | skipped | uncalibrated, `reason`, `values` (calibrated: what the unlearn stage
    runs with), `dataset`, `date`, `cost_retrains` (the search of this scenario and sparsity, in Retrains).
    """
    import json

    path = Path(path or layout.CALIBRATION_RECORD)
    if not path.is_file():
        return {}
    record = json.loads(path.read_text())
    return dict(record.get("entries", {}).get(scenario, {}).get(method, {}).get(layout.sparsity_tag(sparsity), {}))


def training_rows(data: DataBundle, excluded: Sequence[str] = ()) -> list[int]:
    """The rows of the training set an original trains on: all of them but the `excluded` sample ids.

    Excluded ids the data set lacks are left out already: a purge removed their rows (`tasks.stages.prepare`).
    """
    present = set(data.train.ids)
    left_out = set(resolve_ids(data.train, [sample_id for sample_id in excluded if sample_id in present]))
    return [row for row in range(len(data.train)) if row not in left_out]


def save_model(path, model: torch.nn.Module, params: Params, data: DataBundle, masks=None, **metadata):
    """Checkpoint `model` with the metadata every stage records (arch, data set, preset)."""
    recipe = preset(params)
    base = model_metadata(recipe.arch, data, model_options=recipe.model_options, preset=recipe.name)
    return save_checkpoint(path, model, {**base, **metadata}, masks)


def load_model(path, **expect) -> tuple[torch.nn.Module, Checkpoint]:
    """The model a checkpoint holds, and the checkpoint (masks, metadata)."""
    checkpoint = load_checkpoint(path, expect=expect or None)
    return restore_model(checkpoint), checkpoint


def tracked(params: Params, kind: str, name: str, config=None, /, **tags) -> AbstractContextManager:
    """`tasks.adapters.tracking.run`: a run around one unit of a stage's work, yielding a tracker.

    The same entry point, imported on first use, so importing a stage does not import MLflow
    (~2 s). The tracker is a `Tracker`, or a `NoTracker` when `params.tracking.enabled` is false:
    log through it unconditionally.
    """
    from tasks.adapters import tracking

    return tracking.run(params, kind, name, config, **tags)


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file's bytes (hex)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def dvc_add(targets: Sequence[str | Path], push: bool) -> dict[str, str]:
    """`dvc add` files or folders of this project (and `dvc push` them to the default remote); their md5s.

    Returns `{"dvc.<name>": md5}` per target, as the registry records them.
    """
    from dvc.repo import Repo

    targets = [str(target) for target in targets]
    with Repo(".") as repo:
        stages = repo.add(targets)
        if push:
            repo.push(targets=[f"{target}.dvc" for target in targets])
    return {f"dvc.{Path(out.def_path).name}": out.hash_info.value for stage in stages for out in stage.outs}
