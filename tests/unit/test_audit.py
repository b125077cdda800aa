"""The membership audit's maths: logit confidence, half splits, per-sample Gaussians, p-values, power."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from unlearn.audit import (
    MIN_STD,
    AuditError,
    AuditFigures,
    ReferenceScores,
    SampleAudit,
    audit_power,
    audit_samples,
    binomial_interval,
    calibrate,
    half_splits,
    logit_confidence,
    reference_scores,
    unseen_share,
)
from unlearn.data import TensorSet
from unlearn.errors import UnlearnError

GAP = 3.0  # IN mean - OUT mean of the synthetic scores, in OUT standard deviations


def echo_set(logits, labels) -> TensorSet:
    """Samples whose inputs are the logits `nn.Flatten()` will output for them."""
    logits = torch.as_tensor(logits, dtype=torch.float32)
    labels = torch.as_tensor(labels)
    return TensorSet(logits.view(*logits.shape, 1, 1), labels, tuple(f"echo/{i}" for i in range(len(labels))))


def synthetic(references: int = 64, samples: int = 2000, seed: int = 0):
    """(reference pool, a candidate drawn from IN, one drawn from OUT): per-sample Gaussians of std 1."""
    rng = np.random.default_rng(seed)
    out_mean = rng.uniform(-2.0, 2.0, samples)
    members = half_splits(samples, references, seed=seed)
    scores = out_mean + GAP * members + rng.standard_normal((references, samples))
    seen = out_mean + GAP + rng.standard_normal(samples)
    unseen = out_mean + rng.standard_normal(samples)
    return ReferenceScores(scores, members), seen, unseen


def one_line_error(call) -> str:
    with pytest.raises(AuditError) as caught:
        call()
    message = str(caught.value)
    assert message and "\n" not in message
    return message


def test_logit_confidence_is_log_odds_of_the_softmax_true_label(cpu):
    logits = torch.randn(37, 5, generator=torch.Generator().manual_seed(0)) * 3
    labels = torch.arange(37) % 5
    scores = logit_confidence(nn.Flatten(), echo_set(logits, labels), cpu, batch_size=8)
    p = torch.softmax(logits.double(), dim=1)[torch.arange(37), labels].numpy()
    assert scores.dtype == np.float64 and scores.shape == (37,)
    np.testing.assert_allclose(scores, np.log(p / (1 - p)), rtol=1e-6, atol=1e-6)


def test_logit_confidence_stays_finite_and_exact_where_p_rounds_to_one(cpu):
    logits = [[60.0, 0.0, 0.0], [0.0, -40.0, 30.0], [-50.0, 50.0, 0.0]]
    scores = logit_confidence(nn.Flatten(), echo_set(logits, [0, 2, 0]), cpu)
    assert np.isfinite(scores).all()
    np.testing.assert_allclose(scores, [60.0 - math.log(2.0), 30.0 - np.logaddexp(0.0, -40.0), -100.0], rtol=1e-12)


def test_logit_confidence_of_no_samples_is_empty_and_leaves_the_model_in_eval_mode(cpu):
    model = nn.Sequential(nn.Flatten()).train()
    assert logit_confidence(model, echo_set(torch.empty(0, 3), torch.empty(0, dtype=torch.long)), cpu).shape == (0,)
    logit_confidence(model, echo_set([[1.0, 2.0]], [1]), cpu)
    assert not model.training


def test_half_splits_put_every_sample_in_exactly_half_the_references():
    splits = half_splits(500, 8, seed=3)
    assert splits.shape == (8, 500) and splits.dtype == np.bool_
    assert (splits.sum(axis=0) == 4).all()
    assert splits.sum(axis=1).min() > 200 and splits.sum(axis=1).max() < 300  # each reference sees about half


def test_half_splits_are_seeded():
    assert np.array_equal(half_splits(100, 4, seed=1), half_splits(100, 4, seed=1))
    assert not np.array_equal(half_splits(100, 4, seed=1), half_splits(100, 4, seed=2))


@pytest.mark.parametrize("count", [0, 1, 3, -2])
def test_half_splits_refuse_an_odd_or_too_small_count(count):
    assert "even and at least 2" in one_line_error(lambda: half_splits(10, count, seed=0))


def test_audit_errors_are_configuration_errors():
    assert issubclass(AuditError, UnlearnError) and issubclass(AuditError, ValueError)


@pytest.mark.parametrize(
    ("scores", "members", "words"),
    [
        (np.zeros(4), np.zeros(4, dtype=bool), "[K >= 1, N] matrix"),
        (np.zeros((2, 4)), np.zeros((2, 3), dtype=bool), "must have one shape"),
        (np.zeros((2, 4)), np.zeros((2, 4), dtype=int), "bool matrix"),
        (np.full((2, 4), np.nan), np.zeros((2, 4), dtype=bool), "finite floats"),
        (np.zeros((2, 4), dtype=int), np.zeros((2, 4), dtype=bool), "finite floats"),
    ],
)
def test_reference_scores_refuse_bad_matrices_in_one_line(scores, members, words):
    assert words in one_line_error(lambda: ReferenceScores(scores, members))


def test_reference_columns_and_audit_rows_select_samples_in_order():
    reference, seen, _ = synthetic(references=4, samples=10)
    picked = reference.columns([7, 2])
    assert np.array_equal(picked.scores, reference.scores[:, [7, 2]]) and picked.references == 4 and len(picked) == 2
    audit = audit_samples(seen, reference, alpha=0.05)
    rows = audit.rows([7, 2])
    assert isinstance(rows, SampleAudit) and np.array_equal(rows.p_out, audit.p_out[[7, 2]]) and rows.alpha == 0.05


def test_reference_scores_score_every_model_on_every_sample(cpu):
    data = echo_set([[2.0, 0.0], [0.0, 1.0]], [0, 1])
    members = np.array([[True, False], [False, True]])
    reference = reference_scores([nn.Flatten(), nn.Sequential(nn.Flatten())], data, members, cpu)
    np.testing.assert_allclose(reference.scores, [[2.0, 1.0], [2.0, 1.0]], rtol=1e-6)
    assert "at least one model" in one_line_error(lambda: reference_scores([], data, members, cpu))


def test_a_candidate_drawn_from_in_looks_seen_with_a_positive_likelihood_ratio():
    reference, seen, _ = synthetic()
    audit = audit_samples(seen, reference, alpha=0.05)
    assert np.median(audit.p_out) < 0.01
    assert unseen_share(audit) < 20.0  # P(N(0, 1) >= 3 - 1.645) is about 9%
    assert np.median(audit.log_lr) > 2.0 and np.mean(audit.log_lr > 0) > 0.9


@pytest.mark.parametrize("fixed_variance", [False, True])
def test_a_candidate_drawn_from_out_has_uniform_p_values(fixed_variance):
    reference, _, unseen = synthetic()
    for alpha in (0.05, 0.2):
        audit = audit_samples(unseen, reference, alpha=alpha, fixed_variance=fixed_variance)
        assert abs(unseen_share(audit) - 100 * (1 - alpha)) < 3.0
    deciles = np.quantile(audit.p_out, np.linspace(0.1, 0.9, 9))
    np.testing.assert_allclose(deciles, np.linspace(0.1, 0.9, 9), atol=0.04)
    assert np.median(audit.log_lr) < 0


def test_the_gaussians_fit_each_samples_in_and_out_scores():
    reference, seen, _ = synthetic(references=64, samples=300)
    audit = audit_samples(seen, reference, alpha=0.05)
    out = np.where(~reference.members, reference.scores, np.nan)
    np.testing.assert_allclose(audit.out_mean, np.nanmean(out, axis=0))
    np.testing.assert_allclose(audit.out_std, np.nanstd(out, axis=0, ddof=1))
    np.testing.assert_allclose(audit.in_mean - audit.out_mean, GAP, atol=1.0)
    np.testing.assert_allclose(audit.z_out, (seen - audit.out_mean) / audit.out_std)


def test_without_in_references_the_likelihood_ratio_is_nan_and_p_out_still_holds():
    reference, _, unseen = synthetic(references=8, samples=50)
    all_out = ReferenceScores(reference.scores, np.zeros_like(reference.members))
    audit = audit_samples(unseen, all_out, alpha=0.05)
    assert np.isnan(audit.log_lr).all() and np.isnan(audit.in_mean).all() and np.isnan(audit.in_std).all()
    assert np.isfinite(audit.p_out).all()


def test_a_sample_with_one_score_on_a_side_gets_the_pooled_variance():
    scores = np.array([[0.0, 5.0], [2.0, 6.0], [4.0, 7.0], [9.0, 9.0]])
    members = np.array([[False, True], [False, True], [False, True], [True, False]])
    audit = audit_samples(np.array([1.0, 9.0]), ReferenceScores(scores, members), alpha=0.05)
    np.testing.assert_allclose(audit.out_mean, [2.0, 9.0])
    np.testing.assert_allclose(audit.out_std, [2.0, 2.0])  # sample 1's one OUT score: sample 0's variance 4
    np.testing.assert_allclose(audit.in_mean, [9.0, 6.0])
    np.testing.assert_allclose(audit.in_std, [1.0, 1.0])
    fixed = audit_samples(np.array([1.0, 9.0]), ReferenceScores(scores, members), alpha=0.05, fixed_variance=True)
    np.testing.assert_allclose(fixed.out_std, [2.0, 2.0])


def test_identical_scores_get_the_floor_standard_deviation():
    scores = np.full((4, 3), 5.0)
    members = half_splits(3, 4, seed=0)
    audit = audit_samples(np.array([5.0, 5.0 + 10 * MIN_STD, 4.0]), ReferenceScores(scores, members), alpha=0.05)
    np.testing.assert_allclose(audit.out_std, MIN_STD)
    np.testing.assert_allclose(audit.p_out, [0.5, 0.0, 1.0], atol=1e-6)
    assert audit.unseen.tolist() == [True, False, True]


def test_audit_samples_refuse_what_they_cannot_audit_in_one_line():
    reference, seen, _ = synthetic(references=4, samples=10)
    assert "shape (10,)" in one_line_error(lambda: audit_samples(seen[:9], reference, alpha=0.05))
    assert "finite floats" in one_line_error(lambda: audit_samples(np.full(10, np.inf), reference, alpha=0.05))
    assert "alpha" in one_line_error(lambda: audit_samples(seen, reference, alpha=1.0))
    assert "min_std" in one_line_error(lambda: audit_samples(seen, reference, alpha=0.05, min_std=0.0))
    members = reference.members.copy()
    members[:, 3] = True
    no_out = ReferenceScores(reference.scores, members)
    assert "samples [3] have no OUT reference" in one_line_error(lambda: audit_samples(seen, no_out, alpha=0.05))
    two = ReferenceScores(reference.scores[:2], half_splits(10, 2, seed=0))
    assert "no OUT variance" in one_line_error(lambda: audit_samples(seen, two, alpha=0.05))


def test_unseen_share_is_a_percentage_and_needs_samples():
    reference, _, unseen = synthetic(references=4, samples=10)
    audit = audit_samples(unseen, reference, alpha=0.05)
    assert unseen_share(audit) == 100.0 * audit.unseen.mean()
    assert "no sample" in one_line_error(lambda: unseen_share(audit.rows([])))


def test_audit_power_is_high_where_members_and_non_members_differ():
    reference, seen, unseen = synthetic()
    member = audit_samples(seen, reference, alpha=0.05).rows(range(1000))
    non_member = audit_samples(unseen, reference, alpha=0.05).rows(range(1000, 2000))
    power = audit_power(member, non_member)
    assert power.tpr > 0.8 and abs(power.fpr - 0.05) < 0.03
    assert power.power == pytest.approx(power.tpr - power.fpr) and power.power > 0.75
    assert power.auc > 0.95 and power.auc_log_lr > 0.95
    assert (power.members, power.non_members, power.alpha) == (1000, 1000, 0.05)
    assert set(power.as_dict()) == {"tpr", "fpr", "power", "auc", "auc_log_lr", "alpha", "members", "non_members"}


def test_audit_power_is_nil_where_members_and_non_members_look_alike():
    reference, _, unseen = synthetic()
    audit = audit_samples(unseen, reference, alpha=0.05)
    power = audit_power(audit.rows(range(1000)), audit.rows(range(1000, 2000)))
    assert abs(power.power) < 0.04
    assert abs(power.auc - 0.5) < 0.05 and abs(power.auc_log_lr - 0.5) < 0.05


def test_audit_power_without_in_gaussians_has_no_likelihood_ratio_auc():
    reference, seen, unseen = synthetic(references=8, samples=200)
    all_out = ReferenceScores(reference.scores, np.zeros_like(reference.members))
    member, non_member = audit_samples(seen, reference, alpha=0.1), audit_samples(unseen, all_out, alpha=0.1)
    power = audit_power(member, non_member)
    assert math.isnan(power.auc_log_lr) and power.auc > 0.9


def test_audit_power_refuses_empty_probes_and_mixed_alphas():
    reference, seen, unseen = synthetic(references=4, samples=10)
    audit = audit_samples(seen, reference, alpha=0.05)
    assert "member and non-member probes" in one_line_error(lambda: audit_power(audit, audit.rows([])))
    other = audit_samples(unseen, reference, alpha=0.1)
    assert "different alphas" in one_line_error(lambda: audit_power(audit, other))


def test_calibration_undoes_a_model_that_is_more_confident_on_every_sample():
    """A candidate shifted up by 1.5 OUT std on every sample: raw, unseen samples look seen; calibrated, they do not."""
    reference, seen, unseen = synthetic()
    shift = 1.5
    raw_unseen = audit_samples(unseen + shift, reference, alpha=0.2)
    raw_seen = audit_samples(seen + shift, reference, alpha=0.2)
    null = raw_unseen.rows(range(1000, 2000))  # never-seen samples of the same model: the empirical null
    assert unseen_share(raw_unseen.rows(range(1000))) < 60  # P(N(0,1) + 1.5 < 0.84) is about 26%
    calibrated = calibrate(raw_unseen.rows(range(1000)), null)
    assert abs(unseen_share(calibrated) - 80.0) < 5.0
    assert unseen_share(calibrate(raw_seen.rows(range(1000)), null)) < 20.0  # members still look seen
    assert np.array_equal(calibrated.z_out, raw_unseen.z_out[:1000])  # only p-values and verdicts change


def test_calibrated_p_values_are_shares_of_the_null_at_least_as_extreme():
    reference, _, unseen = synthetic(samples=10)
    audit = audit_samples(unseen, reference, alpha=0.5)
    calibrated = calibrate(audit, audit)
    ranks = np.array([(1 + np.sum(audit.z_out >= z)) / 11 for z in audit.z_out])
    np.testing.assert_allclose(calibrated.p_out, ranks)
    assert np.array_equal(calibrated.unseen, ranks >= 0.5)


def test_calibration_refuses_an_empty_null_and_mixed_alphas():
    reference, _, unseen = synthetic(samples=10)
    audit = audit_samples(unseen, reference, alpha=0.2)
    assert "never-seen sample" in one_line_error(lambda: calibrate(audit, audit.rows([])))
    other = audit_samples(unseen, reference, alpha=0.1)
    assert "different alphas" in one_line_error(lambda: calibrate(audit, other))


@pytest.mark.parametrize(
    "successes, trials, low, high",
    [(0, 3, 0.0, 0.7076), (3, 3, 0.2924, 1.0), (2, 20, 0.0123, 0.3170), (10, 20, 0.2720, 0.7280)],
)
def test_binomial_interval_is_clopper_pearson(successes, trials, low, high):
    got = binomial_interval(successes, trials, 0.95)
    np.testing.assert_allclose(got, (low, high), atol=1e-4)


def test_binomial_interval_and_figures_refuse_impossible_counts():
    assert "successes <= trials" in one_line_error(lambda: binomial_interval(4, 3, 0.95))
    assert "confidence" in one_line_error(lambda: binomial_interval(1, 3, 1.0))
    figures = dict(samples=3, unseen=4, unseen_share=0.0, champion_unseen_share=0.0, member_unseen_share=0.0,
                   nonmember_unseen_share=0.0, power=0.0, auc=0.5, alpha=0.2, references=4)  # fmt: skip
    assert "unseen <= samples" in one_line_error(lambda: AuditFigures(**figures))


def test_audit_figures_round_trip_through_string_tags():
    figures = AuditFigures(20, 17, 85.0, 30.0, 32.3, 92.5, 0.6, 0.92, 0.2, 16)
    tags = {f"audit.{name}": repr(value) for name, value in figures.as_dict().items()}
    assert AuditFigures.from_dict({k.removeprefix("audit."): v for k, v in tags.items()}) == figures
    assert "lack unseen, unseen_share" in one_line_error(lambda: AuditFigures.from_dict({"samples": "3"}))
