"""Per-sample membership audit of an unlearned model: LiRA's likelihood ratio, applied to unlearning.

What is computed. For each audited sample n, K reference models trained with the same recipe
on random halves of a pool give its logit-scaled confidence on the true label,
log(p / (1 - p)) (`logit_confidence`); reference k either trained on n (IN) or did not (OUT).
A Gaussian is fitted to the OUT scores and one to the IN scores of each sample. The candidate
(the unlearned model) is scored the same way and each sample gets:

- `p_out`: P(OUT >= x), the one-sided p-value of the candidate's score x under the OUT
  Gaussian. Small means the candidate is more confident on n than models that never saw n
  are: n "looks seen". `unseen = p_out >= alpha`.
- `log_lr`: log N(x; IN) - log N(x; OUT), LiRA's likelihood ratio (positive: x is more likely
  under models that trained on n); nan where a sample has no IN reference.

This is LiRA (Carlini et al. 2022, "Membership Inference Attacks From First Principles")
with the unlearned model as the target, as in U-LiRA (Hayes et al. 2024, "Inexact Unlearning
Needs More Careful Evaluations to Avoid a False Sense of Privacy").

Why. A sample the candidate has really forgotten should look to it as it looks to models that
never trained on it: its score should be a typical draw of the OUT Gaussian. A population
attack (one threshold for every sample, as `unlearn.metrics`' SVC attack) cannot see this for
a single sample, because some samples are easy (confident under every model) and some hard;
the per-sample OUT distribution calibrates each one.

Assumptions. The references are trained with the same recipe, architecture, pruner and
sparsity as the model audited (its Retrain, not its original), on subsets of the same size;
each audited sample is OUT for about half of them (`half_splits` makes exactly half). With few
references (K < 64 in LiRA) the per-sample variances are noisy: `fixed_variance=True` uses one
variance pooled over all samples, LiRA's "fixed variance" variant; a sample with fewer than 2
scores on one side always falls back to the pooled variance.

How to read the figures. `unseen_share` is the percentage of a batch that looks unseen; for a
model that truly never saw the batch it is about 100 * (1 - alpha). Whether a low share means
"not forgotten", and a high one "forgotten", depends on the audit's power on this model and
data: `audit_power` audits samples known to be members (trained on) against known non-members.
Its true positive rate is the share of members flagged seen, its false positive rate the share
of non-members flagged seen (about alpha by construction), `power` their difference and `auc`
how well the OUT p-value separates the two (`auc_log_lr` the same for the likelihood ratio).
Power near 0 (AUC near 0.5) means the audit cannot tell members from non-members here, so an
"unseen" verdict means nothing; a model that generalises well leaks little and gives low power.

Typical use:

    splits = half_splits(len(pool), count=K, seed=0)
    models = [train(pool.subset(np.flatnonzero(split))) for split in splits]
    reference = reference_scores(models, pool, splits, device)
    audit = audit_samples(logit_confidence(candidate, pool, device), reference, alpha=0.05)
    unseen_share(audit.rows(batch_columns))
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from scipy.stats import beta, norm
from sklearn.metrics import roc_auc_score
from torch import nn

from unlearn.data import TensorSet
from unlearn.errors import UnlearnError
from unlearn.train import predict

# Floor on every fitted standard deviation, in logit units: identical scores still give a Gaussian.
MIN_STD = 1e-3


class AuditError(UnlearnError, ValueError):
    """Reference scores, splits or candidate scores that a membership audit cannot use."""


@torch.no_grad()
def logit_confidence(model: nn.Module, data: TensorSet, device: torch.device, batch_size: int = 512) -> np.ndarray:
    """log(p / (1 - p)) of each sample's true label, as logit_y - logsumexp(other logits); float64 (N,).

    Eval mode, no grad, via `unlearn.train.predict` (bf16 autocast on CUDA). Non-finite logits
    become finite first, as in `unlearn.metrics.posteriors`.
    """
    logits = predict(model, data, device, batch_size).double()
    if len(data) == 0:
        return np.empty(0, dtype=np.float64)
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise AuditError(f"logit confidence needs logits of shape (N, classes >= 2), got {tuple(logits.shape)}")
    bound = float(torch.finfo(torch.float32).max)
    logits = torch.nan_to_num(logits, nan=0.0, posinf=bound, neginf=-bound)
    labels = data.labels.cpu().long()
    true = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.scatter(1, labels[:, None], -math.inf)
    return (true - torch.logsumexp(others, dim=1)).numpy()


@dataclass(frozen=True)
class ReferenceScores:
    """Scores of K reference models on N samples, and which reference trained on which sample.

    Attributes:
        scores: float [K, N], `logit_confidence` of reference k on sample n.
        members: bool [K, N], True where reference k was trained on sample n (IN).
    """

    scores: np.ndarray
    members: np.ndarray

    def __post_init__(self) -> None:
        scores, members = np.asarray(self.scores), np.asarray(self.members)
        if scores.ndim != 2 or scores.shape[0] < 1:
            raise AuditError(f"reference scores must be a [K >= 1, N] matrix, got shape {scores.shape}")
        if members.shape != scores.shape:
            raise AuditError(f"reference members {members.shape} and scores {scores.shape} must have one shape")
        if members.dtype != np.bool_:
            raise AuditError(f"reference members must be a bool matrix, got dtype {members.dtype}")
        if not np.issubdtype(scores.dtype, np.floating) or not np.isfinite(scores).all():
            raise AuditError(f"reference scores must be finite floats, got dtype {scores.dtype}")
        object.__setattr__(self, "scores", scores.astype(np.float64))
        object.__setattr__(self, "members", members)

    @property
    def references(self) -> int:
        """K, the number of reference models."""
        return self.scores.shape[0]

    def __len__(self) -> int:
        return self.scores.shape[1]

    def columns(self, indices: Sequence[int] | np.ndarray) -> ReferenceScores:
        """The samples at `indices`, in that order."""
        index = np.asarray(indices, dtype=np.int64)
        return ReferenceScores(self.scores[:, index], self.members[:, index])


def half_splits(n_samples: int, count: int, seed: int) -> np.ndarray:
    """bool [count, n_samples]: each sample IN for exactly count / 2 references, chosen at random (LiRA)."""
    if count < 2 or count % 2:
        raise AuditError(f"the number of references must be even and at least 2, got {count}")
    if n_samples < 0:
        raise AuditError(f"the number of samples must be non-negative, got {n_samples}")
    ranks = np.random.default_rng(seed).random((count, n_samples)).argsort(axis=0)
    return ranks < count // 2


def reference_scores(
    models: Sequence[nn.Module], data: TensorSet, members: np.ndarray, device: torch.device
) -> ReferenceScores:
    """`logit_confidence` of each reference model on `data`, with `members` [K, len(data)] (who trained on what)."""
    if len(models) == 0:
        raise AuditError("a reference pool needs at least one model")
    scores = np.stack([logit_confidence(model, data, device) for model in models])
    return ReferenceScores(scores, np.asarray(members))


@dataclass(frozen=True)
class SampleAudit:
    """The audit of one candidate model, one entry per sample; every array has shape (N,).

    Attributes:
        candidate: the candidate's logit confidence x.
        out_mean, out_std: the Gaussian fitted to the OUT references' scores.
        in_mean, in_std: the Gaussian fitted to the IN references' scores (nan without IN).
        z_out: (x - out_mean) / out_std; p_out falls as it rises.
        p_out: P(OUT >= x): small means the candidate is more confident than unseen models.
        log_lr: log N(x; IN) - log N(x; OUT); nan where there is no IN Gaussian.
        unseen: p_out >= alpha: the sample looks as it does to models that never saw it.
        alpha: the significance level of `unseen`.
    """

    candidate: np.ndarray
    out_mean: np.ndarray
    out_std: np.ndarray
    in_mean: np.ndarray
    in_std: np.ndarray
    z_out: np.ndarray
    p_out: np.ndarray
    log_lr: np.ndarray
    unseen: np.ndarray
    alpha: float

    def __len__(self) -> int:
        return len(self.candidate)

    def rows(self, indices: Sequence[int] | np.ndarray) -> SampleAudit:
        """The samples at `indices`, in that order (e.g. one deletion batch of an audited pool)."""
        index = np.asarray(indices, dtype=np.int64)
        arrays = {name: getattr(self, name)[index] for name in _ARRAYS}
        return SampleAudit(**arrays, alpha=self.alpha)


_ARRAYS = ("candidate", "out_mean", "out_std", "in_mean", "in_std", "z_out", "p_out", "log_lr", "unseen")


def _pooled_variance(scores: np.ndarray, chosen: np.ndarray, mean: np.ndarray) -> tuple[np.ndarray, float]:
    """Per-sample unbiased variances of the chosen scores (nan under 2) and their pooled variance."""
    count = chosen.sum(axis=0)
    squares = np.where(chosen, scores - np.nan_to_num(mean), 0.0) ** 2
    sums = squares.sum(axis=0)
    own = count >= 2
    per_sample = np.full(len(count), np.nan)
    per_sample[own] = sums[own] / (count[own] - 1)
    pooled = float(sums[own].sum() / (count[own] - 1).sum()) if own.any() else math.nan
    return per_sample, pooled


def _gaussians(
    scores: np.ndarray, chosen: np.ndarray, fixed_variance: bool, min_std: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample (mean, std) of the chosen scores; nan mean without scores, pooled variance under 2."""
    count = chosen.sum(axis=0)
    totals = np.where(chosen, scores, 0.0).sum(axis=0)
    mean = np.full(len(count), np.nan)
    mean[count > 0] = totals[count > 0] / count[count > 0]
    per_sample, pooled = _pooled_variance(scores, chosen, mean)
    variance = np.full(len(count), pooled) if fixed_variance else np.where(count >= 2, per_sample, pooled)
    std = np.maximum(np.sqrt(variance), min_std)  # nan (no pooled variance) stays nan
    std[count == 0] = np.nan
    return mean, std


def _log_normal(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """log N(x; mean, std) without the constant -log(2 pi) / 2, which cancels in a ratio."""
    return -0.5 * ((x - mean) / std) ** 2 - np.log(std)


def audit_samples(
    candidate: np.ndarray,
    reference: ReferenceScores,
    *,
    alpha: float,
    fixed_variance: bool = False,
    min_std: float = MIN_STD,
) -> SampleAudit:
    """Audit the candidate's logit confidences (N,) against the reference pool's Gaussians, sample by sample.

    Args:
        alpha: significance level: a sample with p_out < alpha looks seen.
        fixed_variance: one variance per side pooled over every sample (LiRA's variant for few references).
        min_std: floor on every fitted standard deviation.
    """
    x = np.asarray(candidate)
    if x.shape != (len(reference),):
        raise AuditError(f"candidate scores must have shape ({len(reference)},) as the references, got {x.shape}")
    if not np.issubdtype(x.dtype, np.floating) or not np.isfinite(x).all():
        raise AuditError(f"candidate scores must be finite floats, got dtype {x.dtype}")
    if not 0 < alpha < 1:
        raise AuditError(f"alpha must lie in (0, 1), got {alpha}")
    if min_std <= 0:
        raise AuditError(f"min_std must be positive, got {min_std}")
    outside = ~reference.members
    lacking = np.flatnonzero(outside.sum(axis=0) == 0)
    if len(lacking):
        raise AuditError(f"samples {lacking[:10].tolist()} have no OUT reference: every reference trained on them")
    x = x.astype(np.float64)
    out_mean, out_std = _gaussians(reference.scores, outside, fixed_variance, min_std)
    if np.isnan(out_std).any():
        raise AuditError("no sample has 2 OUT references, so no OUT variance can be fitted: use 4 or more references")
    in_mean, in_std = _gaussians(reference.scores, reference.members, fixed_variance, min_std)
    z_out = (x - out_mean) / out_std
    p_out = norm.sf(z_out)
    log_lr = _log_normal(x, in_mean, in_std) - _log_normal(x, out_mean, out_std)
    return SampleAudit(x, out_mean, out_std, in_mean, in_std, z_out, p_out, log_lr, p_out >= alpha, float(alpha))


def unseen_share(audit: SampleAudit) -> float:
    """Percent of the audited samples that look unseen (about 100 * (1 - alpha) for a model that never saw them)."""
    if len(audit) == 0:
        raise AuditError("the audit holds no sample: an unseen share needs at least one")
    return 100.0 * float(np.mean(audit.unseen))


@dataclass(frozen=True)
class Power:
    """How well the audit tells members from non-members; rates and AUCs are fractions in [0, 1].

    Attributes:
        tpr: share of member samples flagged seen (p_out < alpha).
        fpr: share of non-member samples flagged seen (about alpha by construction).
        power: tpr - fpr; near 0 means an "unseen" verdict carries no information.
        auc: ROC AUC of -p_out (computed on z_out, which ranks alike without underflow), members positive.
        auc_log_lr: ROC AUC of log_lr; nan unless every probe sample has an IN Gaussian.
        alpha: the significance level both audits used.
        members, non_members: the number of probe samples of each kind.
    """

    tpr: float
    fpr: float
    power: float
    auc: float
    auc_log_lr: float
    alpha: float
    members: int
    non_members: int

    def as_dict(self) -> dict[str, float]:
        """Flat {name: value} for tracking."""
        return {name: float(getattr(self, name)) for name in self.__dataclass_fields__}


def audit_power(member_audit: SampleAudit, nonmember_audit: SampleAudit) -> Power:
    """TPR, FPR, power and AUC of the audit on probe samples known to be members vs known non-members."""
    if len(member_audit) == 0 or len(nonmember_audit) == 0:
        raise AuditError(
            f"audit power needs member and non-member probes, got {len(member_audit)} and {len(nonmember_audit)}"
        )
    if member_audit.alpha != nonmember_audit.alpha:
        raise AuditError(f"the two audits used different alphas: {member_audit.alpha} and {nonmember_audit.alpha}")
    labels = np.concatenate([np.ones(len(member_audit)), np.zeros(len(nonmember_audit))])
    log_lr = np.concatenate([member_audit.log_lr, nonmember_audit.log_lr])
    tpr = 1.0 - float(np.mean(member_audit.unseen))
    fpr = 1.0 - float(np.mean(nonmember_audit.unseen))
    return Power(
        tpr=tpr,
        fpr=fpr,
        power=tpr - fpr,
        auc=float(roc_auc_score(labels, np.concatenate([member_audit.z_out, nonmember_audit.z_out]))),
        auc_log_lr=float(roc_auc_score(labels, log_lr)) if np.isfinite(log_lr).all() else math.nan,
        alpha=member_audit.alpha,
        members=len(member_audit),
        non_members=len(nonmember_audit),
    )


def binomial_interval(successes: int, trials: int, confidence: float) -> tuple[float, float]:
    """Clopper-Pearson (exact) two-sided interval of a binomial rate, as fractions in [0, 1].

    It never undercovers, which matters for the few samples of a deletion batch: 0 errors out of
    3 gives [0, 0.71] at 95%, so three samples can neither prove nor refute a 3% error rate.
    """
    if trials < 1 or not 0 <= successes <= trials:
        raise AuditError(f"a binomial interval needs 0 <= successes <= trials, trials >= 1; got {successes}/{trials}")
    if not 0 < confidence < 1:
        raise AuditError(f"confidence must lie in (0, 1), got {confidence}")
    tail = (1 - confidence) / 2
    low = 0.0 if successes == 0 else float(beta.ppf(tail, successes, trials - successes + 1))
    high = 1.0 if successes == trials else float(beta.ppf(1 - tail, successes + 1, trials - successes))
    return low, high


@dataclass(frozen=True)
class AuditFigures:
    """What the audit of one batch measured under a candidate: the figures a review judges.

    Shares are percentages of samples that look unseen (`SampleAudit.unseen`).

    Attributes:
        samples, unseen: the batch's audited samples and how many of them look unseen.
        unseen_share: 100 * unseen / samples.
        champion_unseen_share: the same share under the champion, before unlearning.
        member_unseen_share: under the candidate, the share of a fixed probe of training samples
            never deleted (members: it trained on them); what a candidate that forgot nothing
            would show on the batch.
        nonmember_unseen_share: under the candidate, the share of a probe of test samples
            (non-members); what a candidate that truly never saw the batch would show.
        power: the probes' TPR - FPR (`Power.power`); auc: their ROC AUC (`Power.auc`).
        alpha: the significance level of every `unseen` flag; references: K.
    """

    samples: int
    unseen: int
    unseen_share: float
    champion_unseen_share: float
    member_unseen_share: float
    nonmember_unseen_share: float
    power: float
    auc: float
    alpha: float
    references: int

    def __post_init__(self) -> None:
        if self.samples < 1 or not 0 <= self.unseen <= self.samples:
            raise AuditError(
                f"audit figures need 0 <= unseen <= samples, samples >= 1; got {self.unseen}/{self.samples}"
            )

    def as_dict(self) -> dict[str, float]:
        """Flat {name: value}, e.g. for version tags (`AuditFigures.from_dict` reads them back)."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, values: Mapping[str, float | str]) -> AuditFigures:
        """The figures from `as_dict`'s names (values may be strings, as tags are); AuditError if incomplete."""
        missing = [name for name in cls.__dataclass_fields__ if name not in values]
        if missing:
            raise AuditError(f"audit figures lack {', '.join(missing)}")
        counts = ("samples", "unseen", "references")
        return cls(**{name: (int if name in counts else float)(values[name]) for name in cls.__dataclass_fields__})


def calibrate(audit: SampleAudit, null: SampleAudit) -> SampleAudit:
    """`audit` with p-values against an empirical null: `null`, the same model's audit of samples it never saw.

    Why. The Gaussians say how references score a sample; a model trained on more data than a
    reference (the champion trains on the whole training set, a reference on half) is more
    confident on every sample, seen or not, so against the Gaussians alone even test samples
    look seen. Samples the model never saw (held-out test samples, audited against the same pool)
    show what "unseen" looks like for this model: a sample's p-value becomes the share of those
    whose z_out is at least its own, (1 + #{z_null >= z}) / (1 + len(null)), and `unseen` is
    p >= alpha again. Each model is calibrated with its own null; the probes that measure the
    audit's power must be other samples than the null's.
    """
    if len(null) == 0:
        raise AuditError("an empirical null needs at least one never-seen sample")
    if null.alpha != audit.alpha:
        raise AuditError(f"the audit and its null used different alphas: {audit.alpha} and {null.alpha}")
    ordered = np.sort(null.z_out)
    at_least = len(ordered) - np.searchsorted(ordered, audit.z_out, side="left")
    p_out = (1.0 + at_least) / (1.0 + len(ordered))
    return replace(audit, p_out=p_out, unseen=p_out >= audit.alpha)
