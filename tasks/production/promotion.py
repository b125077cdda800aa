"""Review and promotion: a version against the champion and the gates, and the one way the champion moves.

Policy over the registry: the gates are `tasks.production.gates` (pure rules), the registry
(`tasks.adapters.registry`) stores versions, tags and aliases; this module decides. A
promotion needs a reviewer; a version that fails a gate, is older than the candidate, or
does not descend from the champion is promoted only with `force` and a reason, and the
record says so.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion

from tasks.adapters import tracking
from tasks.adapters.params import PARAMS_FILE, GateParams, Params, load_params, values_text
from tasks.adapters.registry import (
    AUDIT_PREFIX,
    BATCH_TAG,
    CALIBRATION_STATUS_TAG,
    CALIBRATION_VALUES_PREFIX,
    CANDIDATE,
    CHAMPION,
    DELETION_KIND_TAG,
    FORGET_SAMPLES_TAG,
    METHOD_TAG,
    PARENT_TAG,
    PROMOTION_PREFIX,
    PURGED_PREFIX,
    PURGED_TAG,
    REQUEST_COUNT_TAG,
    REQUEST_IDS_TAG,
    RETRAIN_PREFIX,
    RETRAIN_VERSION_TAG,
    SPARSITY_TAG,
    PromotionError,
    VersionNotFoundError,
    ancestors,
    get_version,
    record_promotion,
    tag_metrics,
    version_by_alias,
    version_metrics,
)
from tasks.production.gates import Evidence, GateResult, check_gates, insufficient_evidence
from unlearn.audit import AuditError, AuditFigures
from unlearn.metrics import HEADLINE_METRICS

log = logging.getLogger(__name__)


class GateFailedError(PromotionError):
    """A candidate that fails promotion gates; `failed` names them."""

    def __init__(self, message: str, failed: Sequence[GateResult]) -> None:
        super().__init__(message)
        self.failed = tuple(failed)


def load_gates(params_path: str | Path = PARAMS_FILE) -> GateParams:
    """The promotion gates of params.yaml (`promote:`), or the defaults where there is no file."""
    return load_params(params_path).promote if Path(params_path).is_file() else GateParams()


@dataclass(frozen=True)
class Review:
    """A version against the champion (and a retrained reference) with its gate results and their evidence."""

    model: str
    version: str
    champion: str | None
    metrics: dict[str, dict[str, float | None]]  # metric -> {"version", "champion", "retrain"}
    gates: tuple[GateResult, ...]
    tags: dict[str, str] = field(default_factory=dict)
    evidence: Evidence | None = None

    @property
    def passed(self) -> bool:
        return all(gate.passed for gate in self.gates)

    @property
    def failed(self) -> tuple[GateResult, ...]:
        return tuple(gate for gate in self.gates if not gate.passed)

    @property
    def insufficient(self) -> bool:
        """Whether the evidence could not decide some gate (the audit's power on the batch is too low)."""
        return insufficient_evidence(self.gates)

    def evidence_line(self) -> str:
        """`evidence: sufficient (audit power 0.97 on 20 samples)` style."""
        kind = self.evidence.kind if self.evidence else "sample"
        if kind == "class_wise":
            return "evidence: class_wise batch (whole classes: UA and MIA-efficacy floors, no audit power)"
        power = next((gate.value for gate in self.gates if gate.name == "audit_power"), None)
        audit = self.evidence.audit if self.evidence else None
        verdict = "insufficient" if self.insufficient else "sufficient"
        if audit is None or power is None:
            return f"evidence: {verdict} (no audit recorded: audit power n/a)"
        return f"evidence: {verdict} (audit power {power:.2f} on {audit.samples} samples)"

    def calibration_line(self) -> str:
        """Which settings the version's method ran with, and why (`calibration_line`)."""
        return calibration_line(self.tags)

    def render(self) -> str:
        """A plain-text table for the terminal."""

        def cell(value: float | None) -> str:
            return f"{value:>10.2f}" if value is not None else f"{'-':>10}"

        champion = f"v{self.champion}" if self.champion else "none"
        requests = self.tags.get(REQUEST_IDS_TAG, "-").replace(",", ", ")
        lines = [
            f"{self.model}: version {self.version} vs champion {champion}",
            f"  method {self.tags.get(METHOD_TAG, '-')}, sparsity {self.tags.get(SPARSITY_TAG, '-')}, "
            f"parent v{self.tags.get(PARENT_TAG, '-')}, batch {self.tags.get(BATCH_TAG, '-')}",
            f"  requests ({self.tags.get(REQUEST_COUNT_TAG, '0')}): {requests}",
            f"  {'metric':<13}{'v' + self.version:>10}{'champion':>10}{'retrain':>10}",
        ]
        lines += [
            f"  {name:<13}{cell(row['version'])}{cell(row['champion'])}{cell(row['retrain'])}"
            for name, row in self.metrics.items()
        ]
        kind = self.evidence.kind if self.evidence else "-"
        lines.append(f"  gates ({kind} request):")
        lines += [f"    {gate.line()}" for gate in self.gates]
        lines.append(f"  {self.evidence_line()}")
        lines.append(f"  {self.calibration_line()}")
        audit = self.evidence.audit if self.evidence else None
        if audit is not None:
            lines.append(
                f"  audit: {audit.unseen} of {audit.samples} samples look unseen ({audit.unseen_share:.1f}%; "
                f"the champion before: {audit.champion_unseen_share:.1f}%; probes: members "
                f"{audit.member_unseen_share:.1f}%, non-members {audit.nonmember_unseen_share:.1f}%; "
                f"probe AUC {audit.auc:.2f}; {audit.references} references, alpha {audit.alpha:g})"
            )
        if self.tags.get("audit_pool.stale") == "true":
            share = 100 * float(self.tags.get("audit_pool.deleted_share", "nan"))
            lines.append(f"  warning: the reference pool is stale ({share:.1f}% of its training samples deleted "
                         "since it was built): rebuild it with `unlearn audit build`")  # fmt: skip
        lines.append(f"  verdict: {'promotable' if self.passed else 'NOT promotable'}")
        return "\n".join(lines)


def calibration_line(tags: dict[str, str]) -> str:
    """`calibration: calibrated on shapes at 2026-12-07, values lr 0.12, epochs 1 (2.9 x Retrain)`, from the tags a
    version inherits from its champion (`tasks.adapters.registry`, `calibration.*`); "uncalibrated" where
    none were found on the data set: no calibration recorded, switched off, or the method not among those calibrated.
    """
    status, method = tags.get(CALIBRATION_STATUS_TAG), tags.get(METHOD_TAG)
    dataset, when = tags.get("calibration.dataset", "?"), tags.get("calibration.date", "?")
    reason = tags.get("calibration.reason", "")
    found = {
        key.removeprefix(CALIBRATION_VALUES_PREFIX): value
        for key, value in tags.items()
        if key.startswith(CALIBRATION_VALUES_PREFIX) and (method is None or key.endswith(f".{method}"))
    }
    shown = "; ".join(f"{name}: {_values(text)}" if method is None else _values(text) for name, text in found.items())
    if status == "calibrated" and found:
        cost = tags.get("calibration.cost_retrains")
        return (f"calibration: calibrated on {dataset} at {when}, values {shown}"
                + (f" ({cost} x Retrain)" if cost else ""))  # fmt: skip
    if status == "calibrated":
        return (f"calibration: uncalibrated (the calibration on {dataset} at {when} found no values for {method}: "
                "not among calibrate.methods, or no trial within calibrate.max_cost_share)")  # fmt: skip
    if status == "skipped" and reason.startswith("tuned values"):
        return f"calibration: skipped ({reason}), values {shown or '-'}"
    if status == "skipped":
        return f"calibration: uncalibrated (skipped: {reason}), values {shown or '-'}"
    return "calibration: uncalibrated (no calibration recorded: preset defaults, tuned values or unlearn.settings)"


def _values(text: str) -> str:
    try:
        return values_text(json.loads(text))
    except (json.JSONDecodeError, AttributeError):
        return text


def _retrain_metrics(version: ModelVersion, store: MlflowClient) -> dict[str, float]:
    """The retrained reference: `retrain.*` tags, else the `metrics.*` of `retrain_version`."""
    reference = tag_metrics(version.tags, RETRAIN_PREFIX)
    if reference or RETRAIN_VERSION_TAG not in version.tags:
        return reference
    return version_metrics(get_version(version.name, version.tags[RETRAIN_VERSION_TAG], store), store)


def evidence_of(
    version: ModelVersion, champion: ModelVersion | None, retrain: dict[str, float] | None = None
) -> Evidence:
    """What the gates judge, read off the version's tags: request kind, metrics, forget-set size, audit.

    A version without `deletion.kind` is judged as a batch of arbitrary samples ("sample").
    """
    tags = version.tags
    samples = tags.get(FORGET_SAMPLES_TAG)
    audit_tags = {key.removeprefix(AUDIT_PREFIX): value for key, value in tags.items() if key.startswith(AUDIT_PREFIX)}
    try:
        audit = AuditFigures.from_dict(audit_tags) if audit_tags else None
    except (AuditError, ValueError) as error:
        where = f"{version.name} v{version.version}"
        raise PromotionError(f"{where}: its {AUDIT_PREFIX}* tags are unreadable: {error}") from error
    return Evidence(
        kind=tags.get(DELETION_KIND_TAG, "sample"),
        metrics=version_metrics(version),
        champion=version_metrics(champion) if champion else None,
        retrain=retrain or None,
        forget_samples=int(samples) if samples is not None else None,
        audit=audit,
    )


def review(
    version: str | int | None = None,
    *,
    name: str,
    gates: GateParams | None = None,
    store: MlflowClient | None = None,
) -> Review:
    """Compare `version` (default: the candidate) with the champion and check the gates."""
    store = store or tracking.client()
    if version is None:
        candidate = version_by_alias(name, CANDIDATE, store)
        if candidate is None:
            raise VersionNotFoundError(
                f"{name} has no {CANDIDATE!r} version: register an unlearned model first, or name one with --version"
            )
    else:
        candidate = get_version(name, version, store)
    champion = version_by_alias(name, CHAMPION, store)
    ours, theirs = version_metrics(candidate, store), version_metrics(champion, store) if champion else None
    retrain = _retrain_metrics(candidate, store)
    table = {
        metric: {
            "version": ours.get(metric),
            "champion": (theirs or {}).get(metric),
            "retrain": retrain.get(metric),
        }
        for metric in HEADLINE_METRICS
    }
    evidence = evidence_of(candidate, champion, retrain)
    results = check_gates(evidence, gates or load_gates())
    return Review(
        name,
        str(candidate.version),
        str(champion.version) if champion else None,
        table,
        results,
        dict(candidate.tags),
        evidence,
    )


@dataclass(frozen=True)
class Promotion:
    """A completed promotion, as recorded on the version."""

    model: str
    version: str
    previous: str | None
    reviewer: str
    time: str
    reason: str
    forced: bool
    gates: tuple[GateResult, ...]
    warnings: tuple[str, ...] = ()


def _promotion_tags(promotion: Promotion) -> dict[str, str]:
    gates = {
        g.name: {
            "passed": g.passed,
            "value": g.value,
            "threshold": g.threshold,
            "reason": g.reason,
            "insufficient": g.insufficient,
        }
        for g in promotion.gates
    }
    warnings = {f"{PROMOTION_PREFIX}warnings": " | ".join(promotion.warnings)} if promotion.warnings else {}
    return {
        **warnings,
        f"{PROMOTION_PREFIX}reviewer": promotion.reviewer,
        f"{PROMOTION_PREFIX}time": promotion.time,
        f"{PROMOTION_PREFIX}reason": promotion.reason,
        f"{PROMOTION_PREFIX}forced": str(promotion.forced).lower(),
        f"{PROMOTION_PREFIX}gates": json.dumps(gates, sort_keys=True),
        f"{PROMOTION_PREFIX}previous_champion": promotion.previous or "",
    }


def promote(
    version: str | int,
    reviewer: str,
    reason: str | None = None,
    force: bool = False,
    *,
    name: str,
    gates: GateParams | None = None,
    store: MlflowClient | None = None,
    params: Params | None = None,
) -> Promotion:
    """Make `version` the champion if it passes the gates (or `force` with a reason); record who and why.

    Args:
        params: with `retention.purge: on_promotion`, purge right after the champion moved
            (`tasks.production.purge.purge_after_promotion`); None: no purge here.
    """
    store = store or tracking.client()
    if not reviewer.strip():
        raise PromotionError("a promotion needs a reviewer: pass --reviewer NAME")
    if force and not (reason or "").strip():
        raise PromotionError("a forced promotion needs a reason: pass --reason TEXT with --force")
    result = review(version, name=name, gates=gates, store=store)
    if result.champion == result.version:
        raise PromotionError(f"{name} version {result.version} is already the champion")
    if result.tags.get(PURGED_TAG) == "true":
        raise PromotionError(
            f"{name} version {result.version} was purged {result.tags.get(f'{PURGED_PREFIX}at', '')}: its model "
            "files are deleted (it held deleted samples), so it can never serve again"
        )
    if result.failed and not force:
        names = ", ".join(gate.name for gate in result.failed)
        details = "; ".join(gate.line() for gate in result.failed)
        raise GateFailedError(
            f"{name} version {result.version} fails gates {names}: {details}. "
            "Fix the model, or pass --force with --reason to override.",
            result.failed,
        )
    warnings = lineage_warnings(name, result.version, result.champion, store)
    if warnings and not force:
        raise PromotionError(
            f"{name} version {result.version}: {'; '.join(warnings)}. Promote the candidate made from the "
            "champion, or pass --force with --reason to promote this one anyway (recorded as forced)."
        )
    for warning in warnings:
        log.warning("%s: forced promotion of v%s: %s", name, result.version, warning)
    promotion = Promotion(
        name,
        result.version,
        result.champion,
        reviewer.strip(),
        datetime.now(UTC).isoformat(timespec="seconds"),
        (reason or "").strip(),
        force,
        result.gates,
        tuple(warnings),
    )
    record_promotion(promotion.model, promotion.version, _promotion_tags(promotion), store)
    log.info(
        "%s: champion v%s -> v%s by %s%s",
        name,
        promotion.previous,
        promotion.version,
        promotion.reviewer,
        " (forced)" if force else "",
    )
    if params is not None:
        from tasks.production.purge import purge_after_promotion

        purge_after_promotion(params, promotion)
    return promotion


def lineage_warnings(name: str, version: str, champion: str | None, store: MlflowClient | None = None) -> list[str]:
    """Why promoting `version` could undo deletions: older than the candidate, or not made from the champion."""
    store = store or tracking.client()
    warnings = []
    candidate = version_by_alias(name, CANDIDATE, store)
    if candidate is not None and int(version) < int(candidate.version):
        warnings.append(f"v{version} is older than the candidate v{candidate.version}")
    if champion is not None and champion not in ancestors(name, version, store):
        warnings.append(
            f"v{version} is not descended from the champion v{champion}, so it may not have forgotten "
            "what the champion forgot"
        )
    return warnings
