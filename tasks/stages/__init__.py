"""The study's DVC stages, one entry point each (`python -m tasks.stages.<stage>`), and their shared libraries.

Two things happen when this package is imported for a stage process, before the stage module
and its imports load:
- OpenMP reads its wait policy once, when torch loads it, and every stage module imports torch:
  so params.yaml's `compute.wait_policy` goes into the environment first (the CLI calls the same
  function). `stage_main` then checks the params and sets the threads (`unlearn.threads`).
- With `compute.stage_server: true` (the default), the stage runs in a child of the stage server,
  whose imports are done (`tasks.stages.server`), and this process ends with its exit status.
"""

import os
import sys


def _compute_section(argv: list[str]) -> dict | None:
    """The `--params` file's (default params.yaml) `compute` section; None where it cannot be read."""
    import yaml

    from tasks.adapters.layout import PARAMS_FILE

    path = next((argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == "--params"), None)
    path = next((arg.split("=", 1)[1] for arg in argv if arg.startswith("--params=")), path) or PARAMS_FILE
    try:
        with open(path) as file:
            compute = (yaml.safe_load(file) or {}).get("compute") or {}
    except (OSError, yaml.YAMLError, AttributeError):
        return None
    return compute if isinstance(compute, dict) else None


def wait_policy_before_torch(argv: list[str]) -> None:
    """OMP_WAIT_POLICY from the `--params` file's (default params.yaml) `compute.wait_policy`, if torch is not loaded.

    A missing or bad file or value is left alone here: the stage's params check names it.
    """
    _apply_wait_policy(_compute_section(argv))


def _apply_wait_policy(compute: dict | None) -> None:
    if "torch" in sys.modules or compute is None:  # too late for this process; its children get `configure_threads`'s
        return
    from unlearn.errors import ConfigError
    from unlearn.threads import DEFAULT_WAIT_POLICY, wait_environment

    try:
        environment = wait_environment(compute.get("wait_policy", DEFAULT_WAIT_POLICY))
    except ConfigError:
        return
    for name, value in environment.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def _module_starting() -> str | None:
    """The module a plain `python -m <module>` (no interpreter options) is starting while it imports this package."""
    argv = getattr(sys, "orig_argv", [])
    return argv[2] if sys.argv[:1] == ["-m"] and len(argv) >= 3 and argv[1] == "-m" else None


def _serve_stage(module: str, argv: list[str], compute: dict | None) -> None:
    """Run stage `module` in the stage server and end this process with its status, where the params ask for
    it and a server takes it; otherwise return, and the stage runs here."""
    if "torch" in sys.modules or compute is None or compute.get("stage_server", True) is not True:
        return  # a bad value: the stage's params check names it
    from tasks.stages.server import run_served

    status = run_served(module, argv)
    if status is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


_starting = _module_starting()
if _starting != f"{__name__}.server":  # the server keeps the environment it was started with
    _compute = _compute_section(sys.argv[1:])
    _apply_wait_policy(_compute)
    if _starting is not None and _starting.startswith(f"{__name__}."):
        _serve_stage(_starting, sys.argv[1:], _compute)
