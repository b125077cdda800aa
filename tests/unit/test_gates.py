"""Promotion gates per request kind (`tasks.production.gates`): pure rules, no MLflow."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml

from tasks.adapters.params import ClassWiseGateParams, GateParams, SampleGateParams, load_params
from tasks.production.gates import (
    RULES,
    Evidence,
    GateResult,
    audit_power,
    audit_unseen_gate,
    check_gates,
    insufficient_evidence,
)
from unlearn.audit import AuditFigures
from unlearn.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
CHAMPION = {"TA": 97.0, "UA": 1.0, "RA": 100.0}
RETRAIN_LIKE = {"UA": 0.0, "RA": 99.5, "TA": 96.0, "MIA_efficacy": 10.0}
REFUSE = GateParams(sample=SampleGateParams(weak_evidence="refuse"))
DEFAULT = GateParams()


def figures(unseen: int, samples: int, member: float, nonmember: float = 95.0) -> AuditFigures:
    """Audit figures of a batch: `unseen` of `samples` look unseen; the probes' unseen shares (percent)."""
    return AuditFigures(
        samples=samples,
        unseen=unseen,
        unseen_share=100 * unseen / samples,
        champion_unseen_share=0.0,
        member_unseen_share=member,
        nonmember_unseen_share=nonmember,
        power=0.5,
        auc=0.8,
        alpha=0.05,
        references=16,
    )


def sample(metrics=RETRAIN_LIKE, n: int | None = 3, audit: AuditFigures | None = None, retrain=None) -> Evidence:
    return Evidence("sample", metrics, CHAMPION, retrain, n, audit)


# High power: a candidate that forgot nothing shows only 5% of the batch unseen, 20 samples.
STRONG = figures(19, 20, member=5.0)
# Low power: 3 samples; a no-op candidate shows 30% unseen, so 1 of 3 unseen already passes audit_unseen.
WEAK = figures(3, 3, member=30.0)
MATCHING = {"UA": 0.0, "RA": 100.0, "TA": 96.5}
MISMATCHING = {"UA": 0.0, "RA": 100.0, "TA": 90.0}

# name -> (evidence, gates, {gate: passed}); gates not named are not asserted.
CASES = {
    "retrain-like on 3 samples, UA 0": (sample(), DEFAULT, {"TA_drop": True, "UA": True}),
    "retrain-like on 3 samples, UA 33": (sample({**RETRAIN_LIKE, "UA": 100 / 3}), DEFAULT, {"UA": True}),
    "over-forgetting on 20 samples": (sample({**RETRAIN_LIKE, "UA": 100.0}, n=20), DEFAULT, {"UA": False}),
    "still fitted on 20 samples": (sample({**RETRAIN_LIKE, "TA": 60.0}, n=20), DEFAULT, {"UA": False}),
    "no forget-set size": (sample(n=None), DEFAULT, {"UA": False}),
    "TA drop too large": (sample({**RETRAIN_LIKE, "TA": 94.0}), DEFAULT, {"TA_drop": False, "UA": True}),
    "no audit": (sample(), DEFAULT, {"audit_unseen": False, "audit_power": False}),
    "no-op-like audit": (sample(n=20, audit=figures(0, 20, member=30.0)), DEFAULT, {"audit_unseen": False}),
    "strong evidence, forgotten": (
        sample(n=20, audit=STRONG),
        REFUSE,
        {"UA": True, "audit_unseen": True, "audit_power": True},
    ),
    "weak evidence, refuse": (
        sample(audit=WEAK, retrain=MATCHING),
        REFUSE,
        {"audit_unseen": True, "audit_power": False},
    ),
    "weak evidence, retrain, none run": (sample(audit=WEAK), DEFAULT, {"audit_power": False}),
    "weak evidence, retrain, matching": (
        sample(audit=WEAK, retrain=MATCHING),
        DEFAULT,
        {"audit_power": True, "retrain_gap": True},
    ),
    "weak evidence, retrain, mismatching": (
        sample(audit=WEAK, retrain=MISMATCHING),
        DEFAULT,
        {"audit_power": False, "retrain_gap": False},
    ),
    "class-wise, good": (
        Evidence("class_wise", {"UA": 96.0, "MIA_efficacy": 81.0, "RA": 99.0, "TA": 96.5}, CHAMPION),
        DEFAULT,
        {"TA_drop": True, "UA": True, "MIA_efficacy": True},
    ),
    "class-wise, bad": (
        Evidence("class_wise", {"UA": 40.0, "MIA_efficacy": 30.0, "RA": 99.5, "TA": 97.0}, CHAMPION),
        DEFAULT,
        {"TA_drop": True, "UA": False, "MIA_efficacy": False},
    ),
    "class-wise, too inaccurate": (
        Evidence("class_wise", {"UA": 96.0, "MIA_efficacy": 81.0, "TA": 94.0}, CHAMPION),
        DEFAULT,
        {"TA_drop": False, "UA": True, "MIA_efficacy": True},
    ),
    "class-wise, no champion": (
        Evidence("class_wise", {"UA": 96.0, "MIA_efficacy": 81.0, "TA": 96.5}, None),
        DEFAULT,
        {"TA_drop": False},
    ),
}


def by_name(results: tuple[GateResult, ...]) -> dict[str, GateResult]:
    return {result.name: result for result in results}


@pytest.mark.parametrize("name", CASES)
def test_the_gates_judge_each_case(name):
    evidence, gates, expected = CASES[name]
    results = by_name(check_gates(evidence, gates))
    assert {gate: results[gate].passed for gate in expected} == expected, [r.line() for r in results.values()]


def test_each_kind_runs_its_rules_in_order_and_retrain_gap_only_with_a_reference():
    assert [r.name for r in check_gates(sample(), DEFAULT)] == ["TA_drop", "UA", "audit_unseen", "audit_power"]
    with_retrain = check_gates(sample(retrain=MATCHING), DEFAULT)
    assert [r.name for r in with_retrain][-1] == "retrain_gap"
    class_wise = check_gates(CASES["class-wise, good"][0], DEFAULT)
    assert [r.name for r in class_wise] == ["TA_drop", "UA", "MIA_efficacy"]
    assert set(RULES) == {"sample", "class_wise"}


def test_an_unknown_kind_is_refused_naming_it():
    with pytest.raises(ConfigError, match="unknown request kind 'classwise'"):
        check_gates(Evidence("classwise", RETRAIN_LIKE), DEFAULT)  # type: ignore[arg-type]


def test_the_ua_reason_shows_the_interval_and_the_test_error():
    ua = by_name(check_gates(sample({**RETRAIN_LIKE, "TA": 96.9}), DEFAULT))["UA"]
    assert ua.reason == (
        "UA 0.0 on 3 samples (0 errors): 95% interval [0.0, 70.8] holds the test error 3.1 (tolerance 2.0)"
    )
    over = by_name(check_gates(sample({**RETRAIN_LIKE, "UA": 100.0}, n=20), DEFAULT))["UA"]
    assert "over-forgetting" in over.reason and "[83.2, 100.0]" in over.reason


def test_strong_evidence_has_power_and_a_no_op_candidate_fails_it():
    assert audit_power(STRONG, DEFAULT) >= 0.8
    assert audit_power(STRONG, DEFAULT.sample) == audit_power(STRONG, DEFAULT)
    no_op = by_name(check_gates(sample(n=20, audit=figures(1, 20, member=5.0)), REFUSE))
    assert (no_op["audit_unseen"].passed, no_op["audit_power"].passed) == (False, True)
    assert not insufficient_evidence(tuple(no_op.values()))


def test_weak_evidence_is_insufficient_and_says_how_to_certify():
    assert audit_power(WEAK, DEFAULT) < 0.8
    for gates, retrain in ((REFUSE, MATCHING), (DEFAULT, None), (DEFAULT, MATCHING), (DEFAULT, MISMATCHING)):
        results = check_gates(sample(audit=WEAK, retrain=retrain), gates)
        assert by_name(results)["audit_power"].insufficient and insufficient_evidence(results)
    none_run = by_name(check_gates(sample(audit=WEAK), DEFAULT))["audit_power"]
    assert none_run.reason == (
        "insufficient evidence: power 0.34 < 0.80 on 3 samples; certify with a Retrain reference it matches "
        "(deletion.retrain_reference: true) or --force with a reason"
    )
    no_audit = by_name(check_gates(sample(), DEFAULT))
    assert no_audit["audit_power"].insufficient and no_audit["audit_power"].value is None
    assert "no audit was recorded" in no_audit["audit_unseen"].reason
    assert "unlearn audit build" in no_audit["audit_unseen"].reason


def test_power_agrees_with_an_explicit_enumeration_and_a_simulation():
    # n = 3, floor 95 - 10 = 85: 0 unseen gives the upper end 70.8 (refused), 1 unseen 90.6 (passed),
    # so a no-op candidate (each sample unseen with probability 0.3) is caught when all 3 look seen.
    assert audit_power(WEAK, DEFAULT) == pytest.approx(0.7**3)
    middling = figures(10, 20, member=60.0)
    rng = np.random.default_rng(0)
    draws = rng.binomial(20, 0.6, size=4000)
    refused = {u: not audit_unseen_gate(sample(audit=replace(middling, unseen=u)), DEFAULT.sample).passed
               for u in range(21)}  # fmt: skip
    simulated = np.mean([refused[u] for u in draws])
    assert 0.05 < audit_power(middling, DEFAULT) < 0.95  # neither trivially 0 nor 1
    assert audit_power(middling, DEFAULT) == pytest.approx(simulated, abs=0.03)


def test_every_reason_is_one_line_and_names_its_numbers():
    for name, (evidence, gates, _) in CASES.items():
        for result in check_gates(evidence, gates):
            assert result.reason and "\n" not in result.reason, (name, result)
            assert result.reason in result.line() and "\n" not in result.line()
            if result.value is not None:
                shown = (f"{result.value:.1f}", f"{result.value:.2f}")
                assert any(text in result.reason for text in shown), (name, result)
                if result.threshold is not None:
                    shown = (f"{result.threshold:.1f}", f"{result.threshold:.2f}")
                    assert any(text in result.reason for text in shown), (name, result)


def test_the_shipped_params_hold_the_gates_per_kind():
    gates = load_params(ROOT / "params.yaml").promote
    assert isinstance(gates.sample, SampleGateParams) and isinstance(gates.class_wise, ClassWiseGateParams)
    assert gates.sample.weak_evidence in ("retrain", "refuse") and 0 < gates.sample.confidence < 1


@pytest.mark.parametrize(
    "block, value, message",
    [
        ("sample", {"min_power": 2}, "promote.sample.min_power: Input should be less than or equal to 1"),
        ("sample", {"weak_evidence": "maybe"}, "promote.sample.weak_evidence: Input should be 'retrain' or 'refuse'"),
        ("sample", {"min_ua": 90.0}, "promote.sample.min_ua: Extra inputs are not permitted"),
        ("sample", {"confidence": 1.0}, "promote.sample.confidence: Input should be less than 1"),
        ("class_wise", {"min_ua": 101}, "promote.class_wise.min_ua: Input should be less than or equal to 100"),
    ],
)
def test_a_bad_gate_is_refused_at_load_time_naming_its_key(tmp_path, block, value, message):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["promote"][block].update(value)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_params(path)
