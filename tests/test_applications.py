"""The paper's applications as pipeline stages and flows: Trojan-model cleanse and transfer.

The flows run the project's params.yaml shrunk (one seed, few epochs, sparsities 0 and 0.5,
ℓ1-sparse only) in a temporary working directory, with a temporary Prefect API and MLflow store.
Thresholds follow tests/test_backdoor.py: a 10-epoch digits Trojan model has ASR ~99; the
ℓ1-sparse cleanse (gamma 2e-3) brings it to ~10 at 1-2 points of SA, dense.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from tasks import backdoor
from tasks import transfer as transfer_stage
from tasks.common import bundle
from tasks.params import load_params, parse_params
from unlearn.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SPARSITIES = (0.0, 0.5)
SHRINK = {
    "train": {"seeds": [0]},
    "backdoor": {"sparsities": list(SPARSITIES), "methods": ["l1_sparse"], "epochs": 10,
                 "settings": {"l1_sparse": {}}},
    "transfer": {"epochs": 3, "settings": {"epochs": 2}, "linear_probe_epochs": 5, "fine_tune_epochs": 1},
}  # fmt: skip


def shrunk_params() -> dict:
    """The project's params.yaml with SHRINK's groups merged in, key by key."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    for group, values in SHRINK.items():
        raw[group] = {**raw.get(group, {}), **values}
    return raw


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, prefect_api):
    """A working directory with the shrunk params.yaml and its own MLflow store (as `mlflow_store`)."""
    folder = tmp_path_factory.mktemp("applications")
    (folder / "params.yaml").write_text(yaml.safe_dump(shrunk_params(), sort_keys=False))
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{folder / 'mlflow.db'}")
        patch.setenv("UNLEARN_ARTIFACT_ROOT", str(folder / "mlartifacts"))
        patch.setenv("UNLEARN_DEVICE", "cpu")
        yield folder


@pytest.fixture(scope="module")
def cleansed(workdir):
    """The backdoor_cleanse flow's result (stages, report, registration)."""
    from flows.backdoor_cleanse import backdoor_cleanse

    return backdoor_cleanse(params_path="params.yaml")


@pytest.fixture(scope="module")
def rows(cleansed) -> dict[float, dict]:
    return {s: json.loads(backdoor.metrics_path("l1_sparse", s).read_text()) for s in SPARSITIES}


# --- params --------------------------------------------------------------------------------


def test_project_params_hold_both_groups_with_the_cores_defaults():
    params = parse_params(yaml.safe_load((ROOT / "params.yaml").read_text()))
    assert params.backdoor.methods == ["ft", "l1_sparse"] and 0.0 in params.backdoor.sparsities
    config = transfer_stage.transfer_config(params)
    assert (config.source_classes, config.target_classes, config.forget_classes) == (
        (0, 1, 2, 3, 4), (5, 6, 7, 8, 9), (0, 1))  # fmt: skip
    assert backdoor.attack_config(params) == backdoor.default_backdoor_config("digits")


@pytest.mark.parametrize(
    "raw, key",
    [
        ({"backdoor": {"methods": ["nope"]}}, "backdoor.methods"),
        ({"backdoor": {"sparsities": [1.0]}}, "backdoor.sparsities"),
        ({"backdoor": {"poison_ratio": 0.0}}, "backdoor.poison_ratio"),
        ({"transfer": {"target_classes": [4, 5]}}, "transfer"),
        ({"transfer": {"method": "retrain"}}, "transfer.method"),
    ],
)
def test_bad_application_params_name_the_key(raw, key):
    with pytest.raises(ConfigError, match=key):
        parse_params(raw)


def test_attack_overrides_replace_only_what_they_name():
    params = parse_params({"backdoor": {"trigger_size": 3, "target_class": 7, "seed": 4}})
    attack = backdoor.attack_config(params)
    assert (attack.trigger_size, attack.target_class, attack.seed) == (3, 7, 4)
    assert attack.patch_value == 1.0 and attack.border == 1  # the digits preset's


def test_unknown_cleanse_setting_is_a_config_error():
    params = parse_params({"backdoor": {"settings": {"l1_sparse": {"gama": 1.0}}}})
    with pytest.raises(ConfigError, match="gama"):
        backdoor.method_settings(params, "l1_sparse")


def test_cleanse_without_a_trojan_model_says_which_stage_to_run(tmp_path, monkeypatch):
    from tasks.prepare import prepare

    monkeypatch.chdir(tmp_path)
    params = parse_params({"tracking": {"enabled": False}})
    prepare(params)
    with pytest.raises(ConfigError, match="backdoor_train"):
        backdoor.cleanse_trojan(params, "l1_sparse", 0.5)


def test_the_stage_entry_point_refuses_an_unknown_stage(capsys):
    with pytest.raises(SystemExit, match="usage: python -m tasks.backdoor"):
        backdoor.main(["poison"])


# --- Trojan-model cleanse ------------------------------------------------------------------


@pytest.mark.slow
def test_the_trojan_models_obey_the_trigger(rows):
    for sparsity, row in rows.items():
        assert row["ASR_before"] > 80 and row["SA_before"] > 90, sparsity
        assert row["poisoned_count"] == round(0.1 * len(bundle().train))  # the preset's 10%


@pytest.mark.slow
def test_l1_sparse_cleanse_removes_the_backdoor(rows):
    for sparsity, row in rows.items():
        assert row["ASR_before"] - row["ASR"] > 50, sparsity
        assert row["ASR"] < 30, sparsity
    dense = rows[0.0]
    assert dense["SA_before"] - dense["SA"] <= 5  # 1.4 points in tests/test_backdoor.py


@pytest.mark.slow
def test_the_sparse_trojan_model_is_sparse_and_stays_so(cleansed):
    from tasks.common import load_model
    from unlearn.masks import sparsity

    trojan, checkpoint = load_model(backdoor.trojan_path(0.5))
    cleaned, _ = load_model(backdoor.cleansed_path("l1_sparse", 0.5))
    assert checkpoint.metadata["pruner"] == "omp" and checkpoint.masks
    assert sparsity(trojan) >= 0.49 and sparsity(cleaned) >= sparsity(trojan) - 1e-6


@pytest.mark.slow
def test_the_report_has_a_row_per_method_and_sparsity_and_the_figure(cleansed, rows):
    report = Path(cleansed["report"]).read_text()
    lines = [line for line in report.splitlines() if line.startswith("| ℓ1-sparse |")]
    assert [line.split(" | ")[1] for line in lines] == ["dense", "50% sparse"]
    assert f"{rows[0.5]['ASR']:.2f}" in lines[1]
    figure = backdoor.FIGURE
    assert figure.is_file() and figure.read_bytes()[:4] == b"\x89PNG"
    assert f"]({figure.relative_to(backdoor.REPORT.parent).as_posix()})" in report


@pytest.mark.slow
def test_every_stage_is_tracked_in_mlflow(cleansed):
    from tasks.tracking import KIND_TAG

    runs = MlflowClient().search_runs([e.experiment_id for e in MlflowClient().search_experiments()], max_results=200)
    names = {run.info.run_name: run for run in runs}
    expected = {"backdoor-trojan-dense": "train", "backdoor-trojan-omp-s0.5": "prune",
                "backdoor-cleanse-l1_sparse-s0.5": "unlearn", "backdoor-report": "report"}  # fmt: skip
    for name, kind in expected.items():
        assert names[name].data.tags[KIND_TAG] == kind, name
    assert names["backdoor-cleanse-l1_sparse-s0.5"].data.metrics["ASR"] < 30


@pytest.mark.slow
def test_the_flow_registers_the_cleansed_model_with_its_lineage(cleansed, rows):
    from flows.backdoor_cleanse import CLEANSED_ALIAS, REQUEST_ID, TROJAN_ALIAS
    from tasks import registry

    registered = cleansed["registered"]
    name = registry.model_name("digits", "digits_resnet")
    assert registered["model_name"] == name and registered["sparsity"] == 0.5
    version = registry.version_by_alias(name, CLEANSED_ALIAS)
    trojan = registry.version_by_alias(name, TROJAN_ALIAS)
    tags = version.tags
    assert str(version.version) == registered["cleansed_version"]
    assert tags[registry.KIND_TAG] == registry.UNLEARNED and tags[registry.METHOD_TAG] == "l1_sparse"
    assert tags[registry.REQUEST_IDS_TAG] == REQUEST_ID and tags[registry.BATCH_TAG].startswith("backdoor-")
    assert tags[registry.PARENT_TAG] == str(trojan.version) and trojan.tags[registry.KIND_TAG] == registry.ORIGINAL
    assert tags["split.forget.digest"] == backdoor.poison_digest(backdoor.poisoned_data(load_params("params.yaml"))[1])
    metrics = registry.tag_metrics(tags)
    assert metrics["ASR"] == pytest.approx(rows[0.5]["ASR"]) and metrics["ASR_before"] > 80
    assert registry.tag_metrics(trojan.tags)["ASR"] == pytest.approx(rows[0.5]["ASR_before"])
    # a cleansed Trojan model is not a candidate for service
    assert registry.version_by_alias(name, registry.CANDIDATE) is None


@pytest.mark.slow
def test_the_flow_publishes_the_table_as_an_artifact(cleansed):
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.backdoor_cleanse import REPORT_ARTIFACT

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[REPORT_ARTIFACT])))
    published = {str(a.id): a for a in artifacts}
    assert "| ℓ1-sparse | 50% sparse |" in published[cleansed["artifact_id"]].data


# --- transfer ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def transferred(workdir):
    from flows.transfer import transfer

    return transfer(params_path="params.yaml")


@pytest.mark.slow
def test_transfer_runs_every_source_both_ways(transferred):
    from unlearn.transfer import MODES, SOURCES

    result = json.loads(Path(transferred["metrics"]).read_text())
    rows = result["rows"]
    assert [(r["source"], r["mode"]) for r in rows] == [(s, m) for s in SOURCES for m in MODES]
    assert all(0 <= r["target_accuracy"] <= 100 and r["seconds"] > 0 for r in rows)
    assert all(r["unlearn_seconds"] > 0 for r in rows if r["source"] != "original")
    assert result["source_test_accuracy"] > 60  # five classes: chance is 20


@pytest.mark.slow
def test_transfer_report_has_every_row(transferred):
    report = Path(transferred["report"]).read_text()
    body = [line for line in report.splitlines() if line.startswith("| ") and not line.startswith("| Source")]
    assert len(body) == 6
    assert {line.split(" | ")[1] for line in body} == {"linear probe", "fine-tune"}
    assert {line.split(" | ")[0] for line in body} == {"| original", "| unlearned", "| retrained"}
