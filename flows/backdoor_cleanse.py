"""Flow `backdoor_cleanse`: the Trojan-model cleanse with dvc.yaml's stage functions.

    prepare -> backdoor_train -> backdoor_prune      (per sparsity; dvc.yaml: one stage)
            -> backdoor_cleanse                      (method x sparsity; dvc.yaml: per method)
            -> backdoor_report                       (reports/backdoor.md, and a markdown artifact)
            -> register                              (the Trojan model and its best cleanse)

Registration happens here, not in a DVC stage, so `dvc repro` has no registry side effects.
The cleansed model is registered with its lineage (what it forgot: the poisoned samples; its
parent: the Trojan model's version). A cleansed Trojan model is no candidate for service: the
versions get aliases of their own (`backdoor-trojan`, `backdoor-cleansed`) and `candidate`
stays where it was.
"""

from __future__ import annotations

import json
from typing import Any

from prefect import flow, task, unmapped
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from flows.deployments import capture_project_logs, named_by_params, thread_policy
from flows.stages import GPU_TAG, prepare_task
from flows.study import default_gpu_slots, ensure_gpu_limit, raise_first_failure
from tasks.adapters.params import PARAMS_FILE, Params, load_params
from tasks.stages import backdoor
from unlearn.splits import Manifest

capture_project_logs()

REPORT_ARTIFACT = "backdoor-report"
REQUEST_ID = "backdoor-cleanse"  # what the cleansed model forgot: every poisoned training sample
TROJAN_ALIAS = "backdoor-trojan"
CLEANSED_ALIAS = "backdoor-cleansed"
_STAGE = {"cache_policy": NO_CACHE, "retries": 0}

train_trojan_task = task(thread_policy(backdoor.train_trojan), name="backdoor_train", task_run_name="backdoor-train",
                         tags=[GPU_TAG], **_STAGE)  # fmt: skip
prune_trojan_task = task(thread_policy(backdoor.prune_trojan), name="backdoor_prune",
                         task_run_name="backdoor-prune-s{sparsity}", tags=[GPU_TAG], **_STAGE)  # fmt: skip
cleanse_task = task(thread_policy(backdoor.cleanse_trojan), name="backdoor_cleanse",
                    task_run_name="backdoor-cleanse-{method}-s{sparsity}", tags=[GPU_TAG], **_STAGE)  # fmt: skip
report_task = task(backdoor.build_report, name="backdoor_report", task_run_name="backdoor-report", **_STAGE)


def best_cleanse(params: Params) -> tuple[str, float]:
    """The cleanse to register: ℓ1-sparse where studied (else the last method), at the highest sparsity."""
    methods = params.backdoor.methods
    return ("l1_sparse" if "l1_sparse" in methods else methods[-1]), max(params.backdoor.sparsities)


def split_digests(params: Params) -> dict[str, str]:
    """Digests of the clean rest (Dr) and of the poisoned samples (Df) of the poisoned training set."""
    _, poisoned = backdoor.poisoned_data(params)
    poisoned_rows = set(poisoned.poisoned_indices)
    clean = [i for i in range(len(poisoned.train_set)) if i not in poisoned_rows]
    return {
        "retain": Manifest.of(poisoned.train_set, clean).digest(),
        "forget": backdoor.poison_digest(poisoned),
    }


@task(name="backdoor_register", task_run_name="backdoor-register", **_STAGE)
def register_cleanse(params: Params, batch_id: str) -> dict[str, Any]:
    """Register the Trojan model and its best cleanse (lineage, attack metrics); keep `candidate` as it was."""
    from tasks.adapters import registry, tracking

    method, sparsity = best_cleanse(params)
    row = json.loads(backdoor.metrics_path(method, sparsity).read_text())
    attack_tags = {"application": "backdoor", "backdoor.poisoned_count": str(row["poisoned_count"])}
    trojan = registry.register_original(
        backdoor.trojan_path(sparsity),
        {"SA": row["SA_before"], "ASR": row["ASR_before"]},
        tags={**attack_tags, "backdoor.role": "trojan"},
        experiment=params.tracking.experiment,
    )
    lineage = registry.Lineage(
        request_ids=(REQUEST_ID,),
        batch_id=batch_id,
        ledger_digest="none",  # a cleanse answers no deletion requests: there is no ledger
        split_digests=split_digests(params),
        method=method,
        parent_version=str(trojan.version),
    )
    metrics = {key: row[key] for key in ("SA", "ASR", "SA_before", "ASR_before", "RTE_seconds")}
    cleansed = registry.register_unlearned(
        backdoor.cleansed_path(method, sparsity), lineage, metrics,
        tags={**attack_tags, "backdoor.role": "cleansed", "backdoor.sparsity": str(sparsity)},
        alias=CLEANSED_ALIAS,  # no candidate for service: `candidate` stays where it was
        experiment=params.tracking.experiment,
    )  # fmt: skip
    tracking.client().set_registered_model_alias(trojan.name, TROJAN_ALIAS, str(trojan.version))
    return {"model_name": trojan.name, "trojan_version": str(trojan.version),
            "cleansed_version": str(cleansed.version), "method": method, "sparsity": sparsity}  # fmt: skip


def publish_report(params: Params, registered: dict[str, Any] | None) -> str:
    """The cleanse table (and what was registered) as the flow run's markdown artifact."""
    markdown = backdoor.report_tables(params)
    if registered:
        markdown += (
            f"\nRegistered: `{registered['model_name']}` version {registered['trojan_version']} (Trojan model, "
            f"alias `{TROJAN_ALIAS}`) and version {registered['cleansed_version']} ({registered['method']} "
            f"cleanse at sparsity {registered['sparsity']}, alias `{CLEANSED_ALIAS}`).\n"
        )
    artifact_id = create_markdown_artifact(
        markdown=markdown, key=REPORT_ARTIFACT, description=f"Trojan-model cleanse of flow run {flow_run.name}"
    )
    return str(artifact_id)


@flow(name="backdoor_cleanse", flow_run_name=named_by_params("backdoor-cleanse", lambda params: params.data.dataset))
def backdoor_cleanse(params_path: str = str(PARAMS_FILE), register_models: bool = True) -> dict[str, Any]:
    """Poison, train and prune the Trojan models, cleanse each, report; register the best cleanse.

    Args:
        register_models: register the Trojan model and its best cleanse in the MLflow model registry.

    Returns the report's path, the metrics files, the registered versions and the artifact's id.
    """
    params = load_params(params_path)
    ensure_gpu_limit(default_gpu_slots())
    sparsities, methods = params.backdoor.sparsities, params.backdoor.methods
    prepared = prepare_task.submit(params)
    trained = train_trojan_task.submit(params, wait_for=[prepared])
    pruned = dict(zip(sparsities, prune_trojan_task.map(unmapped(params), sparsities, wait_for=[trained]),
                      strict=True))  # fmt: skip
    cleansed = {
        (method, sparsity): cleanse_task.submit(params, method, sparsity, wait_for=[pruned[sparsity]])
        for method in methods
        for sparsity in sparsities
    }
    reported = report_task.submit(params, wait_for=list(cleansed.values()))
    raise_first_failure([prepared, trained, *pruned.values(), *cleansed.values(), reported])
    registered = register_cleanse(params, f"backdoor-{flow_run.id}") if register_models else None
    return {
        "report": str(reported.result()),
        "metrics": {f"{m}-s{s}": str(backdoor.metrics_path(m, s)) for m, s in cleansed},
        "registered": registered,
        "artifact_id": publish_report(params, registered),
    }
