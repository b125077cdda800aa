"""The study's DVC stages, one entry point each (`python -m tasks.stages.<stage>`), and their shared libraries.

OpenMP reads its wait policy once, when torch loads it, and every stage module imports torch: so
when this package is imported before torch (a stage process), it puts params.yaml's
`compute.wait_policy` into the environment first (the CLI calls the same function). `stage_main`
then checks the params and sets the threads (`unlearn.threads`).
"""

import sys


def wait_policy_before_torch(argv: list[str]) -> None:
    """OMP_WAIT_POLICY from the `--params` file's (default params.yaml) `compute.wait_policy`, if torch is not loaded.

    A missing or bad file or value is left alone here: the stage's params check names it.
    """
    if "torch" in sys.modules:  # too late for this process; its children get `configure_threads`'s
        return
    import os

    import yaml

    from tasks.adapters.layout import PARAMS_FILE
    from unlearn.errors import ConfigError
    from unlearn.threads import DEFAULT_WAIT_POLICY, wait_environment

    path = next((argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == "--params"), None)
    path = next((arg.split("=", 1)[1] for arg in argv if arg.startswith("--params=")), path) or PARAMS_FILE
    try:
        with open(path) as file:
            compute = (yaml.safe_load(file) or {}).get("compute") or {}
        environment = wait_environment(compute.get("wait_policy", DEFAULT_WAIT_POLICY))
    except (OSError, yaml.YAMLError, AttributeError, ConfigError):
        return
    for name, value in environment.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


wait_policy_before_torch(sys.argv[1:])
