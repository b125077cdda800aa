"""Deployments served without a server to install, and what every flow run needs wherever it starts.

`serve_deletion_batch` serves `deletion-batch` on its cron schedule and `audit-pool` daily. The
rest is shared by the flows however they start (`unlearn batch` on Prefect's local API,
`unlearn serve`, a worker of prefect.yaml's work pool):

- `capture_project_logs`: the project's own log lines (loggers `tasks`, `flows`, `unlearn`) go
  to the flow run's logs in the Prefect UI, not only to the console;
- `enter_project_dir`: prefect.yaml's pull step, into the folder `UNLEARN_PROJECT_DIR` names;
- `rename_flow_run` and `named_by_params`: run names that say what a run is about;
- `thread_policy`: a task body that first takes params.yaml's `compute` (torch's threads, OpenMP's wait).
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import serve
from prefect.flows import EntrypointType

from tasks.adapters.params import PARAMS_FILE, Params, load_params
from unlearn.errors import ConfigError
from unlearn.threads import configure_threads

DEPLOYMENT = "deletion-batch"
AUDIT_POOL_DEPLOYMENT = "audit-pool"
AUDIT_POOL_SCHEDULE = "30 3 * * *"  # daily, 03:30 UTC; keep in step with prefect.yaml
PROJECT_LOGGERS = ("tasks", "flows", "unlearn")
PROJECT_DIR_SETTING = "UNLEARN_PROJECT_DIR"
PROJECT_MARKERS = (str(PARAMS_FILE), "flows")  # what every deployment of prefect.yaml reads in the project folder


def deletion_batch_deployment(params_path: str = str(PARAMS_FILE)):
    """The deletion-batch deployment: `deletion.schedule` (cron, UTC), one run at a time."""
    from flows.deletion_batch import deletion_batch

    params = load_params(params_path)
    return deletion_batch.to_deployment(
        name=DEPLOYMENT,
        cron=params.deletion.schedule,
        parameters={"params_path": params_path},
        concurrency_limit=1,
        tags=["unlearn", "deletion"],
        description="Unlearn every pending deletion request as one batch; register the candidate.",
        # by module path, not file path: a file-path load would put flows/ first on sys.path
        entrypoint_type=EntrypointType.MODULE_PATH,
    )


def audit_pool_deployment(params_path: str = str(PARAMS_FILE)):
    """The audit-pool deployment: daily (`AUDIT_POOL_SCHEDULE`, UTC), one run at a time.

    With `if_stale` it rebuilds the champion's reference pool only where the champion has none or
    its deleted share reached `audit.rebuild_deleted_share`; otherwise the run returns `valid`.
    """
    from flows.audit_pool import audit_pool

    load_params(params_path)  # a bad params.yaml fails here, not at 03:30
    return audit_pool.to_deployment(
        name=AUDIT_POOL_DEPLOYMENT,
        cron=AUDIT_POOL_SCHEDULE,
        parameters={"params_path": params_path, "if_stale": True},
        concurrency_limit=1,
        tags=["unlearn", "audit"],
        description="Rebuild the champion's audit reference pool where it is missing or stale.",
        entrypoint_type=EntrypointType.MODULE_PATH,
    )


def serve_deletion_batch(params_path: str = str(PARAMS_FILE)) -> None:
    """Serve both scheduled deployments from this process (Prefect's local API by default) until interrupted."""
    serve(deletion_batch_deployment(params_path), audit_pool_deployment(params_path))


class _InARun(logging.Filter):
    """Only records logged inside a flow or task run (the API handler has no run to file the others under)."""

    def filter(self, record: logging.LogRecord) -> bool:
        from prefect.context import FlowRunContext, TaskRunContext

        if getattr(record, "flow_run_id", None) or getattr(record, "task_run_id", None):
            return True
        return FlowRunContext.get() is not None or TaskRunContext.get() is not None


def capture_project_logs(names: tuple[str, ...] = PROJECT_LOGGERS) -> None:
    """Send what the project's loggers log inside a flow or task run to that run's logs (the Prefect UI).

    What `PREFECT_LOGGING_EXTRA_LOGGERS=tasks,flows,unlearn` does, done by the flow modules when
    imported, so it holds however a flow starts: `unlearn batch`, `unlearn serve`, a pool's worker.
    Lines logged outside any run (the CLI's own commands) stay on the console only, without
    Prefect's "no flow run id" warning. Levels are the loggers' own: warnings always, info lines
    where the process logs at INFO (the `unlearn` CLI does). Idempotent; a logger that already has
    Prefect's API handler (from that setting) is left as it is.
    """
    from prefect.logging.handlers import APILogHandler

    for name in names:
        logger = logging.getLogger(name)
        if any(isinstance(handler, APILogHandler) for handler in logger.handlers):
            continue
        handler = APILogHandler()
        handler.addFilter(_InARun())
        logger.addHandler(handler)


def enter_project_dir() -> dict[str, str]:
    """prefect.yaml's pull step: change into the project folder that `UNLEARN_PROJECT_DIR` names.

    Prefect's `set_working_directory` with `{{ $UNLEARN_PROJECT_DIR }}` turns an unset variable into
    `os.chdir('')`, a FileNotFoundError naming nothing; this says what to set instead.

    Raises:
        ConfigError: the variable is unset, names no folder, or a folder without params.yaml and flows/.
    """
    value = os.environ.get(PROJECT_DIR_SETTING, "").strip()
    wanted = "the project folder on this worker, a git + DVC clone of unlearn (see prefect.yaml, docs/production.md)"
    if not value:
        raise ConfigError(f"{PROJECT_DIR_SETTING} is not set: set it in the worker's environment to {wanted}")
    folder = Path(value).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"{PROJECT_DIR_SETTING}={value} is no folder on this worker: set it to {wanted}")
    missing = [marker for marker in PROJECT_MARKERS if not (folder / marker).exists()]
    if missing:
        raise ConfigError(f"{PROJECT_DIR_SETTING}={value} has no {' and no '.join(missing)}: set it to {wanted}")
    os.chdir(folder)
    return {"directory": os.getcwd()}


def utc_stamp() -> str:
    """Now, as in batch ids: `20250131T120000Z`."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}"


def named_by_params(prefix: str, describe: Callable[[Params], str]) -> Callable[[], str]:
    """A `flow_run_name` callable: `<prefix>-<describe(params)>`, params from the run's `params` or `params_path`.

    A params file that does not load names the run `<prefix>-<UTC timestamp>`; the flow itself
    then fails on it, with its own error.
    """

    def name() -> str:
        from prefect.runtime import flow_run

        parameters = flow_run.parameters
        params = parameters.get("params")
        try:
            if not isinstance(params, Params):
                params = load_params(parameters.get("params_path") or PARAMS_FILE)
            return f"{prefix}-{describe(params)}"
        except Exception:  # noqa: BLE001 - a name is no place to fail a run
            return f"{prefix}-{utc_stamp()}"

    return name


def rename_flow_run(name: str) -> None:
    """Rename the current flow run, on the API (the UI's name) and in its context (`prefect.runtime`).

    A name is cosmetic: an API that cannot be reached only earns a warning in the run's logs.
    """
    from prefect import get_run_logger
    from prefect.client.orchestration import get_client
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    if context is None or context.flow_run is None or context.flow_run.name == name:
        return
    try:
        with get_client(sync_client=True) as client:
            client.update_flow_run(context.flow_run.id, name=name)
    except Exception as error:  # noqa: BLE001 - the Prefect API out of reach
        get_run_logger().warning("could not rename flow run %r to %r: %s", context.flow_run.name, name, error)
        return
    get_run_logger().info("renamed flow run %r to %r", context.flow_run.name, name)
    context.flow_run.name = name


_RUNNING = {"count": 0, "lock": threading.Lock()}  # `thread_policy` task bodies running in this process now


@contextmanager
def _one_more_task() -> Iterator[int]:
    """Count one more task body while in the block; yields how many run now, this one included."""
    with _RUNNING["lock"]:
        _RUNNING["count"] += 1
        jobs = _RUNNING["count"]
    try:
        yield jobs
    finally:
        with _RUNNING["lock"]:
            _RUNNING["count"] -= 1


def thread_policy(function: Callable[..., Any]) -> Callable[..., Any]:
    """`function`, first applying `compute` (`unlearn.threads.configure_threads`) in the thread it runs in.

    torch's thread count is OpenMP's, kept per thread: a task runner's threads do not see what the
    flow's own thread set, so each task sets it where it runs, sharing the free cores with the
    tasks running beside it in this process (a Dask worker: OMP_NUM_THREADS=1, so one thread).
    The params are the task's first `Params` argument, else params.yaml's (its defaults where
    there is none).
    """

    def configured(*args: Any, **kwargs: Any) -> Any:
        params = next((value for value in (*args, *kwargs.values()) if isinstance(value, Params)), None)
        if params is None:
            params = load_params() if Path(PARAMS_FILE).is_file() else Params()
        with _one_more_task() as jobs:
            choice = configure_threads(params.compute.threads, params.compute.wait_policy, jobs)
            logging.getLogger(__name__).info(choice.line())
            return function(*args, **kwargs)

    # The function's name, doc and signature (`__wrapped__`), for Prefect's parameters and run names; its
    # own module and qualified name, so Dask's workers get it by value, not as the function it wraps.
    functools.update_wrapper(configured, function, assigned=("__name__", "__doc__"))
    configured.__qualname__ = f"thread_policy.<locals>.{function.__qualname__}"
    return configured
