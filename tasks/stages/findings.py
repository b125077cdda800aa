"""The study's findings as data: the paper's Table 3 per scenario, its findings checked, the figures.

A library: the `report` stage (tasks/stages/report.py) writes what it renders, `unlearn report`
prints it, and `unlearn tune` takes finding (c)'s cost limit from it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from tasks.adapters import layout
from tasks.adapters.params import Params, Scenario, values_text
from unlearn.errors import ConfigError
from unlearn.methods import METHODS
from unlearn.metrics import FORGETTING_METRICS, GAP_METRICS, Evaluation, compare_to_retrain

STUDY = layout.STUDY_REPORT
FIGURES = layout.FIGURES
# Finding (c): "a small fraction of Retrain's cost" made concrete.
RTE_RATIO_LIMIT = 0.25
# The approximate methods of the paper's Table 3; RL and SalUn come from the later SalUn paper.
PAPER_BASELINES = ("ft", "ga", "ff", "iu")
METHOD_LABELS = {name: spec.label for name, spec in METHODS.items()}  # each module's SPEC.label
METRIC_LABELS = {name: name.replace("_", "-") for name in GAP_METRICS}  # MIA_efficacy: MIA-efficacy

Summary = dict[str, float]  # one sparsity of one method: means, stds, seeds
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


def metric_cell(summary: Summary, metric: str, gap: float | None) -> str:
    """`mean±std (gap)`, as the paper's Table 3; Retrain's cells carry no gap."""
    text = f"{summary[metric]:.2f}±{summary[f'{metric}_std']:.2f}"
    return text if gap is None else f"{text} ({gap:.2f})"


def table_row(results: ScenarioResults, method: str, sparsity: float) -> str:
    """One method's row at one sparsity: four metric cells, the average gap, RTE and its ratio."""
    summary = results[method][layout.sparsity_tag(sparsity)]
    compared = compare_at(results, method, sparsity)
    own = method == "retrain"
    cells = [metric_cell(summary, m, None if own else compared[f"{m}_gap"]) for m in GAP_METRICS]
    rte = f"{summary['RTE_seconds']:.2f}±{summary['RTE_seconds_std']:.2f} ({compared['RTE_ratio']:.2f}×)"
    return "| " + " | ".join([label(method), *cells, f"{compared['avg_gap']:.2f}", rte]) + " |"


def sparsity_table(results: ScenarioResults, sparsity: float) -> str:
    """The paper's Table 3 at one sparsity: a row per method."""
    tag = layout.sparsity_tag(sparsity)
    retrain_percent = results["retrain"][tag].get("sparsity_percent", 100 * sparsity)
    lines = [
        f"### {sparsity_label(sparsity).capitalize()} (Retrain's model: {retrain_percent:.1f}% zero weights)",
        "",
        "| MU | " + " | ".join(METRIC_LABELS.values()) + " | Avg. gap | RTE s (× Retrain) |",
        "|---" * (len(GAP_METRICS) + 3) + "|",
    ]
    lines += [table_row(results, method, sparsity) for method in results]
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


def sparsity_lowers_ft_gap(params: Params, results: ScenarioResults) -> Finding:
    """(a) FT's average gap at the highest sparsity is below its gap at the lowest (dense)."""
    low, high = min(params.prune.sparsities), max(params.prune.sparsities)
    claim = f"(a) Sparsity lowers FT's average gap ({sparsity_label(high)} vs {sparsity_label(low)})"
    if "ft" not in results:
        return not_checked(claim, "FT not in this run")
    if low == high:
        return not_checked(claim, "the run studies a single sparsity")
    sparse, dense = gap_of(results, "ft", high), gap_of(results, "ft", low)
    relation = "<" if sparse < dense else ">="
    return Finding(claim, verdict(sparse < dense), f"FT: {sparse:.2f} {relation} {dense:.2f}")


def l1_smallest_gap(params: Params, results: ScenarioResults) -> Finding:
    """(b) ℓ1-sparse's average gap is strictly below every paper baseline's, on the lowest sparsity."""
    low = min(params.prune.sparsities)
    claim = f"(b) ℓ1-sparse's average gap is below every other paper method's ({sparsity_label(low)})"
    rivals = [m for m in PAPER_BASELINES if m in results]
    if "l1_sparse" not in results:
        return not_checked(claim, "ℓ1-sparse not in this run")
    if not rivals:
        return not_checked(claim, "none of FT, GA, FF, IU in this run")
    gaps = {m: gap_of(results, m, low) for m in ("l1_sparse", *rivals)}
    holds = all(gaps["l1_sparse"] < gaps[m] for m in rivals)
    evidence = "avg. gaps: " + ", ".join(f"{label(m)} {gap:.2f}" for m, gap in gaps.items())
    extras = [m for m in results if m not in ("retrain", "l1_sparse", *PAPER_BASELINES)]
    if extras:
        others = ", ".join(f"{label(m)} {gap_of(results, m, low):.2f}" for m in extras)
        evidence += f"; from the SalUn paper, not part of the claim: {others}"
    return Finding(claim, verdict(holds), evidence)


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
    return (
        "# Study: model sparsity and machine unlearning\n\n"
        f"Mean ± std over {seeds_text(study)} seeds. In parentheses: the gap |mean − Retrain's mean| at "
        "the same sparsity, in percentage points. Avg. gap = the paper's Disparity Ave., the mean of "
        "the four gaps (UA, MIA-efficacy, RA, TA). RTE = wall seconds of the unlearning, with its "
        f"ratio to Retrain's at the same sparsity. Pruner: {params.prune.method}."
    )


def scenario_section(params: Params, scenario: str, results: ScenarioResults, figures: list[Path]) -> str:
    """One scenario: a Table 3 per sparsity, the gap summary, the findings, the figures."""
    parts = [f"## Scenario `{scenario}`: {describe(params.split.scenarios[scenario])}"]
    parts += [sparsity_table(results, sparsity) for sparsity in params.prune.sparsities]
    parts.append(gap_table(params, results))
    checked = "\n".join(finding.as_markdown() for finding in findings(params, results))
    parts.append(f"### Findings of the paper, checked on this run\n\n{checked}")
    for path in figures:
        parts.append(f"![{path.stem}]({path.relative_to(STUDY.parent).as_posix()})\n\n*{figure_caption(path)}*")
    return "\n\n".join(parts)


def tuning_searches(params: Params) -> list[dict]:
    """The tuning record's searches for this study's preset, scenarios and methods, in table order."""
    record = json.loads(layout.TUNING_RECORD.read_text()) if layout.TUNING_RECORD.is_file() else {}
    methods, scenarios = study_methods(params), list(params.split.scenarios)
    searches = [
        search
        for search in record.values()
        if search["preset"] == params.data.preset and search["scenario"] in scenarios and search["method"] in methods
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
        "with each method's defaults and with the values `tuned` in params.yaml holds; the study above "
        "ran with the tuned values where a sparsity has them, with the defaults elsewhere.",
        "",
    ]
    searches = tuning_searches(params)
    if not searches:
        return "\n".join([*lines, f"No search recorded in `{layout.TUNING_RECORD}` for this preset."])
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


def render(params: Params, study: Study, figures: dict[str, list[Path]] | None = None) -> str:
    """The whole report as markdown; figure links only for the scenarios in `figures`."""
    sections = [header(params, study)]
    for scenario, results in study.items():
        sections.append(scenario_section(params, scenario, results, (figures or {}).get(scenario, [])))
    sections.append(tuning_section(params))
    return "\n\n".join(sections) + "\n"


def report_tables(params: Params) -> str:
    """The report's markdown without figure links (what `make run` prints)."""
    return render(params, load_study(params))
