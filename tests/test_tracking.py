"""MLflow tracking against real stores: params, metrics, split inputs, tags, artefacts, S3."""

from __future__ import annotations

import subprocess
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient
from mlflow_servers import S3_ENV, end_runs, migrated_database, mlflow_server, s3_keys, sqlite_store

from tasks import tracking
from tasks.params import Params
from unlearn.errors import ConfigError
from unlearn.splits import class_wise
from unlearn.train import EpochRecord, History

FINAL_METRICS = {
    "UA": 100.0,
    "MIA_efficacy": 99.5,
    "RA": 98.0,
    "TA": 97.25,
    "RTE_seconds": 1.5,
    "avg_gap": 0.8,
    "sparsity": 0.9,
}


@pytest.fixture(scope="module")
def mlflow_template(tmp_path_factory):
    return migrated_database(tmp_path_factory.mktemp("mlflow-template"))


@pytest.fixture
def store(tmp_path, monkeypatch, mlflow_template):
    """A fresh sqlite tracking store for this test."""
    yield sqlite_store(tmp_path, monkeypatch, mlflow_template)
    end_runs()


@pytest.fixture
def history() -> History:
    records = [EpochRecord(epoch, 2.0 / (epoch + 1), 0.5 + 0.1 * epoch, 0.05, 0.1) for epoch in range(3)]
    return History(records, seconds=0.3)


def test_default_store_is_sqlite_with_artefacts_beside_it(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv(tracking.ARTIFACT_ROOT_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    assert tracking.tracking_uri() == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert tracking.artifact_location("unlearn") == (tmp_path / "mlartifacts" / "unlearn").as_uri()


def test_server_and_s3_are_configuration_only(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.internal:5000")
    monkeypatch.delenv(tracking.ARTIFACT_ROOT_ENV, raising=False)
    assert tracking.tracking_uri() == "http://mlflow.internal:5000"
    assert tracking.artifact_location("unlearn") is None  # the server's --artifacts-destination decides
    monkeypatch.setenv(tracking.ARTIFACT_ROOT_ENV, "s3://models/mlflow/")
    assert tracking.artifact_location("unlearn") == "s3://models/mlflow/unlearn"


@pytest.mark.parametrize(
    "key",
    ["aws_secret_access_key", "AWS_ACCESS_KEY_ID", "db.password", "api_token", "credentials_file", "PASSWD"],
)
def test_credential_like_keys_are_dropped(key):
    assert tracking.sanitize({key: "x", "train.lr": 0.05}) == {"train.lr": "0.05"}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("postgresql://mlflow:hunter2@db:5432/mlflow", "postgresql://***@db:5432/mlflow"),
        ("see https://user:pw@host/x and s3://bucket/y", "see https://***@host/x and s3://bucket/y"),
        ("key id AKIAABCDEFGHIJKLMNOP here", "key id *** here"),
        ("http://127.0.0.1:5000/path", "http://127.0.0.1:5000/path"),
        ("data/external", "data/external"),
    ],
)
def test_credentials_in_values_are_redacted(value, expected):
    assert tracking.sanitize({"where": value}) == {"where": expected}


def test_unknown_run_kind_and_logging_outside_a_run_are_errors(store):
    with pytest.raises(ConfigError, match="unknown run kind"), tracking.start_run("trian"):
        pass
    with pytest.raises(tracking.TrackingError, match="no active MLflow run"):
        tracking.log_evaluation({"UA": 1.0})


def _record_everything(digits, history, tmp_path) -> str:
    split = class_wise(digits, [0])
    split_folder = split.save(tmp_path / "split")
    checkpoint = tmp_path / "seed0.pt"
    checkpoint.write_bytes(b"weights")
    report = tmp_path / "report"
    report.mkdir()
    (report / "table.md").write_text("| UA |\n")
    tags = tracking.run_tags(
        "train",
        dataset="digits",
        arch="digits_resnet",
        device="cpu",
        data_digests={"data/raw/dataset.npz": "0123abcd"},
    )
    tags.update({"aws_secret_access_key": "abc", "store": "postgresql://u:hunter2@db/mlflow"})
    with tracking.start_run("train", "train-seed0", params=Params(), tags=tags) as run:
        tracking.log_history(history)
        tracking.log_split(split, "class_wise", source=split_folder)
        tracking.log_evaluation(FINAL_METRICS)
        tracking.log_artifacts([checkpoint, report])
    return run.info.run_id


def _check_everything(run_id: str, digits) -> None:
    store = MlflowClient(tracking_uri=tracking.tracking_uri())
    run = store.get_run(run_id)
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["data.preset"] == "digits" and params["train.seeds"] == "0,1,2"
    assert params["promote.min_ua"] == "90.0"
    assert [m.step for m in store.get_metric_history(run_id, "loss")] == [0, 1, 2]
    assert store.get_metric_history(run_id, "accuracy")[-1].value == pytest.approx(0.7)
    assert {k: run.data.metrics[k] for k in FINAL_METRICS} == FINAL_METRICS
    split = class_wise(digits, [0])
    inputs = {{t.key: t.value for t in i.tags}["mlflow.data.context"]: i for i in run.inputs.dataset_inputs}
    assert set(inputs) == {"retain", "forget", "test"}
    for part, dataset_input in inputs.items():
        digest = getattr(split, part).digest()
        assert dataset_input.dataset.name == f"class_wise/{part}"
        assert dataset_input.dataset.digest == digest[:32]
        assert {t.key: t.value for t in dataset_input.tags}["digest"] == digest
    tags = run.data.tags
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=Path(tracking.__file__).parent, capture_output=True, text=True
    ).stdout.strip()
    assert tags[tracking.GIT_COMMIT_TAG] == commit
    assert (tags["unlearn.kind"], tags["dataset"], tags["arch"], tags["device"]) == (
        "train",
        "digits",
        "digits_resnet",
        "cpu",
    )
    assert tags["dvc.data/raw/dataset.npz"] == "0123abcd"
    assert tags["split.forget.digest"] == split.forget.digest()
    assert "aws_secret_access_key" not in tags
    assert tags["store"] == "postgresql://***@db/mlflow"
    assert {a.path for a in store.list_artifacts(run_id)} == {"seed0.pt", "table.md"}


def test_a_run_records_params_metrics_split_inputs_tags_and_artefacts(store, digits, history, tmp_path):
    run_id = _record_everything(digits, history, tmp_path)
    _check_everything(run_id, digits)
    assert list((tmp_path / "mlartifacts" / "unlearn").glob(f"{run_id}/artifacts/seed0.pt"))


@pytest.fixture
def server_store(tmp_path, monkeypatch, mlflow_template):
    """An `mlflow server` process on 127.0.0.1 as the tracking store; terminated at teardown."""
    sqlite_store(tmp_path, monkeypatch, mlflow_template)
    with mlflow_server(tmp_path / "server", mlflow_template) as url:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        yield url
        end_runs()


@pytest.mark.slow
def test_a_run_through_an_mlflow_server(server_store, tmp_path, digits, history):
    run_id = _record_everything(digits, history, tmp_path)
    _check_everything(run_id, digits)
    assert list((tmp_path / "server" / "server-artifacts").rglob("seed0.pt"))  # proxied to the server's folder


def test_a_failed_step_ends_its_run_failed_and_nested_runs_are_children(store):
    with (
        tracking.start_run("unlearn", "batch") as parent,
        pytest.raises(RuntimeError),
        tracking.start_run("evaluate", "evaluate") as child,
    ):
        raise RuntimeError("boom")
    store_client = MlflowClient(tracking_uri=tracking.tracking_uri())
    failed = store_client.get_run(child.info.run_id)
    assert failed.info.status == "FAILED"
    assert failed.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert store_client.get_run(parent.info.run_id).info.status == "FINISHED"


@pytest.mark.slow
def test_artefacts_go_to_s3_with_a_sqlite_store(tmp_path, monkeypatch, mlflow_template, s3_endpoint, s3_bucket):
    sqlite_store(tmp_path, monkeypatch, mlflow_template)
    for key, value in {
        **S3_ENV,
        "MLFLOW_S3_ENDPOINT_URL": s3_endpoint,
        tracking.ARTIFACT_ROOT_ENV: f"s3://{s3_bucket}/mlflow",
    }.items():
        monkeypatch.setenv(key, value)
    checkpoint = tmp_path / "seed0.pt"
    checkpoint.write_bytes(b"weights")
    with tracking.start_run("prune", "prune-0.9") as run:
        tracking.log_artifacts([checkpoint], artifact_path="checkpoints")
    keys = s3_keys(s3_endpoint, s3_bucket, "mlflow/unlearn/")
    assert f"mlflow/unlearn/{run.info.run_id}/artifacts/checkpoints/seed0.pt" in keys
    assert not (tmp_path / "mlartifacts").exists()
    assert mlflow.get_experiment_by_name("unlearn").artifact_location == f"s3://{s3_bucket}/mlflow/unlearn"
