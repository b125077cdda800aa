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

import hashlib
import importlib.metadata
import logging
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
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
from mlflow.utils.validation import MAX_MODEL_REGISTRY_TAG_VALUE_LENGTH

from tasks.adapters import tracking
from tasks.adapters.params import PARAMS_FILE, load_params
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
    """The registered model of a data set and architecture: `unlearn-<dataset>-<arch>`."""
    return f"unlearn-{dataset}-{arch}"


def default_model_name(params_path: str | Path = PARAMS_FILE) -> str:
    """The registered model of params.yaml's preset (the digits preset where there is no file)."""
    preset = get_preset(load_params(params_path).data.preset if Path(params_path).is_file() else "digits")
    return model_name(preset.dataset, preset.arch)


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
    actual = _file_sha256(Path(path))
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


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
    return store.create_model_version(
        name, source, run_id=run_id, tags=clean, description=description, model_id=model_id
    )


def _register_checkpoint(
    checkpoint_path: str | Path,
    kind: str,
    tags: Mapping[str, str],
    description: str,
    example_inputs: torch.Tensor | None,
    checkpoint: Checkpoint,
    experiment: str | None = None,
) -> ModelVersion:
    """Log and register a checkpoint (read once, by the caller) inside the active run (or a new `register` run).

    The registry needs a run whether tracking is enabled or not (see `tasks.adapters.tracking`): its own
    goes to `experiment` and carries the batch id, so `tasks.production.deletion.close_interrupted` finds it.
    """
    meta = checkpoint.metadata
    name = model_name(meta["dataset"], meta["arch"])
    run_tags = {"dataset": meta["dataset"], "arch": meta["arch"], **{k: tags[k] for k in (BATCH_TAG,) if k in tags}}
    run = (
        nullcontext()
        if mlflow.active_run()
        else tracking.start_run("register", f"register-{kind}", tags=run_tags, experiment=experiment)
    )
    with run:
        info, model = log_checkpoint_model(checkpoint_path, example_inputs, checkpoint)
        all_tags = {
            KIND_TAG: kind,
            "dataset": meta["dataset"],
            "arch": meta["arch"],
            SPARSITY_TAG: f"{sparsity(model):.4f}",
            CHECKPOINT_TAG: _file_sha256(Path(checkpoint_path)),
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
        metrics: its TA (and whatever else was measured), kept as `metrics.*` tags.
        champion: make it the first champion; refused if the registered model has one.
        experiment: the experiment of its own `register` run, where no run is active (callers
            pass `params.tracking.experiment`); None: MLFLOW_EXPERIMENT_NAME, else `unlearn`.
    """
    checkpoint = load_checkpoint(checkpoint_path)
    if champion:
        _require_no_champion(model_name(checkpoint.metadata["dataset"], checkpoint.metadata["arch"]))
    version_tags = {**metric_tags(metrics or {}), **(tags or {})}
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
        metrics: UA (on the batch's forget set), MIA_efficacy, RA, TA, RTE_seconds, ...
        retrain_metrics / retrain_version: the retrained reference, where the policy asks for one.
        alias: `candidate` (awaiting review) by default; another alias, or None for none.
        experiment: the experiment of its own `register` run, where no run is active (see `register_original`).
    """
    version_tags = {**lineage.tags(), **metric_tags(metrics), **(tags or {})}
    version_tags.update(metric_tags(retrain_metrics or {}, RETRAIN_PREFIX))
    if retrain_version is not None:
        version_tags[RETRAIN_VERSION_TAG] = str(retrain_version)
    description = (
        f"Unlearned with {lineage.method} from version {lineage.parent_version}; forgets "
        f"{len(lineage.request_ids)} request(s) of batch {lineage.batch_id}."
    )
    checkpoint = load_checkpoint(checkpoint_path)
    version = _register_checkpoint(
        checkpoint_path, UNLEARNED, version_tags, description, example_inputs, checkpoint, experiment=experiment
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
    model_id = version.model_id or version.source.removeprefix("models:/")  # source: models:/m-<id>
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

    def line(self) -> str:
        """`v3  unlearned  l1_sparse  batch b-2  promoted ... by ana  requests: r1, r2` style."""
        promoted = (
            f"promoted {self.promoted_at} by {self.reviewer}{' (FORCED)' if self.forced else ''}"
            if self.promoted_at
            else "never promoted"
        )
        aliases = f" [{', '.join(self.aliases)}]" if self.aliases else ""
        requests = ", ".join(self.request_ids) or "-"
        return (
            f"v{self.version}{aliases}  {self.kind}  {self.method or '-'}  batch {self.batch_id or '-'}  "
            f"{promoted}  requests: {requests}"
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
