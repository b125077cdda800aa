"""Flow `tune`: an Optuna search whose trials fan out as Prefect tasks, with the study's task runners.

Optuna's ask/tell interface drives it: ask `parallel` trials, submit one `tune-trial` task per
trial, wait, tell their results, repeat until the study holds `trials` finished trials
(`tasks.production.tune.search`). Retrain's reference is one `tune-reference` task, run once per study.

Trials are judged on wall time against Retrain's, so both should run under the same
concurrency. `threads` runs tasks in this process, where parallel trials would share torch's
thread pool: it runs one trial at a time by default. `dask` runs one single-threaded worker
per core (the reference runs on a worker too): it runs as many trials at a time as workers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext
from prefect.futures import wait

from flows.deployments import capture_project_logs, thread_policy
from flows.study import LOCAL_CLUSTER, RunnerName, make_task_runner
from tasks.adapters.params import PARAMS_FILE, load_params
from tasks.production.tune import DEFAULT_FOLDS, DEFAULT_STORAGE, comparison_table, retrain_reference, run_trial, tune

capture_project_logs()

TUNE_ARTIFACT = "tune-report"
_TASK = {"cache_policy": NO_CACHE, "retries": 0}  # a trial's failure is not transient

reference_task = task(thread_policy(retrain_reference), name="tune-reference", task_run_name="tune-reference", **_TASK)
trial_task = task(thread_policy(run_trial), name="tune-trial", task_run_name="trial-{values}", **_TASK)
_TASKS = {retrain_reference: reference_task, run_trial: trial_task}


def run_as_tasks(function: Callable[..., Any], calls: list[tuple]) -> list[Any]:
    """Submit one Prefect task per call to the flow's task runner; their results, in order."""
    futures = [_TASKS[function].submit(*arguments) for arguments in calls]
    wait(futures)
    return [future.result(raise_on_failure=True) for future in futures]


def default_parallel(task_runner: str) -> int:
    """Trials at a time: one in-process (threads), one per worker of the local Dask cluster otherwise."""
    return 1 if task_runner == "threads" else int(LOCAL_CLUSTER["n_workers"])


@flow(name="tune", flow_run_name="tune-{method}-{scenario}-s{sparsity}", task_runner=make_task_runner("threads"))
def tune_flow(
    method: str,
    scenario: str,
    sparsity: float = 0.0,
    trials: int = 20,
    params_path: str = str(PARAMS_FILE),
    storage: str = DEFAULT_STORAGE,
    max_cost_share: float | None = None,
    folds: int = DEFAULT_FOLDS,
    parallel: int | None = None,
    seed: int = 0,
    write: bool = True,
    task_runner: RunnerName = "threads",
    dask_address: str | None = None,
) -> dict[str, Any]:
    """Search (or resume) `method`'s hyperparameters for `scenario` at `sparsity` (`tasks.production.tune.tune`).

    Args:
        trials: the total number of finished trials the study should hold (the defaults trial included).
        max_cost_share: the budget, a trial's share of Retrain's wall time; default: the preset's.
        folds: tuning problems each trial is averaged over.
        parallel: trials asked and run at a time; default: `default_parallel(task_runner)`.
        write: write the best values to `params_path`'s `tuned` section.

    Returns the study's summary (best values and gap, the defaults' gap, where they were written).
    """
    wanted = make_task_runner(task_runner, dask_address)
    if FlowRunContext.get().task_runner != wanted:
        return tune_flow.with_options(task_runner=wanted)(
            method, scenario, sparsity, trials, params_path, storage, max_cost_share, folds, parallel, seed,
            write, task_runner, dask_address,
        )  # fmt: skip
    summary = tune(
        load_params(params_path), method, scenario, sparsity, trials, storage=storage,
        params_path=Path(params_path) if write else None, max_cost_share=max_cost_share, folds=folds,
        parallel=parallel or default_parallel(task_runner), seed=seed, execute=run_as_tasks,
    )  # fmt: skip
    create_markdown_artifact(
        markdown=comparison_table(storage, [summary.study]), key=TUNE_ARTIFACT,
        description=f"Defaults against tuned values of {summary.study}",
    )  # fmt: skip
    return asdict(summary)


def run_tune(
    method: str,
    scenario: str,
    sparsity: float = 0.0,
    trials: int = 20,
    *,
    task_runner: RunnerName = "threads",
    address: str | None = None,
    **options: Any,
) -> dict[str, Any]:
    """The tune flow built with the chosen task runner (what `unlearn tune` calls)."""
    runner = make_task_runner(task_runner, address)
    return tune_flow.with_options(task_runner=runner)(
        method, scenario, sparsity, trials, task_runner=task_runner, dask_address=address, **options
    )
