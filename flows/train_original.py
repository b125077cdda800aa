"""The `train_original` flow: train (and prune, per `deletion.sparsity`) the first champion and register it,
calibrate the deletion method's settings on it, then build its audit reference pool (`flows.audit_pool`).

Calibration (`tasks.production.tune.calibrate`, params.yaml `calibrate:`) searches each method's settings
on simulated deletions from the champion itself, its trials fanned out as Prefect tasks (`flows.tune`),
within `calibrate.max_retrains` Retrains. It is skipped where params.yaml's `tuned` already has values
for the data set, scenario and sparsity (digits' shipped ones) or when switched off
(`--no-calibrate`); either way the champion's version records what was decided (`calibration.*` tags,
the `calibration/calibration.json` artefact), and every deletion batch unlearns with it.

It reuses the study's stage tasks (prepare, train, prune) on one seed, registers the dense
original and, where configured, the sparse original as a child of it, and points the
`champion` alias at the one configured to serve.

Deleted samples never come back: the originals train on the training set without every
sample the deletion ledger records (checked first against its chain and the registry's
anchors), and both versions carry the ledger anchor, so later batches unlearn only what
was deleted after it. A registry that was lost or emptied therefore rebuilds a champion
that has already forgotten every deletion.
"""

from __future__ import annotations

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from flows.audit_pool import audit_pool
from flows.deployments import capture_project_logs, named_by_params
from flows.stages import prepare_task, prune_task, train_task
from flows.tune import run_as_tasks
from tasks.adapters import layout, registry, tracking
from tasks.adapters.ledger import Ledger
from tasks.adapters.params import PARAMS_FILE, Params, load_params
from tasks.adapters.workspace import bundle, device, load_model
from tasks.production import deletion, tune

capture_project_logs()


def champion_params(params: Params) -> Params:
    """params.yaml narrowed to the one seed the production champion is trained with."""
    train = params.train.model_copy(update={"seeds": [params.deletion.seed]})
    return params.model_copy(update={"train": train})


@task(name="verify-ledger", cache_policy=NO_CACHE)
def verified_ledger(params: Params) -> Ledger:
    """The deletion ledger, checked against its chain and the registry's anchors of it."""
    return deletion.verify_state(params)


def anchor_tags(params: Params, ledger: Ledger) -> dict[str, str]:
    """The ledger anchor of an original that left out every deletion so far (none for an empty ledger)."""
    if not ledger.rows:
        return {}
    last = ledger.batches()[-1]
    return registry.ledger_anchor_tags(params.deletion.ledger, last, ledger.digest(), len(ledger.rows))


def original_checkpoint(params: Params, dense: bool):
    """The champion seed's dense original, or its pruned original at `deletion.sparsity`."""
    seed, root = params.deletion.seed, layout.CHAMPION_MODELS
    return layout.original_path(seed, root) if dense else layout.pruned_path(params.deletion.sparsity, seed, root)


@task(name="register-original", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def register(params: Params, champion: bool, parent_version: str | None = None, ledger: Ledger | None = None):
    """Register the dense (or sparse) original of the champion seed."""
    seed, sparsity = params.deletion.seed, params.deletion.sparsity
    dense = parent_version is None
    path = original_checkpoint(params, dense)
    _, checkpoint = load_model(path)
    tags = {"prefect.flow_run_id": str(flow_run.id), "seed": str(seed), **anchor_tags(params, ledger or Ledger())}
    with tracking.run(
        params,
        "train",
        f"original-{'dense' if dense else layout.sparsity_tag(sparsity)}-seed{seed}",
        params.train,
        **tags,
    ) as tracker:
        tracker.log_evaluation({"TA": checkpoint.metadata["test_accuracy"]})
        return registry.register_original(
            path,
            {"TA": checkpoint.metadata["test_accuracy"]},
            parent_version=parent_version,
            champion=champion,
            tags=tags,
            experiment=params.tracking.experiment,
        )


def calibrate_champion(params: Params, champion, excluded: list[str], enabled: bool | None) -> tune.Calibration:
    """Calibrate the deletion method(s) on the champion (or record why not); tag its version, attach the record."""
    model, checkpoint = load_model(original_checkpoint(params, dense=params.deletion.sparsity == 0))
    found = tune.calibrate(
        params, model, bundle(), masks=checkpoint.masks, sparsity=params.deletion.sparsity, excluded=excluded,
        enabled=enabled, execute=run_as_tasks, device=device(),
    )  # fmt: skip
    folder = layout.CHAMPION_MODELS / registry.CALIBRATION_ARTIFACTS
    found.save(folder)
    registry.set_version_tags(champion.name, str(champion.version), found.tags())
    registry.log_version_artifacts(champion, folder, registry.CALIBRATION_ARTIFACTS)
    return found


def describe(params: Params) -> str:
    """What a train-original run trains: `digits-s0.5` (the preset, the champion's sparsity)."""
    return f"{params.data.preset}-s{params.deletion.sparsity:g}"


@flow(name="train-original", flow_run_name=named_by_params("train-original", describe), log_prints=True)
def train_original(params_path: str = str(PARAMS_FILE), build_pool: bool = True, calibrate: bool | None = None) -> dict:
    """Train the first champion on the whole training set, prune it if configured, register it, calibrate.

    Args:
        build_pool: then build its audit reference pool (the `audit-pool` flow, K references).
        calibrate: None: as `calibrate.enabled` says; False: skip calibration (`--no-calibrate`).
    """
    params = champion_params(load_params(params_path))
    prepare_task(params)
    ledger = verified_ledger(params)
    excluded = sorted(ledger.deleted_ids())
    root = str(layout.CHAMPION_MODELS)
    train_task(params, root=root, excluded=excluded)
    sparse = params.deletion.sparsity > 0
    dense = register(params, champion=not sparse, ledger=ledger)
    champion = dense
    if sparse:
        prune_task(params, params.deletion.sparsity, root=root, excluded=excluded)
        champion = register(params, champion=True, parent_version=str(dense.version), ledger=ledger)
    calibration = calibrate_champion(params, champion, excluded, calibrate)
    pool = audit_pool(params_path, str(champion.version)) if build_pool else {}
    summary = {
        "model": champion.name,
        "champion_version": str(champion.version),
        "dense_version": str(dense.version),
        "sparsity": params.deletion.sparsity,
        "excluded_samples": len(excluded),
        "calibration": calibration.status,
        "calibration_reason": calibration.reason,
        "calibrated_values": {method: calibration.values(method) for method in calibration.methods},
        "calibration_cost_retrains": calibration.cost_retrains,
        "audit_pool": pool.get("pool", ""),
        "audit_references": pool.get("references", 0),
    }
    create_markdown_artifact(
        "\n".join(f"- **{k}**: {v}" for k, v in summary.items()),
        key="train-original",
        description="the first champion",
    )
    return summary
