"""The `audit-pool` flow: build the champion's reference pool for the membership audit, references side by side.

plan (the champion's verified checkpoint, its training set, K seeded halves, the probes)
-> train-reference x K (fanned out by the study's task runner, threads or Dask; `gpu`-tagged,
so the study's tag limit keeps one per accelerator) -> save, `dvc add` (and push), record on
the champion's registry version. `train-original` runs it for the first champion;
`unlearn audit build` for an existing one, and with `if_stale` (the `audit-pool` deployment)
only when the champion has no pool or the pool's deleted share reached
`audit.rebuild_deleted_share` (see `tasks.production.audit`).
"""

from __future__ import annotations

import time

from prefect import flow, task, unmapped
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext

from flows.deployments import capture_project_logs, rename_flow_run, thread_policy
from flows.stages import GPU_TAG
from flows.study import RunnerName, default_gpu_slots, ensure_gpu_limit, make_task_runner, raise_first_failure
from tasks.adapters.ledger import Ledger
from tasks.adapters.params import PARAMS_FILE, load_params
from tasks.production import audit, deletion

capture_project_logs()

_STEP = {"cache_policy": NO_CACHE, "retries": 0}
plan_task = task(audit.plan_pool, name="plan-pool", **_STEP)
reference_task = task(
    thread_policy(audit.train_reference),
    name="train-reference",
    task_run_name="reference-{index}",
    tags=[GPU_TAG],
    **_STEP,
)
save_task = task(audit.save_built_pool, name="save-pool", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)


def run_name() -> str:
    """`audit-pool-v<version>`; `audit-pool-champion` until the champion's version is known (then renamed)."""
    from prefect.runtime import flow_run

    version = flow_run.parameters.get("version")
    return f"audit-pool-v{version}" if version else "audit-pool-champion"


@flow(name="audit-pool", flow_run_name=run_name, log_prints=True)
def audit_pool(
    params_path: str = str(PARAMS_FILE),
    version: str | None = None,
    if_stale: bool = False,
    task_runner: RunnerName | None = None,
    dask_address: str | None = None,
) -> dict:
    """Build the reference pool of the champion (or `version`); with `if_stale`, only where it is missing or stale.

    Args:
        task_runner: `threads` or `dask` (default: `audit.task_runner`).
        dask_address: a Dask scheduler to use instead of a local cluster.
    """
    params = load_params(params_path)
    runner_name = task_runner or params.audit.task_runner
    wanted = make_task_runner(runner_name, dask_address)
    if FlowRunContext.get().task_runner != wanted:
        return audit_pool.with_options(task_runner=wanted)(params_path, version, if_stale, runner_name, dask_address)
    if if_stale:
        target = deletion.champion_version(params) if version is None else None
        deleted = Ledger.load(params.deletion.ledger).deleted_ids()
        if target is not None:
            rename_flow_run(f"audit-pool-v{target.version}")
            if not audit.is_stale(params, target, deleted):
                return publish({"status": "valid", "pool": target.tags.get(audit.POOL_PATH_TAG, "")})
    started = time.perf_counter()
    ensure_gpu_limit(default_gpu_slots())
    plan = plan_task(params, version)
    rename_flow_run(f"audit-pool-v{plan.champion_version}")
    references = reference_task.map(unmapped(params), unmapped(plan), list(range(len(plan.seeds))))
    raise_first_failure(references)
    scored = [future.result() for future in references]
    manifest = save_task(params, plan, scored, time.perf_counter() - started)
    return publish(
        {
            "status": "built",
            "pool": str(audit.pool_dir(plan.name)),
            "model": manifest.model,
            "champion_version": manifest.champion_version,
            "references": manifest.references,
            "seconds": manifest.seconds,
            "reference_seconds_median": sorted(manifest.reference_seconds)[len(manifest.reference_seconds) // 2],
            "sha256": manifest.sha256,
        }
    )


def publish(summary: dict) -> dict:
    """A markdown artifact of the run."""
    lines = [f"# Audit reference pool: {summary['status']}"] + [
        f"- **{key}**: {value}" for key, value in summary.items() if key != "status"
    ]
    create_markdown_artifact("\n".join(lines), key="audit-pool", description="the audit's reference pool")
    return summary
