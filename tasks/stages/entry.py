"""What every stage entry point shares: `--params` and the stage's own arguments, one process per stage."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from tasks.adapters import layout
from tasks.adapters.params import load_params
from unlearn.errors import UnlearnError
from unlearn.threads import configure_threads


def stage_main(description: str, run: Callable[..., object], *arguments: tuple) -> None:
    """Parse `--params` plus the stage's own arguments and call `run(params, ...)`.

    An argument is `(name, type)`, required, or `(name, type, help)`, optional: left out, `run`
    gets its default. Bad input ends the process with status 2 and the error's message.
    Before `run`, the process takes its threads and OpenMP wait policy from `compute`
    (`unlearn.threads.configure_threads`) and logs what it chose and why.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default=str(layout.PARAMS_FILE))
    for name, kind, *optional in arguments:
        parser.add_argument(f"--{name}", type=kind, required=not optional, help=optional[0] if optional else None)
    args = {name: value for name, value in vars(parser.parse_args()).items() if value is not None}
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        params = load_params(args.pop("params"))
        logging.getLogger(__name__).info(configure_threads(params.compute.threads, params.compute.wait_policy).line())
        run(params, **args)
    except UnlearnError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from error


def sparsities_to_run(sparsity: float | None, every: list[float]) -> list[float]:
    """[sparsity], or `every` one when None: dvc.yaml's stages loop in one process (docs/architecture.md)."""
    return every if sparsity is None else [sparsity]
