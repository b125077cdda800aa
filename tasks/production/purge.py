"""Purge: once a deletion is in service, nothing still holds the forgotten samples or a model trained on them.

The samples are those the deletion ledger records through the batch the champion has forgotten
(its `ledger.batch` anchor, else its own batch). What holds them, and what a purge does to each
store `retention.stores` covers (`unlearn purge --dry-run` prints the plan, `plan_purge`):

- **models** (`checkpoints`, `mlflow`): every registered version made before one of the samples
  was forgotten in its lineage (it `held` them: the originals trained before the deletions,
  superseded champions, older candidates, a candidate older than the champion). Its checkpoints
  under models/ (found by the sha256 the version records, the original's rewind weights beside
  them) and its model artefacts in MLflow's artefact store, local or S3 (everything but `review/`,
  the audit evidence: sample ids and p-values) are deleted. The registry version stays, its
  lineage, metrics and promotion tags intact, tagged `purged` (set last, once its files are gone)
  with when, why, under which policy and the ledger batches it held. The champion is never
  purged; a version that stopped serving less than `retention.grace_days` ago waits, and so do
  the pixels it would need to be unlearned again.
- **data** (`data`): the prepared data set is rewritten without the samples' rows (`prepare`
  leaves out every sample through the batch this module's record names, so no later run brings
  one back) and `dvc commit`ed as the pipeline expects; the audit pools lose their columns of
  the samples (their scores of every other sample stay valid, and match the redacted data set).
- **DVC** (`dvc_cache`, `dvc_remote`): `dvc gc` of the cache and of the default remote, keeping
  what the workspace and every commit of the `unlearn/dvc` branch reference: the ledger's and the
  batch splits' versions (sample ids only) stay, the old data sets (pixels) and pools go.
- **inbox** (`inbox`): done request bodies (sample ids, subject, reason) become a stub: request
  id, batch, received and purged times. The ledger keeps the ids.
- **the study**: the dvc.yaml stages' outs (models and metrics of the study, trained on the full
  data set) are listed as derived from the samples; with `study_outputs: purge` they are deleted
  and their dvc.lock entries dropped, so `dvc repro` rebuilds them on the redacted data.

Kept: the ledger (ids, requests, batches, times: the record of what was deleted), every registry
version with its tags, review artefacts and batch audits (ids and scores), batch splits (ids).

Every step is safe to repeat, and the record beside the ledger (`<ledger>.purge.json`, versioned
with DVC on the `unlearn/dvc` branch) says how far a purge got: a purge that crashed anywhere is
finished by the next one, and a purge with nothing left to do removes nothing. A purge holds the
ledger's lock (`tasks.adapters.batch_lock`), so no deletion batch runs meanwhile.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

from tasks.adapters import dvc_branch, layout, registry, tracking
from tasks.adapters.audit_pool import MANIFEST_FILE, POOL_FILE
from tasks.adapters.batch_lock import batch_lock
from tasks.adapters.ledger import Ledger
from tasks.adapters.params import PARAMS_FILE, Params, load_params
from tasks.adapters.workspace import dvc_add, file_sha256
from tasks.production import audit, deletion
from tasks.stages.prepare import prepare, purge_record_path
from unlearn.errors import UnlearnError

log = logging.getLogger(__name__)

PURGE, KEEP, DEFER, PURGED = "purge", "keep", "defer", "purged"
RUNNING, DONE = "running", "done"
STAGE, DVC_FILE, UNVERSIONED = "dvc.yaml stage prepare", ".dvc file", "not versioned"
PREPARE_STAGE = "prepare"
STUB_NOTE = "purged: the request's sample ids, subject and reason are gone; the deletion ledger keeps the ids"


class PurgeError(UnlearnError, RuntimeError):
    """A purge that cannot go ahead, or that left something behind."""


class PurgeRefusedError(PurgeError):
    """A purge of a version in service (the champion, the candidate)."""


# --- the plan ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class VersionPlan:
    """One registry version: purge, keep, defer (grace period) or purged already; why; its files left."""

    version: str
    kind: str
    action: str
    reason: str
    forgot: str | None = None  # the last ledger batch it forgot
    held_batches: tuple[str, ...] = ()  # the purged batches whose samples it held
    held_samples: int = 0
    files: tuple[str, ...] = ()  # its checkpoints (and rewind weights) under models/
    artifacts: tuple[str, ...] = ()  # its model artefacts left, relative to `location`
    location: str = ""  # its logged model's artefact location
    model_id: str = ""
    candidate: bool = False

    def line(self) -> str:
        files = f": {len(self.files)} checkpoint file(s), {len(self.artifacts)} artefact file(s)" if (
            self.files or self.artifacts) else ""  # fmt: skip
        return f"v{self.version} {self.kind}: {self.reason}{files}"


@dataclass(frozen=True)
class DataPlan:
    """The prepared data set: how many purged samples it still holds, and how DVC versions it."""

    path: str
    exists: bool
    rows: int  # purged samples' rows left (-1: unreadable, rewritten)
    tracked: str


@dataclass(frozen=True)
class StudyOutput:
    """An out of a dvc.yaml stage (every one but prepare's is derived from the full data set)."""

    stage: str
    path: str
    exists: bool
    locked: bool  # dvc.lock records it

    @property
    def weights(self) -> bool:
        return Path(self.path).parts[:1] == (layout.MODELS.name,)


@dataclass(frozen=True)
class DvcPlan:
    """DVC's garbage collection: what it keeps, what it finds unreferenced now."""

    project: bool
    keeps: str
    local: int  # unreferenced objects in the cache now
    remote: int | None  # on the default remote (None: not covered, or no remote)


@dataclass(frozen=True)
class PurgePlan:
    """What a purge would remove and what it keeps, with reasons (`unlearn purge --dry-run`)."""

    model: str
    champion: str
    forgotten_through: str | None  # the champion's
    through_batch: str | None  # the samples (pixels, pool scores, request bodies) purged through this batch
    sample_ids: frozenset[str]
    batches: tuple[str, ...]  # the ledger batches through `through_batch`
    policy: str
    stores: tuple[str, ...]
    study_outputs: str
    versions: tuple[VersionPlan, ...]
    data: DataPlan
    pools: dict[str, int]  # pool folder -> its columns of purged samples
    study: tuple[StudyOutput, ...]
    inbox: tuple[str, ...]  # done request bodies to rewrite
    dvc: DvcPlan
    kept: tuple[str, ...]

    @property
    def to_purge(self) -> tuple[VersionPlan, ...]:
        return tuple(version for version in self.versions if version.action == PURGE)

    def leftovers(self) -> list[str]:
        """What a purge would still remove (empty: nothing holds the purged samples any more)."""
        left = [version.line() for version in self.to_purge]
        if self.data.rows and "data" in self.stores:
            left.append(f"{self.data.path}: {self.data.rows if self.data.rows > 0 else 'unreadable'} row(s)")
        left += [f"{folder}: {columns} column(s)" for folder, columns in self.pools.items() if columns]
        if self.study_outputs == PURGE:
            left += [f"{out.path} (stage {out.stage})" for out in self.study if out.exists or out.locked]
        left += [f"inbox {key}" for key in self.inbox]
        if self.dvc.local or self.dvc.remote:
            left.append(f"DVC: {self.dvc.local} cache and {self.dvc.remote or 0} remote unreferenced object(s)")
        return left

    def render(self) -> str:
        """The plan as text: what would be removed, what is kept, and why."""
        lines = [
            f"{self.model}: champion v{self.champion} has forgotten the ledger through "
            f"{self.forgotten_through or '(no batch)'}; samples purged through {self.through_batch or '(none)'}: "
            f"{len(self.sample_ids)} sample(s) of {len(self.batches)} batch(es)",
            f"policy: {self.policy}",
            "would remove:",
        ]
        for version in self.to_purge:
            lines.append(f"  {version.line()}")
            lines += [f"    {path}" for path in version.files]
            lines += [f"    {version.location}/{path}" for path in version.artifacts]
        if "data" in self.stores and self.data.rows:
            lines.append(f"  {self.data.path}: the rows of {self.data.rows} deleted sample(s) (pixels, labels, ids); "
                         f"rewritten, {self.data.tracked}")  # fmt: skip
        for folder, columns in self.pools.items():
            if columns:
                lines.append(f"  {folder}/{POOL_FILE}: the scores of {columns} deleted sample(s)")
        if self.inbox:
            lines.append(f"  inbox: {len(self.inbox)} done request bod(ies), rewritten to a stub")
        for out in self.study:
            derived = "model weights" if out.weights else "derived"
            verb = "" if self.study_outputs == PURGE else "  [kept: study_outputs keep]"
            lines.append(f"  study output {out.path} (stage {out.stage}, {derived}, trained on the full data "
                         f"set){verb}")  # fmt: skip
        if self.dvc.project and ({"dvc_cache", "dvc_remote"} & set(self.stores)):
            remote = f", {self.dvc.remote} on the remote" if self.dvc.remote is not None else ""
            lines.append(f"  DVC: {self.dvc.local} unreferenced object(s) in the cache{remote}, and every object "
                         f"a redaction above makes unreferenced (keeping {self.dvc.keeps})")  # fmt: skip
        if not self.leftovers():
            lines.append("  nothing: no store holds the purged samples or a model trained on them")
        lines.append("keeps:")
        lines += [f"  {line}" for line in self.kept]
        return "\n".join(lines)


def plan_purge(params: Params, versions: Sequence[str | int] = ()) -> PurgePlan:
    """What a purge would remove and keep, and why; nothing is changed.

    Args:
        versions: versions to purge besides those the policy picks (grace period or not).

    Raises:
        PurgeRefusedError: `versions` names the champion or the candidate.
        NoChampionError: there is no champion.
    """
    retention, stores = params.retention, set(params.retention.stores)
    name = deletion.model_name(params)
    store = tracking.client()
    ledger = deletion.verify_state(params)
    batches = ledger.batches()
    champion = deletion.champion_version(params)
    candidate = registry.version_by_alias(name, registry.CANDIDATE, store)
    found = sorted(store.search_model_versions(f"name = '{name}'"), key=lambda v: int(v.version))
    explicit = _explicit(name, versions, {str(v.version) for v in found}, champion, candidate)
    through = _known(deletion.forgotten_through(champion), batches)
    counts = Counter(row.batch_id for row in ledger.rows)
    checkpoints = _local_checkpoints() if "checkpoints" in stores else {}
    context = _Context(name, store, champion, candidate, found, batches, through, counts, explicit, params,
                       datetime.now(UTC), checkpoints)  # fmt: skip
    plans = _protect_kept_files(tuple(_version_plan(version, context) for version in found), found)
    record = read_record(params)
    data_through = _known(record.get("through_batch"), batches)
    if "data" in stores:
        limit = through
        for deferred in (plan for plan in plans if plan.action == DEFER):
            limit = _earlier(batches, limit, deferred.forgot)
        data_through = _later(batches, limit, data_through)
    purged_batches = tuple(batches[: batches.index(data_through) + 1]) if data_through else ()
    sample_ids = frozenset(ledger.sample_ids_of(purged_batches)) if purged_batches else frozenset()
    data = _data_plan(sample_ids)
    pools = _pool_plan(found, sample_ids) if "data" in stores else {}
    study = _study_outputs()
    inbox = _inbox_plan(params, ledger, purged_batches) if "inbox" in stores else ()
    dvc = _dvc_plan(stores)
    plan = PurgePlan(
        model=name, champion=str(champion.version), forgotten_through=through, through_batch=data_through,
        sample_ids=sample_ids, batches=purged_batches, policy=policy_text(params), stores=tuple(retention.stores),
        study_outputs=retention.study_outputs, versions=plans, data=data, pools=pools, study=study, inbox=inbox,
        dvc=dvc, kept=(),
    )  # fmt: skip
    return _with_kept(plan, ledger, params)


def policy_text(params: Params) -> str:
    """`on_promotion, grace 0 d, stores data,checkpoints,..., study outputs keep`: what the tags record."""
    retention = params.retention
    return (f"{retention.purge}, grace {retention.grace_days:g} d, stores {','.join(retention.stores) or 'none'}, "
            f"study outputs {retention.study_outputs}")  # fmt: skip


@dataclass(frozen=True)
class _Context:
    name: str
    store: MlflowClient
    champion: ModelVersion
    candidate: ModelVersion | None
    found: list[ModelVersion]
    batches: list[str]
    through: str | None
    counts: Counter
    explicit: set[str]
    params: Params
    now: datetime
    checkpoints: dict[str, list[Path]]


def _explicit(name: str, versions: Iterable[str | int], known: set[str], champion, candidate) -> set[str]:
    """The versions named to be purged; the champion and the candidate are refused, unknown ones too."""
    named = {str(version).removeprefix("v") for version in versions}
    if str(champion.version) in named:
        raise PurgeRefusedError(
            f"{name} v{champion.version} is the champion: the model in service is never purged. Promote "
            "another version first; the purge after that promotion removes this one's files."
        )
    if candidate is not None and str(candidate.version) in named:
        raise PurgeRefusedError(
            f"{name} v{candidate.version} is the candidate, awaiting review: promote it or let a newer batch "
            "replace it before purging it"
        )
    unknown = sorted(named - known, key=lambda v: (len(v), v))
    if unknown:
        raise registry.VersionNotFoundError(f"{name} has no version {', '.join(unknown)}: see `unlearn history`")
    return named


def _known(batch_id: str | None, batches: list[str]) -> str | None:
    return batch_id if batch_id in batches else None


def _earlier(batches: list[str], first: str | None, second: str | None) -> str | None:
    """The earlier of two ledger batches (None: before any batch)."""
    if first is None or second is None:
        return None
    return first if batches.index(first) <= batches.index(second) else second


def _later(batches: list[str], first: str | None, second: str | None) -> str | None:
    if first is None or second is None:
        return first or second
    return first if batches.index(first) >= batches.index(second) else second


def _held(batches: list[str], through: str | None, forgot: str | None) -> tuple[str, ...]:
    """The batches through `through` that a version which forgot through `forgot` still held."""
    if through is None:
        return ()
    start = batches.index(forgot) + 1 if forgot is not None else 0
    return tuple(batches[start : batches.index(through) + 1])


def _stamp(text: str | None) -> datetime | None:
    try:
        return datetime.fromisoformat(text).astimezone(UTC) if text else None
    except ValueError:
        return None


def _created(version: ModelVersion) -> datetime:
    return datetime.fromtimestamp((version.creation_timestamp or 0) / 1000, UTC)


def _retired_at(version: ModelVersion, context: _Context) -> datetime:
    """When `version` stopped serving: replaced as champion, as candidate, or its registration (never served)."""
    number = str(version.version)
    replaced = [
        _stamp(other.tags.get(f"{registry.PROMOTION_PREFIX}time"))
        for other in context.found
        if other.tags.get(f"{registry.PROMOTION_PREFIX}previous_champion") == number
    ]
    replaced = [stamp for stamp in replaced if stamp is not None]
    if replaced:
        return max(replaced)  # the last time it stopped being the champion
    if context.candidate is not None and number == str(context.candidate.version):
        promoted = _stamp(context.champion.tags.get(f"{registry.PROMOTION_PREFIX}time"))
        return promoted or context.now  # a candidate older than the champion's forgetting: retired by that promotion
    if version.tags.get(registry.KIND_TAG) == registry.UNLEARNED:
        later = [_created(o) for o in context.found
                 if int(o.version) > int(number) and o.tags.get(registry.KIND_TAG) == registry.UNLEARNED]  # fmt: skip
        if later:
            return min(later)  # the next batch's candidate took the alias
    return _created(version)


def _batches_text(batches: Sequence[str]) -> str:
    return ", ".join(batches) if len(batches) <= 4 else f"{', '.join(batches[:2])}, ... {batches[-1]}"


def _version_plan(version: ModelVersion, context: _Context) -> VersionPlan:
    number, tags = str(version.version), version.tags
    stores = set(context.params.retention.stores)
    forgot = _known(deletion.forgotten_through(version), context.batches)
    held = _held(context.batches, context.through, forgot)
    samples = sum(context.counts[batch] for batch in held)
    base = {"version": number, "kind": tags.get(registry.KIND_TAG, "?"), "forgot": forgot, "held_batches": held,
            "held_samples": samples}  # fmt: skip
    forgot_text = f"forgot the ledger through {forgot}" if forgot else "forgot no deletion"
    if number == str(context.champion.version):
        return VersionPlan(**base, action=KEEP, reason=f"the champion, in service ({forgot_text}): never purged")
    purged = tags.get(registry.PURGED_TAG) == "true"
    if not purged and number not in context.explicit and not held:
        return VersionPlan(**base, action=KEEP, reason=f"held none of the purged samples ({forgot_text})")
    if not {"checkpoints", "mlflow"} & stores:
        return VersionPlan(**base, action=KEEP, reason="held purged samples, but retention.stores covers neither "
                           "checkpoints nor mlflow")  # fmt: skip
    files = _version_files(tags, context.checkpoints) if "checkpoints" in stores else ()
    model_id, location, artifacts = _version_artifacts(version, context.store, "mlflow" in stores)
    found = {"files": files, "artifacts": artifacts, "location": location, "model_id": model_id}
    if purged and not files and not artifacts:
        at, why = tags.get(f"{registry.PURGED_PREFIX}at", "?"), tags.get(f"{registry.PURGED_PREFIX}reason", "?")
        return VersionPlan(**base, **found, action=PURGED, reason=f"purged {at} ({why})")
    is_candidate = context.candidate is not None and number == str(context.candidate.version)
    what = f"held {samples} purged sample(s) of batch(es) {_batches_text(held)}" if held else "held no purged sample"
    if purged:
        return VersionPlan(**base, **found, action=PURGE, reason=f"purged before, but files of it are back; {what}")
    if number in context.explicit:
        return VersionPlan(**base, **found, action=PURGE, reason=f"named to be purged; {what}")
    grace = context.params.retention.grace_days
    until = _retired_at(version, context) + timedelta(days=grace)
    if until > context.now:
        return VersionPlan(**base, **found, action=DEFER, reason=f"{what}; purgeable from "
                           f"{until.isoformat(timespec='seconds')} (retention.grace_days {grace:g})")  # fmt: skip
    role = "the candidate, older than the champion's forgetting; " if is_candidate else ""
    return VersionPlan(**base, **found, action=PURGE, reason=f"{role}{what}", candidate=is_candidate)


def _protect_kept_files(plans: tuple[VersionPlan, ...], found: Sequence[ModelVersion]) -> tuple[VersionPlan, ...]:
    """Leave a purged version's files where a kept version's checkpoint has the same bytes (a no-op unlearning)."""
    tags = {str(v.version): v.tags for v in found}
    sha = {number: version_tags.get(registry.CHECKPOINT_TAG, "") for number, version_tags in tags.items()}
    kept = {sha[plan.version] for plan in plans if plan.action in (KEEP, DEFER)} - {""}
    protected = []
    for plan in plans:
        if plan.action == PURGE and plan.files and sha[plan.version] in kept:
            done = not plan.artifacts and tags[plan.version].get(registry.PURGED_TAG) == "true"
            note = "its checkpoint's bytes are a kept version's, so its files under models/ stay"
            plan = replace(plan, files=(), action=PURGED if done else PURGE, reason=f"{plan.reason} ({note})")
        protected.append(plan)
    return tuple(protected)


def _local_checkpoints(root: Path = layout.MODELS) -> dict[str, list[Path]]:
    """sha256 -> the checkpoints under models/ with those bytes (audit pools and rewind weights left out)."""
    found: dict[str, list[Path]] = {}
    if not root.is_dir():
        return found
    for path in sorted(root.rglob("*.pt")):
        if layout.AUDIT_POOLS in path.parents or path.name.endswith(".rewind.pt") or not path.is_file():
            continue
        if path.is_symlink():
            continue
        found.setdefault(file_sha256(path), []).append(path)
    return found


def _version_files(tags, checkpoints: dict[str, list[Path]]) -> tuple[str, ...]:
    """A version's checkpoint files under models/ (its recorded sha256), each original's rewind weights first."""
    files: list[str] = []
    for path in checkpoints.get(tags.get(registry.CHECKPOINT_TAG, ""), []):
        rewind = path.with_name(f"{path.stem}.rewind.pt")
        files += [str(rewind)] if rewind.is_file() else []
        files.append(str(path))
    return tuple(files)


def _version_artifacts(version: ModelVersion, store: MlflowClient, covered: bool) -> tuple[str, str, tuple[str, ...]]:
    """(model id, artefact location, its model artefact files but `review/`); empty where there is none."""
    model_id = version.model_id or (version.source or "").removeprefix("models:/")
    if not covered or not model_id.startswith("m-"):
        return model_id, "", ()
    try:
        location = store.get_logged_model(model_id).artifact_location
    except MlflowException as error:
        log.warning("%s v%s: no logged model %s (%s)", version.name, version.version, model_id, error)
        return model_id, "", ()
    return model_id, location, tuple(_artifact_files(location))


def _artifact_files(location: str) -> list[str]:
    """Every artefact file under `location` (local or S3) but those under `review/`."""
    repository = get_artifact_repository(location)
    files, folders = [], [None]
    while folders:
        folder = folders.pop()
        for info in repository.list_artifacts(folder):
            if info.path.split("/")[0] == registry.REVIEW_ARTIFACTS:
                continue
            (folders if info.is_dir else files).append(info.path)
    return sorted(files)


def _data_plan(sample_ids: frozenset[str]) -> DataPlan:
    path = layout.RAW
    tracked = _data_tracking()
    if not path.is_file():
        return DataPlan(str(path), False, 0, tracked)
    try:
        with np.load(path, allow_pickle=False) as stored:
            ids = stored["train_ids"]
    except (OSError, ValueError, KeyError):
        return DataPlan(str(path), True, -1, tracked)
    rows = int(np.isin(ids.astype(str), list(sample_ids)).sum()) if sample_ids else 0
    return DataPlan(str(path), True, rows, tracked)


def _data_tracking() -> str:
    """How DVC versions the prepared data set: dvc.yaml's prepare stage, a .dvc file, or not at all."""
    if Path(f"{layout.RAW}.dvc").is_file():
        return DVC_FILE
    if Path(".dvc").is_dir() and Path("dvc.yaml").is_file():
        from dvc.repo import Repo

        with Repo(".") as repo:
            for stage in _pipeline_stages(repo):
                if stage.name == PREPARE_STAGE and str(layout.RAW) in {out.def_path for out in stage.outs}:
                    return STAGE
    return UNVERSIONED


def _pool_folders(found: Sequence[ModelVersion]) -> list[Path]:
    """Every audit pool: those the registry names and those under models/audit/."""
    named = {Path(v.tags[audit.POOL_PATH_TAG]) for v in found if audit.POOL_PATH_TAG in v.tags}
    on_disk = {path.parent for path in layout.AUDIT_POOLS.glob(f"*/{POOL_FILE}")}
    return sorted(folder for folder in named | on_disk if (folder / POOL_FILE).is_file())


def _pool_plan(found: Sequence[ModelVersion], sample_ids: frozenset[str]) -> dict[str, int]:
    plan = {}
    for folder in _pool_folders(found):
        with np.load(folder / POOL_FILE, allow_pickle=False) as stored:
            ids = stored["sample_ids"].astype(str)
        plan[str(folder)] = int(np.isin(ids, list(sample_ids)).sum()) if sample_ids else 0
    return plan


def _pipeline_stages(repo) -> list:
    """The stages of dvc.yaml (not the .dvc files of batches and pools), foreach and matrix expanded."""
    from dvc.stage import PipelineStage

    return [stage for stage in repo.index.stages if isinstance(stage, PipelineStage)]


def _study_outputs() -> tuple[StudyOutput, ...]:
    """Every out of every dvc.yaml stage but prepare's: all of them derive from the full data set."""
    if not (Path(".dvc").is_dir() and Path("dvc.yaml").is_file()):
        return ()
    import yaml
    from dvc.repo import Repo

    lock = Path("dvc.lock")
    locked = set((yaml.safe_load(lock.read_text()) or {}).get("stages", {})) if lock.is_file() else set()
    outputs = []
    with Repo(".") as repo:
        for stage in _pipeline_stages(repo):
            if stage.name == PREPARE_STAGE:
                continue
            for out in stage.outs:
                path = Path(out.def_path)
                outputs.append(StudyOutput(stage.name, str(path), path.exists(), stage.name in locked))
    return tuple(outputs)


def _inbox_plan(params: Params, ledger: Ledger, batches: Sequence[str]) -> tuple[str, ...]:
    """The done request bodies of the purged batches that still hold their sample ids."""
    if not batches:
        return ()
    store = deletion.inbox_of(params).store
    wanted = set(batches)
    keys = []
    for batch_id, request_id in dict.fromkeys((r.batch_id, r.request_id) for r in ledger.rows if r.batch_id in wanted):
        key = f"done/{batch_id}/{request_id}.json"
        if store.kind(key) is not None and not _is_stub(_read_body(store, key, params.deletion.max_request_bytes)):
            keys.append(key)
    return tuple(keys)


def _read_body(store, key: str, limit: int) -> dict:
    try:
        body = json.loads(store.get(key, limit=limit))
    except (OSError, ValueError, UnlearnError):
        return {}
    return body if isinstance(body, dict) else {}


def _is_stub(body: dict) -> bool:
    return "purged_at" in body and "sample_ids" not in body


def _branch_revs() -> tuple[str | None, int | None]:
    """(`unlearn/dvc`, its number of commits) where the branch exists, else (None, None)."""
    if not dvc_branch.is_git_project():
        return None, None
    done = subprocess.run(["git", "rev-list", "--count", f"refs/heads/{dvc_branch.DVC_BRANCH}"],
                          capture_output=True, text=True, check=False)  # fmt: skip
    if done.returncode or not done.stdout.strip().isdigit():
        return None, None
    return dvc_branch.DVC_BRANCH, int(done.stdout.strip())


def _has_remote(repo) -> bool:
    return bool(repo.config["core"].get("remote"))


def _object_databases(repo, remote: bool) -> list:
    """The local cache's object databases, or the default remote's (both hash kinds, as `dvc gc` sweeps them)."""
    if not remote:
        return [odb for odb in (repo.cache.repo, repo.cache.legacy) if odb is not None]
    return [repo.cloud.get_remote_odb(None, "gc -c", hash_name=name) for name in ("md5", "md5-dos2unix")]


def _all_objects(databases: Sequence) -> set[tuple[str, str]]:
    return {(str(odb.path), oid) for odb in {id(odb): odb for odb in databases}.values() for oid in odb.all()}


def _used_objects(repo) -> set[str]:
    """The hashes the workspace and every commit of the DVC branch reference: what `collect_garbage` keeps."""
    rev, count = _branch_revs()
    used = repo.used_objs(revs=[rev] if rev else None, num=count or 1, force=True)
    return {hash_info.value for objects in used.values() for hash_info in objects if hash_info.value}


def _dvc_plan(stores: set[str]) -> DvcPlan:
    if not Path(".dvc").is_dir() or not {"dvc_cache", "dvc_remote"} & stores:
        return DvcPlan(Path(".dvc").is_dir(), "", 0, None)
    from dvc.repo import Repo

    rev, count = _branch_revs()
    keeps = f"the workspace and the {count} commit(s) of {rev} reference" if rev else "the workspace references"
    with Repo(".") as repo:
        used = _used_objects(repo)
        local = sum(oid not in used for _, oid in _all_objects(_object_databases(repo, remote=False)))
        remote = None
        if "dvc_remote" in stores and _has_remote(repo):
            remote = sum(oid not in used for _, oid in _all_objects(_object_databases(repo, remote=True)))
    return DvcPlan(True, keeps, local, remote)


def _with_kept(plan: PurgePlan, ledger: Ledger, params: Params) -> PurgePlan:
    """The plan with what it keeps, and why."""
    stores = set(plan.stores)
    kept = [f"the ledger {ledger.path}: {len(ledger.rows)} deletion(s) (sample id, request, batch, time): the "
            "record of what was deleted, and the only place the purged samples' ids and requests remain"]  # fmt: skip
    for version in plan.versions:
        if version.action in (KEEP, DEFER):
            kept.append(version.line())
        elif version.action == PURGED:
            kept.append(f"v{version.version} {version.kind}: its registry entry and tags (lineage, metrics, "
                        f"promotion) and review artefacts; its model files were {version.reason}")  # fmt: skip
    kept.append(f"the batch splits under {layout.SPLITS / 'batches'} and the .dvc files on {dvc_branch.DVC_BRANCH}: "
                "sample ids only")  # fmt: skip
    kept.append("the audit tables (reports/batches/*/audit.csv, each version's review/ artefacts): sample ids and "
                "p-values, the evidence of the forgetting")  # fmt: skip
    if plan.pools:
        kept.append(f"{len(plan.pools)} audit pool(s): the references' scores of every sample not purged")
    if plan.study and plan.study_outputs != PURGE:
        kept.append(f"{len(plan.study)} study output(s) of the dvc.yaml stages, derived from the full data set "
                    "(retention.study_outputs: keep)")  # fmt: skip
    missing = [store for store in ("data", "checkpoints", "mlflow", "dvc_cache", "dvc_remote", "inbox")
               if store not in stores]  # fmt: skip
    if missing:
        kept.append(f"whatever these stores hold, which retention.stores leaves out: {', '.join(missing)}")
    return replace(plan, kept=tuple(kept))


# --- the purge's record ------------------------------------------------------------------------


def record_path(params: Params) -> Path:
    """`<ledger>.purge.json` beside the ledger: the batch the data set is purged through, and every purge."""
    return purge_record_path(params.deletion.ledger)


def read_record(params: Params) -> dict:
    path = record_path(params)
    return json.loads(path.read_text()) if path.is_file() else {}


def write_record(params: Params, record: dict) -> Path:
    """Write the record atomically (a reader sees the old one or the new one)."""
    path = record_path(params)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(handle, "w") as out:
        out.write(json.dumps(record, indent=2, sort_keys=True) + "\n")
    os.replace(temp, path)
    return path


@dataclass
class PurgeReport:
    """What a purge removed and kept (`unlearn purge`); also in the record's history."""

    model: str
    champion: str
    through_batch: str | None
    samples: int
    reason: str
    policy: str
    started_at: str
    resumed: bool = False
    removed: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    tagged: list[str] = field(default_factory=list)  # versions tagged purged by this run
    seconds: float = 0.0

    @property
    def removed_nothing(self) -> bool:
        return not self.removed and not self.tagged

    def as_dict(self) -> dict:
        return asdict(self)

    def render(self) -> str:
        head = (f"{self.model}: purge through ledger batch {self.through_batch or '(none)'} ({self.samples} "
                f"sample(s)), champion v{self.champion}{' (resumed)' if self.resumed else ''}, "
                f"{self.seconds:.1f} s")  # fmt: skip
        lines = [head, f"reason: {self.reason}", f"policy: {self.policy}"]
        tagged = f"; tagged purged: {', '.join(f'v{v}' for v in self.tagged)}" if self.tagged else ""
        lines.append(f"removed ({len(self.removed)}){tagged}:" if not self.removed_nothing else "removed: nothing")
        lines += [f"  {line}" for line in self.removed]
        lines.append("kept:")
        lines += [f"  {line}" for line in self.kept]
        return "\n".join(lines)


# --- the purge, step by step -------------------------------------------------------------------


def purge(params: Params, reason: str, versions: Sequence[str | int] = ()) -> PurgeReport:
    """Remove what still holds the samples the champion has forgotten (see the module docstring).

    Args:
        reason: why (recorded on every purged version): a promotion, an erasure deadline, ...
        versions: versions to purge besides those the policy picks (never the champion or candidate).

    Raises:
        PurgeRefusedError: `versions` names the champion or the candidate.
        PurgeError: no reason, or something was left behind (named); rerun to finish.
    """
    if not (reason or "").strip():
        raise PurgeError("a purge needs a reason, recorded on every purged version: pass --reason TEXT")
    started = time.perf_counter()
    with batch_lock(params.deletion.ledger, params.deletion.lock_timeout_seconds, purpose="purge"):
        plan = plan_purge(params, versions)
        record = read_record(params)
        if not plan.leftovers() and record.get("status") != RUNNING:
            report = PurgeReport(plan.model, plan.champion, plan.through_batch, len(plan.sample_ids), reason.strip(),
                                 plan.policy, record.get("started_at", ""), kept=list(plan.kept))  # fmt: skip
        else:
            report = record_intent(params, plan, reason.strip())
            steps = (redact_data, redact_pools, purge_versions, purge_study_outputs, redact_inbox, collect_garbage)
            for step in steps:
                try:
                    step(params, plan, report)
                finally:  # what each step removed, for the report of the purge that finishes this one
                    _save_progress(params, report)
            finish_record(params, plan, report, versions)
    report.seconds = time.perf_counter() - started
    log.info("%s", report.render())
    return report


def record_intent(params: Params, plan: PurgePlan, reason: str) -> PurgeReport:
    """Write the record first: the batch the data set is purged through (what `prepare` leaves out from now on).

    A purge resuming a crashed one keeps its start time and reason, so every version it tags says the same.
    """
    record = read_record(params)
    resumed = record.get("status") == RUNNING
    started_at = record["started_at"] if resumed else datetime.now(UTC).isoformat(timespec="seconds")
    reason = record.get("reason", reason) if resumed else reason
    record.update(model=plan.model, champion=plan.champion, through_batch=plan.through_batch,
                  samples=len(plan.sample_ids), status=RUNNING, started_at=started_at, reason=reason,
                  policy=plan.policy)  # fmt: skip
    if resumed:
        record.setdefault("resumed_at", []).append(datetime.now(UTC).isoformat(timespec="seconds"))
    else:
        record.update(removed=[], tagged=[])
    write_record(params, record)
    return PurgeReport(plan.model, plan.champion, plan.through_batch, len(plan.sample_ids), reason, plan.policy,
                       started_at, resumed, removed=list(record.get("removed", [])),
                       tagged=list(record.get("tagged", [])), kept=list(plan.kept))  # fmt: skip


def _save_progress(params: Params, report: PurgeReport) -> None:
    """Record what this purge removed and tagged so far (a purge resuming it reports it too)."""
    record = read_record(params)
    record.update(removed=report.removed, tagged=report.tagged)
    write_record(params, record)


def redact_data(params: Params, plan: PurgePlan, report: PurgeReport) -> None:
    """Rewrite the prepared data set without the purged samples (`prepare`, reading the record) and commit it."""
    data = plan.data
    if "data" not in plan.stores or not data.exists:
        return
    if data.rows:
        prepare(params)
        left = _data_plan(plan.sample_ids).rows
        if left:
            raise PurgeError(f"{data.path} still holds {left} purged sample(s) after `prepare` rewrote it")
        rows = "its unreadable contents" if data.rows < 0 else f"the rows of {data.rows} deleted sample(s)"
        report.removed.append(f"{data.path}: {rows} (pixels, labels, ids); rewritten by prepare")
    _commit_data(params, data.tracked)


def _commit_data(params: Params, tracked: str) -> None:
    """`dvc commit prepare` (or `dvc add` its .dvc file), and push where batches push."""
    if tracked == UNVERSIONED:
        return
    from dvc.repo import Repo

    with Repo(".") as repo:
        if tracked == STAGE:
            repo.commit(PREPARE_STAGE, force=True)
        else:
            repo.add([str(layout.RAW)])
        if params.deletion.dvc_push and _has_remote(repo):
            repo.push(targets=[str(layout.RAW)])


def redact_pools(params: Params, plan: PurgePlan, report: PurgeReport) -> None:
    """Drop the purged samples' columns of every audit pool; record its new sha256 wherever the old one is."""
    if "data" not in plan.stores:
        return
    for folder in plan.pools:
        _redact_pool(params, Path(folder), plan.sample_ids, report)


def _redact_pool(params: Params, folder: Path, sample_ids: frozenset[str], report: PurgeReport) -> None:
    target, manifest_path = folder / POOL_FILE, folder / MANIFEST_FILE
    with np.load(target, allow_pickle=False) as stored:
        arrays = {key: stored[key] for key in stored.files}
    ids = arrays["sample_ids"].astype(str)
    drop = np.isin(ids, list(sample_ids)) if sample_ids else np.zeros(len(ids), dtype=bool)
    record = read_record(params)
    if drop.any():
        keep = ~drop
        position = np.cumsum(keep) - 1
        position[drop] = -1

        def remap(columns: np.ndarray) -> np.ndarray:
            moved = position[np.asarray(columns, dtype=np.int64)]
            return moved[moved >= 0].astype(np.int64)

        redacted = {**arrays, "scores": arrays["scores"][:, keep], "members": arrays["members"][:, keep],
                    "sample_ids": ids[keep], "member_probe": remap(arrays["member_probe"]),
                    "nonmember_probe": remap(arrays["nonmember_probe"])}  # fmt: skip
        temp = folder / f".{POOL_FILE}.purge"
        with temp.open("wb") as handle:
            np.savez(handle, **redacted)
        record.setdefault("pools", {})[str(folder)] = {"from": file_sha256(target), "to": file_sha256(temp)}
        write_record(params, record)  # before the swap: a rerun knows the new bytes are the purge's own
        os.replace(temp, target)
        references = arrays["scores"].shape[0]
        report.removed.append(f"{target}: the scores of {int(drop.sum())} deleted sample(s) ({references} each)")
        report.kept.append(f"{folder}: the scores of every other sample, by {references} references (models not "
                           "kept) some of which trained on the purged samples; its stale share now counts only "
                           "later deletions: `unlearn audit build` rebuilds it without them")  # fmt: skip
    state = record.get("pools", {}).get(str(folder))
    current = file_sha256(target)
    if state is None or current != state["to"]:
        return  # never redacted by a purge, or rebuilt since: nothing of ours to finish
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("sha256") != current:
        manifest["sha256"] = current
        manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    digests = dvc_add([folder], params.deletion.dvc_push) if Path(f"{folder}.dvc").is_file() else {}
    store = tracking.client()
    for version in store.search_model_versions(f"name = '{deletion.model_name(params)}'"):
        tags = version.tags
        if tags.get(audit.POOL_PATH_TAG) == str(folder) and tags.get(audit.POOL_SHA_TAG) == state["from"]:
            fresh = digests and audit.POOL_DVC_TAG in tags
            update = {audit.POOL_DVC_TAG: next(iter(digests.values()))} if fresh else {}
            registry.set_version_tags(version.name, str(version.version), {**update, audit.POOL_SHA_TAG: current})


def purge_versions(params: Params, plan: PurgePlan, report: PurgeReport) -> None:
    """Delete each purgeable version's checkpoints and model artefacts, then tag it (`purged` last)."""
    store = tracking.client()
    for version in plan.to_purge:
        for path in map(Path, version.files):
            path.unlink(missing_ok=True)
            _prune_empty(path.parent)
            report.removed.append(f"{path} (v{version.version})")
        if version.artifacts:
            repository = get_artifact_repository(version.location)
            for entry in sorted({path.split("/")[0] for path in version.artifacts}):
                repository.delete_artifacts(entry)
                report.removed.append(f"{version.location}/{entry} (v{version.version}'s model artefacts)")
            left = _artifact_files(version.location)
            if left:
                raise PurgeError(f"v{version.version}: {len(left)} artefact(s) left in {version.location}: {left[:3]}")
        if version.candidate:
            store.delete_registered_model_alias(plan.model, registry.CANDIDATE)
        tags = {
            f"{registry.PURGED_PREFIX}at": report.started_at,
            f"{registry.PURGED_PREFIX}reason": report.reason,
            f"{registry.PURGED_PREFIX}policy": report.policy,
            f"{registry.PURGED_PREFIX}batches": ",".join(version.held_batches),
            registry.PURGED_TAG: "true",  # last: the version's files are gone
        }
        if version.model_id.startswith("m-"):
            try:
                store.set_logged_model_tags(version.model_id, tags)
            except MlflowException as error:
                log.warning("v%s: could not tag logged model %s: %s", version.version, version.model_id, error)
        registry.set_version_tags(plan.model, version.version, tags, store)
        report.tagged.append(version.version)


def _prune_empty(folder: Path, stop: Path = layout.MODELS) -> None:
    """Remove `folder` and its parents up to `stop` while they are empty."""
    while folder != stop and stop in folder.parents:
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent


def purge_study_outputs(params: Params, plan: PurgePlan, report: PurgeReport) -> None:
    """With `study_outputs: purge`, delete the dvc.yaml stages' outs and drop their dvc.lock entries."""
    if plan.study_outputs != PURGE or not plan.study:
        return
    for out in plan.study:
        path = Path(out.path)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        else:
            continue
        report.removed.append(f"{out.path} (study output of stage {out.stage})")
    stages = {out.stage for out in plan.study if out.locked}
    if stages:
        from dvc.dvcfile import Lockfile
        from dvc.repo import Repo

        with Repo(".") as repo:
            lockfile = Lockfile(repo, "dvc.lock")
            for stage in _pipeline_stages(repo):
                if stage.name in stages:
                    lockfile.remove_stage(stage)
        report.removed.append(f"dvc.lock: the entries of {len(stages)} stage(s) (`dvc repro` rebuilds them)")


def redact_inbox(params: Params, plan: PurgePlan, report: PurgeReport) -> None:
    """Rewrite the purged batches' done request bodies to a stub: request id, batch, received and purged times."""
    if not plan.inbox:
        return
    inbox = deletion.inbox_of(params)
    for key in plan.inbox:
        body = _read_body(inbox.store, key, params.deletion.max_request_bytes)
        if _is_stub(body):
            continue
        _, batch_id, name = key.split("/")
        stub = {"request_id": name.removesuffix(".json"), "batch_id": batch_id,
                "received_at": body.get("received_at"), "purged_at": report.started_at, "note": STUB_NOTE}  # fmt: skip
        inbox.store.put(key, (json.dumps(stub, indent=2) + "\n").encode())
    report.removed.append(f"inbox {inbox.uri}: the bodies of {len(plan.inbox)} done request(s) (sample ids, "
                          "subject, reason), now stubs")  # fmt: skip


def collect_garbage(params: Params, plan: PurgePlan, report: PurgeReport) -> None:
    """`dvc gc` of the cache (and the remote), keeping what the workspace and the DVC branch reference."""
    stores = set(plan.stores)
    if not plan.dvc.project or not {"dvc_cache", "dvc_remote"} & stores:
        return
    from dvc.repo import Repo

    rev, count = _branch_revs()
    with Repo(".") as repo:
        cloud = "dvc_remote" in stores and _has_remote(repo)
        before = _all_objects(_object_databases(repo, remote=False))
        before_remote = _all_objects(_object_databases(repo, remote=True)) if cloud else set()
        repo.gc(workspace=True, rev=rev, num=count, cloud=cloud, force=True, jobs=1)
        removed = before - _all_objects(_object_databases(repo, remote=False))
        removed_remote = before_remote - (_all_objects(_object_databases(repo, remote=True)) if cloud else set())
    if removed:
        report.removed.append(f"DVC cache: {len(removed)} object(s) no longer referenced (old data sets, pools)")
    if removed_remote:
        report.removed.append(f"DVC remote: {len(removed_remote)} object(s) no longer referenced")
    if "dvc_remote" in stores and not cloud:
        report.kept.append("the DVC remote: none is configured")
    report.kept.append(f"DVC objects that {plan.dvc.keeps}")


def finish_record(params: Params, plan: PurgePlan, report: PurgeReport, versions: Sequence[str | int] = ()) -> None:
    """Check that nothing is left, then mark the record done (this purge in its history) and keep it on the branch.

    The record itself (a small JSON file, no personal data) is committed to `unlearn/dvc` as it is,
    beside the batches' .dvc files, so a re-cloned checkout's `prepare` still leaves the samples out.
    """
    after = plan_purge(params, versions)
    left = after.leftovers()
    if left:
        raise PurgeError(f"the purge left {len(left)} thing(s) behind: {'; '.join(left[:5])}: run it again")
    record = read_record(params)
    tagged = [v.version for v in after.versions
              if v.action == PURGED and registry_tag(after, v.version) == report.started_at]  # fmt: skip
    summary = {"started_at": report.started_at, "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
               "reason": report.reason, "champion": report.champion, "through_batch": report.through_batch,
               "samples": report.samples, "purged_versions": tagged, "removed": report.removed,
               "resumed": bool(record.get("resumed_at"))}  # fmt: skip
    record.update(status=DONE, last=summary, history=[*record.get("history", []), summary])
    for key in ("removed", "tagged", "resumed_at"):
        record.pop(key, None)
    path = write_record(params, record)
    if dvc_branch.is_git_project():
        dvc_branch.record([path], f"purge through ledger batch {report.through_batch}")


def registry_tag(plan: PurgePlan, version: str, key: str = f"{registry.PURGED_PREFIX}at") -> str:
    """A tag of one of the plan's versions, read from the registry."""
    return registry.get_version(plan.model, version).tags.get(key, "")


# --- wiring --------------------------------------------------------------------------------------


def purge_after_promotion(params: Params, promotion) -> PurgeReport | None:
    """The purge `promote` runs right after moving the champion, where `retention.purge` is `on_promotion`.

    Raises:
        PurgeError: the purge failed; the promotion stands, and `unlearn purge` finishes the purge.
    """
    if params.retention.purge != "on_promotion":
        return None
    if promotion.model != deletion.model_name(params):
        log.warning("%s is not params' model %s: no purge after its promotion", promotion.model,
                    deletion.model_name(params))  # fmt: skip
        return None
    reason = f"promotion of v{promotion.version} by {promotion.reviewer}"
    reason += f": {promotion.reason}" if promotion.reason else ""
    try:
        return purge(params, reason)
    except (UnlearnError, OSError, MlflowException) as error:
        raise PurgeError(
            f"{promotion.model} v{promotion.version} is the champion now, but the purge after its promotion "
            f"failed: {error}. Run `unlearn purge` to finish it."
        ) from error


def run_purge_command(
    params_path: str | Path = PARAMS_FILE, dry_run: bool = False, reason: str | None = None,
    versions: Sequence[str | int] = (),
) -> str:  # fmt: skip
    """`unlearn purge [--dry-run] [--reason TEXT] [--version N ...]`: the plan, or what the purge removed and kept."""
    params = load_params(params_path)
    if dry_run:
        return plan_purge(params, versions).render()
    return purge(params, reason or "unlearn purge, on command", versions).render()


def purged_for(params: Params, request_id: str) -> list[str]:
    """The versions purged because they held request `request_id`'s samples (oldest first)."""
    ledger = Ledger.load(params.deletion.ledger)
    batches = {row.batch_id for row in ledger.rows if row.request_id == request_id}
    name = deletion.model_name(params)
    found = tracking.client().search_model_versions(f"name = '{name}'")
    return sorted(
        (str(v.version) for v in found if v.tags.get(registry.PURGED_TAG) == "true"
         and batches & set(v.tags.get(f"{registry.PURGED_PREFIX}batches", "").split(","))),
        key=int,
    )  # fmt: skip
