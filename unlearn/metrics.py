"""The paper's metrics: UA, RA, TA, MIA-efficacy, RTE, sparsity and the average gap to Retrain.

All accuracies and MIA scores are percentages. The membership
inference attack (MIA) follows the official `evaluation/SVC_MIA.py`: one RBF support
vector classifier per attack feature, fitted on shadow members (the first |test| retain
samples) against shadow non-members (the test set), then applied to the target set.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.svm import SVC
from torch import nn

from unlearn.data import TensorSet
from unlearn.errors import ConfigError
from unlearn.masks import sparsity
from unlearn.train import predict

# The attack features of the official code, in its order; "confidence" is the reported one.
MIA_FEATURES = ("correctness", "confidence", "entropy", "modified_entropy", "probabilities")
HEADLINE_FEATURE = "confidence"
# The four metrics whose mean |difference| to Retrain is the paper's "Disparity Ave.".
GAP_METRICS = ("UA", "MIA_efficacy", "RA", "TA")
# The headline metrics, in the order every table, review and summary shows them: those four, then RTE.
HEADLINE_METRICS = (*GAP_METRICS, "RTE_seconds")
# How much was forgotten: what the study's plots and figures draw against sparsity.
FORGETTING_METRICS = ("UA", "MIA_efficacy")
# Keeps log() finite at probability 0 or 1, as the official code's 1e-30 floor does.
EPSILON = 1e-30


@dataclass(frozen=True)
class Posteriors:
    """Softmax probabilities (N, C) of a model on a set, with that set's true labels (N,)."""

    probabilities: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def rows(self, start: int, stop: int | None = None) -> Posteriors:
        """Rows `start` to `stop` (exclusive), in order."""
        return Posteriors(self.probabilities[start:stop], self.labels[start:stop])


def posteriors(model: nn.Module, data: TensorSet, device: torch.device) -> Posteriors:
    """Eval-mode softmax probabilities of `model` on `data`, in float64 on the CPU.

    Non-finite logits (a diverged model) become finite first (NaN -> 0, +-inf -> +-float32
    max), so every metric and attack still runs and reports the model as it behaves.
    """
    logits = predict(model, data, device).double()
    bound = float(torch.finfo(torch.float32).max)
    logits = torch.nan_to_num(logits, nan=0.0, posinf=bound, neginf=-bound)
    probabilities = torch.softmax(logits, dim=1).numpy()
    return Posteriors(probabilities, data.labels.cpu().numpy().astype(np.int64))


def accuracy_percent(outputs: Posteriors) -> float:
    """Top-1 accuracy in percent (0 for an empty set, as `unlearn.train.accuracy`)."""
    if len(outputs) == 0:
        return 0.0
    return 100.0 * float(np.mean(outputs.probabilities.argmax(1) == outputs.labels))


def true_label_confidence(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """p(y|x): each row's probability of its true label, shape (N,)."""
    return probabilities[np.arange(len(labels)), labels]


def entropy(probabilities: np.ndarray) -> np.ndarray:
    """Shannon entropy -sum_i p_i log p_i of each row, shape (N,)."""
    return -np.sum(probabilities * np.log(np.maximum(probabilities, EPSILON)), axis=1)


def modified_entropy(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Song & Mittal's modified entropy -(1-p_y) log p_y - sum_{i!=y} p_i log(1-p_i), shape (N,).

    The official code's `m_entropy` is buggy: it takes log p where log(1-p) is meant and
    indexes whole label columns of the batch instead of each row's own label. This is the
    published formula, computed row by row.
    """
    rows = np.arange(len(labels))
    confidence = probabilities[rows, labels]
    others = probabilities * np.log(np.maximum(1.0 - probabilities, EPSILON))
    others[rows, labels] = 0.0
    return -(1.0 - confidence) * np.log(np.maximum(confidence, EPSILON)) - others.sum(axis=1)


def attack_features(outputs: Posteriors, names: Sequence[str] = MIA_FEATURES) -> dict[str, np.ndarray]:
    """The MIA features of each row: {name: array (N, d)}; d = C for "probabilities", else 1."""
    probabilities, labels = outputs.probabilities, outputs.labels
    makers: dict[str, Callable[[], np.ndarray]] = {
        "correctness": lambda: (probabilities.argmax(1) == labels).astype(np.float64),
        "confidence": lambda: true_label_confidence(probabilities, labels),
        "entropy": lambda: entropy(probabilities),
        "modified_entropy": lambda: modified_entropy(probabilities, labels),
        "probabilities": lambda: probabilities,
    }
    unknown = [name for name in names if name not in makers]
    if unknown:
        raise ConfigError(f"unknown MIA features {unknown}; known: {', '.join(MIA_FEATURES)}")
    columns = {name: makers[name]() for name in names}
    return {name: values[:, None] if values.ndim == 1 else values for name, values in columns.items()}


def fit_attack(members: np.ndarray, non_members: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """Fit the official attack, SVC(C=3, rbf, gamma='auto'), members 1 vs non-members 0.

    Returns a predictor of 0/1 labels. A shadow set holding only one of the two kinds
    cannot fit an SVC; the attacker has then only ever seen that kind and predicts it for
    every sample (e.g. members only -> everything is a member -> MIA-efficacy 0).
    """
    if len(members) == 0 and len(non_members) == 0:
        raise ConfigError("the MIA shadow set is empty: it needs retain or test samples")
    if len(members) == 0 or len(non_members) == 0:
        constant = 1 if len(members) else 0
        return lambda features: np.full(len(features), constant, dtype=np.int64)
    features = np.concatenate([members, non_members])
    membership = np.concatenate([np.ones(len(members)), np.zeros(len(non_members))]).astype(np.int64)
    classifier = SVC(C=3, kernel="rbf", gamma="auto").fit(features, membership)
    return classifier.predict


def svc_mia(
    shadow_members: Posteriors,
    shadow_non_members: Posteriors,
    target_members: Posteriors | None = None,
    target_non_members: Posteriors | None = None,
    features: Sequence[str] = MIA_FEATURES,
) -> dict[str, float]:
    """SVC membership inference attack score per feature, in percent.

    The score is the mean of the member rate on `target_members` and the non-member rate
    on `target_non_members`, over whichever of the two is non-empty (official `SVC_MIA`).
    """
    candidates = ((target_members, 1), (target_non_members, 0))
    targets = [(target, kind) for target, kind in candidates if target is not None and len(target)]
    if not targets:
        raise ConfigError("the MIA target set is empty: pass non-empty target members or non-members")
    shadow_in = attack_features(shadow_members, features)
    shadow_out = attack_features(shadow_non_members, features)
    target_features = [(attack_features(target, features), kind) for target, kind in targets]
    scores = {}
    for name in features:
        attack = fit_attack(shadow_in[name], shadow_out[name])
        rates = [np.mean(attack(values[name]) == kind) for values, kind in target_features]
        scores[name] = 100.0 * float(np.mean(rates))
    return scores


def forget_efficacy(
    retain: Posteriors, forget: Posteriors, test: Posteriors, features: Sequence[str] = MIA_FEATURES
) -> dict[str, float]:
    """MIA-efficacy per feature: percent of Df the attack calls non-member (higher = more forgotten).

    Shadow members are the first |test| retain rows in order (all of Dr if it is smaller);
    shadow non-members are the test set; the target is Df, all of it meant as non-member.
    """
    return svc_mia(retain.rows(0, len(test)), test, target_non_members=forget, features=features)


def training_privacy(retain: Posteriors, test: Posteriors, features: Sequence[str] = MIA_FEATURES) -> dict[str, float]:
    """MIA-privacy per feature (appendix metric): balanced attack accuracy on Dr vs test, percent.

    As the official code: with h = |test| // 2, shadow = Dr[:h] vs test[:h], target =
    Dr[h:] vs test[h:]. 50 is chance (private); higher means the model leaks membership.
    """
    half = len(test) // 2
    return svc_mia(retain.rows(0, half), test.rows(0, half), retain.rows(half), test.rows(half), features)


def mia_efficacy(
    model: nn.Module,
    retain_set: TensorSet,
    forget_set: TensorSet,
    test_set: TensorSet,
    device: torch.device,
    features: Sequence[str] = (HEADLINE_FEATURE,),
) -> dict[str, float]:
    """MIA-efficacy of `model` per feature, in percent; the paper reports the "confidence" entry."""
    shadow_members = retain_set.subset(range(min(len(retain_set), len(test_set))))
    return forget_efficacy(
        posteriors(model, shadow_members, device),
        posteriors(model, forget_set, device),
        posteriors(model, test_set, device),
        features,
    )


@dataclass(frozen=True)
class Evaluation:
    """The paper's metrics of one model; every accuracy and MIA score is in percent.

    Attributes:
        ua: UA, unlearning accuracy: 100 - accuracy on the forget set Df.
        ra: RA, remaining accuracy: accuracy on the retain set Dr.
        ta: TA, testing accuracy (the caller's test set; class-wise: forgotten classes removed).
        mia_efficacy: MIA-efficacy: percent of Df the confidence-feature attack calls non-member.
        mia_features: MIA-efficacy of each attack feature computed, "confidence" included.
        mia_privacy: MIA-privacy per feature (balanced attack accuracy); empty unless asked for.
        rte_seconds: RTE, run-time efficiency: wall seconds of the unlearning; None if untimed.
        sparsity_percent: percent of Conv2d weights that are exactly zero.
    """

    ua: float
    ra: float
    ta: float
    mia_efficacy: float
    mia_features: dict[str, float] = field(default_factory=dict)
    mia_privacy: dict[str, float] = field(default_factory=dict)
    rte_seconds: float | None = None
    sparsity_percent: float = 0.0

    def as_dict(self) -> dict[str, float]:
        """Flat {name: value}: UA, RA, TA, MIA_efficacy[_<feature>], MIA_privacy[_<feature>], ...

        "RTE_seconds" is present only when timed; "MIA_privacy" only when computed.
        """
        values = {"UA": self.ua, "RA": self.ra, "TA": self.ta, "MIA_efficacy": self.mia_efficacy}
        values.update({f"MIA_efficacy_{name}": score for name, score in self.mia_features.items()})
        if HEADLINE_FEATURE in self.mia_privacy:
            values["MIA_privacy"] = self.mia_privacy[HEADLINE_FEATURE]
        values.update({f"MIA_privacy_{name}": score for name, score in self.mia_privacy.items()})
        if self.rte_seconds is not None:
            values["RTE_seconds"] = self.rte_seconds
        values["sparsity_percent"] = self.sparsity_percent
        return {name: float(value) for name, value in values.items()}

    @classmethod
    def from_dict(cls, values: Mapping[str, float]) -> Evaluation:
        """Read back what `as_dict` wrote (e.g. a stored Retrain run's metrics)."""
        missing = [name for name in GAP_METRICS if name not in values]
        if missing:
            raise ConfigError(f"metrics {missing} are missing; have: {', '.join(sorted(values))}")

        def features(prefix: str) -> dict[str, float]:
            return {name: float(values[f"{prefix}_{name}"]) for name in MIA_FEATURES if f"{prefix}_{name}" in values}

        rte = values.get("RTE_seconds")
        return cls(
            float(values["UA"]),
            float(values["RA"]),
            float(values["TA"]),
            float(values["MIA_efficacy"]),
            features("MIA_efficacy"),
            features("MIA_privacy"),
            None if rte is None else float(rte),
            float(values.get("sparsity_percent", 0.0)),
        )


def evaluate(
    model: nn.Module,
    retain_set: TensorSet,
    forget_set: TensorSet,
    test_set: TensorSet,
    device: torch.device,
    *,
    seconds: float | None = None,
    features: Sequence[str] = MIA_FEATURES,
    privacy: bool = False,
) -> Evaluation:
    """UA, RA, TA, MIA-efficacy, RTE and sparsity of `model` (one forward pass per set).

    Args:
        seconds: wall time of the unlearning that made `model`, reported as RTE.
        features: MIA features to attack with; "confidence" (the reported one) is always added.
        privacy: also compute the appendix metric MIA-privacy.
    """
    if len(forget_set) == 0:
        raise ConfigError("the forget set is empty: UA and MIA-efficacy need samples to forget")
    retain = posteriors(model, retain_set, device)
    forget = posteriors(model, forget_set, device)
    test = posteriors(model, test_set, device)
    names = tuple(dict.fromkeys((HEADLINE_FEATURE, *features)))
    efficacy = forget_efficacy(retain, forget, test, names)
    return Evaluation(
        ua=100.0 - accuracy_percent(forget),
        ra=accuracy_percent(retain),
        ta=accuracy_percent(test),
        mia_efficacy=efficacy[HEADLINE_FEATURE],
        mia_features=efficacy,
        mia_privacy=training_privacy(retain, test, names) if privacy else {},
        rte_seconds=seconds,
        sparsity_percent=100.0 * sparsity(model),
    )


def metric_gaps(
    evaluation: Evaluation, retrain: Evaluation, sparsity_tolerance: float | None = 1.0
) -> dict[str, float]:
    """|metric - Retrain's metric| for UA, MIA_efficacy, RA and TA, in percentage points.

    Args:
        sparsity_tolerance: the paper compares to Retrain at the same sparsity, so sparsities
            further apart than this many percentage points are an error; None skips the check.
    """
    apart = abs(evaluation.sparsity_percent - retrain.sparsity_percent)
    if sparsity_tolerance is not None and apart > sparsity_tolerance:
        raise ConfigError(
            f"the model is {evaluation.sparsity_percent:.2f}% sparse but Retrain is "
            f"{retrain.sparsity_percent:.2f}%: compare to Retrain at the same sparsity "
            "(or pass sparsity_tolerance=None to compare anyway)"
        )
    mine, theirs = evaluation.as_dict(), retrain.as_dict()
    return {name: abs(mine[name] - theirs[name]) for name in GAP_METRICS}


def gap_to_retrain(evaluation: Evaluation, retrain: Evaluation, sparsity_tolerance: float | None = 1.0) -> float:
    """Average gap ("Disparity Ave." / "Avg. Gap"): mean |difference| to Retrain over UA, MIA, RA, TA."""
    return float(np.mean(list(metric_gaps(evaluation, retrain, sparsity_tolerance).values())))


def rte_ratio(seconds: float, retrain_seconds: float) -> float:
    """RTE (run-time efficiency) relative to Retrain: unlearning seconds / Retrain seconds."""
    if not retrain_seconds > 0 or not math.isfinite(retrain_seconds):
        raise ConfigError(f"Retrain's wall time must be a positive number of seconds, got {retrain_seconds}")
    return seconds / retrain_seconds


def compare_to_retrain(
    evaluation: Evaluation, retrain: Evaluation, sparsity_tolerance: float | None = 1.0
) -> dict[str, float]:
    """Flat comparison for trackers: <metric>_gap, avg_gap and, when both were timed, RTE_ratio."""
    gaps = metric_gaps(evaluation, retrain, sparsity_tolerance)
    values = {f"{name}_gap": gap for name, gap in gaps.items()}
    values["avg_gap"] = float(np.mean(list(gaps.values())))
    if evaluation.rte_seconds is not None and retrain.rte_seconds is not None:
        values["RTE_ratio"] = rte_ratio(evaluation.rte_seconds, retrain.rte_seconds)
    return values
