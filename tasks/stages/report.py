"""Stage `report`: the paper's Table 3, Fig. 5 radar and findings, checked on this run.

Reads metrics/<scenario>/<method>.json (the evaluate stages) for every scenario and method,
writes reports/study.md and its figures in reports/figures/ (PNG, matplotlib's Agg canvas).
"""

from __future__ import annotations

from pathlib import Path

from tasks.adapters.params import Params
from tasks.stages.entry import stage_main
from tasks.stages.findings import FIGURES, STUDY, draw_figures, load_study, render


def build_report(params: Params) -> Path:
    """Write reports/study.md and reports/figures/*.png; returns the markdown's path."""
    study = load_study(params)
    for stale in FIGURES.glob("*.png"):
        stale.unlink()
    figures = {scenario: draw_figures(params, scenario, results) for scenario, results in study.items()}
    STUDY.parent.mkdir(parents=True, exist_ok=True)
    STUDY.write_text(render(params, study, figures))
    return STUDY


if __name__ == "__main__":
    stage_main(__doc__, build_report)
