"""`dvc repro` on a shrunk study in a temporary git repo: runs, caches, reruns precisely, validates."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
# The project's own params.yaml, shrunk: one seed, two epochs, one scenario, two methods.
SHRINK = {
    "split": {"scenarios": {"class_wise": {"kind": "class_wise", "classes": [0]}}},
    "train": {"seeds": [0], "epochs": 2},
    "prune": {"method": "omp", "sparsities": [0.0, 0.5]},
    "unlearn": {"methods": ["ft", "ga"], "settings": {"ft": {"epochs": 1}, "ga": {"epochs": 1}}},
    "backdoor": {"sparsities": [0.0], "methods": ["ft"], "epochs": 2, "settings": {"ft": {"epochs": 1}}},
    "transfer": {"epochs": 2, "settings": {"epochs": 1}, "linear_probe_epochs": 2, "fine_tune_epochs": 1},
}


def shrunk_params(changes: dict, base: dict | None = None) -> dict:
    """`base` (default: the project's params.yaml) with `changes` merged in, key by key."""
    merged = dict(yaml.safe_load((ROOT / "params.yaml").read_text()) if base is None else base)
    for key, value in changes.items():
        if isinstance(value, dict) and key != "scenarios" and isinstance(merged.get(key), dict):
            merged[key] = shrunk_params(value, merged[key])
        else:
            merged[key] = value
    return merged


pytestmark = pytest.mark.slow


def dvc_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env.update(DVC_NO_ANALYTICS="1", GX_ANALYTICS_ENABLED="false", UNLEARN_DEVICE="cpu")
    return env


def run(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=repo, env=dvc_env(), capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def stages_run(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def make_repo(path: Path, params: dict) -> Path:
    """A git + DVC repo holding the project's pipeline and code, with `params` as params.yaml."""
    path.mkdir()
    for folder in ("unlearn", "tasks"):
        shutil.copytree(ROOT / folder, path / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".dvcignore", "reports/tuning.json", "data/own/.gitkeep"):
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, path / name)
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(path, "git", "init", "-q")
    run(path, "dvc", "init", "-q")
    run(path, "dvc", "config", "core.analytics", "false")
    run(path, "git", "add", "-A")
    run(path, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "study")
    return path


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> tuple[Path, str]:
    repo = make_repo(tmp_path_factory.mktemp("dvc") / "study", shrunk_params(SHRINK))
    first = run(repo, "dvc", "repro")
    return repo, first.stdout


def test_repro_runs_every_stage_and_records_metrics(study):
    repo, output = study
    ran = stages_run(output)
    assert {"prepare", "train", "report", "unlearn@class_wise-ft", "retrain@class_wise"} <= ran
    # one stage per scenario and method runs every sparsity
    assert (repo / "models/unlearn/class_wise/ft/s0.5/seed0.pt").is_file()
    metrics = json.loads(run(repo, "dvc", "metrics", "show", "--json").stdout)
    values = json.dumps(metrics)
    for name in ("UA", "MIA_efficacy", "RA", "TA", "RTE_seconds"):
        assert f'"{name}"' in values
    backdoor = json.loads(run(repo, "dvc", "metrics", "show", "--json", "metrics/backdoor.json").stdout)
    cleanse = backdoor[""]["data"]["metrics/backdoor.json"]["data"]["ft"]["s0.0"]
    assert {"SA", "ASR", "SA_before", "ASR_before"} <= set(cleanse)
    assert "| FT |" in (repo / "reports" / "study.md").read_text()
    assert json.loads((repo / "reports/validation/class_wise.json").read_text())["success"] is True


def test_second_repro_does_nothing(study):
    repo, _ = study
    again = run(repo, "dvc", "repro")
    assert stages_run(again.stdout) == set()


def test_changing_one_methods_param_reruns_only_its_stages(study):
    repo, _ = study
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["unlearn"]["settings"]["ga"] = {"epochs": 1, "lr": 0.002}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    ran = stages_run(run(repo, "dvc", "repro").stdout)
    # calibrate reads every method's settings (a search starts from them); its record stays the same here
    assert ran == {"calibrate", "unlearn@class_wise-ga", "evaluate@class_wise-ga", "report"}


def test_changing_one_methods_module_invalidates_only_its_stages(study):
    """Code deps are each stage's imports (tests/test_dvc_graph.py): GA's module is GA's stages' alone."""
    repo, _ = study
    module = repo / "unlearn" / "methods" / "ga.py"
    original = module.read_text()
    try:
        module.write_text(original + "\n# changed\n")
        changed = json.loads(run(repo, "dvc", "status", "--json").stdout)
    finally:
        module.write_text(original)
    assert set(changed) == {"calibrate", "unlearn@class_wise-ga"}, changed  # calibrate runs every method
    assert json.loads(run(repo, "dvc", "status", "--json").stdout) == {}


def experiment(shown, name: str) -> dict:
    """The record of experiment `name` in `dvc exp show --json` output (nested lists and dicts)."""
    if isinstance(shown, dict):
        if shown.get("name") == name and "data" in shown:
            return shown["data"]
        shown = list(shown.values())
    for item in shown if isinstance(shown, list) else []:
        found = experiment(item, name)
        if found:
            return found
    return {}


def test_exp_run_sets_a_param_reruns_its_stages_and_exp_show_compares(study):
    repo, _ = study
    # `++`: set the key whether or not params.yaml has it yet (README's example)
    result = run(repo, "dvc", "exp", "run", "-n", "ft-lr", "-S", "++unlearn.settings.ft.lr=0.05")
    assert stages_run(result.stdout) == {"calibrate", "unlearn@class_wise-ft", "evaluate@class_wise-ft", "report"}
    record = experiment(json.loads(run(repo, "dvc", "exp", "show", "--json").stdout), "ft-lr")
    assert record["params"]["params.yaml"]["data"]["unlearn"]["settings"]["ft"] == {"epochs": 1, "lr": 0.05}
    ft_metrics = record["metrics"]["metrics/summary/class_wise/ft/s0.5.json"]["data"]
    assert {"UA", "MIA_efficacy", "RA", "TA", "RTE_seconds"} <= set(ft_metrics)


def digests(repo: Path) -> dict[str, str]:
    import hashlib

    files = [p for folder in ("data", "models") for p in sorted((repo / folder).rglob("*")) if p.is_file()]
    return {str(p.relative_to(repo)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def test_s3_push_from_one_clone_and_pull_into_a_fresh_one(study, s3_endpoint, s3_bucket, tmp_path):
    repo, _ = study
    run(repo, "dvc", "remote", "add", "-f", "s3", f"s3://{s3_bucket}/dvc")
    run(repo, "dvc", "remote", "modify", "s3", "endpointurl", s3_endpoint)
    run(repo, "git", "add", "-A")
    run(repo, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "results")
    run(repo, "dvc", "push", "-r", "s3")
    clone = tmp_path / "clone"
    run(tmp_path, "git", "clone", "-q", str(repo), str(clone))
    assert not list(clone.rglob("*.pt"))  # git carries only DVC's pointers
    run(clone, "dvc", "pull", "-r", "s3")
    expected = digests(repo)
    assert expected and digests(clone) == expected


def test_corrupted_split_fails_validation_naming_the_expectation(study):
    repo, _ = study
    forget = repo / "data/splits/class_wise/forget.csv"
    rows = forget.read_text().splitlines()
    forget.write_text("\n".join([*rows, rows[1]]) + "\n")  # one sample listed twice
    result = run(repo, "dvc", "repro", "--single-item", "validate@class_wise", check=False)
    assert result.returncode != 0
    assert "expect_column_values_to_be_unique" in result.stdout + result.stderr
