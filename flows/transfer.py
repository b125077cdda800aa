"""Flow `transfer`: transfer after unlearning, as dvc.yaml's `transfer` stage runs it.

    prepare -> transfer     (metrics/transfer.json, reports/transfer.md, and a markdown artifact)

The transfer task runs the very function `dvc repro transfer` runs (tasks/stages/transfer.py).
"""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from flows.deployments import thread_policy
from flows.stages import GPU_TAG, prepare_task
from flows.study import raise_first_failure
from tasks.adapters.params import PARAMS_FILE, load_params
from tasks.stages import transfer as transfer_stage

REPORT_ARTIFACT = "transfer-report"

transfer_task = task(thread_policy(transfer_stage.run_transfer), name="transfer", task_run_name="transfer",
                     tags=[GPU_TAG], cache_policy=NO_CACHE, retries=0)  # fmt: skip


@flow(name="transfer", flow_run_name="transfer-{params_path}")
def transfer(params_path: str = str(PARAMS_FILE)) -> dict[str, Any]:
    """Train the source model, unlearn and retrain it, transfer all three both ways; publish the table.

    Returns the report's and metrics' paths and the artifact's id.
    """
    params = load_params(params_path)
    prepared = prepare_task.submit(params)
    transferred = transfer_task.submit(params, wait_for=[prepared])
    raise_first_failure([prepared, transferred])
    artifact_id = create_markdown_artifact(
        markdown=transfer_stage.report_tables(params),
        key=REPORT_ARTIFACT,
        description=f"Transfer after unlearning, flow run {flow_run.name}",
    )
    return {
        "report": str(transferred.result()),
        "metrics": str(transfer_stage.METRICS),
        "artifact_id": str(artifact_id),
    }
