"""Promotion gates: the rules a candidate must pass before it becomes the champion.

Pure policy: values in, verdicts out; no registry and no MLflow here. The registry stores
what a review found (`tasks.production.promotion.review`, `promote`); the thresholds are params.yaml's
`promote:` group (`GateParams`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from tasks.adapters.params import GateParams


@dataclass(frozen=True)
class GateResult:
    """One promotion gate: its rule, the value measured, and whether it passed."""

    name: str
    rule: str
    value: float | None
    threshold: float
    passed: bool

    def line(self) -> str:
        """`PASS  UA 98.50 >= 90.00` style."""
        shown = "n/a" if self.value is None else f"{self.value:.2f}"
        return f"{'PASS' if self.passed else 'FAIL'}  {self.name:<13} {shown:>8}  ({self.rule})"


def check_gates(
    candidate: Mapping[str, float], champion: Mapping[str, float] | None, gates: GateParams
) -> tuple[GateResult, ...]:
    """The promotion gates: TA drop vs the champion, UA on the batch's forget set, MIA-efficacy."""
    ta, champion_ta = candidate.get("TA"), (champion or {}).get("TA")
    drop = None if ta is None or champion_ta is None else champion_ta - ta
    ua, mia = candidate.get("UA"), candidate.get("MIA_efficacy")
    return (
        GateResult(
            "TA_drop",
            f"champion TA - TA <= {gates.max_ta_drop:.2f}",
            drop,
            gates.max_ta_drop,
            drop is not None and drop <= gates.max_ta_drop,
        ),
        GateResult("UA", f"UA >= {gates.min_ua:.2f}", ua, gates.min_ua, ua is not None and ua >= gates.min_ua),
        GateResult(
            "MIA_efficacy",
            f"MIA_efficacy >= {gates.min_mia_efficacy:.2f}",
            mia,
            gates.min_mia_efficacy,
            mia is not None and mia >= gates.min_mia_efficacy,
        ),
    )
