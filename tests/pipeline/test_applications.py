"""The paper's applications as pipeline stages and flows: Trojan-model cleanse and transfer.

The flows run the project's params.yaml shrunk (one seed, few epochs, sparsities 0 and 0.5,
ℓ1-sparse only) in a temporary working directory, with a temporary Prefect API and MLflow store.
Thresholds follow tests/test_backdoor.py: a 10-epoch digits Trojan model has ASR ~99; the digits
ℓ1-sparse cleanse (`unlearn.backdoor.CLEANSE_DEFAULTS`) brings it to 10 with an SA drop of at most
0.8 points over six seeds, dense and at 50% sparsity. The cross-data-set transfer runs on two tiny
synthetic npz data sets, never on downloaded ones. The CLI's commands print the flows' results.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow import MlflowClient
from typer.testing import CliRunner

from tasks.adapters.params import load_params, parse_params
from tasks.adapters.workspace import bundle
from tasks.stages import backdoor
from tasks.stages import transfer as transfer_stage
from unlearn.errors import ConfigError, DatasetNotFoundError
from unlearn.transfer import CIFAR100_VEHICLES

ROOT = Path(__file__).resolve().parents[2]
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
        ({"transfer": {"preset": "imagenet_to_pets"}}, "transfer.preset"),
        ({"transfer": {"target": "mnist"}}, "transfer.target"),
        ({"transfer": {"recipe": "imagenet"}}, "transfer.recipe"),
        ({"transfer": {"target_root": "data/other.npz"}}, "transfer.target_root"),
        ({"transfer": {"preset": "cifar100_to_cifar10", "forget_classes": [100]}}, "transfer"),
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


def test_unknown_cleanse_setting_is_a_config_error_when_params_load():
    with pytest.raises(ConfigError, match="backdoor.settings.l1_sparse.*gama"):
        parse_params({"backdoor": {"settings": {"l1_sparse": {"gama": 1.0}}}})


def test_cleanse_without_a_trojan_model_says_which_stage_to_run(tmp_path, monkeypatch):
    from tasks.stages.prepare import prepare

    monkeypatch.chdir(tmp_path)
    params = parse_params({"tracking": {"enabled": False}})
    prepare(params)
    with pytest.raises(ConfigError, match="backdoor_train"):
        backdoor.cleanse_trojan(params, "l1_sparse", 0.5)


def test_the_stage_entry_point_refuses_an_unknown_stage(capsys):
    with pytest.raises(SystemExit, match="usage: python -m tasks.stages.backdoor"):
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
        # "within a few points" (18 of 360 test images); at most 0.8 measured over six seeds
        assert row["SA_before"] - row["SA"] <= 5, sparsity


@pytest.mark.slow
def test_the_sparse_trojan_model_is_sparse_and_stays_so(cleansed):
    from tasks.adapters.workspace import load_model
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
    from tasks.adapters.tracking import KIND_TAG

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
    from tasks.adapters import registry

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
    metrics = registry.version_metrics(version)
    assert metrics["ASR"] == pytest.approx(rows[0.5]["ASR"]) and metrics["ASR_before"] > 80
    assert registry.version_metrics(trojan)["ASR"] == pytest.approx(rows[0.5]["ASR_before"])
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


# --- transfer across data sets -------------------------------------------------------------


def synthetic_npz(path: Path, classes: int, seed: int) -> Path:
    """A tiny npz data set of 8x8 grey images: class k is a bright row k on faint noise, 20 per class."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), 20)
    images = rng.uniform(0, 0.3, (len(labels), 1, 8, 8)).astype(np.float32)
    images[np.arange(len(labels)), 0, labels, :] = 1.0
    np.savez(path, x=images, y=labels, ids=np.array([f"{path.stem}/{i:03d}" for i in range(len(labels))]))
    return path


def cross_dataset_params(folder: Path) -> dict:
    """params.yaml with a transfer from one npz data set (4 classes, forgetting 0) to another (3 classes)."""
    raw = shrunk_params()
    raw["tracking"] = {"enabled": False}
    raw["transfer"] = {
        **raw["transfer"],
        "source": "npz", "source_root": str(synthetic_npz(folder / "rows_source.npz", 4, seed=0)),
        "target": "npz", "target_root": str(synthetic_npz(folder / "rows_target.npz", 3, seed=1)),
        "source_classes": [0, 1, 2, 3], "forget_classes": [0], "target_classes": [0, 1, 2],
        "epochs": 1, "settings": {"epochs": 1}, "linear_probe_epochs": 1, "fine_tune_epochs": 1,
    }  # fmt: skip
    return raw


def test_a_cross_dataset_transfer_reads_both_data_sets_and_reports_every_row(tmp_path, monkeypatch):
    from unlearn.transfer import MODES, SOURCES

    monkeypatch.chdir(tmp_path)
    params = parse_params(cross_dataset_params(tmp_path))
    assert transfer_stage.transfer_config(params).cross_dataset  # target classes 0-2 may share the source's numbers
    report = transfer_stage.run_transfer(params).read_text()
    result = json.loads(transfer_stage.METRICS.read_text())
    assert (result["source_dataset"], result["target_dataset"]) == ("rows_source", "rows_target")
    assert [(r["source"], r["mode"]) for r in result["rows"]] == [(s, m) for s in SOURCES for m in MODES]
    assert all(0 <= r["target_accuracy"] <= 100 and r["seconds"] > 0 for r in result["rows"])
    assert all((r["unlearn_seconds"] > 0) == (r["source"] != "original") for r in result["rows"])
    assert "Source task: rows_source classes 0-3" in report and "Target task: rows_target classes 0-2" in report
    assert len([line for line in report.splitlines() if line.startswith("| ") and "Source" not in line]) == 6
    assert not Path("data/raw/dataset.npz").exists()  # nothing prepared: both came from their own files


def test_the_cifar_preset_is_cifar100_to_cifar10_from_the_local_root_and_never_downloads(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = str(tmp_path / "external")
    params = parse_params({"data": {"root": root}, "tracking": {"enabled": False},
                           "transfer": {"preset": "cifar100_to_cifar10"}})  # fmt: skip
    assert transfer_stage.data_sources(params) == (("cifar100", root), ("cifar10", root))
    config = transfer_stage.transfer_config(params)
    assert config.source_classes == tuple(range(100)) and config.target_classes == tuple(range(10))
    assert config.forget_classes == CIFAR100_VEHICLES and config.cross_dataset
    assert transfer_stage.source_recipe(params).arch == "resnet18" and config.preset == "cifar100"
    assert config.fine_tune.augment and not config.linear_probe.augment
    with pytest.raises(DatasetNotFoundError, match="cifar100 is not under"):
        transfer_stage.run_transfer(params)
    assert not any(Path(root).glob("**/*.tar.gz"))


def test_a_target_naming_the_source_data_set_is_no_other_data_set():
    params = parse_params({"transfer": {"target": "digits", "target_classes": [1, 2]}})
    assert transfer_stage.data_sources(params) == (None, None)
    with pytest.raises(ConfigError, match="transfer: .*must not overlap"):
        transfer_stage.transfer_config(params)


# --- the command line --------------------------------------------------------------------------


def test_the_commands_turn_a_config_error_into_a_clean_exit(monkeypatch):
    import flows.backdoor_cleanse
    import flows.transfer
    from cli import app

    def refuse(*args, **kwargs):
        raise ConfigError("params.yaml: transfer.preset: unknown transfer preset 'x'")

    monkeypatch.setattr(flows.backdoor_cleanse, "backdoor_cleanse", refuse)
    monkeypatch.setattr(flows.transfer, "transfer", refuse)
    for command in ("cleanse", "transfer"):
        result = CliRunner().invoke(app, [command])
        assert result.exit_code == 1 and "error: params.yaml: transfer.preset" in result.output, command
        assert "Traceback" not in result.output


@pytest.mark.slow
def test_unlearn_cleanse_prints_asr_and_sa_before_and_after(cleansed, rows, monkeypatch):
    import flows.backdoor_cleanse
    from cli import app

    monkeypatch.setattr(flows.backdoor_cleanse, "backdoor_cleanse", lambda *args, **kwargs: cleansed)
    result = CliRunner().invoke(app, ["cleanse"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["method", "sparsity", "ASR", "before", "ASR", "after", "SA", "before", "SA", "after",
                                "RTE", "s"]  # fmt: skip
    sparse = next(line for line in lines if "50% sparse" in line)
    assert f"{rows[0.5]['ASR_before']:.2f}" in sparse and f"{rows[0.5]['SA']:.2f}" in sparse
    assert sum(line.startswith("ℓ1-sparse") for line in lines) == 2
    assert f"v{cleansed['registered']['cleansed_version']} (ℓ1-sparse cleanse, sparsity 0.5)" in result.output


@pytest.mark.slow
def test_unlearn_transfer_prints_every_row(transferred, monkeypatch):
    import flows.transfer
    from cli import app

    monkeypatch.setattr(flows.transfer, "transfer", lambda *args, **kwargs: transferred)
    result = CliRunner().invoke(app, ["transfer"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("digits -> digits; source model test accuracy")
    rows = json.loads(Path(transferred["metrics"]).read_text())["rows"]
    body = [line.split() for line in result.output.splitlines()[3:-1]]
    assert len(body) == 6 and [line[0] for line in body] == [r["source"] for r in rows]
    assert [line[-3] for line in body] == [f"{r['target_accuracy']:.2f}" for r in rows]
