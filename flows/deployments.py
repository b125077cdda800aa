"""Deployments: the `deletion-batch` deployment on its cron schedule, served without a server to install."""

from __future__ import annotations

from prefect import serve
from prefect.flows import EntrypointType

from flows.deletion_batch import deletion_batch
from tasks.adapters.params import PARAMS_FILE, load_params

DEPLOYMENT = "deletion-batch"


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


def serve_deletion_batch(params_path: str = str(PARAMS_FILE)) -> None:
    """Serve the deployment from this process (Prefect's local API by default) until interrupted."""
    serve(deletion_batch_deployment(params_path))
