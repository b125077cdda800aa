"""Deployments served without a server to install: `deletion-batch` on its cron schedule, `audit-pool` daily."""

from __future__ import annotations

from prefect import serve
from prefect.flows import EntrypointType

from flows.audit_pool import audit_pool
from flows.deletion_batch import deletion_batch
from tasks.adapters.params import PARAMS_FILE, load_params

DEPLOYMENT = "deletion-batch"
AUDIT_POOL_DEPLOYMENT = "audit-pool"
AUDIT_POOL_SCHEDULE = "30 3 * * *"  # daily, 03:30 UTC; keep in step with prefect.yaml


def deletion_batch_deployment(params_path: str = str(PARAMS_FILE)):
    """The deletion-batch deployment: `deletion.schedule` (cron, UTC), one run at a time."""
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
