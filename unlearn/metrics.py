"""The paper's metrics: UA, RA, TA, MIA-efficacy, RTE, sparsity and the average gap to Retrain.

All accuracies and MIA scores are percentages. The membership
inference attack (MIA) follows the official `evaluation/SVC_MIA.py`: one RBF support
vector classifier per attack feature, fitted on shadow members (the first |test| retain
samples) against shadow non-members (the test set), then applied to the target set.

Beside MIA-efficacy the attack's own power is measured (`attack_power`): how well the same
attack tells its shadow members from its shadow non-members on samples it was not fitted on.
Near 50% the attack cannot separate the two, and its MIA-efficacy says nothing about forgetting.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
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
# The attack's power is measured out of sample by this many folds of stratified cross-validation
# (shuffled with MIA_POWER_SEED) over its own shadow set: each shadow sample is scored by an attack
# fitted on the other folds. Past MIA_POWER_SAMPLES members or non-members, a seeded subsample of that
# many of each is cross-validated: an SVC's cost grows faster than its data (one fit on 2 x 10,000
# confidences takes about 10 s on a CPU, 5-fold cross-validation of it about 55 s; of 2 x 2,000, 1.6 s),
# and 2,000 a side already bound the estimate's standard error near 1 point.
MIA_POWER_FOLDS = 5
MIA_POWER_SEED = 0
MIA_POWER_SAMPLES = 2000
# Chance: the balanced accuracy of an attack that cannot tell members from non-members, in percent.
MIA_CHANCE = 50.0


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
    from sklearn.svm import SVC  # here: scikit-learn's import (~2 s) is for the stages that attack

    features = np.concatenate([members, non_members])
    membership = np.concatenate([np.ones(len(members)), np.zeros(len(non_members))]).astype(np.int64)
    classifier = SVC(C=3, kernel="rbf", gamma="auto").fit(features, membership)
    return classifier.predict


def attack_power(
    members: np.ndarray, non_members: np.ndarray, folds: int = MIA_POWER_FOLDS, samples: int = MIA_POWER_SAMPLES
) -> float | None:
    """The attack's balanced accuracy, in percent, on members (1) against non-members (0), out of sample.

    Stratified `folds`-fold cross-validation (shuffled, seed MIA_POWER_SEED): each sample is
    predicted by `fit_attack` fitted on the other folds; the score is the mean of the member
    rate on `members` and the non-member rate on `non_members`. 50 is chance, 100 a perfect
    separation. A side of more than `samples` rows is subsampled to `samples` (seeded). Fewer
    folds are used when a side has fewer samples than `folds`; None when a side has fewer than 2
    (no held-out sample of each kind can be scored).
    """
    from sklearn.model_selection import StratifiedKFold

    smaller = min(len(members), len(non_members))
    if smaller < 2:
        return None
    generator = np.random.default_rng(MIA_POWER_SEED)
    members, non_members = (
        side[np.sort(generator.choice(len(side), samples, replace=False))] if len(side) > samples else side
        for side in (members, non_members)
    )
    features = np.concatenate([members, non_members])
    membership = np.concatenate([np.ones(len(members)), np.zeros(len(non_members))]).astype(np.int64)
    predicted = np.empty(len(membership), dtype=np.int64)
    splitter = StratifiedKFold(n_splits=min(folds, smaller), shuffle=True, random_state=MIA_POWER_SEED)
    for fitted, held_out in splitter.split(features, membership):
        inside = fitted[membership[fitted] == 1]
        outside = fitted[membership[fitted] == 0]
        predicted[held_out] = fit_attack(features[inside], features[outside])(features[held_out])
    member_rate = np.mean(predicted[membership == 1] == 1)
    non_member_rate = np.mean(predicted[membership == 0] == 0)
    return 100.0 * float((member_rate + non_member_rate) / 2)


def near_chance(power: float | None, margin: float) -> bool:
    """Whether an attack of this power (percent, `attack_power`) is within `margin` points of chance or below.

    An unmeasured power (None) counts as near chance: nothing shows the attack separates anything.
    """
    return power is None or power < MIA_CHANCE + margin


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


def efficacy_shadow(retain: Posteriors, test: Posteriors) -> tuple[Posteriors, Posteriors]:
    """MIA-efficacy's shadow set: members are the first |test| retain rows in order (all of Dr if it
    is smaller), non-members the test set."""
    return retain.rows(0, len(test)), test


def forget_efficacy(
    retain: Posteriors, forget: Posteriors, test: Posteriors, features: Sequence[str] = MIA_FEATURES
) -> dict[str, float]:
    """MIA-efficacy per feature: percent of Df the attack calls non-member (higher = more forgotten).

    The attack is fitted on `efficacy_shadow`; the target is Df, all of it meant as non-member.
    """
    return svc_mia(*efficacy_shadow(retain, test), target_non_members=forget, features=features)


def efficacy_power(retain: Posteriors, test: Posteriors, feature: str = HEADLINE_FEATURE) -> float | None:
    """The power of MIA-efficacy's attack on `feature`: `attack_power` on its own shadow set, in percent.

    Near MIA_CHANCE (50) the attack cannot tell retained samples from test samples on this model,
    so whatever share of Df it calls non-member measures the attack, not the forgetting.
    """
    members, non_members = (attack_features(part, (feature,))[feature] for part in efficacy_shadow(retain, test))
    return attack_power(members, non_members)


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
        mia_power: the power of MIA-efficacy's confidence attack (`efficacy_power`): its balanced
            accuracy on its own shadow members against non-members, out of sample; None if not measured.
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
    mia_power: float | None = None

    def as_dict(self) -> dict[str, float]:
        """Flat {name: value}: UA, RA, TA, MIA_efficacy[_<feature>], MIA_privacy[_<feature>], ...

        "RTE_seconds" is present only when timed; "MIA_privacy" and "MIA_power" only when computed.
        """
        values = {"UA": self.ua, "RA": self.ra, "TA": self.ta, "MIA_efficacy": self.mia_efficacy}
        values.update({f"MIA_efficacy_{name}": score for name, score in self.mia_features.items()})
        if HEADLINE_FEATURE in self.mia_privacy:
            values["MIA_privacy"] = self.mia_privacy[HEADLINE_FEATURE]
        values.update({f"MIA_privacy_{name}": score for name, score in self.mia_privacy.items()})
        if self.rte_seconds is not None:
            values["RTE_seconds"] = self.rte_seconds
        values["sparsity_percent"] = self.sparsity_percent
        if self.mia_power is not None:
            values["MIA_power"] = self.mia_power
        return {name: float(value) for name, value in values.items()}

    @classmethod
    def from_dict(cls, values: Mapping[str, float]) -> Evaluation:
        """Read back what `as_dict` wrote (e.g. a stored Retrain run's metrics)."""
        missing = [name for name in GAP_METRICS if name not in values]
        if missing:
            raise ConfigError(f"metrics {missing} are missing; have: {', '.join(sorted(values))}")

        def features(prefix: str) -> dict[str, float]:
            return {name: float(values[f"{prefix}_{name}"]) for name in MIA_FEATURES if f"{prefix}_{name}" in values}

        rte, power = values.get("RTE_seconds"), values.get("MIA_power")
        return cls(
            float(values["UA"]),
            float(values["RA"]),
            float(values["TA"]),
            float(values["MIA_efficacy"]),
            features("MIA_efficacy"),
            features("MIA_privacy"),
            None if rte is None else float(rte),
            float(values.get("sparsity_percent", 0.0)),
            None if power is None else float(power),
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
    """UA, RA, TA, MIA-efficacy with its attack's power, RTE and sparsity of `model` (one forward pass per set).

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
        mia_power=efficacy_power(retain, test),
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
