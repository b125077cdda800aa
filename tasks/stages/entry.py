"""What every stage entry point shares: `--params` and the stage's own arguments, one process per stage."""

from __future__ import annotations

import argparse
import atexit
import gc
import logging
import os
import sys
import threading
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

    In a stage process (`python -m tasks.stages.<stage>`) two things save start-up and teardown
    that the stage's own work does not need; called from anywhere else it returns as usual:
    - the objects its imports made so far (torch's alone: ~180,000 that the collector tracks)
      leave the collector's generations (`gc.freeze`), so its full collections no longer walk them;
    - after `run` returns, the process ends as the interpreter's exit begins (other threads joined,
      atexit handlers run, streams flushed) but without its teardown: collecting and unloading
      those objects took 1.2-1.6 s of every stage process on two cores.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default=str(layout.PARAMS_FILE))
    for name, kind, *optional in arguments:
        parser.add_argument(f"--{name}", type=kind, required=not optional, help=optional[0] if optional else None)
    args = {name: value for name, value in vars(parser.parse_args()).items() if value is not None}
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    stage_process = _is_stage_process()
    try:
        params = load_params(args.pop("params"))
        if stage_process:
            gc.freeze()
        logging.getLogger(__name__).info(configure_threads(params.compute.threads, params.compute.wait_policy).line())
        run(params, **args)
    except UnlearnError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from error
    if stage_process:
        exit_without_teardown()


def _is_stage_process() -> bool:
    """Whether this process runs a `tasks` module as its main (`python -m tasks.stages.<stage>`)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return spec is not None and spec.name.startswith("tasks.")


def exit_without_teardown(code: int = 0) -> None:
    """End the process with status `code` as a normal exit would, less the interpreter's teardown.

    A normal exit joins the other non-daemon threads, runs the atexit handlers (MLflow's among
    them), then tears the interpreter down: that last part only frees memory the process is about
    to give back, and on a stage process it took 1.2-1.6 s (two cores). Files the stages write are
    closed by then; the standard streams (and any that replaced them) are flushed here.
    """
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    logging.shutdown()
    for stream in {sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__} - {None}:
        stream.flush()
    os._exit(code)


def sparsities_to_run(sparsity: float | None, every: list[float]) -> list[float]:
    """[sparsity], or `every` one when None: dvc.yaml's stages loop in one process (docs/architecture.md)."""
    return every if sparsity is None else [sparsity]
