"""The deletion_batch flow end to end: Prefect's local API, a real MLflow sqlite store, DVC.

One champion is trained and registered for the module; each test gets its own inbox and
ledger (its own params file), so batches do not interfere.
"""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml

from tasks import deletion, registry, tracking
from tasks.requests import DeletionRequest, open_inbox

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
STEPS = ("record", "write_split", "version_split", "unlearn_champion", "evaluate_candidate",
         "register_candidate", "finish")  # fmt: skip


def base_params() -> dict:
    """The project's params.yaml, shrunk: one seed, two epochs, a 50%-sparse champion, quick FT."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["train"].update(seeds=[0], epochs=2)
    params["unlearn"]["settings"]["ft"] = {"epochs": 1}
    params["deletion"].update(method="ft", sparsity=0.5, dvc_push=True)
    return params


@pytest.fixture(scope="module")
def project(tmp_path_factory, prefect_api):
    """A git + DVC project folder with a registered champion; the working folder for the module."""
    folder = tmp_path_factory.mktemp("project")
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.chdir(folder)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{folder / 'mlflow.db'}")
    monkeypatch.setenv("UNLEARN_ARTIFACT_ROOT", str(folder / "mlartifacts"))
    monkeypatch.setenv("UNLEARN_DEVICE", "cpu")
    for command in (["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "config", "core.analytics", "false"],
                    ["dvc", "remote", "add", "-d", "local", str(folder / "remote")]):  # fmt: skip
        subprocess.run(command, check=True, cwd=folder, env=_env())
    (folder / "params.yaml").write_text(yaml.safe_dump(base_params()))
    from flows.train_original import train_original

    summary = train_original("params.yaml")
    yield folder, summary
    monkeypatch.undo()


def _env() -> dict[str, str]:
    import os
    import sys

    return {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}


@pytest.fixture
def params_path(project, request) -> str:
    """A params file of this test's own: its inbox and ledger."""
    folder, _ = project
    name = request.node.name.replace("[", "-").replace("]", "")
    params = base_params()
    params["deletion"].update(inbox=f"data/requests/{name}", ledger=f"data/ledger/{name}.csv")
    path = folder / f"params-{name}.yaml"
    path.write_text(yaml.safe_dump(params))
    return path.name


def submit(params_path: str, request_id: str, sample_ids: list[str]) -> None:
    inbox = open_inbox(yaml.safe_load(Path(params_path).read_text())["deletion"]["inbox"])
    inbox.submit(DeletionRequest(request_id=request_id, sample_ids=sample_ids))


def versions_of_batch(batch_id: str):
    name = registry.model_name("digits", "digits_resnet")
    return tracking.client().search_model_versions(f"name = '{name}' and tags.batch_id = '{batch_id}'")


def inbox_of(params_path: str):
    return open_inbox(yaml.safe_load(Path(params_path).read_text())["deletion"]["inbox"])


def test_train_original_registers_a_sparse_champion(project):
    _, summary = project
    champion = registry.version_by_alias(summary["model"], registry.CHAMPION)
    assert str(champion.version) == summary["champion_version"]
    assert champion.tags[registry.PARENT_TAG] == summary["dense_version"]
    assert float(champion.tags[registry.SPARSITY_TAG]) == pytest.approx(0.5, abs=0.001)


def test_happy_path_registers_a_candidate_with_its_lineage(params_path):
    from flows.deletion_batch import deletion_batch

    submit(params_path, "req-a", ["digits/train/00001", "digits/train/00002"])
    submit(params_path, "req-b", ["digits/train/00003"])
    result = deletion_batch(params_path)
    assert result["status"] == "registered" and sorted(result["requests"]) == ["req-a", "req-b"]
    version = registry.version_by_alias(result["model"], registry.CANDIDATE)
    assert str(version.version) == result["version"]
    assert set(version.tags[registry.REQUEST_IDS_TAG].split(",")) == {"req-a", "req-b"}
    assert version.tags[registry.BATCH_TAG] == result["batch_id"]
    assert version.tags[registry.LEDGER_TAG] and version.tags[registry.PARENT_TAG]
    assert 0 <= float(version.tags["metrics.UA"]) <= 100
    assert "metrics.UA_cumulative" in version.tags
    assert inbox_of(params_path).status("req-a").state == "done"
    assert Path(f"data/splits/batches/{result['batch_id']}.dvc").is_file()  # versioned with DVC


def test_a_second_batch_retains_neither_batchs_samples_and_registers(params_path):
    """The retain set of batch 2 lacks batch 1's samples too, and its split still validates."""
    from flows.deletion_batch import deletion_batch

    submit(params_path, "req-first", ["digits/train/00020", "digits/train/00021"])
    first = deletion_batch(params_path)
    submit(params_path, "req-second", ["digits/train/00022"])
    second = deletion_batch(params_path)
    assert first["status"] == second["status"] == "registered" and second["requests"] == ["req-second"]
    retain = Path(f"data/splits/batches/{second['batch_id']}/retain.csv").read_text().splitlines()
    assert not {"digits/train/00020", "digits/train/00021", "digits/train/00022"} & {r.split(",")[0] for r in retain}
    cumulative = Path(f"data/splits/batches/{second['batch_id']}/cumulative_forget.csv").read_text()
    assert all(f"digits/train/0002{k}" in cumulative for k in range(3))


def test_bad_request_is_rejected_with_its_reason_and_the_good_ones_go_on(params_path):
    from flows.deletion_batch import deletion_batch

    submit(params_path, "req-good", ["digits/train/00010"])
    submit(params_path, "req-bad", ["digits/train/99999"])
    result = deletion_batch(params_path)
    assert result["requests"] == ["req-good"]
    inbox = inbox_of(params_path)
    assert inbox.status("req-bad").state == "rejected"
    assert "digits/train/99999" in inbox.rejection_reason("req-bad")
    assert inbox.status("req-good").state == "done"


def test_empty_inbox_ends_quickly_with_nothing_registered(params_path):
    from flows.deletion_batch import deletion_batch

    assert deletion_batch(params_path) == {"status": "empty"}


@pytest.mark.parametrize("step", STEPS)
def test_a_crash_at_any_step_loses_nothing_and_processes_nothing_twice(params_path, step, monkeypatch):
    import flows.deletion_batch as flow_module

    for name in dir(flow_module):  # no retries: the injected crash must end the run
        candidate = getattr(flow_module, name)
        if hasattr(candidate, "with_options") and hasattr(candidate, "retries"):
            monkeypatch.setattr(flow_module, name, candidate.with_options(retries=0))
    submit(params_path, "req-1", ["digits/train/00020", "digits/train/00021"])
    submit(params_path, "req-2", ["digits/train/00022"])

    def crash(*args, **kwargs):
        raise RuntimeError(f"injected crash at {step}")

    with monkeypatch.context() as patch:
        patch.setattr(deletion, step, crash)
        with pytest.raises(RuntimeError, match="injected crash"):
            flow_module.deletion_batch(params_path)
    inbox = inbox_of(params_path)
    assert {inbox.status(r).state for r in ("req-1", "req-2")} <= {"claimed", "pending"}
    result = flow_module.deletion_batch(params_path)
    assert result["status"] == "registered" and result["resumed"] is True
    assert {inbox.status(r).state for r in ("req-1", "req-2")} == {"done"}
    assert len(versions_of_batch(result["batch_id"])) == 1
    assert flow_module.deletion_batch(params_path) == {"status": "empty"}  # nothing left, nothing redone
    ledger = deletion.Ledger.load(yaml.safe_load(Path(params_path).read_text())["deletion"]["ledger"])
    assert sorted(ledger.deleted_ids()) == ["digits/train/00020", "digits/train/00021", "digits/train/00022"]


def test_at_most_one_batch_runs_at_a_time(params_path, monkeypatch):
    from flows.deletion_batch import deletion_batch

    submit(params_path, "req-x", ["digits/train/00030"])
    spans: list[tuple[str, float]] = []
    original_open, original_finish = deletion.open_batch, deletion.finish

    def open_batch(params):
        spans.append(("start", time.monotonic()))
        time.sleep(1.0)  # widen the window in which a second run could slip in
        return original_open(params)

    def finish(params, batch):
        original_finish(params, batch)
        spans.append(("end", time.monotonic()))

    monkeypatch.setattr(deletion, "open_batch", open_batch)
    monkeypatch.setattr(deletion, "finish", finish)
    results: list[dict] = []
    threads = [threading.Thread(target=lambda: results.append(deletion_batch(params_path))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert sorted(r["status"] for r in results) == ["empty", "registered"]
    kinds = [kind for kind, _ in sorted(spans, key=lambda span: span[1])]
    assert kinds == ["start", "end", "start"]  # the second run began only after the first ended
