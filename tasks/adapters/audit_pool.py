"""The audit's reference pool on disk: K models' scores on every sample, who trained on what, the probes.

One folder per pool, `models/audit/<name>/`, versioned with DVC (`tasks.adapters.workspace.dvc_add`):

    pool.npz   scores [K, N] (`unlearn.audit.logit_confidence` of reference k on sample n),
               members [K, N] (reference k trained on sample n), sample_ids [N] (the training
               set's ids, then the test set's), member_probe and nonmember_probe (columns),
               seeds [K]
    pool.json  the manifest: what the pool was built for (model, champion version, recipe,
               pruner, sparsity), its seeds, how many training samples it left out (the
               deletions so far), when, at what cost, and pool.npz's sha256

The reference models themselves are not kept: the scores are all an audit reads, and a model
trained on a half that held a deleted sample would keep that sample in a store (their seeds
rebuild them exactly). The sha256 is recorded on the champion's registry version, and a batch
refuses a pool whose bytes differ (`load_pool`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from tasks.adapters import layout
from tasks.adapters.workspace import file_sha256
from unlearn.audit import AuditError, ReferenceScores

POOL_FILE = "pool.npz"
MANIFEST_FILE = "pool.json"


class PoolTamperedError(AuditError):
    """A reference pool whose bytes differ from the digest recorded when it was built."""


@dataclass(frozen=True)
class PoolManifest:
    """What a pool was built for and how (pool.json)."""

    model: str
    champion_version: str
    references: int
    seed: int
    seeds: list[int]
    pruner: str
    sparsity: float
    train_samples: int  # the champion's training set the halves are drawn from
    excluded_samples: int  # training samples left out: every deletion recorded when it was built
    ledger_rows: int
    ledger_digest: str
    built_at: str
    seconds: float  # wall time of the whole build
    reference_seconds: list[float] = field(default_factory=list)
    sha256: str = ""  # of pool.npz


@dataclass(frozen=True)
class Pool:
    """A loaded pool: the references' scores, the ids of their columns, the probes, the manifest."""

    reference: ReferenceScores
    sample_ids: tuple[str, ...]
    member_probe: np.ndarray
    nonmember_probe: np.ndarray
    manifest: PoolManifest
    folder: Path

    def columns_of(self, sample_ids) -> np.ndarray:
        """The pool's columns of `sample_ids`; an AuditError naming ids the pool never scored."""
        position = {sample_id: column for column, sample_id in enumerate(self.sample_ids)}
        missing = [sample_id for sample_id in sample_ids if sample_id not in position]
        if missing:
            raise AuditError(f"the reference pool {self.folder} has no score of samples {missing[:5]}")
        return np.asarray([position[sample_id] for sample_id in sample_ids], dtype=np.int64)


def pool_dir(name: str) -> Path:
    """`models/audit/<name>/`."""
    return layout.AUDIT_POOLS / name


def save_pool(
    folder: Path,
    reference: ReferenceScores,
    sample_ids: tuple[str, ...],
    member_probe: np.ndarray,
    nonmember_probe: np.ndarray,
    manifest: PoolManifest,
) -> PoolManifest:
    """Write pool.npz and pool.json (with pool.npz's sha256); returns the manifest written."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / POOL_FILE
    with target.open("wb") as handle:
        np.savez(
            handle,
            scores=reference.scores,
            members=reference.members,
            sample_ids=np.asarray(sample_ids, dtype=str),
            member_probe=np.asarray(member_probe, dtype=np.int64),
            nonmember_probe=np.asarray(nonmember_probe, dtype=np.int64),
            seeds=np.asarray(manifest.seeds, dtype=np.int64),
        )
    written = PoolManifest(**{**asdict(manifest), "sha256": file_sha256(target)})
    (folder / MANIFEST_FILE).write_text(json.dumps(asdict(written), indent=2, sort_keys=True) + "\n")
    return written


def load_pool(folder: str | Path, sha256: str | None = None) -> Pool:
    """The pool in `folder`; PoolTamperedError if pool.npz's sha256 is not `sha256` (when given) or the manifest's."""
    folder = Path(folder)
    target, manifest_path = folder / POOL_FILE, folder / MANIFEST_FILE
    if not target.is_file() or not manifest_path.is_file():
        raise AuditError(f"no reference pool at {folder}: build one with `unlearn audit build`")
    manifest = PoolManifest(**json.loads(manifest_path.read_text()))
    actual = file_sha256(target)
    for expected, where in ((sha256, "the registry"), (manifest.sha256, MANIFEST_FILE)):
        if expected and actual != expected:
            raise PoolTamperedError(
                f"reference pool {target} has sha256 {actual[:12]}, but {where} recorded {expected[:12]}: "
                "it changed since it was built; rebuild it with `unlearn audit build`"
            )
    with np.load(target, allow_pickle=False) as stored:
        reference = ReferenceScores(stored["scores"], stored["members"].astype(bool))
        ids = tuple(str(sample_id) for sample_id in stored["sample_ids"])
        member_probe, nonmember_probe = stored["member_probe"], stored["nonmember_probe"]
    if len(ids) != len(reference):
        raise AuditError(f"reference pool {target}: {len(ids)} sample ids for {len(reference)} scored samples")
    return Pool(reference, ids, member_probe, nonmember_probe, manifest, folder)
