"""dvc.yaml's top-level plots against params.yaml: one plot per scenario and forgetting metric, a line per method.

dvc.yaml cannot loop in `plots:`, so its entries are written out for the shipped scenarios and
methods; these tests fail as soon as params.yaml's `split.scenarios` or `unlearn.methods` and the
plots disagree, and render the plots with `dvc plots show` to count them.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from dvc.repo import Repo

from tasks.adapters import layout
from tasks.stages.evaluate import write_results
from unlearn.metrics import FORGETTING_METRICS, HEADLINE_METRICS

ROOT = Path(__file__).resolve().parents[2]
DVC = Path(sys.executable).parent / "dvc"


def read_yaml(name: str) -> dict:
    return yaml.safe_load((ROOT / name).read_text())


def study_grid(params: dict) -> tuple[list[str], list[str]]:
    """(scenarios, methods): params.yaml's scenarios, Retrain first and then `unlearn.methods`."""
    return list(params["split"]["scenarios"]), ["retrain", *params["unlearn"]["methods"]]


def plot_id(metric: str, scenario: str) -> str:
    return f"{metric} vs sparsity ({scenario})"


def expected_plots(params: dict) -> dict[str, dict[str, str]]:
    """Plot id -> its y sources (CSV path -> column): a plot per scenario and forgetting metric."""
    scenarios, methods = study_grid(params)
    return {
        plot_id(metric, scenario): {layout.plot_path(scenario, m).as_posix(): metric for m in methods}
        for scenario in scenarios
        for metric in FORGETTING_METRICS
    }


def plot_problems(dvc_yaml: dict, params: dict) -> list[str]:
    """How dvc.yaml's top-level plots disagree with `params` (empty: they agree)."""
    declared = {name: spec for entry in dvc_yaml.get("plots", []) for name, spec in entry.items()}
    expected = expected_plots(params)
    problems = [f"no plot {name!r} (params.yaml studies it)" for name in expected if name not in declared]
    problems += [f"plot {name!r}: no scenario and metric of params.yaml" for name in declared if name not in expected]
    for name in expected.keys() & declared.keys():
        spec = declared[name] if isinstance(declared[name], dict) else {}
        sources = spec.get("y") if isinstance(spec.get("y"), dict) else {}
        if sources != expected[name]:
            missing, extra = expected[name].items() - sources.items(), sources.items() - expected[name].items()
            problems.append(f"plot {name!r}: y lacks {sorted(missing)}, has {sorted(extra)} beyond params.yaml's")
        if spec.get("x") != "sparsity":
            problems.append(f"plot {name!r}: x is {spec.get('x')!r}, not sparsity")
        problems += [f"plot {name!r} has no {key}" for key in ("title", "x_label", "y_label") if not spec.get(key)]
    return problems


def test_the_plots_are_one_per_scenario_and_forgetting_metric_with_every_method():
    dvc_yaml, params = read_yaml("dvc.yaml"), read_yaml("params.yaml")
    problems = plot_problems(dvc_yaml, params)
    assert not problems, "dvc.yaml's plots disagree with params.yaml:\n  " + "\n  ".join(problems)
    assert len(dvc_yaml["plots"]) == len(params["split"]["scenarios"]) * len(FORGETTING_METRICS)


@pytest.mark.parametrize(
    "change",
    [
        lambda p: p["unlearn"]["methods"].append("newmethod"),
        lambda p: p["unlearn"]["methods"].remove("ga"),
        lambda p: p["split"]["scenarios"].update(subclass={"kind": "class_wise", "classes": [1]}),
        lambda p: p["split"]["scenarios"].pop("random"),
    ],
    ids=["method added", "method removed", "scenario added", "scenario removed"],
)
def test_a_params_change_the_plots_do_not_follow_is_found(change):
    params = read_yaml("params.yaml")
    change(params)
    assert plot_problems(read_yaml("dvc.yaml"), params)


def test_the_plots_read_columns_the_evaluate_stage_writes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_results("random", "ft", {"s0.0": fake_summary(0.0), "s0.95": fake_summary(0.95)})
    with layout.plot_path("random", "ft").open() as handle:
        header = next(csv.reader(handle))
    for entry in read_yaml("dvc.yaml")["plots"]:
        [spec] = entry.values()
        assert spec["x"] in header and set(spec["y"].values()) <= set(header)


def fake_summary(sparsity: float, value: float = 50.0) -> dict[str, float]:
    """One sparsity's entry as evaluate_method builds it."""
    row = {"sparsity": sparsity, "seeds": 3, "sparsity_percent": 100 * sparsity}
    for name in HEADLINE_METRICS:
        row.update({name: value, f"{name}_std": 1.0})
    return row


def study_repo(path: Path, monkeypatch) -> Path:
    """A DVC repo with the project's dvc.yaml and params.yaml and every evaluate stage's files written."""
    Repo.init(str(path), no_scm=True).close()
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / name, path / name)
    monkeypatch.chdir(path)
    params = read_yaml("params.yaml")
    scenarios, methods = study_grid(params)
    sparsities = params["prune"]["sparsities"]
    for scenario in scenarios:
        for method in methods:
            write_results(scenario, method, {layout.sparsity_tag(s): fake_summary(s) for s in sparsities})
    return path


def test_dvc_plots_show_renders_one_titled_plot_per_scenario_and_metric(tmp_path, monkeypatch):
    repo = study_repo(tmp_path / "study", monkeypatch)
    shown = subprocess.run([str(DVC), "plots", "show", "--json"], cwd=repo, capture_output=True, text=True, check=True)
    plots = json.loads(shown.stdout)["data"]
    assert set(plots) == set(expected_plots(read_yaml("params.yaml")))
    _, methods = study_grid(read_yaml("params.yaml"))
    declared = {name: spec for entry in read_yaml("dvc.yaml")["plots"] for name, spec in entry.items()}
    for name, [rendered] in plots.items():
        content = rendered["content"]
        assert content["title"]["text"] == declared[name]["title"]
        assert content["encoding"]["x"]["title"] == declared[name]["x_label"]
        assert {layer["encoding"]["y"]["title"] for layer in content["layer"] if "y" in layer.get("encoding", {})} == {
            declared[name]["y_label"]
        }
        assert {row["filename"] for row in content["data"]["values"]} == {f"{m}.csv" for m in methods}, name
