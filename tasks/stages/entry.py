"""What every stage entry point shares: `--params` and the stage's own arguments, one process per stage."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable

import torch

from tasks.adapters import layout
from tasks.adapters.params import load_params
from unlearn.errors import UnlearnError


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
