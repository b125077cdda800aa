"""The `train_original` flow: train (and prune, per `deletion.sparsity`) the first champion and register it.

It reuses the study's stage tasks (prepare, train, prune) on one seed, registers the dense
original and, where configured, the sparse original as a child of it, and points the
`champion` alias at the one configured to serve.
"""

from __future__ import annotations

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from flows.stages import prepare_task, prune_task, train_task
from tasks import layout, registry, tracking
from tasks.common import load_model
from tasks.params import Params, load_params


def champion_params(params: Params) -> Params:
    """params.yaml narrowed to the one seed the production champion is trained with."""
    train = params.train.model_copy(update={"seeds": [params.deletion.seed]})
    return params.model_copy(update={"train": train})


@task(name="register-original", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def register(params: Params, champion: bool, parent_version: str | None = None):
    """Register the dense (or sparse) original of the champion seed."""
    seed, sparsity = params.deletion.seed, params.deletion.sparsity
    root = layout.CHAMPION_MODELS
    dense = parent_version is None
    path = layout.original_path(seed, root) if dense else layout.pruned_path(sparsity, seed, root)
    _, checkpoint = load_model(path)
    tags = {"prefect.flow_run_id": str(flow_run.id), "seed": str(seed)}
    with tracking.start_run("train", f"original-seed{seed}", params=params.train, tags=tags):
        tracking.log_evaluation({"TA": checkpoint.metadata["test_accuracy"]})
        return registry.register_original(
            path,
            {"TA": checkpoint.metadata["test_accuracy"]},
            parent_version=parent_version,
            champion=champion,
            tags=tags,
        )


@flow(name="train-original", flow_run_name="train-original-{params_path}", log_prints=True)
def train_original(params_path: str = "params.yaml") -> dict:
    """Train the first champion on the whole training set, prune it if configured, register it."""
    params = champion_params(load_params(params_path))
    prepare_task(params)
    train_task(params, root=str(layout.CHAMPION_MODELS))
    sparse = params.deletion.sparsity > 0
    dense = register(params, champion=not sparse)
    champion = dense
    if sparse:
        prune_task(params, params.deletion.sparsity, root=str(layout.CHAMPION_MODELS))
        champion = register(params, champion=True, parent_version=str(dense.version))
    summary = {
        "model": champion.name,
        "champion_version": str(champion.version),
        "dense_version": str(dense.version),
        "sparsity": params.deletion.sparsity,
    }
    create_markdown_artifact(
        "\n".join(f"- **{k}**: {v}" for k, v in summary.items()),
        key="train-original",
        description="the first champion",
    )
    return summary
