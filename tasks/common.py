"""What every stage entry point shares: params, the prepared data, the device, argument parsing."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager

import torch

from tasks import layout
from tasks.params import Params, load_params
from unlearn.checkpoint import Checkpoint, load_checkpoint, model_metadata, restore_model, save_checkpoint
from unlearn.data import DataBundle
from unlearn.device import pick_device
from unlearn.errors import UnlearnError
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


def training_rows(data: DataBundle, excluded: Sequence[str] = ()) -> list[int]:
    """The rows of the training set an original trains on: all of them but the `excluded` sample ids."""
    left_out = set(resolve_ids(data.train, excluded))
    return [row for row in range(len(data.train)) if row not in left_out]


def stage_main(description: str, run: Callable[..., object], *arguments: tuple) -> None:
    """Parse `--params` plus the stage's own arguments and call `run(params, ...)`.

    An argument is `(name, type)`, required, or `(name, type, help)`, optional: left out, `run`
    gets its default. Bad input ends the process with status 2 and the error's message.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default=str(layout.PARAMS_FILE))
    for name, kind, *optional in arguments:
        parser.add_argument(f"--{name}", type=kind, required=not optional, help=optional[0] if optional else None)
    args = {name: value for name, value in vars(parser.parse_args()).items() if value is not None}
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(max(1, min(torch.get_num_threads(), os.cpu_count() or 1)))
    try:
        params = load_params(args.pop("params"))
        run(params, **args)
    except UnlearnError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from error


def sparsities_to_run(sparsity: float | None, every: list[float]) -> list[float]:
    """[sparsity], or `every` one when None: dvc.yaml's stages loop in one process (docs/architecture.md)."""
    return every if sparsity is None else [sparsity]


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
    """`tasks.tracking.run`: a run around one unit of a stage's work, yielding a tracker.

    The same entry point, imported on first use, so importing a stage does not import MLflow
    (~2 s). The tracker is a `Tracker`, or a `NoTracker` when `params.tracking.enabled` is false:
    log through it unconditionally.
    """
    from tasks import tracking

    return tracking.run(params, kind, name, config, **tags)
