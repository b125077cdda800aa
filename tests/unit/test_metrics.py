"""Metrics: UA / RA / TA, the SVC membership inference attack, gaps to Retrain, RTE, sparsity."""

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from unlearn.data import TensorSet
from unlearn.errors import ConfigError
from unlearn.metrics import (
    MIA_FEATURES,
    Evaluation,
    Posteriors,
    attack_features,
    attack_power,
    compare_to_retrain,
    efficacy_power,
    entropy,
    evaluate,
    fit_attack,
    gap_to_retrain,
    metric_gaps,
    mia_efficacy,
    modified_entropy,
    near_chance,
    posteriors,
    rte_ratio,
    svc_mia,
    training_privacy,
)
from unlearn.splits import class_wise
from unlearn.train import TrainConfig, accuracy, fit

CLASSES = 3


def _echo_model() -> nn.Module:
    """A model whose logits are its inputs: a 1x1 identity convolution (6 of 9 weights zero)."""
    model = nn.Sequential(nn.Conv2d(CLASSES, CLASSES, 1, bias=False), nn.Flatten())
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(CLASSES).view(CLASSES, CLASSES, 1, 1))
    return model


def _logit_set(logits, labels, name: str) -> TensorSet:
    """Samples whose inputs are the logits the echo model will output for them."""
    logits = torch.as_tensor(logits, dtype=torch.float32).view(-1, CLASSES, 1, 1)
    return TensorSet(logits, torch.as_tensor(labels), tuple(f"{name}/{i}" for i in range(len(labels))))


def _confident(count: int, scale: float, name: str, seed: int = 0) -> TensorSet:
    """`count` correctly classified samples, p(y|x) high for scale 10, about 0.45 for scale 0.5."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(count) % CLASSES
    jitter = 0.05 * torch.randn(count, CLASSES, generator=generator)
    return _logit_set(scale * nn.functional.one_hot(labels, CLASSES) + jitter, labels, name)


def _concat(first: TensorSet, second: TensorSet) -> TensorSet:
    return TensorSet(
        torch.cat([first.inputs, second.inputs]),
        torch.cat([first.labels, second.labels]),
        first.ids + second.ids,
    )


def test_accuracies_and_sparsity_hand_computed(cpu):
    model = _echo_model()
    # argmax of each row vs its label: retain 3 of 4 right, forget 1 of 2, test 4 of 5.
    retain = _logit_set([[3, 0, 0], [0, 2, 0], [0, 0, 1], [1, 0, 0]], [0, 1, 2, 2], "r")
    forget = _logit_set([[0, 5, 0], [0, 5, 0]], [1, 0], "f")
    test = _logit_set([[1, 0, 0], [0, 1, 0], [0, 0, 1], [2, 1, 0], [0, 0, 4]], [0, 1, 2, 0, 1], "t")
    result = evaluate(model, retain, forget, test, cpu, seconds=2.5)
    assert result.ua == pytest.approx(50.0)
    assert result.ra == pytest.approx(75.0)
    assert result.ta == pytest.approx(80.0)
    assert result.sparsity_percent == pytest.approx(100 * 6 / 9)
    assert result.rte_seconds == 2.5
    assert result.ra == pytest.approx(accuracy(model, retain, cpu))
    assert 0.0 <= result.mia_efficacy <= 100.0


def test_entropy_and_modified_entropy_hand_computed():
    probabilities = np.array([[0.7, 0.2, 0.1], [0.7, 0.2, 0.1], [0.5, 0.5, 0.0]])
    labels = np.array([0, 1, 0])
    # -(1-p_y) ln p_y - sum_{i!=y} p_i ln(1-p_i), worked by hand:
    # y=0: 0.3*0.356675 + 0.2*0.223144 + 0.1*0.105361 = 0.162167
    # y=1: 0.8*1.609438 + 0.7*1.203973 + 0.1*0.105361 = 2.140868
    # [0.5, 0.5, 0], y=0: 0.5*ln 2 + 0.5*ln 2 + 0 = ln 2
    expected = [0.162167, 2.140868, math.log(2)]
    assert modified_entropy(probabilities, labels) == pytest.approx(expected, abs=1e-5)
    assert entropy(probabilities[2:]) == pytest.approx([math.log(2)])
    # p_y = 0 and p_i = 1 stay finite (log floored at EPSILON) and large.
    extreme = modified_entropy(np.array([[1.0, 0.0, 0.0]]), np.array([1]))
    assert np.isfinite(extreme).all() and extreme[0] > 50


def test_mia_efficacy_separates_confident_from_unconfident_forget_sets(cpu):
    model = _echo_model()
    # Dr starts with |test| confident rows, then many unconfident ones: only the first
    # |test| rows are shadow members, so confident means member. Using all of Dr would
    # make the unconfident majority look like members and flip both answers.
    retain = _concat(_confident(60, 10.0, "r"), _confident(300, 0.5, "r2", seed=1))
    test = _confident(60, 0.5, "t", seed=2)
    confident_forget = _confident(30, 10.0, "f", seed=3)
    unconfident_forget = _confident(30, 0.5, "f", seed=4)
    assert mia_efficacy(model, retain, confident_forget, test, cpu)["confidence"] == pytest.approx(0.0)
    assert mia_efficacy(model, retain, unconfident_forget, test, cpu)["confidence"] == pytest.approx(100.0)
    result = evaluate(model, retain, unconfident_forget, test, cpu)
    assert result.mia_efficacy == pytest.approx(100.0)
    assert set(result.mia_features) == set(MIA_FEATURES)
    assert result.mia_features["entropy"] == pytest.approx(100.0)
    # Its shadow members (the confident first 60 of Dr) and non-members separate perfectly.
    assert result.mia_power == pytest.approx(100.0) and result.as_dict()["MIA_power"] == result.mia_power


def test_retain_smaller_than_test_uses_all_of_it(cpu):
    retain = _confident(12, 10.0, "r")
    test = _confident(60, 0.5, "t", seed=2)
    scores = mia_efficacy(_echo_model(), retain, _confident(9, 10.0, "f", seed=3), test, cpu)
    assert scores["confidence"] == pytest.approx(0.0)


def _posteriors(confidence: float, count: int, seed: int = 0) -> Posteriors:
    """`count` rows over 2 classes with p(y|x) near `confidence` (label 0)."""
    spread = np.random.RandomState(seed).uniform(-0.02, 0.02, count)
    first = np.clip(confidence + spread, 0.0, 1.0)
    return Posteriors(np.stack([first, 1 - first], axis=1), np.zeros(count, dtype=np.int64))


def test_training_privacy_is_balanced_attack_accuracy():
    members, non_members = _posteriors(0.99, 100), _posteriors(0.4, 80, seed=1)
    assert training_privacy(members, non_members)["confidence"] == pytest.approx(100.0)
    # Identical distributions on both sides: no membership signal, so near chance.
    same = training_privacy(_posteriors(0.7, 400, seed=2), _posteriors(0.7, 400, seed=3), ("confidence",))
    assert 35.0 < same["confidence"] < 65.0


def test_degenerate_shadow_sets_do_not_crash():
    members, non_members, target = _posteriors(0.99, 20), _posteriors(0.6, 20, 1), _posteriors(0.6, 5, 2)
    empty = _posteriors(0.5, 0)
    # Only one kind in the shadow set: the attacker predicts that kind for everything.
    assert svc_mia(members, empty, target_non_members=target)["confidence"] == 0.0
    assert svc_mia(empty, non_members, target_non_members=target)["confidence"] == 100.0
    assert fit_attack(np.ones((3, 1)), np.zeros((0, 1)))(np.zeros((4, 1))).tolist() == [1, 1, 1, 1]
    # A feature constant across both kinds (every sample correct) still fits.
    assert 0.0 <= svc_mia(members, non_members, target_non_members=target)["correctness"] <= 100.0
    with pytest.raises(ConfigError, match="shadow set is empty"):
        svc_mia(empty, empty, target_non_members=target)
    with pytest.raises(ConfigError, match="target set is empty"):
        svc_mia(members, non_members, target_non_members=empty)


def test_diverged_model_and_empty_forget_set(cpu):
    model = _echo_model()
    with torch.no_grad():
        model[0].weight.fill_(float("nan"))
    retain, test = _confident(20, 10.0, "r"), _confident(20, 0.5, "t", seed=1)
    result = evaluate(model, retain, _confident(5, 10.0, "f", seed=2), test, cpu, privacy=True)
    assert all(math.isfinite(value) for value in result.as_dict().values())
    with pytest.raises(ConfigError, match="forget set is empty"):
        evaluate(_echo_model(), retain, retain.subset([]), test, cpu)
    with pytest.raises(ConfigError, match="unknown MIA features"):
        evaluate(_echo_model(), retain, retain, test, cpu, features=("loss",))


RETRAIN = Evaluation(ua=100.0, ra=100.0, ta=94.83, mia_efficacy=100.0, rte_seconds=120.0, sparsity_percent=95.0)


def test_average_gap_reproduces_the_papers_check():
    # the paper's Table 3, FT class-wise dense = (77.47 + 25.00 + 0.13 + 0.52) / 4 = 25.78.
    finetuned = Evaluation(ua=22.53, ra=99.87, ta=94.31, mia_efficacy=75.0, rte_seconds=30.0, sparsity_percent=95.0)
    gaps = metric_gaps(finetuned, RETRAIN)
    assert gaps == pytest.approx({"UA": 77.47, "MIA_efficacy": 25.0, "RA": 0.13, "TA": 0.52})
    assert gap_to_retrain(finetuned, RETRAIN) == pytest.approx(25.78)
    assert gap_to_retrain(RETRAIN, RETRAIN) == 0.0
    compared = compare_to_retrain(finetuned, RETRAIN)
    assert compared["avg_gap"] == pytest.approx(25.78) and compared["UA_gap"] == pytest.approx(77.47)
    assert compared["RTE_ratio"] == pytest.approx(0.25)
    assert "RTE_ratio" not in compare_to_retrain(replace(finetuned, rte_seconds=None), RETRAIN)


def test_gap_needs_retrain_at_the_same_sparsity():
    dense = replace(RETRAIN, sparsity_percent=0.0, ua=90.0)
    with pytest.raises(ConfigError, match="same sparsity"):
        gap_to_retrain(dense, RETRAIN)
    assert gap_to_retrain(dense, RETRAIN, sparsity_tolerance=None) == pytest.approx(2.5)


def test_rte_ratio():
    assert rte_ratio(3.0, 12.0) == pytest.approx(0.25)
    with pytest.raises(ConfigError, match="positive"):
        rte_ratio(3.0, 0.0)


def test_as_dict_names_and_round_trip():
    evaluation = replace(RETRAIN, mia_features={"confidence": 100.0, "entropy": 97.5}, mia_privacy={"confidence": 51.0})
    assert Evaluation.from_dict(replace(evaluation, mia_power=53.5).as_dict()).mia_power == 53.5
    values = evaluation.as_dict()
    assert values == {
        "UA": 100.0,
        "RA": 100.0,
        "TA": 94.83,
        "MIA_efficacy": 100.0,
        "MIA_efficacy_confidence": 100.0,
        "MIA_efficacy_entropy": 97.5,
        "MIA_privacy": 51.0,
        "MIA_privacy_confidence": 51.0,
        "RTE_seconds": 120.0,
        "sparsity_percent": 95.0,
    }
    assert Evaluation.from_dict(values) == evaluation
    assert "RTE_seconds" not in replace(evaluation, rte_seconds=None).as_dict()
    with pytest.raises(ConfigError, match="missing"):
        Evaluation.from_dict({"UA": 1.0})


def test_attack_power_is_near_chance_where_members_and_non_members_look_alike():
    # Both sides drawn from one distribution: held-out samples cannot be told apart.
    alike = [attack_features(_posteriors(0.7, 400, seed=seed), ("confidence",))["confidence"] for seed in (2, 3)]
    power = attack_power(*alike)
    assert 45.0 < power < 55.0
    assert near_chance(power, 5.0)
    # Separable sides: every held-out sample is scored right, far from chance.
    apart = efficacy_power(_posteriors(0.99, 100), _posteriors(0.4, 80, seed=1))
    assert apart == pytest.approx(100.0) and not near_chance(apart, 5.0)
    assert near_chance(None, 5.0) and not near_chance(55.0, 5.0) and near_chance(54.9, 5.0)


def test_attack_power_is_out_of_sample():
    # Points 0, 1, ..., 599 labelled member or not at random: an SVC (C=3, gamma 'auto' = 1 on one
    # feature) fitted on them scores its own training data perfectly by memorising each point, but a
    # held-out point's neighbours say nothing of its label: measured in sample, this attack would pass.
    points = np.random.default_rng(0).permutation(np.arange(600.0))[:, None]
    members, non_members = points[:300], points[300:]
    fitted = fit_attack(members, non_members)
    assert (np.mean(fitted(members) == 1) + np.mean(fitted(non_members) == 0)) / 2 == 1.0
    assert near_chance(attack_power(members, non_members), 5.0)


def test_attack_power_subsamples_large_sides_and_needs_two_of_each():
    members = attack_features(_posteriors(0.95, 300), ("confidence",))["confidence"]
    non_members = attack_features(_posteriors(0.6, 300, seed=1), ("confidence",))["confidence"]
    assert attack_power(members, non_members, samples=40) == attack_power(members, non_members, samples=40)
    assert attack_power(members, non_members, samples=40) == pytest.approx(100.0)
    assert attack_power(members[:1], non_members) is None
    assert 0.0 <= attack_power(members[:3], non_members[:2]) <= 100.0  # 2 folds, not 5
    # The study's metrics record it; a shadow set without two test samples leaves it unmeasured.
    assert efficacy_power(_posteriors(0.95, 10), _posteriors(0.6, 1, seed=1)) is None


@pytest.mark.slow
def test_overfit_model_leaks_membership_of_its_training_samples(digits, cpu):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))
    members, unseen = digits.train.subset(range(100)), digits.train.subset(range(100, 200))
    config = TrainConfig(epochs=150, lr=0.1, batch_size=50, weight_decay=0.0, schedule="constant", augment=False)
    fit(model, members, config, cpu)
    assert accuracy(model, members, cpu) == 100.0
    trained, fresh, test = (posteriors(model, data, cpu) for data in (members, unseen, digits.test))

    def attack(inside: Posteriors) -> dict[str, float]:
        """Balanced attack accuracy: shadow on the first 50 of each side, target the rest."""
        return svc_mia(inside.rows(0, 50), test.rows(0, 50), inside.rows(50), test.rows(50))

    overfit, control = attack(trained), attack(fresh)
    assert overfit["confidence"] > 60.0 and overfit["entropy"] > 65.0
    # The same attack on samples the model never saw finds no such signal.
    assert control["entropy"] < 60.0
    assert overfit["entropy"] > control["entropy"] + 10.0


@pytest.mark.slow
def test_original_model_has_not_forgotten_a_class(digits, digits_original, cpu):
    split = class_wise(digits, [0])
    retain, forget, test = split.retain_set(digits), split.forget_set(digits), split.test_set(digits)
    result = evaluate(digits_original, retain, forget, test, cpu, seconds=1.0, privacy=True)
    assert result.ua < 5.0 and result.ra > 95.0 and result.ta > 95.0
    assert result.ta == pytest.approx(accuracy(digits_original, test, cpu))
    assert result.ua == pytest.approx(100.0 - accuracy(digits_original, forget, cpu))
    # The forgotten class is still recognised as training data.
    assert result.mia_efficacy < 20.0
    assert set(result.as_dict()) >= {"UA", "RA", "TA", "MIA_efficacy", "MIA_privacy", "RTE_seconds"}
