"""Promotion gates: the rules a candidate must pass before it becomes the champion, per kind of request.

Pure policy: values in, verdicts out; no registry and no MLflow here. The caller reads the
`Evidence` off the version's tags (`tasks.production.promotion.review`), the registry stores
what a review found; the thresholds are params.yaml's `promote:` group (`GateParams`), one
block per request kind. `RULES` is the table: which rules judge which kind, in order.

Why two kinds. A batch that deletes whole classes must leave the model unable to predict them:
UA (error on the forget set) near 100 and MIA-efficacy high. A batch of arbitrary samples must
leave the model as retraining without them would: it then errs on them about as often as on
any unseen sample, i.e. UA about its own test error, and the membership audit
(`unlearn.audit`) finds them about as "unseen" as its non-member probe. For a few samples these
shares are coarse, so each is read as a Clopper-Pearson interval (`unlearn.audit.binomial_interval`);
and where the audit could not tell a candidate that forgot nothing on this many samples (its
power, `audit_power`, below `min_power`), the evidence is insufficient and `weak_evidence` says
what certifies the candidate: matching a Retrain reference, or nothing (only a forced promotion).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal, get_args

from scipy.stats import binom

from tasks.adapters.params import ClassWiseGateParams, GateParams, SampleGateParams
from unlearn.audit import AuditFigures, binomial_interval
from unlearn.errors import ConfigError

RequestKind = Literal["sample", "class_wise"]
REQUEST_KINDS: tuple[str, ...] = get_args(RequestKind)


@dataclass(frozen=True)
class Evidence:
    """What a review knows about a version (plain values, read off registry tags by the caller)."""

    kind: RequestKind  # class_wise: the batch deleted whole classes; sample: anything else
    metrics: Mapping[str, float]  # the version's UA, RA, TA, MIA_efficacy (percent)
    champion: Mapping[str, float] | None = None  # the champion's metrics (its TA), None without champion
    retrain: Mapping[str, float] | None = None  # a Retrain reference on the same split, None if not run
    forget_samples: int | None = None  # n: samples of the batch's forget set (UA's denominator)
    audit: AuditFigures | None = None  # the batch's membership audit under the version, None: no audit


@dataclass(frozen=True)
class GateResult:
    """One promotion gate: its rule, the value measured, whether it passed, and why (one line, with the numbers).

    `insufficient`: the evidence could not decide this gate (the audit's power on the batch is
    too low); `passed` then says whether the `weak_evidence` policy certified the candidate anyway.
    """

    name: str
    rule: str
    value: float | None
    threshold: float | None
    passed: bool
    reason: str = ""
    insufficient: bool = False

    def line(self) -> str:
        """`PASS  UA      98.50  (UA >= 90.00): UA 98.5 >= 90.0` style."""
        shown = "n/a" if self.value is None else f"{self.value:.2f}"
        verdict = "PASS" if self.passed else "FAIL"
        return f"{verdict}  {self.name:<13} {shown:>8}  ({self.rule}): {self.reason}"


# A rule: the evidence and its kind's gate params in, a verdict out (None: the rule does not apply).
Rule = Callable[[Evidence, SampleGateParams | ClassWiseGateParams], GateResult | None]


def _shown(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}" if isinstance(value, float) else str(value)


def _percent(confidence: float) -> str:
    return f"{100 * confidence:g}%"


def _interval(successes: int, trials: int, confidence: float) -> tuple[float, float]:
    """`binomial_interval` in percent."""
    low, high = binomial_interval(successes, trials, confidence)
    return 100 * low, 100 * high


def _ua_interval(ua: float, samples: int, confidence: float) -> tuple[int, float, float]:
    """The errors k behind UA on `samples` and the interval of the error rate (percent)."""
    errors = min(max(round(ua / 100 * samples), 0), samples)
    return (errors, *_interval(errors, samples, confidence))


# --- the rules ---------------------------------------------------------------------------


def ta_drop_gate(evidence: Evidence, gates: SampleGateParams | ClassWiseGateParams) -> GateResult:
    """The champion's TA minus the version's at most `max_ta_drop`."""
    limit = gates.max_ta_drop
    rule = f"champion TA - TA <= {limit:.2f}"
    ta, champion_ta = evidence.metrics.get("TA"), (evidence.champion or {}).get("TA")
    if ta is None:
        return GateResult("TA_drop", rule, None, limit, False, f"the version records no TA (drop at most {limit:.1f})")
    if champion_ta is None:
        reason = f"TA {ta:.1f} but no champion TA to compare with (drop at most {limit:.1f})"
        return GateResult("TA_drop", rule, None, limit, False, reason)
    drop = champion_ta - ta
    passed = drop <= limit
    reason = f"TA {ta:.1f} vs the champion's {champion_ta:.1f}: drop {drop:.1f} {'<=' if passed else '>'} {limit:.1f}"
    return GateResult("TA_drop", rule, drop, limit, passed, reason)


def ua_interval_gate(evidence: Evidence, gates: SampleGateParams) -> GateResult:
    """The test error (100 - TA) within the interval of UA on the batch's n samples, +- `ua_tolerance`."""
    tolerance, confidence = gates.ua_tolerance, gates.confidence
    rule = f"100 - TA in UA's {_percent(confidence)} interval +- {tolerance:.2f}"
    ua, ta, samples = evidence.metrics.get("UA"), evidence.metrics.get("TA"), evidence.forget_samples
    missing = [what for what, value in (("UA", ua), ("TA", ta), ("forget-set size", samples)) if value is None]
    if missing or samples < 1:
        known = f"UA {_shown(ua)}, TA {_shown(ta)} on {_shown(samples)} samples"
        why = f"no {', no '.join(missing)} recorded" if missing else "no samples"
        reason = f"{known}: {why}, so the test error cannot be held to UA's interval (tolerance {tolerance:.1f})"
        return GateResult("UA", rule, ua, tolerance, False, reason)
    errors, low, high = _ua_interval(ua, samples, confidence)
    test_error = 100 - ta
    interval = f"{_percent(confidence)} interval [{low:.1f}, {high:.1f}]"
    head = f"UA {ua:.1f} on {samples} samples ({errors} error{'' if errors == 1 else 's'}): {interval}"
    if test_error > high + tolerance:
        why = f"lies below the test error {test_error:.1f} by more than {tolerance:.1f}: the batch is still fitted"
        return GateResult("UA", rule, ua, tolerance, False, f"{head} {why}")
    if test_error < low - tolerance:
        why = f"lies above the test error {test_error:.1f} by more than {tolerance:.1f}: over-forgetting"
        return GateResult("UA", rule, ua, tolerance, False, f"{head} {why}")
    reason = f"{head} holds the test error {test_error:.1f} (tolerance {tolerance:.1f})"
    return GateResult("UA", rule, ua, tolerance, True, reason)


def _unseen_high(unseen: int, samples: int, confidence: float) -> float:
    """The upper end (percent) of the interval of the batch's unseen share."""
    return _interval(unseen, samples, confidence)[1]


def _unseen_floor(figures: AuditFigures, gates: SampleGateParams) -> float:
    return figures.nonmember_unseen_share - gates.unseen_tolerance


def audit_unseen_gate(evidence: Evidence, gates: SampleGateParams) -> GateResult:
    """The upper end of the unseen share's interval at least the non-member probe's share - `unseen_tolerance`."""
    rule = f"unseen share's {_percent(gates.confidence)} upper end >= non-member share - {gates.unseen_tolerance:.2f}"
    figures = evidence.audit
    if figures is None:
        reason = "no audit was recorded (the champion has no reference pool: `unlearn audit build`)"
        return GateResult("audit_unseen", rule, None, None, False, reason)
    floor = _unseen_floor(figures, gates)
    high = _unseen_high(figures.unseen, figures.samples, gates.confidence)
    passed = high >= floor
    reason = (
        f"unseen {figures.unseen} of {figures.samples}: {_percent(gates.confidence)} upper end {high:.1f} "
        f"{'>=' if passed else '<'} non-member share {figures.nonmember_unseen_share:.1f} - "
        f"{gates.unseen_tolerance:.1f} = {floor:.1f}"
    )
    return GateResult("audit_unseen", rule, high, floor, passed, reason)


def _sample_params(gates: SampleGateParams | GateParams) -> SampleGateParams:
    return gates.sample if isinstance(gates, GateParams) else gates


def audit_power(figures: AuditFigures, gates: SampleGateParams | GateParams) -> float:
    """P(`audit_unseen_gate` fails) for a candidate that forgot nothing, on this batch's n samples.

    Such a candidate shows each batch sample unseen as often as its member probe does:
    q = member_unseen_share / 100; its unseen count U ~ Binomial(n, q), and the power is the
    binomial mass of the counts u that the gate refuses. The upper end of u's interval grows with
    u, so the refused counts are 0 .. u* - 1.
    """
    params = _sample_params(gates)
    samples, floor = figures.samples, _unseen_floor(figures, params)
    share = min(max(figures.member_unseen_share / 100, 0.0), 1.0)
    refused = 0
    while refused <= samples and _unseen_high(refused, samples, params.confidence) < floor:
        refused += 1
    return float(binom.cdf(refused - 1, samples, share)) if refused else 0.0


def retrain_gap_gate(evidence: Evidence, gates: SampleGateParams) -> GateResult | None:
    """TA and RA within `max_retrain_gap` of Retrain's, Retrain's UA in the version's UA interval +- `ua_tolerance`.

    Present only where a Retrain reference was run (`deletion.retrain_reference: true`).
    """
    if evidence.retrain is None:
        return None
    limit, tolerance = gates.max_retrain_gap, gates.ua_tolerance
    rule = f"|TA - TA_r|, |RA - RA_r| <= {limit:.2f}; UA_r in UA's interval +- {tolerance:.2f}"
    ours, theirs, samples = evidence.metrics, evidence.retrain, evidence.forget_samples
    needed = [f"{metric}{side}" for metric in ("UA", "RA", "TA") for side, values in (("", ours), ("_r", theirs))
              if values.get(metric) is None]  # fmt: skip
    if needed or samples is None or samples < 1:
        missing = ", ".join(needed + ([] if samples is not None and samples >= 1 else ["forget-set size"]))
        return GateResult("retrain_gap", rule, None, limit, False, f"cannot compare with Retrain: no {missing}")
    ta_gap, ra_gap = abs(ours["TA"] - theirs["TA"]), abs(ours["RA"] - theirs["RA"])
    _, low, high = _ua_interval(ours["UA"], samples, gates.confidence)
    ua_in = low - tolerance <= theirs["UA"] <= high + tolerance
    gap = max(ta_gap, ra_gap)
    passed = gap <= limit and ua_in
    reason = (
        f"TA gap {ta_gap:.1f}, RA gap {ra_gap:.1f} ({'<=' if gap <= limit else '>'} {limit:.1f}); Retrain's UA "
        f"{theirs['UA']:.1f} {'in' if ua_in else 'outside'} [{low:.1f}, {high:.1f}] +- {tolerance:.1f}"
    )
    return GateResult("retrain_gap", rule, gap, limit, passed, reason)


def audit_power_gate(evidence: Evidence, gates: SampleGateParams) -> GateResult:
    """Sufficient evidence (audit power >= `min_power`), else what `weak_evidence` certifies."""
    rule = f"audit power >= {gates.min_power:.2f}, else weak_evidence: {gates.weak_evidence}"
    figures = evidence.audit
    power = None if figures is None else audit_power(figures, gates)
    if figures is not None and power >= gates.min_power:
        reason = (
            f"sufficient evidence: power {power:.2f} >= {gates.min_power:.2f} on {figures.samples} samples "
            f"(a candidate that forgot nothing, member share {figures.member_unseen_share:.1f}, fails audit_unseen)"
        )
        return GateResult("audit_power", rule, power, gates.min_power, True, reason)
    head = (
        f"insufficient evidence: no audit recorded (power n/a, {gates.min_power:.2f} needed)"
        if figures is None
        else f"insufficient evidence: power {power:.2f} < {gates.min_power:.2f} on {figures.samples} samples"
    )
    if gates.weak_evidence == "refuse":
        reason = f"{head}; weak_evidence is refuse: promote only with --force and a reason"
        return GateResult("audit_power", rule, power, gates.min_power, False, reason, insufficient=True)
    match = retrain_gap_gate(evidence, gates)
    if match is None:
        reason = (
            f"{head}; certify with a Retrain reference it matches (deletion.retrain_reference: true) "
            "or --force with a reason"
        )
        return GateResult("audit_power", rule, power, gates.min_power, False, reason, insufficient=True)
    if match.passed:
        reason = f"{head}; certified by matching the Retrain reference ({match.reason})"
    else:
        reason = f"{head}; the Retrain reference does not match ({match.reason}): --force with a reason"
    return GateResult("audit_power", rule, power, gates.min_power, match.passed, reason, insufficient=True)


def ua_floor_gate(evidence: Evidence, gates: ClassWiseGateParams) -> GateResult:
    """UA on the batch's forget set (whole classes) at least `min_ua`."""
    return _floor("UA", evidence.metrics.get("UA"), gates.min_ua)


def mia_efficacy_gate(evidence: Evidence, gates: ClassWiseGateParams) -> GateResult:
    """MIA-efficacy on the batch's forget set at least `min_mia_efficacy`."""
    return _floor("MIA_efficacy", evidence.metrics.get("MIA_efficacy"), gates.min_mia_efficacy)


def _floor(metric: str, value: float | None, floor: float) -> GateResult:
    rule = f"{metric} >= {floor:.2f}"
    if value is None:
        return GateResult(metric, rule, None, floor, False, f"the version records no {metric} (at least {floor:.1f})")
    passed = value >= floor
    return GateResult(metric, rule, value, floor, passed, f"{metric} {value:.1f} {'>=' if passed else '<'} {floor:.1f}")


# The table: which rules judge which kind of request, in order.
RULES: dict[RequestKind, tuple[Rule, ...]] = {
    "sample": (ta_drop_gate, ua_interval_gate, audit_unseen_gate, audit_power_gate, retrain_gap_gate),
    "class_wise": (ta_drop_gate, ua_floor_gate, mia_efficacy_gate),
}


def check_gates(evidence: Evidence, gates: GateParams) -> tuple[GateResult, ...]:
    """The promotion gates of `evidence.kind` (`RULES`), each with the params of its kind (`gates.<kind>`)."""
    if evidence.kind not in RULES:
        raise ConfigError(f"unknown request kind {evidence.kind!r}; known: {', '.join(RULES)}")
    params = getattr(gates, evidence.kind)
    results = (rule(evidence, params) for rule in RULES[evidence.kind])
    return tuple(result for result in results if result is not None)


def insufficient_evidence(results: tuple[GateResult, ...]) -> bool:
    """Whether some gate could not be decided on the evidence (see `GateResult.insufficient`)."""
    return any(result.insufficient for result in results)
