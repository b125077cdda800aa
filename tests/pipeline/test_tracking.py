"""MLflow tracking against real stores: params, metrics, split inputs, tags, artefacts, S3."""

from __future__ import annotations

import subprocess
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient
from mlflow_servers import S3_ENV, end_runs, mlflow_server, s3_keys, sqlite_store

from tasks.adapters import tracking
from tasks.adapters.params import Params
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
    ("key", "secret"),
    [
        # secret: a credential word anywhere, split at separators and camelCase
        ("password", True),
        ("pwd", True),
        ("PASSWD", True),
        ("passphrase", True),
        ("auth", True),
        ("Authorization", True),
        ("AWS_SECRET_ACCESS_KEY", True),
        ("AWS_SESSION_TOKEN", True),
        ("dbPassword", True),
        ("mlflow.tracking.password", True),
        ("password2", True),
        ("client_secret", True),
        ("clientSecret", True),
        ("PGPASSWORD", True),  # one word ending in password
        ("hf_token", True),
        ("OAuth2Token", True),
        ("credentials_file", True),
        ("cookie", True),
        ("session_id", True),
        ("request.signature", True),
        ("bearer", True),
        # secret: `key` right after api / access / private / secret / ssh / ...
        ("api_key", True),
        ("x-api-key", True),
        ("APIKey", True),
        ("apikey", True),
        ("AWS_ACCESS_KEY_ID", True),
        ("private_key", True),
        ("ssh_key_path", True),
        # secret: `pass` as the last word
        ("db_pass", True),
        ("pass", True),
        # ordinary: credential words only inside other words
        ("monkey", False),
        ("keyboard", False),
        ("author", False),
        ("authors", False),
        ("passes", False),
        ("passage", False),
        ("tokenizer", False),
        ("max_tokens", False),
        ("secretary", False),
        # ordinary: `key` alone or after other words
        ("key", False),
        ("sort_key", False),
        ("public_key", False),
        ("primaryKey", False),
        # ordinary: `pass` not last; a property of a credential (last word count, type, ...)
        ("pass_rate", False),
        ("session_count", False),
        ("token_type", False),
        ("password_min_length", False),
        ("auth_enabled", False),
        # ordinary: this project's params
        ("train.lr", False),
        ("pin_memory", False),
        ("promote.class_wise.min_ua", False),
        ("promote.sample.min_power", False),
        ("dvc.data/raw/dataset.npz", False),
        ("mlflow.source.git.commit", False),
    ],
)
def test_secret_keys_are_judged_by_words(key, secret):
    assert tracking.is_secret_key(key) is secret


GITHUB_TOKEN = "ghp_" + "a1B2c3D4e5" * 4
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        # URI userinfo: the user name stays, the password goes
        ("postgresql://mlflow:hunter2@db:5432/mlflow", "postgresql://mlflow:***@db:5432/mlflow"),
        ("postgresql+psycopg2://u:p@ss@db/x", "postgresql+psycopg2://u:***@db/x"),
        ("see https://user:pw@host/x and s3://bucket/y", "see https://user:***@host/x and s3://bucket/y"),
        ("redis://:s3cret@cache:6379/0", "redis://:***@cache:6379/0"),
        # userinfo without a colon: a token goes, a user name stays
        (f"https://{GITHUB_TOKEN}@github.com/o/r.git", "https://***@github.com/o/r.git"),
        ("https://a1b2c3d4e5f6a7b8c9d0e1f2@host/x", "https://***@host/x"),
        ("ssh://git@github.com/o/r.git", "ssh://git@github.com/o/r.git"),
        ("https://alice@example.com/x", "https://alice@example.com/x"),
        # headers and authorisation schemes
        ("Authorization: Bearer abc.def.ghi", "Authorization: ***"),
        ("curl -H 'Authorization: Basic dXNlcjpwYXNz' http://h", "curl -H 'Authorization: ***' http://h"),
        ("Bearer eyJhbGciOi.payload123.sig", "Bearer ***"),
        ("Basic dXNlcjpwYXNz", "Basic ***"),
        ("X-Api-Key: abc123", "X-Api-Key: ***"),
        ("Cookie: sid=abc; theme=dark", "Cookie: ***"),
        ("Basic usage of bearer tokens", "Basic usage of bearer tokens"),
        # inline secret pairs in several spellings
        ("password=hunter2 lr=0.1", "password=*** lr=0.1"),
        ("pwd: hunter2", "pwd: ***"),
        ("token=abc, x=1", "token=***, x=1"),
        ('api_key="abc123"', 'api_key="***"'),
        ("secret: s3", "secret: ***"),
        ("DB_PASSWORD = 'two words'", "DB_PASSWORD = '***'"),
        ("--password=hunter2 --lr 0.1", "--password=*** --lr 0.1"),
        ("(password=abc), x", "(password=***), x"),
        ("jdbc:sqlserver://h;user=u;password=pw;db=x", "jdbc:sqlserver://h;user=u;password=***;db=x"),
        # query strings and JSON-ish mappings
        ("https://h/x?token=abc&x=1", "https://h/x?token=***&x=1"),
        ("mysql://u:pw@h/db?password=pw2&ssl=true", "mysql://u:***@h/db?password=***&ssl=true"),
        ('{"password": "x", "user": "u"}', '{"password": "***", "user": "u"}'),
        ("{'db_password': 'x', 'lr': 0.1}", "{'db_password': '***', 'lr': 0.1}"),
        # AWS, private keys, known token prefixes
        ("key id AKIAABCDEFGHIJKLMNOP here", "key id *** here"),
        (f"export AWS_SECRET_ACCESS_KEY={AWS_SECRET}", "export AWS_SECRET_ACCESS_KEY=***"),
        (f"AWS secret key: {AWS_SECRET}", "AWS secret key: ***"),
        ("-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY----- tail", "*** tail"),
        (f"git push with {GITHUB_TOKEN}", "git push with ***"),
        # ordinary text stays as it is
        ("lr=0.1, key=value", "lr=0.1, key=value"),
        ("monkey=3 author=Jane passes=2", "monkey=3 author=Jane passes=2"),
        ("http://127.0.0.1:5000/path", "http://127.0.0.1:5000/path"),
        ("https://mlflow.internal:5000/#/experiments?id=1", "https://mlflow.internal:5000/#/experiments?id=1"),
        ("sqlite:////tmp/x/mlflow.db", "sqlite:////tmp/x/mlflow.db"),
        ("commit 0123456789abcdef0123456789abcdef01234567", "commit 0123456789abcdef0123456789abcdef01234567"),
        ("data/external", "data/external"),
    ],
)
def test_credentials_in_values_are_redacted(value, expected):
    assert tracking.redact(value) == expected
    assert tracking.sanitize({"where": value}) == {"where": expected}
    assert tracking.redact(expected) == expected  # redacting twice changes nothing


def test_sanitize_drops_secret_keys_keeps_others_and_redacts_values(caplog):
    values = {
        "pwd": "hunter2",
        "x-api-key": "k-123",
        "dbPassword": "hunter2",
        "auth": "u:hunter2",
        "monkey": 3,
        "sort_key": "name",
        "author": "Jane",
        "train.lr": 0.05,
        "store": "postgresql://u:hunter2@db/mlflow",
        "note": "Bearer tok-abc123 and token=hunter2",
        "long": "x" * 600,
    }
    with caplog.at_level("WARNING", logger=tracking.__name__):
        clean = tracking.sanitize(values, limit=500)
    assert clean == {
        "monkey": "3",
        "sort_key": "name",
        "author": "Jane",
        "train.lr": "0.05",
        "store": "postgresql://u:***@db/mlflow",
        "note": "Bearer *** and token=***",
        "long": "x" * 488 + "...[cut]",
    }
    assert "auth, dbPassword, pwd, x-api-key" in caplog.text
    assert "hunter2" not in caplog.text


def test_display_uri_and_store_errors_hide_the_password(monkeypatch):
    uri = "postgresql://mlflow:hunter2@db:5432/mlflow"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert tracking.display_uri() == "postgresql://mlflow:***@db:5432/mlflow"
    assert tracking.display_uri("http://mlflow.internal:5000") == "http://mlflow.internal:5000"

    class RefusingClient:
        def __init__(self, tracking_uri):
            self.uri = tracking_uri

        def get_experiment_by_name(self, name):
            raise tracking.MlflowException(f"cannot reach {self.uri}")

    monkeypatch.setattr(tracking, "MlflowClient", RefusingClient)
    monkeypatch.setattr(tracking.mlflow, "set_tracking_uri", lambda uri: None)
    with pytest.raises(tracking.TrackingError) as raised:
        tracking.ensure_experiment("unlearn")
    assert "hunter2" not in str(raised.value)
    assert "postgresql://mlflow:***@db:5432/mlflow refused experiment 'unlearn'" in str(raised.value)
    assert raised.value.__cause__ is None and raised.value.__suppress_context__  # no traceback quoting it


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
    assert params["promote.class_wise.min_ua"] == "90.0"
    assert params["promote.sample.weak_evidence"] == "retrain"
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
    assert tags["store"] == "postgresql://u:***@db/mlflow"
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


# --- the tracker: one entry point, per `params.tracking` -------------------------------------


def _public(cls) -> dict[str, object]:
    return {name: getattr(cls, name) for name in dir(cls) if not name.startswith("_")}


def test_a_no_tracker_has_every_public_method_of_a_tracker_with_the_same_signature():
    import inspect

    real, dummy = _public(tracking.Tracker), _public(tracking.NoTracker)
    assert {"log_params", "set_tags", "log_history", "log_evaluation", "log_split", "log_artifacts"} <= set(real)
    assert set(real) <= set(dummy)
    for name, member in real.items():
        if callable(member):
            assert inspect.signature(member) == inspect.signature(dummy[name]), name
    assert (tracking.Tracker.enabled, tracking.NoTracker.enabled) == (True, False)
    assert tracking.NoTracker().run_id is None


def _all_runs() -> list:
    store = MlflowClient(tracking_uri=tracking.tracking_uri())
    return store.search_runs([e.experiment_id for e in store.search_experiments()])


def _stage_params(**tracking_group):
    from tasks.adapters.params import parse_params

    return parse_params({"train": {"seeds": [0], "epochs": 2}, "tracking": tracking_group})


@pytest.fixture
def stage_folder(store, digits, tmp_path, monkeypatch):
    """A working folder with the prepared digits data the stages read, and a fresh store."""
    from tasks.adapters import layout

    monkeypatch.chdir(tmp_path)
    digits.save(layout.RAW)
    return tmp_path


def test_a_stage_with_tracking_disabled_opens_no_run(stage_folder):
    from tasks.stages.train import train_originals

    (written,) = train_originals(_stage_params(enabled=False), root=str(stage_folder / "models"))
    assert written.exists()
    assert _all_runs() == []
    assert mlflow.active_run() is None


def test_a_stage_runs_in_the_experiment_params_name_with_the_standard_tags(stage_folder):
    from tasks.stages.train import train_originals

    train_originals(_stage_params(enabled=True, experiment="house-stages"), root=str(stage_folder / "models"))
    (run,) = _all_runs()
    assert run.info.experiment_id == mlflow.get_experiment_by_name("house-stages").experiment_id
    tags = run.data.tags
    assert (tags[tracking.KIND_TAG], tags["dataset"], tags["arch"], tags["device"], tags["seed"]) == (
        "train",
        "digits",
        "digits_resnet",
        "cpu",
        "0",
    )
    assert {"loss", "TA", "train_seconds"} <= set(run.data.metrics)
    assert mlflow.get_experiment_by_name(tracking.DEFAULT_EXPERIMENT) is None  # nothing in the env's default


def test_a_tracker_refuses_to_log_once_its_run_has_ended(store):
    with tracking.run(_stage_params(experiment="house-ended"), "evaluate", "evaluate") as tracker:
        tracker.log_evaluation({"UA": 1.0})
    with pytest.raises(tracking.TrackingError, match="not the active run"):
        tracker.log_evaluation({"UA": 2.0})


@pytest.fixture
def deletion_flow(monkeypatch, digits):
    """`flows.deletion_batch._unlearn_and_register` with its steps replaced by stand-ins.

    Registering records which MLflow run was active: the one the registry logs the model in.
    """
    from types import SimpleNamespace

    from flows import deletion_batch

    seen = {}

    def register(params, batch, ledger, split, candidate, metrics, reference, digests, audited):
        active = mlflow.active_run()
        seen["active_run"] = None if active is None else active.info.run_id
        return SimpleNamespace(version="1", name="unlearn-digits-digits_resnet")

    for step, stand_in in {
        "existing_candidate": lambda params, batch: None,
        "unlearn_champion": lambda params, batch, ledger, split: SimpleNamespace(
            method="ft", parent_version="1", batches=("batch-house",), config={"lr": 0.01, "epochs": 1}
        ),
        "log_evidence": lambda tracker, batch: None,
        "evaluate_candidate": lambda params, split, candidate: {"UA": 99.0, "TA": 95.0},
        "audit_candidate": lambda params, batch, ledger, split, candidate: None,
        "register_candidate": register,
        "attach_review": lambda params, batch, version: "not promotable",
    }.items():
        monkeypatch.setattr(deletion_batch, step, stand_in)
    batch = SimpleNamespace(batch_id="batch-house", request_ids=["req-house"])
    split = SimpleNamespace(split=class_wise(digits, [0]))

    def unlearn_and_register(params):
        return deletion_batch._unlearn_and_register(params, batch, None, split, {})

    return unlearn_and_register, seen


def test_the_deletion_flow_runs_in_the_experiment_params_name(store, deletion_flow):
    unlearn_and_register, seen = deletion_flow
    params = _stage_params(enabled=True, experiment="house-flows")
    unlearn_and_register(params)
    (run,) = _all_runs()
    assert run.info.experiment_id == mlflow.get_experiment_by_name("house-flows").experiment_id
    assert run.info.run_name == "deletion-batch-house" and run.info.status == "FINISHED"
    assert (run.data.tags[tracking.KIND_TAG], run.data.tags["batch_id"], run.data.tags["dataset"]) == (
        "unlearn",
        "batch-house",
        "digits",
    )
    assert run.data.metrics["UA"] == 99.0
    assert run.data.tags["split.forget.digest"]
    assert seen["active_run"] == run.info.run_id  # the candidate is logged in the flow's run


def test_the_deletion_flow_with_tracking_disabled_opens_no_run(store, deletion_flow):
    unlearn_and_register, seen = deletion_flow
    version, metrics = unlearn_and_register(_stage_params(enabled=False, experiment="house-flows"))
    assert version.version == "1" and metrics["UA"] == 99.0
    assert _all_runs() == []
    assert seen["active_run"] is None  # the registry opens its own run (next test)


def test_the_registry_records_what_it_registers_with_tracking_disabled(store, digits, tmp_path):
    """Registering needs a logged model: outside a run the registry opens a `register` run of its own."""
    from tasks.adapters import registry
    from tasks.adapters.workspace import save_model
    from unlearn.original import new_model
    from unlearn.presets import get_preset

    params = _stage_params(enabled=False, experiment="house-registry")
    path = save_model(tmp_path / "original.pt", new_model(get_preset("digits"), digits, 0), params, digits)
    lineage = registry.Lineage(("r1",), "batch-house", "digest", {"retain": "a", "forget": "b"}, "ft", "1")
    version = registry.register_unlearned(
        path, lineage, {"UA": 99.0}, alias=None, experiment=params.tracking.experiment
    )
    (run,) = _all_runs()
    assert run.info.run_id == version.run_id
    assert run.info.experiment_id == mlflow.get_experiment_by_name("house-registry").experiment_id
    assert (run.data.tags[tracking.KIND_TAG], run.data.tags["batch_id"]) == ("register", "batch-house")
