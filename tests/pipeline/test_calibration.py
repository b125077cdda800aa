"""Calibration on own data: the search beats a bad start on every seed, the champion records its values, a
deletion batch unlearns with them, the review says which values were used and why, bad `calibrate.*` fail."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from mlflow.entities.model_registry import ModelVersion, ModelVersionTag
from projects import enter_project, synthetic_npz

from tasks.adapters import registry
from tasks.adapters.params import load_params, parse_params
from tasks.production.deletion import batch_method_config
from tasks.production.evidence import review_markdown
from tasks.production.promotion import Review, calibration_line
from tasks.production.tune import calibrate
from unlearn.data import load_source
from unlearn.errors import ConfigError
from unlearn.original import train_original
from unlearn.presets import get_preset

ROOT = Path(__file__).resolve().parents[2]
# A start that cannot forget a class: RL at lr 1e-4 for one epoch leaves the original as it was (gap ~50 to Retrain).
BAD_START = {"lr": 1e-4, "epochs": 1}


def test_calibration_beats_a_bad_start_on_every_seed(tmp_path):
    path = synthetic_npz(tmp_path / "synth.npz")
    params = parse_params({
        "data": {"source": "npz", "path": str(path), "name": "synth"},
        "deletion": {"method": "rl", "sparsity": 0.0},
        "calibrate": {"scenario": "class_wise", "seeds": [0, 1, 2], "trials": 8, "max_retrains": 40,
                      "skip_tuned": False},
        "tuned": {"rl": {"synth": {"class_wise": {"s0.0": BAD_START}}}},
    })  # fmt: skip
    data = load_source("npz", path, name="synth")
    model, _ = train_original(get_preset("digits"), data, data.train, torch.device("cpu"), seed=0)

    found = calibrate(params, model, data)

    record = found.methods["rl"]
    start, best = record["start"], record
    print(f"\nper-seed gap to Retrain, start {start['seed_gaps']}, calibrated {best['seed_gaps']} {best['values']}; "
          f"cost {found.cost_retrains} x Retrain ({found.retrain_seconds:.2f} s each)")  # fmt: skip
    assert found.status == "calibrated" and found.dataset == "synth"
    assert {k: start["values"][k] for k in BAD_START} == BAD_START  # the search started from the bad values
    assert set(best["seed_gaps"]) == set(start["seed_gaps"]) == {"0", "1", "2"}
    for seed, gap in best["seed_gaps"].items():
        assert gap < start["seed_gaps"][seed], (seed, gap, start["seed_gaps"][seed])
    assert best["values"] != start["values"] and best["within_budget"]
    assert 0 < found.cost_retrains <= 40
    tags = found.tags()
    assert json.loads(tags["calibration.values.rl"]) == best["values"]
    assert tags["calibration.status"] == "calibrated" and tags["calibration.seeds"] == "0,1,2"


def test_a_spent_budget_stops_the_search(tmp_path):
    """max_retrains just above the references: the starting values run, little else."""
    path = synthetic_npz(tmp_path / "tiny.npz", classes=4, per_class=30)
    params = parse_params({
        "data": {"source": "npz", "path": str(path)},
        "deletion": {"method": "ga", "sparsity": 0.0},
        "calibrate": {"scenario": "class_wise", "seeds": [0], "trials": 50, "max_retrains": 1.05},
    })  # fmt: skip
    data = load_source("npz", path)
    model, _ = train_original(get_preset("digits"), data, data.train, torch.device("cpu"), seed=0)
    found = calibrate(params, model, data)
    assert found.methods["ga"]["trials"] < 50


def test_digits_with_tuned_values_and_the_switch_skip_calibration():
    params = load_params(ROOT / "params.yaml")  # l1_sparse, random, 95%: digits ships tuned values for it
    found = calibrate(params, torch.nn.Linear(1, 1), None, sparsity=0.95)
    assert found.status == "skipped" and found.reason == "tuned values for preset digits"
    assert found.values("l1_sparse") == {"gamma": 0.000297, "lr": 0.0554}
    line = calibration_line({**found.tags(), registry.METHOD_TAG: "l1_sparse"})
    assert line == "calibration: skipped (tuned values for preset digits), values gamma 0.000297, lr 0.0554"
    off = calibrate(params, torch.nn.Linear(1, 1), None, sparsity=0.95, enabled=False)
    assert off.status == "skipped" and "switched off" in off.reason
    assert calibration_line({**off.tags(), registry.METHOD_TAG: "l1_sparse"}).startswith("calibration: uncalibrated")


def test_the_review_says_uncalibrated_where_no_calibration_exists():
    tags = {registry.METHOD_TAG: "ft", registry.BATCH_TAG: "b1"}
    review = Review("unlearn-synth-digits_resnet", "3", "2", {}, (), tags)
    assert calibration_line(tags).startswith("calibration: uncalibrated (no calibration recorded")
    assert "calibration: uncalibrated" in review.render()
    assert "calibration: uncalibrated" in review_markdown(review, [])
    other = {**tags, "calibration.status": "calibrated", "calibration.dataset": "synth", "calibration.date": "d",
             "calibration.values.ga": '{"lr": 0.01}'}  # fmt: skip
    assert calibration_line(other).startswith("calibration: uncalibrated (the calibration on synth at d found no")


def _version(tags: dict[str, str]) -> ModelVersion:
    return ModelVersion("unlearn-digits-digits_resnet", "1", 0, tags=[ModelVersionTag(k, v) for k, v in tags.items()])


def test_a_batch_config_takes_calibrated_values_over_tuned_and_settings_over_both():
    params = load_params(ROOT / "params.yaml")  # l1_sparse, tuned for random at 95%: gamma 0.000297, lr 0.0554
    calibrated = _version({"calibration.status": "calibrated", "calibration.values.l1_sparse": '{"lr": 0.3}'})
    skipped = _version({"calibration.status": "skipped", "calibration.values.l1_sparse": '{"lr": 0.3}'})
    assert (batch_method_config(params).lr, batch_method_config(params).gamma) == (0.0554, 0.000297)
    config = batch_method_config(params, calibrated)
    assert (config.lr, config.gamma) == (0.3, 0.000297)
    assert batch_method_config(params, skipped).lr == 0.0554  # a skipped calibration's values are the tuned ones
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["unlearn"]["settings"]["l1_sparse"] = {"lr": 0.07}
    assert batch_method_config(parse_params(raw), calibrated).lr == 0.07


@pytest.mark.parametrize(
    ("calibrate", "key"),
    [
        ({"trials": 0}, "calibrate.trials"),
        ({"methods": ["retrain"]}, "calibrate.methods"),
        ({"max_retrains": 2}, "calibrate.max_retrains"),
        ({"seeds": [0, 0]}, "calibrate.seeds"),
        ({"worst_weight": 2}, "calibrate.worst_weight"),
        ({"enabled": "yes"}, "calibrate.enabled"),
        ({"scenario": "nope"}, "calibrate.scenario"),
        ({"max_cost_share": 0}, "calibrate.max_cost_share"),
        ({"budget": 3}, "calibrate.budget"),
    ],
)
def test_a_bad_calibrate_value_fails_naming_the_key(calibrate, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        parse_params({"calibrate": calibrate})


@pytest.mark.slow
def test_the_champion_records_its_calibration_and_a_batch_unlearns_with_it(tmp_path, monkeypatch, prefect_api):
    from flows.deletion_batch import deletion_batch
    from flows.train_original import train_original as train_original_flow
    from tasks.adapters.requests import DeletionRequest, open_inbox
    from tasks.adapters.workspace import bundle
    from tasks.production.promotion import review

    folder = enter_project(tmp_path / "project", monkeypatch)
    synthetic_npz(folder / "synth.npz")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"].update(source="npz", path="synth.npz")
    params["train"].update(seeds=[0], epochs=4)
    params["deletion"].update(method="ft", sparsity=0.0, dvc_push=False)
    params["calibrate"].update(trials=3, seeds=[0], max_retrains=8, max_cost_share=1.0)  # a 4-epoch Retrain is quick
    (folder / "params.yaml").write_text(yaml.safe_dump(params))

    summary = train_original_flow("params.yaml", build_pool=False)
    settings = load_params("params.yaml")
    name = registry.params_model_name(settings)
    champion = registry.version_by_alias(name, registry.CHAMPION)
    calibrated = summary["calibrated_values"]["ft"]
    assert summary["calibration"] == "calibrated" and set(calibrated) == {"lr", "epochs"}
    assert champion.tags["calibration.status"] == "calibrated" and champion.tags["calibration.dataset"] == "synth"
    assert json.loads(champion.tags["calibration.values.ft"]) == calibrated
    record = json.loads((folder / "models/champion/calibration/calibration.json").read_text())
    assert record["methods"]["ft"]["values"] == calibrated

    forgotten = list(bundle().train.ids[:3])
    open_inbox(settings.deletion.inbox).submit(DeletionRequest(request_id="req-cal", sample_ids=forgotten))
    result = deletion_batch("params.yaml")
    assert result["status"] == "registered"
    candidate = registry.version_by_alias(name, registry.CANDIDATE)
    ran = json.loads(candidate.tags[registry.METHOD_CONFIG_TAG])
    assert {key: ran[key] for key in calibrated} == calibrated
    found = review(candidate.version, name=name, gates=settings.promote)
    shown = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in calibrated.items())
    assert f"calibration: calibrated on synth at {champion.tags['calibration.date']}, values {shown}" in found.render()
