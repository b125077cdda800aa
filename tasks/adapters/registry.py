"""MLflow model registry: every unlearned model registered with the deletion requests behind it.

One registered model per data set and architecture (`unlearn-digits-digits_resnet`). Its
versions are the originals (dense and sparse) and every unlearned model. Aliases, never
stages and never "latest", hand models on:

  candidate  the newest unlearned version, awaiting review (`unlearn review`)
  champion   the version in service; it moves only through `promote` (gates checked,
             reviewer recorded) or, once, when the first original is registered

Version tags (names in the constants below): what a version forgot (request ids, batch,
ledger digest, split digests), how (method, sparsity, parent version), its metrics
(`metrics.UA`, ...), a retrained reference where one exists (`retrain_version`,
`retrain.UA`, ...), and every promotion (`promotion.reviewer`, `promotion.time`, ...).
"""

from __future__ import annotations

import csv
import importlib.metadata
import json
import logging
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import mlflow
import mlflow.pytorch
import numpy as np
import torch
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.models.model import ModelInfo
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode
from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS
from mlflow.utils.validation import MAX_MODEL_REGISTRY_TAG_VALUE_LENGTH

from tasks.adapters import tracking
from tasks.adapters.ledger import Ledger
from tasks.adapters.params import PARAMS_FILE, load_params
from tasks.adapters.workspace import file_sha256
from unlearn.checkpoint import Checkpoint, load_checkpoint, restore_model
from unlearn.data import as_float
from unlearn.errors import ConfigError, UnlearnError
from unlearn.masks import sparsity
from unlearn.models import Classifier
from unlearn.presets import get_preset

log = logging.getLogger(__name__)

CANDIDATE = "candidate"
CHAMPION = "champion"
ORIGINAL = "original"
UNLEARNED = "unlearned"

KIND_TAG = "unlearn.kind"
REQUEST_IDS_TAG = "request_ids"
REQUEST_COUNT_TAG = "request_count"
BATCH_TAG = "batch_id"
LEDGER_TAG = "ledger_digest"
# The ledger anchor: which ledger, through which batch, how many rows (with LEDGER_TAG, its digest).
# Every version whose training left deletions out carries it; each batch checks the ledger against it.
LEDGER_PATH_TAG = "ledger.path"
LEDGER_BATCH_TAG = "ledger.batch"
LEDGER_ROWS_TAG = "ledger.rows"
METHOD_TAG = "method"
SPARSITY_TAG = "sparsity"
PARENT_TAG = "parent_version"
RETRAIN_VERSION_TAG = "retrain_version"
CHECKPOINT_TAG = "checkpoint.sha256"
METRIC_PREFIX = "metrics."
RETRAIN_PREFIX = "retrain."
PROMOTION_PREFIX = "promotion."
# What a review reads to pick and judge its gates (`tasks.production.gates.Evidence`): the request kind
# ("sample" | "class_wise"), the batch's forget-set size, and its audit figures (`unlearn.audit.AuditFigures`).
# The ledger batches an unlearned version forgot (its own last): every one since its parent champion's.
FORGETS_BATCHES_TAG = "forgets.batches"
DELETION_KIND_TAG = "deletion.kind"
FORGET_SAMPLES_TAG = "forget.samples"
AUDIT_PREFIX = "audit."
# The review attached to a version (`tasks.production.deletion.attach_review`): verdict and evidence.
REVIEW_VERDICT_TAG = "review.verdict"
REVIEW_EVIDENCE_TAG = "review.evidence"
# The review artefacts logged with a version (`log_version_artifacts`), among them the per-sample audit.
REVIEW_ARTIFACTS = "review"
AUDIT_TABLE = "audit.csv"
# A version whose model files a purge deleted (`tasks.production.purge`): `purged` "true" (set last, once
# its files are gone), `purged.at`, `.reason`, `.policy`, `.batches` (the ledger batches it held samples
# of). Its other tags (lineage, metrics, promotion) and its review artefacts stay.
PURGED_TAG = "purged"
PURGED_PREFIX = "purged."
# The settings a champion's lineage unlearns with (`tasks.production.tune.calibrate`, run by train-original):
# `calibration.status` calibrated | skipped, `.dataset`, `.date`, `.reason` (why skipped), `.scenario`,
# `.sparsity`, `.cost_retrains`, and per method `calibration.values.<method>` (JSON of its settings). The
# champion's full record is its `calibration/calibration.json` artefact. Every version unlearned from it
# inherits these tags and records the config it ran with (`METHOD_CONFIG_TAG`, JSON).
CALIBRATION_PREFIX = "calibration."
CALIBRATION_STATUS_TAG = "calibration.status"
CALIBRATION_VALUES_PREFIX = "calibration.values."
CALIBRATION_ARTIFACTS = "calibration"
METHOD_CONFIG_TAG = "method.config"
MODEL_ARTIFACT = "model"
# torch.export's graph format: loading runs no pickled code (as checkpoints load with
# weights_only=True) and needs no `unlearn` package. ~3 s to log a digits model here;
# "pickle" would take ~0.5 s but unpickles arbitrary code from the artefact store.
SERIALIZATION = "pt2"


class RegistryError(UnlearnError, RuntimeError):
    """The model registry lacks what was asked of it or refuses a change."""


class VersionNotFoundError(RegistryError, LookupError):
    """A registered model, version or alias that does not exist."""


class PromotionError(RegistryError):
    """A promotion that cannot go ahead as asked (no reviewer, force without reason, ...)."""


# --- naming and tags -----------------------------------------------------------------------


def model_name(dataset: str, arch: str) -> str:
    """The registered model of a data set and architecture: `unlearn-<dataset>-<arch>`.

    The one function that names it: registration passes a checkpoint's `dataset` (the prepared
    bundle's name, `DataParams.dataset`) and `arch`; lookups pass the same through `params_model_name`.
    """
    return f"unlearn-{dataset}-{arch}"


def checkpoint_model_name(metadata: Mapping) -> str:
    """The registered model a checkpoint (its metadata) is registered under."""
    return model_name(metadata["dataset"], metadata["arch"])


def params_model_name(params) -> str:
    """The registered model of parameters: their data set's name (`DataParams.dataset`) and the preset's arch."""
    return model_name(params.data.dataset, get_preset(params.data.preset).arch)


def default_model_name(params_path: str | Path = PARAMS_FILE) -> str:
    """The registered model of params.yaml (the digits preset's where there is no file)."""
    if not Path(params_path).is_file():
        preset = get_preset("digits")
        return model_name(preset.dataset, preset.arch)
    return params_model_name(load_params(params_path))


@dataclass(frozen=True)
class Lineage:
    """What an unlearned model forgot and what it was made from."""

    request_ids: tuple[str, ...]
    batch_id: str
    ledger_digest: str
    split_digests: Mapping[str, str]
    method: str
    parent_version: str | None
    ledger_path: str | None = None
    ledger_rows: int | None = None

    def tags(self) -> dict[str, str]:
        """The version tags naming the requests, batch, ledger, splits, method and parent."""
        bad = [r for r in self.request_ids if not r or "," in r]
        if not self.request_ids or bad:
            raise ConfigError(f"request ids must be non-empty and comma-free, got {list(self.request_ids)}")
        tags = {
            REQUEST_IDS_TAG: ",".join(self.request_ids),
            REQUEST_COUNT_TAG: str(len(self.request_ids)),
            BATCH_TAG: self.batch_id,
            LEDGER_TAG: self.ledger_digest,
            METHOD_TAG: self.method,
        }
        tags.update(tracking.split_digest_tags(self.split_digests))
        if self.ledger_path is not None:
            tags.update(ledger_anchor_tags(self.ledger_path, self.batch_id, self.ledger_digest, self.ledger_rows))
        if self.parent_version is not None:
            tags[PARENT_TAG] = str(self.parent_version)
        return tags


def ledger_anchor_tags(path: str, batch_id: str, digest: str, rows: int | None) -> dict[str, str]:
    """Tags saying a version's data left out the ledger at `path` through `batch_id` (digest, rows)."""
    tags = {LEDGER_PATH_TAG: str(Path(path)), LEDGER_BATCH_TAG: batch_id, LEDGER_TAG: digest}
    if rows is not None:
        tags[LEDGER_ROWS_TAG] = str(rows)
    return tags


@dataclass(frozen=True)
class LedgerAnchor:
    """What one registry version recorded of the ledger: through which batch, its digest and rows."""

    version: str
    batch_id: str
    digest: str
    rows: int | None


def ledger_anchors(name: str, ledger_path: str, store: MlflowClient | None = None) -> list[LedgerAnchor]:
    """Every version of `name` anchored to the ledger at `ledger_path`, oldest first."""
    store = store or tracking.client()
    path = str(Path(ledger_path)).replace("'", "\\'")
    found = store.search_model_versions(f"name = '{name}' and tags.`{LEDGER_PATH_TAG}` = '{path}'")
    anchors = [
        LedgerAnchor(
            str(v.version),
            v.tags[LEDGER_BATCH_TAG],
            v.tags[LEDGER_TAG],
            int(v.tags[LEDGER_ROWS_TAG]) if LEDGER_ROWS_TAG in v.tags else None,
        )
        for v in found
        if LEDGER_BATCH_TAG in v.tags and LEDGER_TAG in v.tags
    ]
    return sorted(anchors, key=lambda anchor: int(anchor.version))


class CheckpointTamperedError(RegistryError):
    """A registered checkpoint whose bytes differ from the digest recorded when it was registered."""


def verify_checkpoint(version: ModelVersion, path: str | Path) -> Path:
    """`path` if its sha256 is the one recorded on `version` (CHECKPOINT_TAG); else raise."""
    recorded = version.tags.get(CHECKPOINT_TAG)
    if not recorded:
        raise CheckpointTamperedError(
            f"{version.name} v{version.version} records no {CHECKPOINT_TAG}: its checkpoint cannot be verified"
        )
    actual = file_sha256(Path(path))
    if actual != recorded:
        raise CheckpointTamperedError(
            f"{version.name} v{version.version}'s checkpoint {Path(path).name} has sha256 {actual[:12]}, but "
            f"{recorded[:12]} was recorded when it was registered: it was replaced or changed since; "
            "refusing to use it"
        )
    return Path(path)


def metric_tags(metrics: Mapping[str, float], prefix: str = METRIC_PREFIX) -> dict[str, str]:
    """Metrics as version tags (`metrics.UA`: "98.5"), so review reads them off the version."""
    return {f"{prefix}{name}": repr(float(value)) for name, value in metrics.items()}


def tag_metrics(tags: Mapping[str, str], prefix: str = METRIC_PREFIX) -> dict[str, float]:
    """The metrics stored under `prefix` in version tags."""
    return {key.removeprefix(prefix): float(value) for key, value in tags.items() if key.startswith(prefix)}


# --- logging and registering models --------------------------------------------------------


def model_requirements() -> list[str]:
    """Pinned pip requirements of a logged model (given, so MLflow does not infer them: ~9 s)."""
    return [
        f"{package}=={importlib.metadata.version(package)}"
        for package in ("torch", "torchvision", "numpy", "scikit-learn")
    ]


def example_batch(checkpoint: Checkpoint, inputs: torch.Tensor | None = None) -> np.ndarray:
    """Float32 inputs in [0, 1] for the signature: `inputs` (a few test rows) or zeros."""
    if inputs is None:
        inputs = torch.zeros(2, *checkpoint.metadata["input_shape"])
    return as_float(inputs.cpu()).numpy()


def log_checkpoint_model(
    checkpoint_path: str | Path, example_inputs: torch.Tensor | None = None, checkpoint: Checkpoint | None = None
) -> tuple[ModelInfo, Classifier]:
    """Log a checkpoint's model (signature, input example, the checkpoint itself) to the active run.

    Args:
        checkpoint: the file's content, where the caller has read it already.
    """
    tracking.active_run_id()
    checkpoint = checkpoint or load_checkpoint(checkpoint_path)
    model = restore_model(checkpoint).eval()
    example = example_batch(checkpoint, example_inputs)
    with torch.no_grad():
        outputs = model(torch.from_numpy(example)).numpy()
    info = mlflow.pytorch.log_model(
        model,
        name=MODEL_ARTIFACT,
        signature=infer_signature(example, outputs),
        input_example=example,
        pip_requirements=model_requirements(),
        extra_files=[str(checkpoint_path)],
        serialization_format=SERIALIZATION,
    )
    return info, model


def _ensure_registered_model(store: MlflowClient, name: str, tags: Mapping[str, str]) -> None:
    try:
        store.get_registered_model(name)
    except MlflowException as error:
        if error.error_code != ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            raise
        store.create_registered_model(
            name,
            tags=tracking.sanitize(tags),
            description=(
                "Image classifier and its unlearned versions; aliases: candidate (awaiting review), "
                "champion (in service)."
            ),
        )


def register_version(
    name: str,
    source: str,
    tags: Mapping[str, str],
    *,
    run_id: str | None = None,
    model_id: str | None = None,
    description: str = "",
    store: MlflowClient | None = None,
) -> ModelVersion:
    """A new version of registered model `name` (created if new), its tags set at creation.

    Args:
        source: the logged model's URI (`ModelInfo.model_uri`, `models:/m-...`).
        model_id: the logged model's id, linking the version to it (MLflow 3).
    """
    store = store or tracking.client()
    _ensure_registered_model(store, name, {k: tags[k] for k in ("dataset", "arch") if k in tags})
    clean = tracking.sanitize(tags, MAX_MODEL_REGISTRY_TAG_VALUE_LENGTH)
    version = store.create_model_version(
        name, source, run_id=run_id, tags=clean, description=description, model_id=model_id
    )
    if model_id:  # the logged model's page names its versions (as `mlflow.register_model` does)
        _link_logged_model(store, model_id, name, str(version.version))
    return version


def _link_logged_model(store: MlflowClient, model_id: str, name: str, version: str) -> None:
    entry = {"name": name, "version": version}
    existing = json.loads(store.get_logged_model(model_id).tags.get(MLFLOW_MODEL_VERSIONS, "[]"))
    if entry not in existing:
        store.set_logged_model_tags(model_id, {MLFLOW_MODEL_VERSIONS: json.dumps([*existing, entry])})


def logged_model_id(version: ModelVersion) -> str | None:
    """The id of the logged model behind a version (MLflow 3: `models:/m-<id>`); None where it has none."""
    model_id = version.model_id or (version.source or "").removeprefix("models:/")
    return model_id if model_id.startswith("m-") else None


def version_metrics(version: ModelVersion, store: MlflowClient | None = None) -> dict[str, float]:
    """A version's metrics: those of its logged model (latest value of each), over any `metrics.*` tags.

    Versions registered before metrics moved onto the logged model (and versions with no logged
    model) carry them as tags.
    """
    metrics = tag_metrics(version.tags)
    model_id = logged_model_id(version)
    if model_id is None:
        return metrics
    store = store or tracking.client()
    try:
        logged = store.get_logged_model(model_id)
    except MlflowException as error:
        if error.error_code != ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            raise
        return metrics
    for metric in sorted(logged.metrics or [], key=lambda m: (m.timestamp, m.step)):
        metrics[metric.key] = float(metric.value)
    return metrics


def _register_checkpoint(
    checkpoint_path: str | Path,
    kind: str,
    tags: Mapping[str, str],
    description: str,
    example_inputs: torch.Tensor | None,
    checkpoint: Checkpoint,
    experiment: str | None = None,
    metrics: Mapping[str, float] | None = None,
) -> ModelVersion:
    """Log and register a checkpoint (read once, by the caller) inside the active run (or a new `register` run).

    `metrics` become metrics of the logged model (and of the run), which the version's page shows.

    The registry needs a run whether tracking is enabled or not (see `tasks.adapters.tracking`): its own
    goes to `experiment` and carries the batch id, so `tasks.production.deletion.close_interrupted` finds it.
    """
    meta = checkpoint.metadata
    name = checkpoint_model_name(meta)
    run_tags = {"dataset": meta["dataset"], "arch": meta["arch"], **{k: tags[k] for k in (BATCH_TAG,) if k in tags}}
    run = (
        nullcontext()
        if mlflow.active_run()
        else tracking.start_run("register", f"register-{kind}", tags=run_tags, experiment=experiment)
    )
    with run:
        info, model = log_checkpoint_model(checkpoint_path, example_inputs, checkpoint)
        if metrics:
            mlflow.log_metrics({key: float(value) for key, value in metrics.items()}, model_id=info.model_id)
        all_tags = {
            KIND_TAG: kind,
            "dataset": meta["dataset"],
            "arch": meta["arch"],
            SPARSITY_TAG: f"{sparsity(model):.4f}",
            CHECKPOINT_TAG: file_sha256(Path(checkpoint_path)),
            **tags,
        }
        return register_version(
            name,
            info.model_uri,
            all_tags,
            run_id=info.run_id,
            model_id=info.model_id,
            description=description,
        )


def register_original(
    checkpoint_path: str | Path,
    metrics: Mapping[str, float] | None = None,
    *,
    example_inputs: torch.Tensor | None = None,
    parent_version: str | None = None,
    champion: bool = False,
    tags: Mapping[str, str] | None = None,
    experiment: str | None = None,
) -> ModelVersion:
    """Register an original model (dense, or sparse with `parent_version` its dense original).

    Args:
        metrics: its TA (and whatever else was measured): metrics of its logged model (`version_metrics`).
        champion: make it the first champion; refused if the registered model has one.
        experiment: the experiment of its own `register` run, where no run is active (callers
            pass `params.tracking.experiment`); None: MLFLOW_EXPERIMENT_NAME, else `unlearn`.
    """
    checkpoint = load_checkpoint(checkpoint_path)
    if champion:
        _require_no_champion(checkpoint_model_name(checkpoint.metadata))
    version_tags = dict(tags or {})
    if parent_version is not None:
        version_tags[PARENT_TAG] = str(parent_version)
    version = _register_checkpoint(
        checkpoint_path,
        ORIGINAL,
        version_tags,
        "Original model (before any unlearning).",
        example_inputs,
        checkpoint,
        experiment=experiment,
        metrics=metrics,
    )
    if champion:
        _bootstrap_champion(version)
    return version


def register_unlearned(
    checkpoint_path: str | Path,
    lineage: Lineage,
    metrics: Mapping[str, float],
    *,
    example_inputs: torch.Tensor | None = None,
    retrain_metrics: Mapping[str, float] | None = None,
    retrain_version: str | None = None,
    tags: Mapping[str, str] | None = None,
    alias: str | None = CANDIDATE,
    experiment: str | None = None,
) -> ModelVersion:
    """Register an unlearned model tagged with the requests it forgot, and point `alias` at it.

    Args:
        metrics: UA (on the batch's forget set), MIA_efficacy, RA, TA, RTE_seconds, ...: metrics of its
            logged model (`version_metrics`); the retrained reference's stay `retrain.*` tags.
        retrain_metrics / retrain_version: the retrained reference, where the policy asks for one.
        alias: `candidate` (awaiting review) by default; another alias, or None for none.
        experiment: the experiment of its own `register` run, where no run is active (see `register_original`).
    """
    version_tags = {**lineage.tags(), **(tags or {})}
    version_tags.update(metric_tags(retrain_metrics or {}, RETRAIN_PREFIX))
    if retrain_version is not None:
        version_tags[RETRAIN_VERSION_TAG] = str(retrain_version)
    description = (
        f"Unlearned with {lineage.method} from version {lineage.parent_version}; forgets "
        f"{len(lineage.request_ids)} request(s) of batch {lineage.batch_id}."
    )
    checkpoint = load_checkpoint(checkpoint_path)
    version = _register_checkpoint(
        checkpoint_path,
        UNLEARNED,
        version_tags,
        description,
        example_inputs,
        checkpoint,
        experiment=experiment,
        metrics=metrics,
    )
    if alias is not None:
        tracking.client().set_registered_model_alias(version.name, alias, str(version.version))
    return version


# --- reading the registry ------------------------------------------------------------------


def get_version(name: str, version: str | int, store: MlflowClient | None = None) -> ModelVersion:
    """Version `version` of `name`; a `VersionNotFoundError` saying what exists otherwise."""
    store = store or tracking.client()
    try:
        return store.get_model_version(name, str(version))
    except MlflowException as error:
        if error.error_code != ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            raise
        raise VersionNotFoundError(
            f"{name} has no version {version}: see `unlearn history` or the MLflow UI for its versions"
        ) from None


def versions_of_batch(name: str, batch_id: str, store: MlflowClient | None = None) -> list[ModelVersion]:
    """The versions of `name` registered for deletion batch `batch_id` (at most one, by construction)."""
    store = store or tracking.client()
    return list(store.search_model_versions(f"name = '{name}' and tags.{BATCH_TAG} = '{batch_id}'"))


def checkpoint_path(version: ModelVersion) -> Path:
    """The checkpoint (weights, masks, metadata) logged with a registry version, downloaded."""
    model_id = logged_model_id(version)
    if model_id is None:
        raise VersionNotFoundError(
            f"version {version.version} of {version.name} has no logged model to hold a checkpoint"
        )
    location = tracking.client().get_logged_model(model_id).artifact_location
    folder = mlflow.artifacts.download_artifacts(artifact_uri=f"{location}/extra_files")
    found = sorted(Path(folder).glob("*.pt"))
    if not found:
        raise VersionNotFoundError(f"version {version.version} of {version.name} holds no checkpoint")
    return found[0]


def version_by_alias(name: str, alias: str, store: MlflowClient | None = None) -> ModelVersion | None:
    """The version `alias` points at, or None if the alias (or the registered model) is not set."""
    store = store or tracking.client()
    try:
        return store.get_model_version_by_alias(name, alias)
    except MlflowException as error:
        if error.error_code in (ErrorCode.Name(RESOURCE_DOES_NOT_EXIST), "INVALID_PARAMETER_VALUE"):
            return None
        raise


def model_uri(name: str, alias: str = CHAMPION) -> str:
    """`models:/<name>@<alias>`: what `mlflow.pytorch.load_model` loads."""
    return f"models:/{name}@{alias}"


def load_model(name: str, alias: str = CHAMPION) -> torch.nn.Module:
    """The model an alias points at, on the CPU (an exported graph: always in eval mode)."""
    if version_by_alias(name, alias) is None:
        raise VersionNotFoundError(f"{name} has no alias {alias!r}: register or promote a version first")
    return mlflow.pytorch.load_model(model_uri(name, alias), map_location="cpu")


def record_promotion(name: str, version: str, tags: Mapping[str, str], store: MlflowClient | None = None) -> None:
    """Tag `version` with its promotion record, then move `champion` to it (and retire `candidate` there)."""
    store = store or tracking.client()
    for key, value in tracking.sanitize(tags).items():
        store.set_model_version_tag(name, version, key, value)
    store.set_registered_model_alias(name, CHAMPION, version)
    candidate = version_by_alias(name, CANDIDATE, store)
    if candidate is not None and str(candidate.version) == version:
        store.delete_registered_model_alias(name, CANDIDATE)


def set_version_tags(name: str, version: str, tags: Mapping[str, str], store: MlflowClient | None = None) -> None:
    """Set (or overwrite) tags on an existing version, e.g. the audit pool a champion is judged against."""
    store = store or tracking.client()
    for key, value in tracking.sanitize(tags, MAX_MODEL_REGISTRY_TAG_VALUE_LENGTH).items():
        store.set_model_version_tag(name, str(version), key, value)


def log_version_artifacts(version: ModelVersion, folder: str | Path, artifact_path: str = REVIEW_ARTIFACTS) -> str:
    """Log a folder's files to the logged model behind `version` (what the MLflow UI shows on its page).

    Returns their artifact URI.
    """
    model_id = logged_model_id(version)
    store = tracking.client()
    store.log_model_artifacts(model_id, str(folder), artifact_path)
    return f"{store.get_logged_model(model_id).artifact_location}/{artifact_path}"


def _require_no_champion(name: str) -> None:
    current = version_by_alias(name, CHAMPION)
    if current is not None:
        raise PromotionError(
            f"{name} already has champion v{current.version}: register the original without "
            "champion=True and promote it with `unlearn promote` instead"
        )


def _bootstrap_champion(version: ModelVersion) -> None:
    """Make an original the first champion of its registered model (no gates: nothing was forgotten)."""
    _require_no_champion(version.name)
    first = {
        f"{PROMOTION_PREFIX}reviewer": "registry",
        f"{PROMOTION_PREFIX}time": datetime.now(UTC).isoformat(timespec="seconds"),
        f"{PROMOTION_PREFIX}reason": "first champion",
        f"{PROMOTION_PREFIX}forced": "false",
        f"{PROMOTION_PREFIX}gates": "{}",
        f"{PROMOTION_PREFIX}previous_champion": "",
    }
    record_promotion(version.name, str(version.version), first)


def calibration_tags(version: ModelVersion) -> dict[str, str]:
    """The calibration tags of a version ({} where it has none): what its lineage's champion was calibrated with."""
    return {key: value for key, value in version.tags.items() if key.startswith(CALIBRATION_PREFIX)}


def calibrated_values(version: ModelVersion, method: str) -> dict[str, object]:
    """The settings a calibration found for `method` on `version` (`calibration.values.<method>`).

    {} where it has none, and where its calibration was skipped: then the values it records are the
    tuned ones it found in params.yaml, which params.yaml still supplies.
    """
    if version.tags.get(CALIBRATION_STATUS_TAG) != "calibrated":
        return {}
    text = version.tags.get(f"{CALIBRATION_VALUES_PREFIX}{method}")
    if not text:
        return {}
    try:
        values = json.loads(text)
    except json.JSONDecodeError as error:
        raise RegistryError(f"{version.name} v{version.version}: {CALIBRATION_VALUES_PREFIX}{method} is no JSON: "
                            f"{error}") from error  # fmt: skip
    if not isinstance(values, dict):
        raise RegistryError(f"{version.name} v{version.version}: {CALIBRATION_VALUES_PREFIX}{method} is no mapping")
    return values


# --- history -------------------------------------------------------------------------------


@dataclass(frozen=True)
class HistoryEntry:
    """One version in the champion's lineage and the requests it forgot."""

    version: str
    kind: str
    method: str
    request_ids: tuple[str, ...]
    batch_id: str
    promoted_at: str
    reviewer: str
    forced: bool
    aliases: tuple[str, ...]
    purged_at: str = ""  # when a purge deleted its model files ("" while they exist)

    def line(self) -> str:
        """`v3  unlearned  l1_sparse  batch b-2  promoted ... by ana  requests: r1, r2` style."""
        promoted = (
            f"promoted {self.promoted_at} by {self.reviewer}{' (FORCED)' if self.forced else ''}"
            if self.promoted_at
            else "never promoted"
        )
        aliases = f" [{', '.join(self.aliases)}]" if self.aliases else ""
        requests = ", ".join(self.request_ids) or "-"
        purged = f"  PURGED {self.purged_at}" if self.purged_at else ""
        return (
            f"v{self.version}{aliases}  {self.kind}  {self.method or '-'}  batch {self.batch_id or '-'}  "
            f"{promoted}  requests: {requests}{purged}"
        )


def _entry(version: ModelVersion) -> HistoryEntry:
    tags = version.tags
    requests = tuple(r for r in tags.get(REQUEST_IDS_TAG, "").split(",") if r)
    return HistoryEntry(
        str(version.version),
        tags.get(KIND_TAG, "?"),
        tags.get(METHOD_TAG, ""),
        requests,
        tags.get(BATCH_TAG, ""),
        tags.get(f"{PROMOTION_PREFIX}time", ""),
        tags.get(f"{PROMOTION_PREFIX}reviewer", ""),
        tags.get(f"{PROMOTION_PREFIX}forced") == "true",
        tuple(version.aliases),
        tags.get(f"{PURGED_PREFIX}at", "") if tags.get(PURGED_TAG) == "true" else "",
    )


def history(name: str, store: MlflowClient | None = None) -> list[HistoryEntry]:
    """The champion's lineage, newest first: follow `parent_version` (else the previous champion)."""
    store = store or tracking.client()
    current = version_by_alias(name, CHAMPION, store)
    entries: list[HistoryEntry] = []
    seen: set[str] = set()
    while current is not None and str(current.version) not in seen:
        seen.add(str(current.version))
        entries.append(_entry(current))
        parent = current.tags.get(PARENT_TAG) or current.tags.get(f"{PROMOTION_PREFIX}previous_champion")
        current = get_version(name, parent, store) if parent else None
    return entries


def render_history(name: str, entries: Sequence[HistoryEntry]) -> str:
    """The lineage as text, with every request the champion has forgotten."""
    if not entries:
        return f"{name}: no champion yet"
    forgotten = sorted({r for entry in entries for r in entry.request_ids})
    lines = [f"{name}: champion v{entries[0].version}, lineage newest first"]
    lines += [f"  {entry.line()}" for entry in entries]
    lines.append(
        f"  the champion has forgotten {len(forgotten)} request(s)" + (f": {', '.join(forgotten)}" if forgotten else "")
    )
    return "\n".join(lines)


def history_as_dict(name: str, entries: Sequence[HistoryEntry]) -> dict[str, object]:
    """The lineage as JSON-ready values (`unlearn history --json`): each entry's fields, the forgotten requests."""
    return {
        "model": name,
        "champion": entries[0].version if entries else None,
        # `purged_at` only on purged versions' entries
        "lineage": [{k: v for k, v in asdict(entry).items() if k != "purged_at" or v} for entry in entries],
        "forgotten": sorted({r for entry in entries for r in entry.request_ids}),
    }


def ancestors(name: str, version: str | int, store: MlflowClient | None = None) -> list[str]:
    """`version` and the versions it was made from (its `parent_version` chain), newest first."""
    store = store or tracking.client()
    chain: list[str] = []
    current: str | None = str(version)
    while current and current not in chain:
        chain.append(current)
        current = get_version(name, current, store).tags.get(PARENT_TAG)
    return chain


# --- one request's history -----------------------------------------------------------------


class RequestNotFoundError(VersionNotFoundError):
    """A deletion request that no registered version forgot (recorded in the ledger or not)."""


# The audit.csv columns read as numbers and as verdicts; `sample_id` stays text.
_VERDICT_COLUMNS = ("unseen", "champion_unseen")
_COUNT_FIGURES = ("samples", "unseen", "references")


def _number(name: str, value: str) -> float | int | str:
    """An `audit.*` tag's value as a number (counts as int); left as text where it is not one."""
    try:
        return int(float(value)) if name in _COUNT_FIGURES else float(value)
    except ValueError:
        return value


def _sample_row(row: Mapping[str, str]) -> dict[str, object]:
    """One audit.csv row typed: sample_id text, `unseen` flags bool, every other column float."""
    typed: dict[str, object] = {}
    for column, value in row.items():
        if column == "sample_id":
            typed[column] = value
        elif column in _VERDICT_COLUMNS:
            typed[column] = value.strip().lower() == "true"
        else:
            try:
                typed[column] = float(value)
            except (TypeError, ValueError):
                typed[column] = value
    return typed


@dataclass(frozen=True)
class ForgettingVersion:
    """A registry version that forgot a request: lineage, audit, promotion, service and review.

    Attributes:
        registered_at: when the version was registered (ISO 8601, UTC).
        audit: the batch's `audit.*` figures (prefix dropped, numbers parsed); empty: not audited.
        samples: the request's rows of the version's audit.csv, ledger order; None where there is none.
        samples_note: why `samples` is None or incomplete ("" where it is whole).
        promotion: `promotion.*` tags (prefix dropped; `forced` a bool); empty: never promoted itself.
        in_service: the champion is this version or was made from it (its `parent_version` chain).
        review: `verdict` and `evidence` of the review attached to it, where there is one.
    """

    version: str
    batch_id: str
    method: str
    parent_version: str | None
    registered_at: str
    aliases: tuple[str, ...]
    request_ids: tuple[str, ...]
    audit: Mapping[str, float | int | str]
    samples: tuple[Mapping[str, object], ...] | None
    samples_note: str
    promotion: Mapping[str, str | bool]
    in_service: bool
    review: Mapping[str, str]


@dataclass(frozen=True)
class RequestHistory:
    """What became of one deletion request: the version(s) that forgot it and whether that is in service.

    Attributes:
        sample_ids / ledger_batches: what the deletion ledger at `ledger_path` records of the request.
        champion: the version in service now (None: no champion).
        versions: the versions that forgot it, oldest first: its batch's, and later ones unlearned from a
            champion that had not forgotten it yet (the lineage is cumulative).
    """

    model: str
    request_id: str
    ledger_path: str
    sample_ids: tuple[str, ...]
    ledger_batches: tuple[str, ...]
    champion: str | None
    versions: tuple[ForgettingVersion, ...]

    @property
    def in_service(self) -> bool:
        """Whether the champion has forgotten the request (it is, or descends from, a version that did)."""
        return any(version.in_service for version in self.versions)

    def as_dict(self) -> dict[str, object]:
        """Plain JSON-ready values (`unlearn history REQUEST_ID --json`)."""
        return {**asdict(self), "in_service": self.in_service}


def _registered_at(version: ModelVersion) -> str:
    stamp = version.creation_timestamp
    return datetime.fromtimestamp(stamp / 1000, UTC).isoformat(timespec="seconds") if stamp else ""


def _request_samples(
    version: ModelVersion, sample_ids: Sequence[str], store: MlflowClient
) -> tuple[tuple[dict[str, object], ...] | None, str]:
    """The request's rows of the version's review audit.csv, and a note on what is missing."""
    if not sample_ids:
        return None, "the ledger records no samples for this request"
    model_id = logged_model_id(version)
    try:
        location = store.get_logged_model(model_id).artifact_location
        path = mlflow.artifacts.download_artifacts(artifact_uri=f"{location}/{REVIEW_ARTIFACTS}/{AUDIT_TABLE}")
        with open(path, newline="") as handle:
            rows = {row["sample_id"]: _sample_row(row) for row in csv.DictReader(handle) if row.get("sample_id")}
    except (MlflowException, OSError, KeyError) as error:  # no logged model, no artefact, a foreign table
        log.debug("no audit table for %s v%s: %s", version.name, version.version, error)
        return None, f"no {REVIEW_ARTIFACTS}/{AUDIT_TABLE} logged with v{version.version}"
    found = tuple(rows[sample] for sample in sample_ids if sample in rows)
    missing = len(sample_ids) - len(found)
    note = f"{missing} of the request's {len(sample_ids)} samples are not in its {AUDIT_TABLE}" if missing else ""
    return found, note


def _forgetting_version(
    version: ModelVersion, sample_ids: Sequence[str], service: Sequence[str], store: MlflowClient
) -> ForgettingVersion:
    tags = version.tags
    audit = {
        key.removeprefix(AUDIT_PREFIX): _number(key.removeprefix(AUDIT_PREFIX), value)
        for key, value in sorted(tags.items())
        if key.startswith(AUDIT_PREFIX)
    }
    promotion: dict[str, str | bool] = {
        field: tags[PROMOTION_PREFIX + field]
        for field in ("time", "reviewer", "forced", "reason")
        if PROMOTION_PREFIX + field in tags
    }
    if "forced" in promotion:
        promotion["forced"] = promotion["forced"] == "true"
    review_tags = {"verdict": REVIEW_VERDICT_TAG, "evidence": REVIEW_EVIDENCE_TAG}
    review = {field: tags[tag] for field, tag in review_tags.items() if tag in tags}
    samples, note = _request_samples(version, sample_ids, store)
    return ForgettingVersion(
        version=str(version.version),
        batch_id=tags.get(BATCH_TAG, ""),
        method=tags.get(METHOD_TAG, ""),
        parent_version=tags.get(PARENT_TAG),
        registered_at=_registered_at(version),
        aliases=tuple(version.aliases),
        request_ids=tuple(r for r in tags.get(REQUEST_IDS_TAG, "").split(",") if r),
        audit=audit,
        samples=samples,
        samples_note=note,
        promotion=promotion,
        in_service=str(version.version) in service,
        review=review,
    )


def request_history(
    name: str, request_id: str, ledger_path: str | Path, store: MlflowClient | None = None
) -> RequestHistory:
    """Which version of `name` forgot `request_id`, its audit, its promotion, and whether it is in service.

    Raises:
        RequestNotFoundError: no registered version names the request (the message says whether
            the ledger at `ledger_path` records it).
    """
    store = store or tracking.client()
    ledger = Ledger.load(ledger_path)
    rows = [row for row in ledger.rows if row.request_id == request_id]
    sample_ids = tuple(row.sample_id for row in rows)
    batches = tuple(dict.fromkeys(row.batch_id for row in rows))
    found = [
        version
        for version in store.search_model_versions(f"name = '{name}'")
        if request_id in version.tags.get(REQUEST_IDS_TAG, "").split(",")
    ]
    if not found:
        where = f"no registered version of {name} forgot request {request_id}"
        if rows:
            raise RequestNotFoundError(
                f"{where}: the ledger {ledger.path} records it (batch {', '.join(batches)}, "
                f"{len(sample_ids)} sample(s)), but no registered version forgot it yet"
            )
        raise RequestNotFoundError(f"{where}, and the ledger {ledger.path} does not record it: unknown request id")
    champion = version_by_alias(name, CHAMPION, store)
    service = ancestors(name, champion.version, store) if champion is not None else []
    # Searches leave aliases out (MLflow fills them in on `get_model_version` only): read each version again.
    versions = [store.get_model_version(name, str(v.version)) for v in sorted(found, key=lambda v: int(v.version))]
    return RequestHistory(
        model=name,
        request_id=request_id,
        ledger_path=str(ledger.path),
        sample_ids=sample_ids,
        ledger_batches=batches,
        champion=str(champion.version) if champion is not None else None,
        versions=tuple(_forgetting_version(version, sample_ids, service, store) for version in versions),
    )


def _percent(audit: Mapping[str, object], key: str) -> str:
    value = audit.get(key)
    return f"{value:.1f}%" if isinstance(value, float | int) else "?"


def _p(value: object) -> str:
    return f"{value:.3g}" if isinstance(value, float | int) else "?"


def _version_lines(found: RequestHistory, version: ForgettingVersion) -> list[str]:
    parent = f" from v{version.parent_version}" if version.parent_version else ""
    aliases = f" [{', '.join(version.aliases)}]" if version.aliases else ""
    lines = [
        f"request {found.request_id}: forgotten by {found.model} v{version.version}{aliases} "
        f"(batch {version.batch_id or '-'}, {version.method or '-'}{parent}), registered {version.registered_at or '?'}"
    ]
    if found.champion is None:
        service = "no (no champion)"
    elif not version.in_service:
        service = f"no (champion v{found.champion})"
    elif found.champion == version.version:
        service = f"yes (champion v{found.champion})"
    else:
        service = f"yes (champion v{found.champion}, made from v{version.version})"
    promotion = version.promotion
    if promotion.get("time"):
        forced = f" (FORCED: {promotion.get('reason', '')})" if promotion.get("forced") else ""
        reason = f", reason: {promotion['reason']}" if promotion.get("reason") and not forced else ""
        promoted = f"promoted {promotion['time']} by {promotion.get('reviewer') or '?'}{forced}{reason}"
    else:
        promoted = "never promoted"
    lines.append(f"  in service: {service}   {promoted}")
    audit = version.audit
    pool = ", ".join(
        ([f"{audit['references']} references"] if "references" in audit else [])
        + ([f"alpha {_p(audit['alpha'])}"] if "alpha" in audit else [])
    )
    parts = ([f"batch of {audit['samples']}"] if "samples" in audit else []) + ([pool] if pool else [])
    context = f" ({'; '.join(parts)})" if parts else ""
    count = len(found.sample_ids)
    if version.samples is None:
        lines.append(f"  audit of its {count} sample(s){context}: {version.samples_note}")
    else:
        unseen = sum(bool(row.get("unseen")) for row in version.samples)
        lines.append(f"  audit of its {count} sample(s){context}: {unseen} look unseen")
        width = max((len(str(row["sample_id"])) for row in version.samples), default=0)
        for row in version.samples:
            verdict = "unseen" if row.get("unseen") else "seen"
            before = "unseen" if row.get("champion_unseen") else "seen"
            lines.append(
                f"    {str(row['sample_id']):<{width}}  p_out {_p(row.get('p_out')):<6} {verdict:<7} "
                f"(champion: p_out {_p(row.get('champion_p_out'))} {before})"
            )
        if version.samples_note:
            lines.append(f"    ({version.samples_note})")
    if not audit:
        lines.append("  batch: not audited")
    else:
        power = f", audit power {_p(audit['power'])}" if "power" in audit else ""
        lines.append(
            f"  batch: unseen {_percent(audit, 'unseen_share')} (champion before: "
            f"{_percent(audit, 'champion_unseen_share')}; probes: members {_percent(audit, 'member_unseen_share')}, "
            f"non-members {_percent(audit, 'nonmember_unseen_share')}){power}"
        )
    if version.review:
        evidence = f" (evidence {version.review['evidence']})" if "evidence" in version.review else ""
        lines.append(f"  review: {version.review.get('verdict', '?')}{evidence}")
    return lines


def render_request_history(found: RequestHistory) -> str:
    """A request's history as text for a privacy reviewer: who forgot it, its audit, its promotion, service."""
    lines: list[str] = []
    if len(found.versions) > 1:
        listed = ", ".join(f"v{version.version}" for version in found.versions)
        lines.append(
            f"request {found.request_id} is forgotten by {len(found.versions)} versions ({listed}): its batch's, "
            "and each later one unlearned from a champion that had not forgotten it yet"
        )
    for version in found.versions:
        lines += _version_lines(found, version)
    if found.ledger_batches and not any(v.batch_id in found.ledger_batches for v in found.versions):
        lines.append(
            f"  note: the ledger records it in batch {', '.join(found.ledger_batches)}, not in the batch of the "
            "version(s) above"
        )
    return "\n".join(lines)
