"""The study's `calibrate` stage: own data without tuned values is searched on tuning folds and the unlearn
stage runs the values found; digits, which has tuned values, is skipped at once and says why."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from projects import synthetic_npz

from tasks.adapters import layout
from tasks.adapters.params import parse_params
from tasks.adapters.workspace import bundle, split, study_calibration
from tasks.production.study_calibration import calibrate_study
from tasks.production.tune import tuning_splits
from tasks.stages.findings import settings_section
from tasks.stages.prepare import prepare
from tasks.stages.prune import prune_originals
from tasks.stages.split import make_split
from tasks.stages.train import train_originals
from tasks.stages.unlearn import unlearn
from unlearn.checkpoint import load_checkpoint
from unlearn.splits import random_fraction

ROOT = Path(__file__).resolve().parents[2]
# A start far from forgetting (RL at lr 1e-4 for one epoch leaves the original as it was): the search moves off it.
BAD_START = {"lr": 1e-4, "epochs": 1}


def test_own_data_is_calibrated_and_the_unlearn_stage_runs_the_values_found(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("UNLEARN_DEVICE", "cpu")
    path = synthetic_npz(tmp_path / "synth.npz", classes=4, per_class=40)
    params = parse_params({
        "data": {"source": "npz", "path": str(path), "name": "synth"},
        "split": {"scenarios": {"class_wise": {"kind": "class_wise", "classes": [0]}}},
        "train": {"seeds": [0], "epochs": 2},
        "prune": {"sparsities": [0.0]},
        "unlearn": {"methods": ["rl"]},
        "tracking": {"enabled": False},
        "calibrate": {"seeds": [0], "folds": 1, "trials": 2, "max_retrains": 20, "skip_tuned": False,
                      "max_cost_share": 1.0},  # a 2-epoch Retrain: one epoch of RL is half of it
        # tuned values the search starts from (skip_tuned false: they do not stop it)
        "tuned": {"rl": {"synth": {"class_wise": {"s0.0": BAD_START}}}},
    })  # fmt: skip
    prepare(params)
    make_split(params, "class_wise")
    train_originals(params)
    prune_originals(params, 0.0)

    calibrate_study(params)

    entry = study_calibration("class_wise", "rl", 0.0)
    record = json.loads(layout.CALIBRATION_RECORD.read_text())
    print(f"\n{json.dumps(entry, indent=1)}")
    assert record["dataset"] == "synth" and record["methods"] == ["rl"]
    assert entry["status"] == "calibrated" and entry["dataset"] == "synth" and entry["trials"] == 2
    assert entry["start"]["values"] == BAD_START  # the first trial ran the tuned values
    assert set(entry["values"]) == {"lr", "epochs"} and 0 < entry["cost_retrains"] <= 20 + 1
    # the tuning folds are disjoint from the reported forget set: class 1 for class 0; random draws from Dr
    data, reported = bundle(), split("class_wise")
    [fold] = tuning_splits(data, params.split.scenarios["class_wise"])
    assert fold.forgotten_classes == (1,) and not set(fold.forget.sample_ids) & set(reported.forget.sample_ids)
    drawn = parse_params({"split": {"scenarios": {"random": {"kind": "random", "fraction": 0.1, "seed": 1}}}})
    scenario = drawn.split.scenarios["random"]
    folds = tuning_splits(data, scenario, folds=2)
    reported = random_fraction(data, scenario.fraction, scenario.seed)
    assert all(len(f.forget) == len(reported.forget) for f in folds)
    assert not {i for f in folds for i in f.forget.sample_ids} & set(reported.forget.sample_ids)

    [written] = unlearn(params, "class_wise", "rl")

    ran = load_checkpoint(written).metadata["method_config"]
    assert {name: ran[name] for name in entry["values"]} == entry["values"]
    # the search may keep its start (the tuned values): values the record holds, and nothing else, are what runs
    record["entries"]["class_wise"]["rl"]["s0.0"]["values"] = {"lr": 0.0123, "epochs": 2}
    layout.CALIBRATION_RECORD.write_text(json.dumps(record))
    [written] = unlearn(params, "class_wise", "rl")
    assert {k: load_checkpoint(written).metadata["method_config"][k] for k in ("lr", "epochs")} == {
        "lr": 0.0123,
        "epochs": 2,
    }
    overridden = parse_params({**params.model_dump(), "unlearn": {"methods": ["rl"], "settings": {"rl": {"lr": 0.03}}}})
    [written] = unlearn(overridden, "class_wise", "rl")  # unlearn.settings wins over the calibrated values
    assert {k: load_checkpoint(written).metadata["method_config"][k] for k in ("lr", "epochs")} == {
        "lr": 0.03,
        "epochs": 2,
    }
    assert "calibrated on synth" in settings_section(params)


def test_digits_with_tuned_values_is_skipped_and_the_switch_leaves_methods_uncalibrated(tmp_path):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    params = parse_params(raw)
    calibrate_study(params, tmp_path / "calibration.json")  # no data, no model: nothing is searched
    record = json.loads((tmp_path / "calibration.json").read_text())
    assert record["dataset"] == "digits" and set(record["entries"]) == set(params.split.scenarios)
    ft = record["entries"]["class_wise"]["ft"]
    assert set(ft) == {layout.sparsity_tag(s) for s in params.prune.sparsities}
    assert all(entry["status"] == "skipped" for entry in ft.values())
    assert ft["s0.5"]["reason"] == "tuned values for digits (class_wise)"
    assert "values" not in ft["s0.95"]  # the unlearn stage takes the tuned ones itself
    raw["unlearn"]["settings"]["ga"] = {"lr": 0.002}  # another method's settings: the same record
    calibrate_study(parse_params(raw), tmp_path / "again.json")
    assert (tmp_path / "again.json").read_bytes() == (tmp_path / "calibration.json").read_bytes()
    raw["tuned"]["ga"]["digits"]["class_wise"]["s0.5"] = {"lr": 0.002}  # `unlearn tune` at a new sparsity: the same
    calibrate_study(parse_params(raw), tmp_path / "tuned.json")
    assert (tmp_path / "tuned.json").read_bytes() == (tmp_path / "calibration.json").read_bytes()

    raw["calibrate"]["enabled"] = False
    calibrate_study(parse_params(raw), tmp_path / "off.json")
    entries = json.loads((tmp_path / "off.json").read_text())["entries"]
    statuses = {
        entry["status"] for by_method in entries.values() for tags in by_method.values() for entry in tags.values()
    }
    assert statuses == {"uncalibrated"}
    assert entries["random"]["ga"]["s0.0"]["reason"] == "calibrate.enabled false"


def test_the_report_says_which_values_each_method_ran_with(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["unlearn"]["methods"] = ["ft", "ga"]
    raw["unlearn"]["settings"]["ga"] = {"epochs": 2}
    params = parse_params(raw)
    calibrated = {"dataset": "digits", "date": "2026-12-07", "status": "calibrated", "values": {"lr": 0.05},
                  "cost_retrains": 3.5}  # fmt: skip
    record = {"dataset": "digits", "methods": ["ft", "ga"], "entries": {"random": {"ft": {"s0.5": calibrated}}}}
    layout.CALIBRATION_RECORD.parent.mkdir(parents=True)
    layout.CALIBRATION_RECORD.write_text(json.dumps(record))

    section = settings_section(params)

    print(f"\n{section}")
    assert "| FT | class_wise | tuned | preset defaults | preset defaults | tuned |" in section
    assert "| FT | random | tuned | calibrated on digits: lr 0.05 | preset defaults | tuned |" in section
    assert "| GA | random | tuned + unlearn.settings | preset defaults + unlearn.settings |" in section
    assert "calibrated `random`, 50% sparse on digits (2026-12-07): 3.50 Retrains" in section
