"""The production path, step by step: claim a batch of deletion requests, unlearn, register.

Each step is a plain function the `deletion_batch` Prefect flow runs as a task. Every step
is safe to repeat, so a batch that crashed anywhere is resumed by the next run:

- the inbox keeps the batch's requests in `claimed/<batch_id>/` until `finish` moves
  them to `done/`, and the next run resumes claimed batches before claiming new ones;
- `Ledger.extend` is a no-op for a batch already recorded;
- the split, its validation and its DVC version are rewritten identically;
- registration is keyed by the batch id: a batch that already has a registry version is
  not unlearned or registered again (`existing_candidate`); the MLflow runs of a run that
  died are marked FAILED, and the models it logged but never registered are deleted
  (`close_interrupted`).

Before a batch touches anything it checks what it builds on (`verify_state`): the ledger's
chain and every registry version's anchor of it, and, before unlearning, the champion's
checkpoint against the sha256 recorded when it was registered. A mismatch stops the batch
with an error naming what changed.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from tasks.adapters import dvc_branch, layout, registry, tracking
from tasks.adapters.expectations import validate_against
from tasks.adapters.ledger import Ledger, batch_split, validate_batch
from tasks.adapters.params import Params, flatten, method_config
from tasks.adapters.requests import DeletionRequest, Inbox, InboxError, new_batch_id, open_inbox
from tasks.adapters.workspace import bundle, device, dvc_add, load_model
from tasks.production import audit
from tasks.production.audit import BatchAudit
from tasks.stages.steps import evaluate_split, unlearn_checkpoint
from unlearn.data import DataBundle
from unlearn.errors import UnlearnError
from unlearn.masks import Masks
from unlearn.methods import run_method
from unlearn.metrics import HEADLINE_METRICS
from unlearn.splits import Manifest, Split, resolve_ids
from unlearn.train import accuracy

log = logging.getLogger(__name__)
# What a batch reports (`unlearn batch`, the flow's artifact): the headline metrics, then UA on
# every sample deleted so far (`evaluate_candidate`).
BATCH_METRICS = (*HEADLINE_METRICS, "UA_cumulative")
REVIEW_TAG = registry.REVIEW_VERDICT_TAG  # set once a batch's version has its review attached (`attach_review`)


class NoChampionError(UnlearnError):
    """There is no champion model to unlearn from."""


@dataclass
class Batch:
    """The requests of one batch: those accepted and those rejected (with reasons)."""

    batch_id: str
    accepted: list[DeletionRequest]
    rejected: dict[str, str] = field(default_factory=dict)
    resumed: bool = False

    @property
    def request_ids(self) -> list[str]:
        return [request.request_id for request in self.accepted]


@dataclass
class BatchSplit:
    """The split unlearning runs on, the cumulative forget set, where they are written, and the data set.

    `data` is the prepared data set, read once per batch (`load_data`) and handed on.
    """

    split: Split
    cumulative: Manifest
    folder: Path
    data: DataBundle


@dataclass
class Candidate:
    """An unlearned model (in memory, and its checkpoint on disk) and the champion version it came from."""

    checkpoint: Path
    seconds: float
    parent_version: str
    method: str
    model: nn.Module
    masks: Masks
    champion_checkpoint: Path  # the verified checkpoint it was unlearned from (the audit scores it too)
    batches: tuple[str, ...] = ()  # the ledger batches it forgot: every one since its champion's (this one last)
    config: dict = field(default_factory=dict)  # the method config it ran with, flattened (`batch_method_config`)


def inbox_of(params: Params) -> Inbox:
    return open_inbox(params.deletion.inbox, max_bytes=params.deletion.max_request_bytes)


def load_data() -> DataBundle:
    """The prepared data set, read once per batch and handed to every step that needs it."""
    return bundle()


def open_batch(params: Params, data: DataBundle) -> Batch | None:
    """Resume a claimed batch (a crashed run's), or claim every pending request as a new one.

    Bad requests (malformed, unknown or already-deleted sample ids, empty) are rejected
    with their reason; None when there is nothing to do.
    """
    inbox = inbox_of(params)
    resumable = inbox.claimed_batches()
    if resumable:
        batch_id, resumed = resumable[0], True
        request_ids = inbox.claimed_requests(batch_id)
        log.warning("resuming batch %s: an earlier run claimed it and did not finish", batch_id)
        close_interrupted(params, batch_id)
    else:
        batch_id, resumed = new_batch_id(), False
        request_ids = inbox.claim(batch_id)
    if not request_ids:
        return None
    return screen(params, inbox, batch_id, request_ids, resumed, data)


def sweep_inbox(params: Params) -> dict[str, str]:
    """Set aside every pending entry that is no request (see `Inbox.sweep`); what, and why."""
    set_aside = inbox_of(params).sweep()
    for label, reason in set_aside.items():
        log.warning("set aside %s: %s", label, reason)
    return set_aside


def screen(
    params: Params, inbox: Inbox, batch_id: str, request_ids: list[str], resumed: bool, data: DataBundle
) -> Batch:
    """Parse and check each request of the batch on its own; reject the bad ones in the inbox."""
    parsed = {request_id: read_request(inbox, batch_id, request_id) for request_id in request_ids}
    malformed = {rid: reason for rid, reason in parsed.items() if isinstance(reason, str)}
    requests = [request for request in parsed.values() if not isinstance(request, str)]
    ledger = Ledger.load(params.deletion.ledger)
    accepted, rejected = validate_batch(requests, data.train.ids, ledger, batch_id=batch_id)
    reasons = {**malformed, **rejected}
    for request_id, reason in reasons.items():
        inbox.reject(batch_id, request_id, reason)
        log.warning("rejected %s: %s", request_id, reason)
    return Batch(batch_id, list(accepted), reasons, resumed)


def read_request(inbox: Inbox, batch_id: str, request_id: str) -> DeletionRequest | str:
    """One claimed request, or why it is none: whatever goes wrong with one file stays with it."""
    try:
        return inbox.read(batch_id, request_id)
    except (InboxError, OSError, ValueError, RecursionError, MemoryError) as error:
        return f"could not be read: {type(error).__name__}: {str(error)[:200]}"


def verify_state(params: Params) -> Ledger:
    """The ledger, checked against its own chain and against every registry version's anchor of it.

    Raises:
        LedgerTamperedError: a row was removed, added or edited since it was recorded.
    """
    ledger = Ledger.load(params.deletion.ledger)
    ledger.verify()
    for anchor in registry.ledger_anchors(model_name(params), params.deletion.ledger):
        ledger.check_anchor(anchor.batch_id, anchor.digest, anchor.rows, f"registry version v{anchor.version}")
    return ledger


def close_interrupted(params: Params, batch_id: str) -> None:
    """Mark the MLflow runs a dead run left RUNNING for `batch_id` FAILED; delete models they never registered.

    Called under the batch lock, so no live run of this batch exists anywhere.
    """
    store = tracking.client()
    experiments = [e.experiment_id for e in store.search_experiments()]
    if not experiments:
        return
    running = f"tags.{registry.BATCH_TAG} = '{batch_id}' and attributes.status = 'RUNNING'"
    stale = store.search_runs(experiments, running)
    registered = {v.model_id for v in registry.versions_of_batch(model_name(params), batch_id)}
    for run in stale:
        store.set_tag(run.info.run_id, "unlearn.interrupted", "true")
        store.set_terminated(run.info.run_id, status="FAILED")
        log.warning("marked MLflow run %s (%s) FAILED: its process died", run.info.run_id, run.info.run_name)
        orphans = store.search_logged_models(experiments, filter_string=f"source_run_id = '{run.info.run_id}'")
        for model in orphans:
            if model.model_id not in registered:
                store.delete_logged_model(model.model_id)
                log.warning("deleted logged model %s: logged by the dead run, never registered", model.model_id)


def record(params: Params, batch: Batch) -> Ledger:
    """Add the batch's samples to the cumulative ledger (once per batch) and save it."""
    ledger = Ledger.load(params.deletion.ledger).extend(batch.batch_id, batch.accepted)
    ledger.save()
    return ledger


def write_split(params: Params, batch: Batch, ledger: Ledger, data: DataBundle) -> BatchSplit:
    """Manifests for the batch (retain excludes every deletion so far), checked by Great Expectations."""
    split, cumulative = batch_split(data, ledger, batch.batch_id)
    folder = split.save(layout.batch_split_dir(batch.batch_id))
    (folder / "cumulative_forget.csv").write_text(cumulative.to_csv())
    earlier = Manifest.of(data.train, sorted(set(cumulative.indices) - set(split.forget.indices)))
    report = validate_against(split, data, name=batch.batch_id, earlier_deletions=earlier)
    report.save(layout.batch_validation_report(batch.batch_id))
    report.raise_for_failures()
    return BatchSplit(split, cumulative, folder, data)


def version_split(params: Params, batch_split_: BatchSplit) -> dict[str, str]:
    """`dvc add` the batch's split and the ledger, push them, and commit their `.dvc` files on the DVC branch.

    Returns the md5s and the commit (`dvc.commit`) for the registry version, which `restore_batch` reads.
    """
    targets = [batch_split_.folder, Path(params.deletion.ledger)]
    digests = dvc_add(targets, params.deletion.dvc_push)
    if not dvc_branch.is_git_project():
        log.warning("the project is no git repository: batch %s's .dvc files are not committed anywhere",
                    batch_split_.folder.name)  # fmt: skip
        return digests
    commit = dvc_branch.record([f"{target}.dvc" for target in targets], f"deletion batch {batch_split_.folder.name}")
    return {**digests, dvc_branch.COMMIT_TAG: commit}


def restore_batch(params: Params, batch_id: str, pull: bool = True) -> list[Path]:
    """Bring a batch's split back (and the ledger as it was after it, where the ledger is missing).

    Reads the DVC-branch commit its registry version records, writes the `.dvc` files back and
    `dvc pull`s them (`pull=False`: from the local cache). Never overwrites an existing ledger.
    """
    found = registry.versions_of_batch(model_name(params), batch_id)
    commit = found[0].tags.get(dvc_branch.COMMIT_TAG) if found else None
    if not commit:
        raise dvc_branch.DvcBranchError(f"no registry version of batch {batch_id} records a {dvc_branch.COMMIT_TAG}")
    files = [f"{layout.batch_split_dir(batch_id)}.dvc"]
    ledger = Path(params.deletion.ledger)
    if not ledger.exists():
        files.append(f"{ledger}.dvc")
    restored = dvc_branch.restore(commit, files, pull=pull)
    return [Path(str(path).removesuffix(".dvc")) for path in restored]


def model_name(params: Params) -> str:
    """The registered model of the data set (`params.data.dataset`) and the preset's architecture."""
    return registry.params_model_name(params)


def champion_version(params: Params):
    """The champion's registry version; a clear error when no champion exists yet."""
    name = model_name(params)
    version = registry.version_by_alias(name, registry.CHAMPION)
    if version is None:
        raise NoChampionError(f"{name} has no champion: run `unlearn train-original` first")
    return version


def existing_candidate(params: Params, batch: Batch):
    """The registry version this batch already produced (a resumed run), or None: the batch's idempotency key."""
    found = registry.versions_of_batch(model_name(params), batch.batch_id)
    return found[0] if found else None


def batch_method_config(params: Params, champion=None):
    """How a batch unlearns: `deletion.method`'s config, each source overriding the ones before it:

    1. the method's preset defaults (`unlearn/methods/<name>.py`);
    2. params.yaml's `tuned.<method>.<data set>.<deletion.tuned_scenario>.<sparsity>` (`unlearn tune`);
    3. the values the champion was calibrated with (`champion`'s `calibration.values.<method>`, where
       train-original calibrated it; a skipped calibration records none to apply);
    4. params.yaml's `unlearn.settings.<method>`: what the user states explicitly always wins;
    5. the seed, `deletion.seed`.
    """
    deletion = params.deletion
    calibrated = registry.calibrated_values(champion, deletion.method) if champion is not None else {}
    return method_config(
        params, deletion.method, scenario=deletion.tuned_scenario, sparsity=deletion.sparsity,
        calibrated=calibrated, seed=deletion.seed,
    )  # fmt: skip


def unlearn_champion(params: Params, batch: Batch, ledger: Ledger, split: BatchSplit) -> Candidate:
    """Unlearn from the champion every sample deleted since it was made (this batch at least)."""
    champion = champion_version(params)
    champion_path = registry.verify_checkpoint(champion, registry.checkpoint_path(champion))
    model, checkpoint = load_model(champion_path)
    data = split.data
    batches = tuple(batches_since(ledger, forgotten_through(champion)))
    forget_ids = ledger.sample_ids_of(batches)
    forget_set = data.train.subset(resolve_ids(data.train, forget_ids))
    method, path = params.deletion.method, layout.batch_model_path(batch.batch_id)
    config = batch_method_config(params, champion)
    result = unlearn_checkpoint(
        params, data, method, model, checkpoint, (split.split.retain_set(data), forget_set),
        config, path,
        batch_id=batch.batch_id, parent_version=str(champion.version), split_digest=split.split.digest(),
        request_ids=batch.request_ids,
    )  # fmt: skip
    return Candidate(
        path, result.seconds, str(champion.version), method, result.model, checkpoint.masks, champion_path, batches,
        flatten(config),
    )  # fmt: skip


def forgotten_through(version) -> str | None:
    """The last ledger batch `version` has forgotten (its anchor, else its own batch); None: none."""
    return version.tags.get(registry.LEDGER_BATCH_TAG) or version.tags.get(registry.BATCH_TAG)


def batches_since(ledger: Ledger, batch_id: str | None) -> list[str]:
    """The ledger's batches after `batch_id` (all of them when None: the original champion)."""
    batches = ledger.batches()
    if batch_id is None or batch_id not in batches:
        return batches
    return batches[batches.index(batch_id) + 1 :]


def evaluate_candidate(params: Params, split: BatchSplit, candidate: Candidate) -> dict[str, float]:
    """UA on this batch and on every deletion so far, RA, TA, MIA-efficacy, RTE."""
    data = split.data
    metrics = evaluate_split(candidate.model, split.split, data, candidate.seconds)
    cumulative = data.train.subset(list(split.cumulative.indices))
    metrics["UA_cumulative"] = 100.0 - accuracy(candidate.model, cumulative, device())
    return metrics


def request_kind(split: BatchSplit) -> str:
    """`class_wise` where the batch deletes every remaining training sample of the classes it touches; else `sample`.

    The kind picks the promotion gates (`tasks.production.gates`).
    """
    data, forget = split.data, set(split.split.forget.indices)
    earlier = set(split.cumulative.indices) - forget
    labels = data.train.labels.cpu()
    classes = {int(labels[row]) for row in forget}
    remaining = {row for row in range(len(data.train)) if int(labels[row]) in classes and row not in earlier}
    return "class_wise" if forget and remaining == forget else "sample"


def audit_batch(
    params: Params, batch: Batch, ledger: Ledger, split: BatchSplit, candidate: Candidate
) -> BatchAudit | None:
    """The per-sample membership audit of the candidate on the batch's samples; None where the champion has no pool."""
    champion = champion_version(params)
    pool = audit.pool_of(champion)
    if pool is None:
        log.warning("%s v%s has no audit reference pool: the batch is not audited (run `unlearn audit build`)",
                    champion.name, champion.version)  # fmt: skip
        return None
    champion_model, _ = load_model(candidate.champion_checkpoint)
    result = audit.audit_candidate(
        params, split.data, pool, split.split.forget.sample_ids, candidate.model, champion_model, ledger.deleted_ids()
    )
    result.save(layout.batch_audit_dir(batch.batch_id))
    return result


def retrain_reference(params: Params, split: BatchSplit, candidate: Candidate) -> dict[str, float]:
    """Retrain's metrics on the same split (the gold standard), where the policy asks for it."""
    data, parts = split.data, split.split
    config = method_config(params, "retrain", seed=params.deletion.seed)
    sets = (parts.retain_set(data), parts.forget_set(data))
    result = run_method("retrain", candidate.model, *sets, device(), masks=candidate.masks, config=config)
    return evaluate_split(result.model, parts, data, result.seconds)


def register_candidate(
    params: Params,
    batch: Batch,
    ledger: Ledger,
    split: BatchSplit,
    candidate: Candidate,
    metrics: dict[str, float],
    retrain_metrics: dict[str, float] | None,
    dvc_digests: dict[str, str],
    batch_audit: BatchAudit | None = None,
):
    """Register the unlearned model as `candidate`, tagged with its lineage, its request kind and its audit.

    The lineage is cumulative: `request_ids` names every request the candidate forgot, this batch's
    and those of every earlier batch its champion had not forgotten (`Candidate.batches`), so a
    promotion of any version leaves the champion's record whole.
    """
    batches = candidate.batches or (batch.batch_id,)
    lineage = registry.Lineage(
        request_ids=forgotten_requests(ledger, batches, batch.request_ids),
        batch_id=batch.batch_id,
        ledger_digest=ledger.digest(),
        split_digests=split.split.digests(),
        method=candidate.method,
        parent_version=candidate.parent_version,
        ledger_path=params.deletion.ledger,
        ledger_rows=len(ledger.through(batch.batch_id).rows),
    )
    tags = {
        **dvc_digests,
        registry.FORGETS_BATCHES_TAG: ",".join(batches),
        "deletion.rejected": ",".join(sorted(batch.rejected)),
        registry.DELETION_KIND_TAG: request_kind(split),
        registry.FORGET_SAMPLES_TAG: str(len(split.split.forget)),
        **audit.pool_tags(champion_version(params)),
        **registry.calibration_tags(champion_version(params)),
        **({registry.METHOD_CONFIG_TAG: json.dumps(candidate.config, sort_keys=True)} if candidate.config else {}),
        **(batch_audit.tags() if batch_audit else {}),
    }
    return registry.register_unlearned(
        candidate.checkpoint,
        lineage,
        metrics,
        retrain_metrics=retrain_metrics,
        tags=tags,
        experiment=params.tracking.experiment,
    )


def attach_review(params: Params, batch: Batch, version) -> str:
    """Review the registered version (`promotion.review`) and log the review to it: markdown, plot, audit table.

    The verdict and where the files are go on the version's tags (`review.*`); returns the verdict.
    """
    from tasks.production.evidence import write_review
    from tasks.production.promotion import review

    result = review(version.version, name=version.name, gates=params.promote)
    folder = layout.batch_audit_dir(batch.batch_id)
    write_review(result, folder)
    uri = registry.log_version_artifacts(version, folder, registry.REVIEW_ARTIFACTS)
    verdict = "promotable" if result.passed else "not promotable"
    evidence = "insufficient" if any(getattr(gate, "insufficient", False) for gate in result.gates) else "sufficient"
    registry.set_version_tags(version.name, str(version.version), {
        REVIEW_TAG: verdict, registry.REVIEW_EVIDENCE_TAG: evidence, "review.artifacts": uri,
    })  # fmt: skip
    return verdict


def forgotten_requests(ledger: Ledger, batches: tuple[str, ...], own: list[str]) -> tuple[str, ...]:
    """The requests of the ledger's `batches`, in ledger order; the batch's own accepted ones last if not recorded."""
    wanted = set(batches)
    found = dict.fromkeys(row.request_id for row in ledger.rows if row.batch_id in wanted)
    found.update(dict.fromkeys(own))
    return tuple(found)


def finish(params: Params, batch: Batch) -> None:
    """Move the batch's accepted requests to done (a no-op for those already there)."""
    inbox_of(params).complete(batch.batch_id, batch.request_ids)
