"""The evidence a reviewer reads on a registered version: the review as markdown, the audit as a plot.

`write_review` writes, into a batch's folder (`layout.batch_audit_dir`), beside the audit's
per-sample table `audit.csv`:

    review.md    the version against the champion (and Retrain), every gate rule with its value,
                 threshold, verdict and reason, the audit's figures and power, and one row per
                 batch sample
    review.png   left: each batch sample's candidate confidence (and the champion's) against its
                 OUT and IN Gaussians; right: the batch's unseen share against the champion's
                 before unlearning and the two probes'

The deletion batch logs the folder to the version's logged model (`registry.log_version_artifacts`),
so the MLflow UI alone shows why a version is or is not promotable.
"""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from tasks.production.audit import AUDIT_TABLE  # noqa: E402
from tasks.production.promotion import Review  # noqa: E402

REVIEW_MARKDOWN = "review.md"
REVIEW_PLOT = "review.png"
MAX_PLOTTED = 40  # samples drawn one per row; a larger batch shows its first MAX_PLOTTED


def read_audit_table(folder: Path) -> list[dict[str, str]]:
    """The rows of `audit.csv` in `folder` ([] where the batch was not audited)."""
    path = folder / AUDIT_TABLE
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _verdict(gate) -> str:
    if getattr(gate, "insufficient", False) and not gate.passed:
        return "INSUFFICIENT"
    return "PASS" if gate.passed else "FAIL"


def review_markdown(review: Review, rows: list[dict[str, str]]) -> str:
    """The review as a markdown report."""
    verdict = "promotable" if review.passed else "NOT promotable"
    lines = [f"# {review.model} v{review.version}: {verdict}", "", review.calibration_line(), ""]
    lines += ["```", review.render(), "```", "", "## Gates", "", "| rule | value | threshold | verdict | why |",
              "|---|---|---|---|---|"]  # fmt: skip
    for gate in review.gates:
        value = "n/a" if gate.value is None else f"{gate.value:.3g}"
        reason = getattr(gate, "reason", gate.rule).replace("|", "\\|")
        threshold = "n/a" if gate.threshold is None else f"{gate.threshold:.3g}"
        lines.append(f"| {gate.name} | {value} | {threshold} | {_verdict(gate)} | {reason} |")
    figures = {key.removeprefix("audit."): value for key, value in review.tags.items() if key.startswith("audit.")}
    if figures:
        lines += ["", "## Audit", "", "| figure | value |", "|---|---|"]
        lines += [f"| {name} | {value} |" for name, value in sorted(figures.items())]
    pool = {key: value for key, value in review.tags.items() if key.startswith("audit_pool.")}
    if pool:
        lines += [
            "",
            "Reference pool: " + ", ".join(f"{k.removeprefix('audit_pool.')} `{v}`" for k, v in sorted(pool.items())),
        ]
    if rows:
        lines += ["", "## Samples", "", "Logit confidence log(p / (1 - p)) on the true label; OUT / IN: mean ± std of "
                  "the reference models that did not / did train on the sample.", "",
                  "| sample | candidate | OUT | IN | p_out | log LR | candidate | champion | champion p_out |",
                  "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for row in rows:
            lines.append(
                f"| {row['sample_id']} | {float(row['candidate']):.2f} | "
                f"{float(row['out_mean']):.2f} ± {float(row['out_std']):.2f} | "
                f"{float(row['in_mean']):.2f} ± {float(row['in_std']):.2f} | {float(row['p_out']):.3g} | "
                f"{float(row['log_lr']):.2f} | {_seen(row['unseen'])} | {_seen(row['champion_unseen'])} | "
                f"{float(row['champion_p_out']):.3g} |"
            )
    else:
        lines += ["", "No per-sample audit: the champion had no reference pool (`unlearn audit build`)."]
    return "\n".join(lines) + "\n"


def _seen(flag: str) -> str:
    return "unseen" if flag == "True" else "seen"


def review_plot(review: Review, rows: list[dict[str, str]], path: Path) -> Path:
    """The audit as a figure: per-sample confidences against OUT and IN, and the shares."""
    shown = rows[:MAX_PLOTTED]
    figure, (samples, shares) = plt.subplots(
        1, 2, figsize=(11, max(3.0, 0.3 * len(shown) + 1.5)), gridspec_kw={"width_ratios": [3, 2]}
    )
    for y, row in enumerate(shown):
        for mean, std, colour in (
            (row["out_mean"], row["out_std"], "tab:blue"),
            (row["in_mean"], row["in_std"], "tab:red"),
        ):
            mean, std = float(mean), float(std)
            if mean == mean:  # nan: no IN reference
                samples.plot([mean - 2 * std, mean + 2 * std], [y, y], color=colour, alpha=0.35, linewidth=6)
                samples.plot([mean], [y], "|", color=colour, markersize=12)
        samples.plot([float(row["champion"])], [y], "x", color="grey")
        samples.plot([float(row["candidate"])], [y], "o", color="black" if row["unseen"] == "True" else "tab:orange")
    samples.set_yticks(range(len(shown)), [row["sample_id"] for row in shown], fontsize=7)
    samples.invert_yaxis()
    samples.set_xlabel("logit confidence log(p / (1 - p)) on the true label")
    samples.set_title("batch samples: candidate (dot; orange = looks seen), champion (x);\n"
                      "OUT (blue) and IN (red) references, mean ± 2 std", fontsize=9)  # fmt: skip
    labels = ["batch", "champion\nbefore", "members\n(probe)", "non-members\n(probe)"]
    keys = ["audit.unseen_share", "audit.champion_unseen_share", "audit.member_unseen_share",
            "audit.nonmember_unseen_share"]  # fmt: skip
    values = [float(review.tags.get(key, "nan")) for key in keys]
    shares.bar(labels, values, color=["black", "grey", "tab:red", "tab:blue"])
    shares.set_ylim(0, 100)
    shares.set_ylabel("samples that look unseen (%)")
    power = review.tags.get("audit.power")
    shares.set_title(f"unseen share (probe power {float(power):.2f})" if power else "not audited", fontsize=9)
    verdict = "promotable" if review.passed else "NOT promotable"
    figure.suptitle(f"{review.model} v{review.version}: {verdict}", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def write_review(review: Review, folder: Path) -> list[Path]:
    """review.md and review.png in `folder` (beside its audit.csv, if any); returns every file there to log."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = read_audit_table(folder)
    (folder / REVIEW_MARKDOWN).write_text(review_markdown(review, rows))
    review_plot(review, rows, folder / REVIEW_PLOT)
    return sorted(path for path in folder.iterdir() if path.is_file())
