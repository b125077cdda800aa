"""What a flow run shows in Prefect: a name that says what it worked on, the project's own log lines, the artefact.

Read back through the Prefect client from the session's local API, as the UI shows them: a
deletion batch's run is named after its batch, its logs hold the project's warnings (a rejected
request with its reason, logged by `tasks.production.deletion`), and its artefact the review's
verdict and where the registered version is.
"""

from __future__ import annotations

import re
import time

import pytest
import yaml
from projects import enter_project, shrunk_params, submit

from tasks.adapters import registry

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project(tmp_path_factory, prefect_api):
    """A git + DVC project with a registered champion (no reference pool: batches go unaudited, and say so)."""
    monkeypatch = pytest.MonkeyPatch()
    folder = enter_project(tmp_path_factory.mktemp("project"), monkeypatch)
    (folder / "params.yaml").write_text(yaml.safe_dump(shrunk_params()))
    from flows.train_original import train_original

    state = train_original("params.yaml", build_pool=False, return_state=True)
    yield folder, {**state.result(), "flow_run_id": state.state_details.flow_run_id}
    monkeypatch.undo()


@pytest.fixture
def params_path(project, request) -> str:
    """A params file of this test's own: its inbox and ledger."""
    folder, _ = project
    params = shrunk_params()
    params["deletion"].update(inbox=f"data/requests/{request.node.name}", ledger=f"data/ledger/{request.node.name}.csv")
    path = folder / f"params-{request.node.name}.yaml"
    path.write_text(yaml.safe_dump(params))
    return path.name


def run_logs(client, flow_run_id, until, timeout: float = 30.0) -> list:
    """The flow run's logs (its task runs' included), once `until(logs)` holds or `timeout` passed."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()  # logs go to the API in batches, from a background worker
    deadline = time.monotonic() + timeout
    while True:
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
        if until(logs) or time.monotonic() > deadline:
            return logs
        time.sleep(0.5)


def artifact_of(client, flow_run_id, key: str) -> str:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    (artifact,) = client.read_artifacts(
        artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=[key]), flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])
        )
    )
    return artifact.data


def test_a_batch_run_is_named_after_its_batch_and_logs_each_rejection_with_its_reason(params_path):
    from prefect.client.orchestration import get_client

    from flows.deletion_batch import deletion_batch

    submit(params_path, "req-good", ["digits/train/00010"])
    submit(params_path, "req-bad", ["digits/train/99999"])
    state = deletion_batch(params_path, return_state=True)
    summary = state.result()
    assert summary["status"] == "registered" and summary["requests"] == ["req-good"]
    flow_run_id = state.state_details.flow_run_id

    def rejection(logs):
        return [log for log in logs if log.name == "tasks.production.deletion" and "rejected req-bad" in log.message]

    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(flow_run_id)
        logs = run_logs(client, flow_run_id, rejection)
        markdown = artifact_of(client, flow_run_id, "deletion-batch")
    # the name: deletion-batch-<timestamp>-<hex> for batch batch-<timestamp>-<hex>
    assert flow_run.name == f"deletion-{summary['batch_id']}"
    assert summary["batch_id"].removeprefix("batch-") in flow_run.name
    # the project's own line, with its reason, filed under the run (and under the task run that logged it)
    (line,) = rejection(logs)
    assert "digits/train/99999" in line.message and line.level == 30  # WARNING
    assert line.task_run_id is not None
    assert any(log.name == "tasks.production.deletion" and "no audit reference pool" in log.message for log in logs)
    # the review: in the summary, as the registry records it, and in the artefact
    version = registry.get_version(summary["model"], summary["version"])
    assert summary["review"] == {
        "verdict": version.tags["review.verdict"],
        "evidence": version.tags["review.evidence"],
        "artifacts": version.tags["review.artifacts"],
    }
    assert summary["review"]["verdict"] in ("promotable", "not promotable")
    assert summary["review"]["evidence"] in ("sufficient", "insufficient")
    assert f"- **review**: {summary['review']['verdict']} (evidence {summary['review']['evidence']})" in markdown
    assert summary["review"]["artifacts"] in markdown
    assert f"registered model `{summary['model']}` version {summary['version']}" in markdown
    assert "rejected `req-bad`" in markdown


def test_an_empty_batch_run_is_named_by_its_start_and_says_empty(params_path):
    from prefect.client.orchestration import get_client

    from flows.deletion_batch import deletion_batch

    state = deletion_batch(params_path, return_state=True)
    assert state.result() == {"status": "empty"}
    with get_client(sync_client=True) as client:
        name = client.read_flow_run(state.state_details.flow_run_id).name
    assert re.fullmatch(r"deletion-batch-\d{8}T\d{6}Z-empty", name), name


def test_the_other_flows_are_named_by_what_they_run(project):
    from prefect import flow
    from prefect.client.orchestration import get_client

    from flows.audit_pool import audit_pool
    from flows.backdoor_cleanse import backdoor_cleanse
    from flows.study import study
    from flows.train_original import train_original

    _, trained = project
    with get_client(sync_client=True) as client:  # the fixture's run
        assert client.read_flow_run(trained["flow_run_id"]).name == "train-original-digits-s0.5"

    @flow
    def names(params_path: str, version: str | None = None) -> dict[str, str]:
        """Each flow's `flow_run_name` callable, called as Prefect calls it: in a run with these parameters."""
        return {f.name: f.flow_run_name() for f in (train_original, study, backdoor_cleanse, audit_pool)}

    assert names("params.yaml") == {
        "train-original": "train-original-digits-s0.5",
        "study": "study-digits",
        "backdoor_cleanse": "backdoor-cleanse-digits",
        "audit-pool": "audit-pool-champion",  # renamed audit-pool-v<N> once the champion's version is read
    }
    assert names("params.yaml", "7")["audit-pool"] == "audit-pool-v7"
    assert re.fullmatch(r"study-\d{8}T\d{6}Z", names("missing.yaml")["study"])  # the flow then fails on it


def test_the_artefact_links_the_version_page_of_an_http_tracking_server(monkeypatch):
    from flows.deletion_batch import mlflow_url, render

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://alice:s3cret@mlflow.example.com:8443/")
    url = mlflow_url("digits-resnet", "3")
    assert url == "https://mlflow.example.com:8443/#/models/digits-resnet/versions/3"
    summary = {"status": "registered", "batch_id": "batch-1", "model": "digits-resnet", "version": "3",
               "review": {"verdict": None, "evidence": None, "artifacts": None}}  # fmt: skip
    markdown = render(summary)
    assert f"]({url})" in markdown and "s3cret" not in markdown
    assert "- **review**: not recorded on version 3" in markdown  # a version whose review the registry lacks
    assert mlflow_url("digits-resnet", "3", "sqlite:///mlflow.db") is None
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////tmp/mlflow.db")
    assert "tracking URI `sqlite:////tmp/mlflow.db`" in render(summary) and "](" not in render(summary)
