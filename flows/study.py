"""Flow `study`: the paper's grid with dvc.yaml's stage functions, fanned out by a task runner.

    prepare -> split, validate        (per scenario)
            -> train -> prune         (per sparsity)
            -> calibrate              (every scenario, method, sparsity in one task, as in dvc.yaml)
            -> retrain                (scenario x sparsity; dvc.yaml: per scenario)
               unlearn                (scenario x method x sparsity; dvc.yaml: scenario x method)
            -> evaluate               (scenario x method, Retrain included)
            -> report                 (reports/study.md, and a Prefect markdown artifact)

Each task waits for exactly the outputs its dvc.yaml stage lists as deps, so independent
branches (another scenario's split, another sparsity's pruning) run side by side. Parallel
tasks are safe: each writes its own files (layout.py) under the current directory.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_client, unmapped
from prefect.artifacts import create_markdown_artifact
from prefect.context import FlowRunContext
from prefect.futures import PrefectFuture, wait
from prefect.runtime import flow_run
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from flows.deployments import capture_project_logs, named_by_params
from flows.stages import (
    GPU_TAG,
    calibrate_task,
    evaluate_task,
    prepare_task,
    prune_task,
    report_task,
    split_task,
    train_task,
    unlearn_task,
    validate_task,
)
from tasks.adapters import layout
from tasks.adapters.params import PARAMS_FILE, Params, load_params
from tasks.stages.findings import report_tables, study_methods
from unlearn.errors import ConfigError

capture_project_logs()

RunnerName = Literal["threads", "dask"]
REPORT_ARTIFACT = "study-report"
# Two cores: torch's intra-op threads already keep both busy, so two tasks at a time
# overlap one task's file I/O and set-up with another's compute, and no more.
THREAD_WORKERS = 2
# Worker processes start in the flow's working directory, so the stages' relative paths
# (data/, models/, metrics/) resolve as in the flow; Dask's nanny starts them with
# OMP_NUM_THREADS=1, so torch takes one thread each: one task per worker, one per core.
LOCAL_CLUSTER = {"n_workers": 2, "threads_per_worker": 1, "processes": True, "dashboard_address": None}


def make_task_runner(name: str, address: str | None = None) -> TaskRunner:
    """`threads` (in this process) or `dask` (a LocalCluster, or the scheduler at `address`)."""
    if name == "threads":
        if address:
            raise ConfigError("a Dask scheduler address needs the `dask` task runner")
        return ThreadPoolTaskRunner(max_workers=THREAD_WORKERS)
    if name == "dask":
        from prefect_dask import DaskTaskRunner

        if address:
            return DaskTaskRunner(address=address)
        return DaskTaskRunner(cluster_class="distributed.LocalCluster", cluster_kwargs=LOCAL_CLUSTER)
    raise ConfigError(f"unknown task runner {name!r}; known: threads, dask")


def default_gpu_slots() -> int:
    """One `gpu` slot per CUDA device here; at least one, so a CPU machine runs one model stage at a time."""
    import torch

    return max(1, torch.cuda.device_count())


def ensure_gpu_limit(slots: int) -> int:
    """Create or update the `gpu` tag concurrency limit: at most `slots` model stages run at once."""
    if slots < 1:  # a limit of 0 would abort every gpu-tagged task run rather than queue it
        raise ConfigError(f"the gpu concurrency limit needs at least 1 slot, got {slots}")
    with get_client(sync_client=True) as client:
        client.create_concurrency_limit(tag=GPU_TAG, concurrency_limit=slots)  # creates or updates
    return slots


def submit_data(params: Params) -> tuple[PrefectFuture, dict[str, PrefectFuture]]:
    """prepare, then split and validate each scenario; returns prepare's future and validate's by scenario."""
    prepared = prepare_task.submit(params)
    validated = {}
    for scenario in params.split.scenarios:
        split = split_task.submit(params, scenario, wait_for=[prepared])
        validated[scenario] = validate_task.submit(params, scenario, wait_for=[split])
    return prepared, validated


def submit_models(params: Params, prepared: PrefectFuture) -> tuple[PrefectFuture, dict[float, PrefectFuture]]:
    """train (needs only the prepared data), then prune at every sparsity; prune's futures by sparsity."""
    trained = train_task.submit(params, wait_for=[prepared])
    sparsities = params.prune.sparsities
    pruned = prune_task.map(unmapped(params), sparsities, wait_for=[trained])
    return trained, dict(zip(sparsities, pruned, strict=True))


def submit_unlearning(
    params: Params, validated: dict[str, PrefectFuture], pruned: dict[float, PrefectFuture], calibrated: PrefectFuture
) -> dict[tuple[str, str, float], PrefectFuture]:
    """Retrain and every method per scenario and sparsity, after the split's check and the pruned model
    (and, but for Retrain, the calibration)."""
    after = {method: [] if method == "retrain" else [calibrated] for method in study_methods(params)}
    return {
        (scenario, method, sparsity): unlearn_task.submit(
            params, scenario, method, sparsity, wait_for=[validated[scenario], pruned[sparsity], *after[method]]
        )
        for scenario in params.split.scenarios
        for method in study_methods(params)
        for sparsity in params.prune.sparsities
    }


def submit_evaluation(
    params: Params, unlearned: dict[tuple[str, str, float], PrefectFuture]
) -> dict[tuple[str, str], PrefectFuture]:
    """evaluate each (scenario, method), Retrain included, once its models at every sparsity exist."""
    return {
        (scenario, method): evaluate_task.submit(
            params,
            scenario,
            method,
            wait_for=[unlearned[scenario, method, sparsity] for sparsity in params.prune.sparsities],
        )
        for scenario in params.split.scenarios
        for method in study_methods(params)
    }


def raise_first_failure(futures: Iterable[PrefectFuture]) -> None:
    """Wait for every future; raise the exception of the first (in submission order) that failed.

    A flow that returns normally is Completed whatever its tasks did, so failures are
    raised here. Submission order is dependency order: the root cause is raised, not a
    downstream task left waiting on it.
    """
    futures = list(futures)
    wait(futures)
    for future in futures:
        future.result(raise_on_failure=True)


def publish_report(params: Params) -> str:
    """The study's tables as the flow run's markdown artifact `study-report`; returns the artifact id."""
    where = Path.cwd() / layout.STUDY_REPORT
    markdown = f"{report_tables(params)}\nFull report, with figures: `{where}`.\n"
    artifact_id = create_markdown_artifact(
        markdown=markdown, key=REPORT_ARTIFACT, description=f"Study tables of flow run {flow_run.name}"
    )
    return str(artifact_id)


def run_grid(params: Params) -> dict[str, Any]:
    """Submit every stage of the grid, wait for all of it, publish the report's tables."""
    prepared, validated = submit_data(params)
    trained, pruned = submit_models(params, prepared)
    calibrated = calibrate_task.submit(params, wait_for=list(pruned.values()))
    unlearned = submit_unlearning(params, validated, pruned, calibrated)
    evaluated = submit_evaluation(params, unlearned)
    reported = report_task.submit(params, wait_for=list(evaluated.values()))
    raise_first_failure([prepared, *validated.values(), trained, *pruned.values(), calibrated, *unlearned.values(),
                         *evaluated.values(), reported])  # fmt: skip
    metrics: dict[str, dict[str, str]] = {}
    for scenario, method in evaluated:
        metrics.setdefault(scenario, {})[method] = str(layout.metrics_path(scenario, method))
    return {"report": str(reported.result()), "metrics": metrics, "artifact_id": publish_report(params)}


@flow(
    name="study",
    flow_run_name=named_by_params("study", lambda params: params.data.dataset),  # study-digits, study-<own data>
    task_runner=make_task_runner("threads"),
)
def study(
    params: Params | None = None,
    params_path: str = str(PARAMS_FILE),
    task_runner: RunnerName = "threads",
    dask_address: str | None = None,
    gpu_slots: int | None = None,
) -> dict[str, Any]:
    """Run the paper's grid (dvc.yaml's stages) and publish the report's tables.

    Args:
        params: the configuration; default: read from `params_path`.
        task_runner: `threads` or `dask`; a run whose flow object has another runner
            (a deployment, a direct call) reruns itself as a subflow with this one.
        dask_address: a Dask scheduler to use instead of a local cluster.
        gpu_slots: model stages at once (the `gpu` tag's limit); default: CUDA devices here, at least 1.

    Returns the report's path, the metrics files by scenario and method, and the artifact's id.
    """
    wanted = make_task_runner(task_runner, dask_address)
    if FlowRunContext.get().task_runner != wanted:
        return study.with_options(task_runner=wanted)(params, params_path, task_runner, dask_address, gpu_slots)
    ensure_gpu_limit(default_gpu_slots() if gpu_slots is None else gpu_slots)
    return run_grid(load_params(params_path) if params is None else params)


def run_study(
    params_path: str = str(PARAMS_FILE),
    task_runner: RunnerName = "threads",
    address: str | None = None,
    params: Params | None = None,
    gpu_slots: int | None = None,
) -> dict[str, Any]:
    """The study flow built with the chosen task runner (what `unlearn study` calls)."""
    runner = make_task_runner(task_runner, address)
    return study.with_options(task_runner=runner)(
        params=params, params_path=params_path, task_runner=task_runner, dask_address=address,
        gpu_slots=gpu_slots,
    )  # fmt: skip
