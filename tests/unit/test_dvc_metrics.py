"""`dvc metrics show` is one table: every DVC metric is a flat file of the headline means.

The evaluate stages write per scenario, method and sparsity one summary file (UA, MIA_efficacy,
RA, TA, RTE_seconds) and declare their folder as the DVC metric; the per-method results the report
reads, and the backdoor and transfer summaries, are plain outs. So the table has a row per
scenario, method and sparsity and a column per headline metric, whatever params.yaml studies.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import yaml
from dvc.dvcfile import load_file
from dvc.repo import Repo

from tasks.adapters import layout
from tasks.stages.evaluate import write_results
from unlearn.metrics import HEADLINE_METRICS

ROOT = Path(__file__).resolve().parents[2]
DVC = Path(sys.executable).parent / "dvc"
WIDTH_LIMIT = 160  # characters of `dvc metrics show`'s widest line (it was 2,895 with mixed layouts)


def study_grid() -> tuple[list[str], list[str], list[float]]:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    methods = ["retrain", *params["unlearn"]["methods"]]
    return list(params["split"]["scenarios"]), methods, params["prune"]["sparsities"]


def fake_summary(sparsity: float, value: float) -> dict[str, float]:
    """One sparsity's entry as evaluate_method builds it: means, stds, seeds."""
    row = {"sparsity": sparsity, "seeds": 3, "sparsity_percent": 100 * sparsity}
    for name in HEADLINE_METRICS:
        row.update({name: value, f"{name}_std": 1.234567})
    return row


def test_every_dvc_metric_is_an_evaluate_stages_summary_folder():
    with Repo(str(ROOT)) as repo:
        stages = list(load_file(repo, str(ROOT / "dvc.yaml")).stages.values())
    metrics = {Path(out.def_path).as_posix() for stage in stages for out in stage.outs if out.metric}
    plain = {Path(out.def_path).as_posix() for stage in stages for out in stage.outs if not out.metric}
    scenarios, methods, _ = study_grid()
    assert metrics == {layout.summary_dir(s, m).as_posix() for s in scenarios for m in methods}
    assert {layout.metrics_path(s, m).as_posix() for s in scenarios for m in methods} <= plain  # the report's input
    assert {layout.BACKDOOR_SUMMARY.as_posix(), layout.TRANSFER_METRICS.as_posix()} <= plain
    assert "metrics" not in yaml.safe_load((ROOT / "dvc.yaml").read_text())  # no top-level metrics either


def test_a_summary_file_holds_the_headline_means_of_one_sparsity(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_results("random", "ft", {"s0.0": fake_summary(0.0, 97.52513), "s0.5": fake_summary(0.5, 3.14159)})
    assert sorted(p.name for p in layout.summary_dir("random", "ft").iterdir()) == ["s0.0.json", "s0.5.json"]
    summary = json.loads(layout.summary_path("random", "ft", 0.0).read_text())
    assert list(summary) == list(HEADLINE_METRICS)
    assert summary == {"UA": 97.53, "MIA_efficacy": 97.53, "RA": 97.53, "TA": 97.53, "RTE_seconds": 97.525}
    assert json.loads(layout.metrics_path("random", "ft").read_text())["s0.5"]["UA_std"] == 1.234567  # unrounded
    write_results("random", "ft", {"s0.9": fake_summary(0.9, 1.0)})  # a sparsity dropped from the study
    assert [p.name for p in layout.summary_dir("random", "ft").iterdir()] == ["s0.9.json"]


def test_dvc_metrics_show_is_one_narrow_table_a_row_per_scenario_method_and_sparsity(tmp_path, monkeypatch):
    repo = tmp_path / "study"
    Repo.init(str(repo), no_scm=True).close()
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / name, repo / name)
    monkeypatch.chdir(repo)
    scenarios, methods, sparsities = study_grid()
    widest = json.dumps(dict.fromkeys(HEADLINE_METRICS, 1234.567))  # wider than a percentage or a Retrain time
    for scenario in scenarios:
        for method in methods:
            write_results(scenario, method, {layout.sparsity_tag(s): fake_summary(s, 100.0 / 3) for s in sparsities})
            layout.summary_path(scenario, method, sparsities[0]).write_text(widest)
    for other in (layout.BACKDOOR_SUMMARY, layout.TRANSFER_METRICS):  # in the workspace, not in the table
        other.write_text(json.dumps({"ft": {"s0.0": {"SA": 99.0, "ASR": 1.0}}}))

    shown = subprocess.run([str(DVC), "metrics", "show"], cwd=repo, capture_output=True, text=True, check=True)
    lines = shown.stdout.rstrip("\n").splitlines()
    assert lines[0].split() == ["Path", *sorted(HEADLINE_METRICS)]
    rows = [line.split()[0] for line in lines[1:]]
    expected = [layout.summary_path(s, m, p).as_posix() for s in scenarios for m in methods for p in sparsities]
    assert sorted(rows) == sorted(expected)
    assert all(len(line.split()) == 1 + len(HEADLINE_METRICS) for line in lines[1:]), "a cell is missing"
    assert max(len(line.rstrip()) for line in lines) < WIDTH_LIMIT
