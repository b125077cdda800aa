"""The membership audit in production: a champion's reference pool, built once; every batch audited against it.

The maths is `unlearn.audit` (LiRA's per-sample Gaussians). Here:

- **The pool** (`plan_pool`, `train_reference`, `save_built_pool`; the `audit-pool` flow fans
  the references out through the study's task runner). K reference models, each a Retrain:
  the champion's architecture and masks (so its pruner and sparsity), a fresh initialisation,
  the champion's recipe (`method_config(params, "retrain")`), trained on a seeded half of the
  champion's training set (the training set without every deletion recorded so far). Every
  training sample is IN for exactly K/2 of them and OUT for the rest; test samples are OUT for
  all. Only their scores on every training and test sample are kept
  (`tasks.adapters.audit_pool`), versioned with DVC and recorded on the champion's registry
  version (`POOL_*` tags), which every version made from it inherits.
- **Keeping it valid.** A reference trained with the samples deleted since the pool was built,
  so as deletions accumulate its halves drift from the data the champion now stands for. The
  pool is *stale* once the share of its training samples deleted since it was built reaches
  `audit.rebuild_deleted_share`: the batch still audits against it and the review says so, and
  `unlearn audit build --if-stale` (the `audit-pool` deployment, on a schedule) rebuilds it on
  the current training set for the current champion.
- **The audit of a batch** (`audit_candidate`), on the batch's samples: the candidate's
  and the champion's logit confidences against each sample's OUT and IN Gaussians, each model's
  p-values calibrated on its own empirical null (the test samples outside the non-member probe,
  `unlearn.audit.calibrate`: the champion learnt from twice a reference's data, so it is more
  confident than the references on every sample), and under the candidate two fixed probes
  chosen when the pool was built, training samples never deleted (members) and test samples
  (non-members), whose shares give the audit's power. A batch trains nothing for the audit: it
  scores a few small sets with two models.
"""

from __future__ import annotations

import csv
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from tasks.adapters import registry
from tasks.adapters.audit_pool import Pool, PoolManifest, load_pool, pool_dir, save_pool
from tasks.adapters.params import Params, method_config
from tasks.adapters.workspace import bundle, device, dvc_add, load_model, preset, training_rows
from unlearn.audit import (
    AuditError,
    AuditFigures,
    Power,
    ReferenceScores,
    SampleAudit,
    audit_power,
    audit_samples,
    calibrate,
    half_splits,
    logit_confidence,
    unseen_share,
)
from unlearn.data import DataBundle, TensorSet, concatenate
from unlearn.methods import run_method

log = logging.getLogger(__name__)

# Registry tags of the pool a version is audited against (set on the champion by a build, copied
# onto every version a batch makes from it).
POOL_PATH_TAG = "audit_pool.path"
POOL_SHA_TAG = "audit_pool.sha256"
POOL_REFERENCES_TAG = "audit_pool.references"
POOL_SEED_TAG = "audit_pool.seed"
POOL_SEEDS_TAG = "audit_pool.seeds"  # every reference's seed, comma-separated
POOL_BUILT_TAG = "audit_pool.built_at"
POOL_EXCLUDED_TAG = "audit_pool.excluded_samples"
POOL_DVC_TAG = "audit_pool.dvc_md5"
POOL_TAGS = (POOL_PATH_TAG, POOL_SHA_TAG, POOL_REFERENCES_TAG, POOL_SEED_TAG, POOL_SEEDS_TAG, POOL_BUILT_TAG,
             POOL_EXCLUDED_TAG, POOL_DVC_TAG)  # fmt: skip
# Reference k of audit seed s trains with seed BASE + 1000 s + k: never a training seed's (train.seeds,
# deletion.seed), so no reference shares the champion's initialisation.
REFERENCE_SEED_BASE = 100_000
AUDIT_TABLE = registry.AUDIT_TABLE  # the per-sample rows, logged with the review


def reference_count(params: Params) -> int:
    """K: `audit.references`, else the preset's."""
    return params.audit.references or preset(params).audit_references


def scored_samples(data: DataBundle) -> TensorSet:
    """Every sample a pool scores: the training set, then the test set (ids must not repeat)."""
    ids = data.train.ids + data.test.ids
    if len(set(ids)) != len(ids):
        raise AuditError("the training and test sets share sample ids: the audit cannot tell them apart")
    return concatenate(data.train, data.test)


@dataclass(frozen=True)
class PoolPlan:
    """What the references of one pool train on: everything a `train_reference` task needs (picklable)."""

    name: str
    model: str
    champion_version: str
    checkpoint: Path
    train_rows: tuple[int, ...]  # rows of the training set the halves are drawn from
    splits: np.ndarray  # bool [K, len(train_rows)]: reference k trains on train_rows[splits[k]]
    seeds: tuple[int, ...]
    member_probe: np.ndarray  # pool columns (training rows) of the member probe
    nonmember_probe: np.ndarray  # pool columns (len(train) + test rows) of the non-member probe
    ledger_rows: int
    ledger_digest: str
    excluded: int


def plan_pool(params: Params, version: str | None = None) -> PoolPlan:
    """The pool of the champion (or `version`): its verified checkpoint, its training set, the halves, the probes."""
    from tasks.production import deletion

    ledger = deletion.verify_state(params)
    name = deletion.model_name(params)
    target = registry.get_version(name, version) if version else deletion.champion_version(params)
    checkpoint = registry.verify_checkpoint(target, registry.checkpoint_path(target))
    data = bundle()
    rows = training_rows(data, sorted(ledger.deleted_ids()))
    count, seed = reference_count(params), params.audit.seed
    rng = np.random.default_rng([seed, 1])
    probe = params.audit.probe_size
    members = np.sort(rng.choice(rows, size=min(probe, len(rows)), replace=False))
    # The other half of the test set at least is the audit's empirical null (`unlearn.audit.calibrate`).
    probed = min(probe, len(data.test) // 2)
    nonmembers = len(data.train) + np.sort(rng.choice(len(data.test), size=probed, replace=False))
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    return PoolPlan(
        name=f"v{target.version}-{stamp}",
        model=name,
        champion_version=str(target.version),
        checkpoint=Path(checkpoint),
        train_rows=tuple(rows),
        splits=half_splits(len(rows), count, seed),
        seeds=tuple(REFERENCE_SEED_BASE + seed * 1_000 + k for k in range(count)),
        member_probe=members.astype(np.int64),
        nonmember_probe=nonmembers.astype(np.int64),
        ledger_rows=len(ledger.rows),
        ledger_digest=ledger.digest(),
        excluded=len(data.train) - len(rows),
    )


def train_reference(params: Params, plan: PoolPlan, index: int) -> tuple[np.ndarray, float]:
    """Reference `index`: Retrain with the champion's masks on its half; its scores on every sample, and seconds."""
    data, chosen = bundle(), device()
    model, checkpoint = load_model(plan.checkpoint)
    half = data.train.subset([plan.train_rows[i] for i in np.flatnonzero(plan.splits[index])])
    config = method_config(params, "retrain", seed=plan.seeds[index])
    result = run_method("retrain", model, half, data.train.subset([]), chosen, masks=checkpoint.masks, config=config)
    return logit_confidence(result.model, scored_samples(data), chosen), result.seconds


def save_built_pool(
    params: Params, plan: PoolPlan, scored: list[tuple[np.ndarray, float]], seconds: float
) -> PoolManifest:
    """Write the pool, version it with DVC, record it on the champion's version; returns its manifest."""
    data = bundle()
    columns = len(data.train) + len(data.test)
    members = np.zeros((len(plan.seeds), columns), dtype=bool)
    members[:, list(plan.train_rows)] = plan.splits
    reference = ReferenceScores(np.stack([scores for scores, _ in scored]), members)
    manifest = PoolManifest(
        model=plan.model,
        champion_version=plan.champion_version,
        references=len(plan.seeds),
        seed=params.audit.seed,
        seeds=list(plan.seeds),
        pruner=params.prune.method,
        sparsity=params.deletion.sparsity,
        train_samples=len(plan.train_rows),
        excluded_samples=plan.excluded,
        ledger_rows=plan.ledger_rows,
        ledger_digest=plan.ledger_digest,
        built_at=datetime.now(UTC).isoformat(timespec="seconds"),
        seconds=round(seconds, 3),
        reference_seconds=[round(s, 3) for _, s in scored],
    )
    folder = pool_dir(plan.name)
    written = save_pool(folder, reference, scored_samples(data).ids, plan.member_probe, plan.nonmember_probe, manifest)
    digests = dvc_add([folder], params.deletion.dvc_push)
    tags = {
        POOL_PATH_TAG: str(folder),
        POOL_SHA_TAG: written.sha256,
        POOL_REFERENCES_TAG: str(written.references),
        POOL_SEED_TAG: str(written.seed),
        POOL_SEEDS_TAG: ",".join(str(seed) for seed in written.seeds),
        POOL_BUILT_TAG: written.built_at,
        POOL_EXCLUDED_TAG: str(written.excluded_samples),
        POOL_DVC_TAG: next(iter(digests.values()), ""),
    }
    registry.set_version_tags(plan.model, plan.champion_version, tags)
    log.info("reference pool %s: %d references in %.1f s, recorded on %s v%s", folder, written.references,
             seconds, plan.model, plan.champion_version)  # fmt: skip
    return written


def build_pool_serially(params: Params, version: str | None = None) -> PoolManifest:
    """The whole build in this process, one reference after another (the flow fans them out instead)."""
    started = time.perf_counter()
    plan = plan_pool(params, version)
    scored = [train_reference(params, plan, index) for index in range(len(plan.seeds))]
    return save_built_pool(params, plan, scored, time.perf_counter() - started)


# --- which pool a version is audited against, and is it still valid -------------------------


def pool_tags(version) -> dict[str, str]:
    """The pool tags of a registry version ({} if it has none)."""
    return {key: version.tags[key] for key in POOL_TAGS if key in version.tags}


def pool_of(version) -> Pool | None:
    """The pool recorded on `version`, checked against its recorded sha256; None where none is recorded."""
    tags = pool_tags(version)
    if POOL_PATH_TAG not in tags:
        return None
    return load_pool(tags[POOL_PATH_TAG], tags.get(POOL_SHA_TAG))


def deleted_share(pool: Pool, deleted_ids: set[str]) -> float:
    """The share of the pool's training samples (IN for some reference) deleted since it was built."""
    trained = pool.reference.members.any(axis=0)
    ids = [sample_id for sample_id, used in zip(pool.sample_ids, trained, strict=True) if used]
    return sum(sample_id in deleted_ids for sample_id in ids) / max(1, len(ids))


def is_stale(params: Params, version, deleted_ids: set[str]) -> bool:
    """True where `version` has no pool, or its pool's deleted share has reached `audit.rebuild_deleted_share`."""
    try:
        pool = pool_of(version)
    except AuditError:
        return True
    return pool is None or deleted_share(pool, deleted_ids) >= params.audit.rebuild_deleted_share


# --- the audit of a batch -------------------------------------------------------------------


@dataclass(frozen=True)
class BatchAudit:
    """The audit of one batch's candidate: its figures, per-sample rows, the probes' power, the pool used."""

    figures: AuditFigures
    samples: SampleAudit  # the batch's samples under the candidate
    champion: SampleAudit  # the same samples under the champion
    sample_ids: tuple[str, ...]
    power: Power
    pool: Pool
    deleted_share: float
    stale: bool

    def tags(self) -> dict[str, str]:
        """Version tags: the figures (`audit.*`, read back by the review), the pool used and its state."""
        figures = {f"audit.{name}": repr(value) for name, value in self.figures.as_dict().items()}
        pool = {POOL_PATH_TAG: str(self.pool.folder), POOL_SHA_TAG: self.pool.manifest.sha256}
        state = {"audit_pool.deleted_share": f"{self.deleted_share:.4f}", "audit_pool.stale": str(self.stale).lower()}
        return {**figures, **pool, **state, "audit.tpr": repr(self.power.tpr), "audit.fpr": repr(self.power.fpr)}

    def rows(self) -> list[dict[str, object]]:
        """One row per batch sample: the candidate's and champion's scores, the Gaussians, p-values, verdicts."""
        a, c = self.samples, self.champion
        return [
            {
                "sample_id": sample_id,
                "candidate": float(a.candidate[i]),
                "champion": float(c.candidate[i]),
                "out_mean": float(a.out_mean[i]),
                "out_std": float(a.out_std[i]),
                "in_mean": float(a.in_mean[i]),
                "in_std": float(a.in_std[i]),
                "p_out": float(a.p_out[i]),
                "log_lr": float(a.log_lr[i]),
                "unseen": bool(a.unseen[i]),
                "champion_p_out": float(c.p_out[i]),
                "champion_unseen": bool(c.unseen[i]),
            }
            for i, sample_id in enumerate(self.sample_ids)
        ]

    def save(self, folder: Path) -> Path:
        """The per-sample rows as `audit.csv` in `folder`."""
        folder.mkdir(parents=True, exist_ok=True)
        rows = self.rows()
        path = folder / AUDIT_TABLE
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        return path


def _set_of(data: DataBundle, columns: np.ndarray) -> TensorSet:
    """The samples at pool columns (training rows, then len(train) + test rows)."""
    n_train = len(data.train)
    train = data.train.subset([int(c) for c in columns if c < n_train])
    test = data.test.subset([int(c) - n_train for c in columns if c >= n_train])
    return concatenate(train, test)


def audit_candidate(
    params: Params,
    data: DataBundle,
    pool: Pool,
    batch_ids: tuple[str, ...],
    candidate: torch.nn.Module,
    champion: torch.nn.Module,
    deleted_ids: set[str],
) -> BatchAudit:
    """Audit the candidate (and the champion before it) on the batch's samples against the pool.

    Args:
        batch_ids: the samples the candidate should have forgotten (this batch's).
        deleted_ids: every sample deleted so far: they leave the member probe.
    """
    if pool.sample_ids != scored_samples(data).ids:
        raise AuditError(
            f"the reference pool {pool.folder} scored another data set: rebuild it with `unlearn audit build`"
        )
    settings, chosen = params.audit, device()
    batch = pool.columns_of(batch_ids)
    members = np.asarray([c for c in pool.member_probe if pool.sample_ids[c] not in deleted_ids], dtype=np.int64)
    nonmembers = pool.nonmember_probe
    if len(members) == 0:
        raise AuditError("every sample of the member probe was deleted: rebuild the pool with `unlearn audit build`")

    null = np.setdiff1d(np.arange(len(data.train), len(pool.sample_ids)), nonmembers)
    if len(null) == 0:
        raise AuditError(f"the reference pool {pool.folder} leaves no test sample for the empirical null")

    def raw(model: torch.nn.Module, columns: np.ndarray) -> SampleAudit:
        scores = logit_confidence(model, _set_of(data, columns), chosen)
        reference = pool.reference.columns(columns)
        return audit_samples(scores, reference, alpha=settings.alpha, fixed_variance=settings.fixed_variance)

    candidate_null, champion_null = raw(candidate, null), raw(champion, null)
    ours, theirs = calibrate(raw(candidate, batch), candidate_null), calibrate(raw(champion, batch), champion_null)
    probes = calibrate(raw(candidate, members), candidate_null), calibrate(raw(candidate, nonmembers), candidate_null)
    power = audit_power(*probes)
    figures = AuditFigures(
        samples=len(ours),
        unseen=int(ours.unseen.sum()),
        unseen_share=unseen_share(ours),
        champion_unseen_share=unseen_share(theirs),
        member_unseen_share=100.0 * (1.0 - power.tpr),
        nonmember_unseen_share=100.0 * (1.0 - power.fpr),
        power=power.power,
        auc=power.auc,
        alpha=settings.alpha,
        references=pool.reference.references,
    )
    share = deleted_share(pool, deleted_ids)
    stale = share >= settings.rebuild_deleted_share
    if stale:
        rebuild = 100 * settings.rebuild_deleted_share
        log.warning("reference pool %s is stale: %.1f%% of its training samples are deleted (rebuild at %.1f%%): "
                    "run `unlearn audit build`", pool.folder, 100 * share, rebuild)  # fmt: skip
    return BatchAudit(figures, ours, theirs, tuple(batch_ids), power, pool, share, stale)
