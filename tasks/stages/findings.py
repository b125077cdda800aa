"""The study's findings as data: the paper's Table 3 per scenario, its findings checked, the figures.

A library: the `report` stage (tasks/stages/report.py) writes what it renders, `unlearn report`
prints it, and `unlearn tune` takes finding (c)'s cost limit from it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from tasks.adapters import layout
from tasks.adapters.params import Params, Scenario, values_text
from unlearn.errors import ConfigError
from unlearn.methods import METHODS
from unlearn.metrics import (
    FORGETTING_METRICS,
    GAP_METRICS,
    MIA_CHANCE,
    MIA_POWER_FOLDS,
    Evaluation,
    compare_to_retrain,
    metric_gaps,
    near_chance,
)

STUDY = layout.STUDY_REPORT
FIGURES = layout.FIGURES
# Finding (c): "a small fraction of Retrain's cost" made concrete.
RTE_RATIO_LIMIT = 0.25
# The approximate methods of the paper's Table 3; RL and SalUn come from the later SalUn paper.
PAPER_BASELINES = ("ft", "ga", "ff", "iu")
METHOD_LABELS = {name: spec.label for name, spec in METHODS.items()}  # each module's SPEC.label
METRIC_LABELS = {name: name.replace("_", "-") for name in GAP_METRICS}  # MIA_efficacy: MIA-efficacy
# Marks an MIA-efficacy cell where some seed's attack is near chance (`near_chance`).
NEAR_CHANCE_MARK = "†"

Summary = dict  # one sparsity of one method: means, stds, seeds, and per_seed: seed -> its values
MethodResults = dict[str, Summary]  # sparsity tag -> summary
ScenarioResults = dict[str, MethodResults]  # method -> its results
Study = dict[str, ScenarioResults]  # scenario -> its results


@dataclass(frozen=True)
class Finding:
    """One of the paper's claims checked on this run: "holds", "does not hold" or "not checked"."""

    claim: str
    verdict: str
    evidence: str

    def as_markdown(self) -> str:
        return f"- **{self.claim}**: {self.verdict} ({self.evidence})."


def label(method: str) -> str:
    return METHOD_LABELS.get(method, method)


def study_methods(params: Params) -> list[str]:
    """Retrain first, then the approximate methods in params order."""
    return ["retrain", *(m for m in params.unlearn.methods if m != "retrain")]


def sparsity_label(sparsity: float) -> str:
    """`dense` or `95% sparse`."""
    return "dense" if sparsity == 0 else f"{100 * sparsity:g}% sparse"


def evaluate_stage(scenario: str, method: str) -> str:
    """The dvc.yaml stage that writes `method`'s metrics in `scenario`."""
    return f"evaluate_retrain@{scenario}" if method == "retrain" else f"evaluate@{scenario}-{method}"


def load_method(params: Params, scenario: str, method: str) -> MethodResults:
    """One metrics file, checked to hold every sparsity of `prune.sparsities`."""
    path = layout.metrics_path(scenario, method)
    rerun = f"run the evaluate stage first (`dvc repro {evaluate_stage(scenario, method)}`)"
    if not path.is_file():
        raise ConfigError(f"{path} is missing: {rerun}")
    results = json.loads(path.read_text())
    tags = [layout.sparsity_tag(s) for s in params.prune.sparsities]
    missing = [tag for tag in tags if tag not in results]
    if missing:
        raise ConfigError(f"{path} has no entry for sparsities {missing}: {rerun}")
    stale = [tag for tag in tags if not results[tag].get("per_seed")]
    if stale:
        raise ConfigError(f"{path} has no per-seed values for sparsities {stale} (an older evaluate): {rerun}")
    return {tag: results[tag] for tag in tags}


def load_scenario(params: Params, scenario: str) -> ScenarioResults:
    return {method: load_method(params, scenario, method) for method in study_methods(params)}


def load_study(params: Params) -> Study:
    """Every scenario's results, in params order."""
    return {scenario: load_scenario(params, scenario) for scenario in params.split.scenarios}


def comparison(summary: Summary, retrain: Summary) -> dict[str, float]:
    """<metric>_gap, avg_gap (Disparity Ave.) and RTE_ratio against Retrain at the same sparsity.

    Rows are matched by the sparsity asked for, so the achieved-sparsity check is off (ℓ1-sparse
    may zero further weights).
    """
    return compare_to_retrain(Evaluation.from_dict(summary), Evaluation.from_dict(retrain), None)


def compare_at(results: ScenarioResults, method: str, sparsity: float) -> dict[str, float]:
    """`comparison` of `method` against Retrain at `sparsity`."""
    tag = layout.sparsity_tag(sparsity)
    return comparison(results[method][tag], results["retrain"][tag])


def gap_of(results: ScenarioResults, method: str, sparsity: float) -> float:
    """Average gap (Disparity Ave.) of `method` at `sparsity`."""
    return compare_at(results, method, sparsity)["avg_gap"]


def rte_ratio_at(results: ScenarioResults, method: str, sparsity: float) -> float:
    """RTE of `method` over Retrain's, at `sparsity`."""
    return compare_at(results, method, sparsity)["RTE_ratio"]


def seed_gaps(summary: Summary, retrain: Summary) -> dict[str, dict[str, float]]:
    """Per seed (in the order recorded): |its metric − Retrain's mean| for UA, MIA_efficacy, RA, TA,
    and their mean, `avg_gap`."""
    reference = Evaluation.from_dict(retrain)
    gaps = {}
    for seed, row in summary["per_seed"].items():
        values = metric_gaps(Evaluation.from_dict(row), reference, None)
        gaps[seed] = {**values, "avg_gap": float(np.mean(list(values.values())))}
    return gaps


def worst_seed(gaps: dict[str, dict[str, float]], name: str) -> str:
    """The seed whose `name` (a metric's gap, or `avg_gap`) is largest; the first recorded of equals."""
    return max(gaps, key=lambda seed: gaps[seed][name])


def seed_powers(summary: Summary) -> dict[str, float | None]:
    """Each seed's MIA-efficacy attack power (percent; None where it was not measured)."""
    return {seed: row.get("MIA_power") for seed, row in summary["per_seed"].items()}


def near_chance_seeds(summary: Summary, margin: float) -> list[str]:
    """The seeds whose attack is near chance: power below MIA_CHANCE + `margin`, or unmeasured."""
    return [seed for seed, power in seed_powers(summary).items() if near_chance(power, margin)]


def power_text(summary: Summary, margin: float) -> str:
    """`power 51.2–74.0 †`: the attack's power, lowest–highest over seeds, † if a seed is near chance."""
    measured = [power for power in seed_powers(summary).values() if power is not None]
    if not measured:
        text = "power n/a"
    elif min(measured) == max(measured):
        text = f"power {measured[0]:.1f}"
    else:
        text = f"power {min(measured):.1f}–{max(measured):.1f}"
    return f"{text} {NEAR_CHANCE_MARK}" if near_chance_seeds(summary, margin) else text


def metric_cell(summary: Summary, metric: str, gap: float | None, worst: str | None = None) -> str:
    """`mean±std (gap), worst value (seed k)`: the paper's Table 3 cell and its worst seed.

    Retrain's cells carry no gap and no worst seed (`worst` None).
    """
    text = f"{summary[metric]:.2f}±{summary[f'{metric}_std']:.2f}"
    if gap is not None:
        text += f" ({gap:.2f})"
    if worst is not None:
        text += f", worst {summary['per_seed'][worst][metric]:.2f} (seed {worst})"
    return text


def table_row(results: ScenarioResults, method: str, sparsity: float, margin: float) -> str:
    """One method's row at one sparsity: four metric cells (MIA-efficacy's with its attack's power),
    the average gap with its worst seed, RTE and its ratio. Worst seeds only where there are two or more."""
    tag = layout.sparsity_tag(sparsity)
    summary = results[method][tag]
    compared = compare_at(results, method, sparsity)
    own = method == "retrain"
    gaps = None if own or len(summary["per_seed"]) < 2 else seed_gaps(summary, results["retrain"][tag])
    cells = []
    for metric in GAP_METRICS:
        worst = worst_seed(gaps, metric) if gaps else None
        cell = metric_cell(summary, metric, None if own else compared[f"{metric}_gap"], worst)
        cells.append(f"{cell}; {power_text(summary, margin)}" if metric == "MIA_efficacy" else cell)
    average = f"{compared['avg_gap']:.2f}"
    if gaps:
        worst = worst_seed(gaps, "avg_gap")
        average += f", worst {gaps[worst]['avg_gap']:.2f} (seed {worst})"
    rte = f"{summary['RTE_seconds']:.2f}±{summary['RTE_seconds_std']:.2f} ({compared['RTE_ratio']:.2f}×)"
    return "| " + " | ".join([label(method), *cells, average, rte]) + " |"


def seeds_listed(seeds: list[str]) -> str:
    """`seed 2` or `seeds 0, 2`."""
    return f"seed{'s' if len(seeds) > 1 else ''} {', '.join(seeds)}"


def chance_threshold(margin: float) -> str:
    return f"attack power below {MIA_CHANCE + margin:g}%"


def near_chance_note(scenario: str, results: ScenarioResults, sparsity: float, margin: float) -> str:
    """The table's footnote: every (method, seed) of `scenario` at `sparsity` whose attack is near chance."""
    tag = layout.sparsity_tag(sparsity)
    flagged = [(method, near_chance_seeds(by_tag[tag], margin)) for method, by_tag in results.items()]
    listed = "; ".join(f"{label(method)} {seeds_listed(seeds)}" for method, seeds in flagged if seeds)
    where = f"`{scenario}`, {sparsity_label(sparsity)}"
    if not listed:
        return f"{NEAR_CHANCE_MARK} Near-chance MIA ({chance_threshold(margin)}) in {where}: no seed."
    return (
        f"{NEAR_CHANCE_MARK} Near-chance MIA ({chance_threshold(margin)}) in {where}: {listed}. "
        "There the attack cannot tell retained from test samples, and its MIA-efficacy says nothing about forgetting."
    )


def sparsity_table(scenario: str, results: ScenarioResults, sparsity: float, margin: float) -> str:
    """The paper's Table 3 at one sparsity: a row per method, and the near-chance footnote."""
    tag = layout.sparsity_tag(sparsity)
    retrain_percent = results["retrain"][tag].get("sparsity_percent", 100 * sparsity)
    lines = [
        f"### {sparsity_label(sparsity).capitalize()} (Retrain's model: {retrain_percent:.1f}% zero weights)",
        "",
        "| MU | " + " | ".join(METRIC_LABELS.values()) + " | Avg. gap | RTE s (× Retrain) |",
        "|---" * (len(GAP_METRICS) + 3) + "|",
    ]
    lines += [table_row(results, method, sparsity, margin) for method in results]
    lines += ["", near_chance_note(scenario, results, sparsity, margin)]
    return "\n".join(lines)


def gap_table(params: Params, results: ScenarioResults) -> str:
    """Average gap (Disparity Ave.) of each approximate method at every sparsity."""
    sparsities = params.prune.sparsities
    lines = [
        "### Avg. gap to Retrain by sparsity",
        "",
        "| MU | " + " | ".join(sparsity_label(s) for s in sparsities) + " |",
        "|---" * (len(sparsities) + 1) + "|",
    ]
    for method in list(results)[1:]:
        gaps = [f"{gap_of(results, method, s):.2f}" for s in sparsities]
        lines.append("| " + " | ".join([label(method), *gaps]) + " |")
    return "\n".join(lines)


def describe(scenario: Scenario) -> str:
    """What a scenario forgets, in words."""
    if scenario.kind == "class_wise":
        return f"class-wise forgetting of class(es) {', '.join(map(str, scenario.classes))}"
    return f"random forgetting of {scenario.fraction:.0%} of the training set (seed {scenario.seed})"


def verdict(holds: bool) -> str:
    return "holds" if holds else "does not hold"


def not_checked(claim: str, why: str) -> Finding:
    return Finding(claim, "not checked", why)


def sound_gap(results: ScenarioResults, method: str, sparsity: float, margin: float) -> float:
    """The average gap without the MIA-efficacy of seeds whose attack is near chance.

    MIA-efficacy's mean is taken, for `method` and for Retrain, over the seeds whose attack is not
    near chance; where either has no such seed, the MIA-efficacy term is left out (mean of UA, RA, TA).
    """
    tag = layout.sparsity_tag(sparsity)
    gaps = compare_at(results, method, sparsity)
    terms = [gaps[f"{metric}_gap"] for metric in GAP_METRICS if metric != "MIA_efficacy"]

    def sound_mean(summary: Summary) -> float | None:
        flagged = near_chance_seeds(summary, margin)
        kept = [row["MIA_efficacy"] for seed, row in summary["per_seed"].items() if seed not in flagged]
        return float(np.mean(kept)) if kept else None

    mine, theirs = sound_mean(results[method][tag]), sound_mean(results["retrain"][tag])
    if mine is not None and theirs is not None:
        terms.append(abs(mine - theirs))
    return float(np.mean(terms))


def chance_caveat(
    results: ScenarioResults, compared: list[tuple[str, float]], margin: float, recheck: Callable[..., tuple[bool, str]]
) -> str:
    """What near-chance seeds do to a finding that compares the average gaps of `compared` (method, sparsity).

    Empty where no seed of these methods, or of Retrain at these sparsities, has a near-chance attack.
    Otherwise names them, and rechecks the finding with `sound_gap` in place of the average gap:
    `recheck(gap_of)` returns (holds, evidence) with `gap_of(method, sparsity)`.
    """
    rows = list(dict.fromkeys([*compared, *(("retrain", sparsity) for _, sparsity in compared)]))
    flagged = [
        f"{label(method)} {sparsity_label(sparsity)} {seeds_listed(seeds)}"
        for method, sparsity in rows
        if (seeds := near_chance_seeds(results[method][layout.sparsity_tag(sparsity)], margin))
    ]
    if not flagged:
        return ""
    holds, evidence = recheck(lambda method, sparsity: sound_gap(results, method, sparsity, margin))
    return (
        f"; near-chance MIA ({chance_threshold(margin)}) in these gaps: {'; '.join(flagged)}. "
        f"Without those seeds' MIA-efficacy: {evidence}, it would {'hold' if holds else 'not hold'}"
    )


def sparsity_lowers_ft_gap(params: Params, results: ScenarioResults) -> Finding:
    """(a) FT's average gap at the highest sparsity is below its gap at the lowest (dense)."""
    low, high = min(params.prune.sparsities), max(params.prune.sparsities)
    claim = f"(a) Sparsity lowers FT's average gap ({sparsity_label(high)} vs {sparsity_label(low)})"
    if "ft" not in results:
        return not_checked(claim, "FT not in this run")
    if low == high:
        return not_checked(claim, "the run studies a single sparsity")

    def check(gap: Callable[[str, float], float]) -> tuple[bool, str]:
        sparse, dense = gap("ft", high), gap("ft", low)
        return sparse < dense, f"FT: {sparse:.2f} {'<' if sparse < dense else '>='} {dense:.2f}"

    holds, evidence = check(lambda method, sparsity: gap_of(results, method, sparsity))
    caveat = chance_caveat(results, [("ft", high), ("ft", low)], params.evaluate.mia_chance_margin, check)
    return Finding(claim, verdict(holds), evidence + caveat)


def l1_smallest_gap(params: Params, results: ScenarioResults) -> Finding:
    """(b) ℓ1-sparse's average gap is strictly below every paper baseline's, on the lowest sparsity."""
    low = min(params.prune.sparsities)
    claim = f"(b) ℓ1-sparse's average gap is below every other paper method's ({sparsity_label(low)})"
    rivals = [m for m in PAPER_BASELINES if m in results]
    if "l1_sparse" not in results:
        return not_checked(claim, "ℓ1-sparse not in this run")
    if not rivals:
        return not_checked(claim, "none of FT, GA, FF, IU in this run")

    def check(gap: Callable[[str, float], float]) -> tuple[bool, str]:
        gaps = {m: gap(m, low) for m in ("l1_sparse", *rivals)}
        holds = all(gaps["l1_sparse"] < gaps[m] for m in rivals)
        return holds, "avg. gaps: " + ", ".join(f"{label(m)} {value:.2f}" for m, value in gaps.items())

    holds, evidence = check(lambda method, sparsity: gap_of(results, method, sparsity))
    extras = [m for m in results if m not in ("retrain", "l1_sparse", *PAPER_BASELINES)]
    if extras:
        others = ", ".join(f"{label(m)} {gap_of(results, m, low):.2f}" for m in extras)
        evidence += f"; from the SalUn paper, not part of the claim: {others}"
    compared = [(m, low) for m in ("l1_sparse", *rivals)]
    caveat = chance_caveat(results, compared, params.evaluate.mia_chance_margin, check)
    return Finding(claim, verdict(holds), evidence + caveat)


def cheap_methods(params: Params, results: ScenarioResults) -> Finding:
    """(c) FT's and ℓ1-sparse's RTE is at most RTE_RATIO_LIMIT × Retrain's at every sparsity."""
    claim = f"(c) FT and ℓ1-sparse cost at most {RTE_RATIO_LIMIT:.2f}× Retrain's RTE, at every sparsity"
    present = [m for m in ("ft", "l1_sparse") if m in results]
    if not present:
        return not_checked(claim, "FT and ℓ1-sparse not in this run")
    worst = {m: max((rte_ratio_at(results, m, s), s) for s in params.prune.sparsities) for m in present}
    holds = all(ratio <= RTE_RATIO_LIMIT for ratio, _ in worst.values())
    evidence = "largest ratio: " + ", ".join(
        f"{label(m)} {ratio:.2f}× ({sparsity_label(s)})" for m, (ratio, s) in worst.items()
    )
    absent = [label(m) for m in ("ft", "l1_sparse") if m not in results]
    return Finding(claim, verdict(holds), evidence + "".join(f"; {m} not in this run" for m in absent))


def findings(params: Params, results: ScenarioResults) -> list[Finding]:
    """The paper's findings (a), (b), (c) checked on one scenario."""
    return [check(params, results) for check in (sparsity_lowers_ft_gap, l1_smallest_gap, cheap_methods)]


def radar_values(results: ScenarioResults, method: str, sparsity: float) -> list[float]:
    """UA, MIA-efficacy, RA, TA and RTE efficiency = 100 × (1 − RTE / Retrain's RTE), clipped to 0..100."""
    summary = results[method][layout.sparsity_tag(sparsity)]
    efficiency = 100 * (1 - rte_ratio_at(results, method, sparsity))
    return [summary[metric] for metric in GAP_METRICS] + [min(100.0, max(0.0, efficiency))]


# What the radar's spokes are (radar_values): short on the panels, spelled out in the caption.
RADAR_SPOKES = ["UA", "MIA-eff.", "RA", "TA", "RTE eff."]
RADAR_CAPTION = (
    "Each panel: one method (colour) against Retrain (black, dashed) at the sparsity in its title. "
    "Spokes UA, MIA-eff. (MIA-efficacy), RA, TA: the method's mean over seeds in %, 0 at the centre, "
    "100 at the rim; not a gap: the closer a polygon lies to Retrain's, the closer the method is to "
    "Retrain, and larger is not better by itself (random forgetting's Retrain has a low UA). "
    "RTE eff. = 100 × (1 − RTE / Retrain's RTE), clipped to 0–100: larger is cheaper than Retrain "
    "(Retrain itself: 0)."
)
SPARSITY_CAPTION = (
    "Mean ± std over seeds at each sparsity studied (evenly spaced categories, not to scale); "
    "bars clipped to 0–100%; methods side by side at each sparsity; Retrain (dashed) is the target."
)


def method_style(method: str, methods: list[str]) -> dict:
    """One color per method, the same in every figure; Retrain black and dashed."""
    if method == "retrain":
        return {"color": "black", "linestyle": "--"}
    others = [m for m in methods if m != "retrain"]
    return {"color": f"C{others.index(method) % 10}", "linestyle": "-"}


def radar_sparsities(params: Params) -> list[float]:
    """The radar's rows: the lowest sparsity studied (dense when studied) and the highest."""
    low, high = min(params.prune.sparsities), max(params.prune.sparsities)
    return [low] if low == high else [low, high]


def radar_plot(params: Params, scenario: str, results: ScenarioResults) -> Figure:
    """The paper's Fig. 5 as small multiples: a radar per method (columns) and sparsity (rows), on Retrain's."""
    sparsities, methods = radar_sparsities(params), list(results)
    shown = [m for m in methods if m != "retrain"] or methods
    angles = np.linspace(0, 2 * np.pi, len(RADAR_SPOKES), endpoint=False)
    closed = np.append(angles, angles[0])
    figure = Figure(figsize=(2.3 * len(shown) + 1.6, 2.7 * len(sparsities) + 1.3), layout="constrained")
    FigureCanvasAgg(figure)
    grid = figure.subplots(len(sparsities), len(shown), subplot_kw={"projection": "polar"}, squeeze=False)
    for row, sparsity in zip(grid, sparsities, strict=True):
        for axes, method in zip(row, shown, strict=True):
            for drawn in dict.fromkeys(["retrain", method]):
                values = radar_values(results, drawn, sparsity)
                style = method_style(drawn, methods)
                polygon = [*values, values[0]]
                on_top = 3 if drawn == "retrain" else 2  # Retrain's dashes show where the method matches it
                axes.plot(closed, polygon, marker="o", markersize=2.5, linewidth=1.3, zorder=on_top, label=label(drawn),
                          **style)  # fmt: skip
                axes.fill(closed, polygon, color=style["color"], alpha=0.06 if drawn == "retrain" else 0.15)
            axes.set_xticks(angles, RADAR_SPOKES, fontsize="x-small")
            axes.tick_params(axis="x", pad=-1)
            axes.set_ylim(0, 100)
            axes.set_yticks([50, 100], [])  # rings at 50% and 100%
            axes.set_title(f"{label(method)}, {sparsity_label(sparsity)}", fontsize="small", pad=10)
    handles = {}
    for axes in figure.axes:
        handles.update(zip(*reversed(axes.get_legend_handles_labels()), strict=True))
    figure.legend(handles.values(), handles.keys(), loc="outside right center", title="method", fontsize="small")
    figure.suptitle(f"{scenario}: each method against Retrain, dense and sparsest")
    figure.supxlabel(RADAR_CAPTION, fontsize="small", wrap=True)
    return figure


def clipped_errors(means: list[float], stds: list[float], low: float = 0.0, high: float = 100.0) -> np.ndarray:
    """± std as (lower, upper) bar lengths that stop at `low` and `high` (a percentage's range)."""
    mean, std = np.asarray(means, dtype=float), np.asarray(stds, dtype=float)
    return np.stack([np.clip(np.minimum(std, mean - low), 0, None), np.clip(np.minimum(std, high - mean), 0, None)])


def percent_limits(bottoms: list[float], tops: list[float]) -> tuple[float, float]:
    """y limits on a 10-point grid around the bars' ends, within 0..100."""
    bottom = max(0.0, 10 * np.floor((min(bottoms) - 3) / 10))
    top = min(100.0, 10 * np.ceil((max(tops) + 3) / 10))
    return float(bottom), float(top)


def sparsity_ticks(sparsities: list[float]) -> list[str]:
    """`0%`, `50%`, `90%`, `95%`: the categories of the by-sparsity plots."""
    return [f"{100 * s:g}%" for s in sparsities]


def sparsity_plot(params: Params, scenario: str, results: ScenarioResults) -> Figure:
    """UA and MIA-efficacy (mean ± std, clipped to 0..100) at each sparsity, a line per method."""
    sparsities = params.prune.sparsities
    methods = list(results)
    positions = np.arange(len(sparsities), dtype=float)
    spread = 0.5 / max(1, len(methods) - 1)  # methods side by side within ±0.25 of their category
    figure = Figure(figsize=(11, 4.4), layout="constrained")
    FigureCanvasAgg(figure)
    for axes, metric in zip(figure.subplots(1, 2), FORGETTING_METRICS, strict=True):
        bottoms, tops = [], []
        for index, method in enumerate(methods):
            rows = [results[method][layout.sparsity_tag(s)] for s in sparsities]
            means, stds = [r[metric] for r in rows], [r[f"{metric}_std"] for r in rows]
            errors = clipped_errors(means, stds)
            bottoms += list(np.asarray(means) - errors[0])
            tops += list(np.asarray(means) + errors[1])
            offset = (index - (len(methods) - 1) / 2) * spread
            bars = axes.errorbar(positions + offset, means, yerr=errors, marker="o", markersize=4, capsize=2.5,
                                 label=label(method), **method_style(method, methods))  # fmt: skip
            for artist in bars.get_children():  # a mean of 0 or 100 sits on the frame, shown whole
                artist.set_clip_on(False)
        axes.set_xticks(positions, sparsity_ticks(sparsities))
        axes.set_xlim(-0.5, len(sparsities) - 0.5)
        axes.set_ylim(*percent_limits(bottoms, tops))
        axes.grid(axis="y", alpha=0.3)
        axes.set(xlabel="sparsity (share of weights pruned)", ylabel=f"{METRIC_LABELS[metric]} (%)",
                 title=METRIC_LABELS[metric])  # fmt: skip
    handles, labels = figure.axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside right center", title="method")
    figure.suptitle(f"{scenario}: forgetting against sparsity")
    figure.supxlabel(SPARSITY_CAPTION, fontsize="small", wrap=True)
    return figure


def save(figure: Figure, path: Path) -> Path:
    figure.savefig(path, dpi=110, bbox_inches="tight")
    return path


def draw_figures(params: Params, scenario: str, results: ScenarioResults) -> list[Path]:
    """The scenario's radar (lowest and highest sparsity) and by-sparsity plots."""
    FIGURES.mkdir(parents=True, exist_ok=True)
    return [
        save(radar_plot(params, scenario, results), FIGURES / f"{scenario}_radar.png"),
        save(sparsity_plot(params, scenario, results), FIGURES / f"{scenario}_by_sparsity.png"),
    ]


def figure_caption(path: Path) -> str:
    """The report's caption under a figure of draw_figures."""
    return RADAR_CAPTION if path.stem.endswith("_radar") else SPARSITY_CAPTION


def seeds_text(study: Study) -> str:
    """`3` or, where metrics files disagree, `2–3`."""
    rows = [row for results in study.values() for by_tag in results.values() for row in by_tag.values()]
    counts = sorted({int(row["seeds"]) for row in rows})
    return str(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"


def header(params: Params, study: Study) -> str:
    """Title and how to read the tables."""
    margin = params.evaluate.mia_chance_margin
    return (
        "# Study: model sparsity and machine unlearning\n\n"
        f"Mean ± std over {seeds_text(study)} seeds. In parentheses: the gap |mean − Retrain's mean| at "
        "the same sparsity, in percentage points. Avg. gap = the paper's Disparity Ave., the mean of "
        "the four gaps (UA, MIA-efficacy, RA, TA). RTE = wall seconds of the unlearning, with its "
        f"ratio to Retrain's at the same sparsity. Pruner: {params.prune.method}.\n\n"
        "*Worst* (where a method has two or more seeds): in a metric's cell, the seed whose value lies "
        "farthest from Retrain's mean at the same sparsity, with that value; in Avg. gap, the seed "
        "whose own average gap (the mean of its four distances to Retrain's means) is largest, with "
        "that gap. *Power*: the MIA-efficacy attack's own balanced accuracy on the samples it was "
        f"fitted on, retained (members) against test (non-members), {MIA_POWER_FOLDS}-fold "
        f"cross-validated, lowest–highest over seeds; {MIA_CHANCE:g} is chance. {NEAR_CHANCE_MARK} marks "
        f"a cell where some seed's attack is near chance, its power below {MIA_CHANCE + margin:g}% "
        f"(`evaluate.mia_chance_margin`: {margin:g} points over chance): that seed's MIA-efficacy "
        "measures the attack, not the forgetting. The "
        "note under each table names those seeds; MIA-efficacy itself is computed as the paper does, "
        "every seed counted."
    )


def scenario_section(params: Params, scenario: str, results: ScenarioResults, figures: list[Path]) -> str:
    """One scenario: a Table 3 per sparsity, the gap summary, the findings, the figures."""
    parts = [f"## Scenario `{scenario}`: {describe(params.split.scenarios[scenario])}"]
    margin = params.evaluate.mia_chance_margin
    parts += [sparsity_table(scenario, results, sparsity, margin) for sparsity in params.prune.sparsities]
    parts.append(gap_table(params, results))
    checked = "\n".join(finding.as_markdown() for finding in findings(params, results))
    parts.append(f"### Findings of the paper, checked on this run\n\n{checked}")
    for path in figures:
        parts.append(f"![{path.stem}]({path.relative_to(STUDY.parent).as_posix()})\n\n*{figure_caption(path)}*")
    return "\n\n".join(parts)


def tuning_searches(params: Params) -> list[dict]:
    """The tuning record's searches for this study's data set, scenarios and methods, in table order."""
    record = json.loads(layout.TUNING_RECORD.read_text()) if layout.TUNING_RECORD.is_file() else {}
    methods, scenarios = study_methods(params), list(params.split.scenarios)
    searches = [
        search
        for search in record.values()
        if search.get("dataset", search["preset"]) == params.data.dataset  # older records: the preset's own data
        and search["scenario"] in scenarios
        and search["method"] in methods
    ]
    return sorted(searches, key=lambda s: (methods.index(s["method"]), scenarios.index(s["scenario"]), s["sparsity"]))


def tuning_cell(trial: dict | None) -> str:
    if trial is None:
        return "–"
    over = "" if trial["within_budget"] else ", over budget"
    return f"{trial['gap']:.2f} ({trial['cost_share']:.2f}× Retrain{over})"


def tuning_section(params: Params) -> str:
    """Each method's gap to Retrain with its paper defaults and with its tuned values (`unlearn tune`)."""
    lines = [
        "## Tuned hyperparameters (`unlearn tune`)",
        "",
        "Avg. gap to Retrain on the tuning folds (forgetting disjoint from the reported forget set), "
        "with each method's defaults and with the values `tuned` in params.yaml holds; which values the "
        "study above ran with, the method settings table says.",
        "",
    ]
    searches = tuning_searches(params)
    if not searches:
        return "\n".join([*lines, f"No search recorded in `{layout.TUNING_RECORD}` for {params.data.dataset}."])
    lines += [
        "| method | scenario | sparsity | defaults: gap | tuned values | tuned: gap | trials |",
        "|---|---|---|---|---|---|---|",
    ]
    for search in searches:
        tuned = search["tuned"]
        cells = [label(search["method"]), search["scenario"], sparsity_label(search["sparsity"]),
                 tuning_cell(search["defaults"]), values_text(tuned["values"]), tuning_cell(tuned),
                 str(search["trials"])]  # fmt: skip
        lines.append(f"| {' | '.join(cells)} |")
    return "\n".join(lines)


def settings_source(params: Params, scenario: str, method: str, sparsity: float) -> tuple[str, dict]:
    """Which values `method` ran with (what `tasks.stages.unlearn` took) and the calibration's entry."""
    from tasks.adapters.params import tuned_settings
    from tasks.adapters.workspace import study_calibration

    entry = study_calibration(scenario, method, sparsity)
    if entry.get("status") == "calibrated":
        source = f"calibrated on {entry['dataset']}: {values_text(entry['values'])}"
    elif tuned_settings(params, method, scenario, sparsity):
        source = "tuned"
    else:
        source = "preset defaults"
    if params.unlearn.settings.get(method):
        source += " + unlearn.settings"
    return source, entry


def settings_section(params: Params) -> str:
    """Per method, scenario and sparsity: tuned values, values calibrated on the data set, or preset defaults."""
    sparsities = params.prune.sparsities
    lines = [
        "## Method settings",
        "",
        f"What each method ran with on {params.data.dataset}: `tuned` (params.yaml, `unlearn tune`), values the "
        "`calibrate` stage found on this data set (tuning folds disjoint from the reported forget set), or "
        "the preset defaults; `unlearn.settings` overrides any of them.",
        "",
        f"| method | scenario | {' | '.join(sparsity_label(s) for s in sparsities)} |",
        f"|---|---|{'---|' * len(sparsities)}",
    ]
    costs: dict[str, str] = {}
    unsearched: dict[str, dict[str, None]] = {}  # reason -> the methods it kept from calibration
    for method in study_methods(params)[1:]:
        for scenario in params.split.scenarios:
            cells = []
            for sparsity in sparsities:
                source, entry = settings_source(params, scenario, method, sparsity)
                cells.append(source)
                if entry.get("status") == "calibrated":
                    key = f"`{scenario}`, {sparsity_label(sparsity)}"
                    costs[key] = (f"calibrated `{scenario}`, {sparsity_label(sparsity)} on {entry['dataset']} "
                                  f"({entry['date']}): {entry['cost_retrains']:.2f} Retrains")  # fmt: skip
                elif entry.get("status") in ("skipped", "uncalibrated"):
                    unsearched.setdefault(entry["reason"], {})[label(method)] = None
            lines.append(f"| {label(method)} | {scenario} | {' | '.join(cells)} |")
    notes = [*costs.values(), *(f"not calibrated, {why}: {', '.join(found)}" for why, found in unsearched.items())]
    if notes:
        lines += ["", *(f"- {note}" for note in notes)]
    return "\n".join(lines)


def render(params: Params, study: Study, figures: dict[str, list[Path]] | None = None) -> str:
    """The whole report as markdown; figure links only for the scenarios in `figures`."""
    sections = [header(params, study)]
    for scenario, results in study.items():
        sections.append(scenario_section(params, scenario, results, (figures or {}).get(scenario, [])))
    sections.append(settings_section(params))
    sections.append(tuning_section(params))
    return "\n\n".join(sections) + "\n"


def report_tables(params: Params) -> str:
    """The report's markdown without figure links (what `make run` prints)."""
    return render(params, load_study(params))
