"""The `study` Prefect flow end to end on a tiny grid, with the thread and the Dask task runners.

The session's temporary Prefect API (conftest `prefect_api`); each study runs in its own
temporary working directory, as `dvc repro` would in a checkout.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

import pytest

# Read when prefect is first imported: no telemetry, no writes to ~/.prefect, a patient start.
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="prefect-home-"))
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")

from prefect import get_client  # noqa: E402
from prefect.client.schemas.filters import (  # noqa: E402
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterId,
)
from prefect.context import FlowRunContext  # noqa: E402
from prefect.task_runners import ThreadPoolTaskRunner  # noqa: E402

from flows import study as study_module  # noqa: E402
from flows.stages import GPU_TAG, STAGE_TASKS  # noqa: E402
from flows.study import (  # noqa: E402
    REPORT_ARTIFACT,
    default_gpu_slots,
    ensure_gpu_limit,
    make_task_runner,
    run_study,
    study,
)
from tasks.adapters.params import parse_params  # noqa: E402
from unlearn.errors import ConfigError, DatasetNotFoundError  # noqa: E402

pytestmark = pytest.mark.slow

# params.yaml's shape, shrunk: one seed, two epochs (OMP rewinds to epoch 1), two sparsities,
# FT only, one class-wise scenario.
TINY = {
    "split": {"scenarios": {"class_wise": {"kind": "class_wise", "classes": [0]}}},
    "train": {"seeds": [0], "epochs": 2},
    "prune": {"method": "omp", "sparsities": [0.0, 0.5]},
    "unlearn": {"methods": ["ft"], "settings": {"ft": {"epochs": 1}}},
}
SPARSITY_TAGS = {"s0.0", "s0.5"}
METRICS = {"UA", "MIA_efficacy", "RA", "TA", "RTE_seconds"}
# Every task run the tiny grid makes, as dvc.yaml's stages would run it; True = tagged `gpu`.
GRID = {
    "prepare": False,
    "split-class_wise": False,
    "validate-class_wise": False,
    "train": True,
    "prune-s0.0": True,
    "prune-s0.5": True,
    "calibrate": True,
    **{f"unlearn-class_wise-{m}-s{s}": True for m in ("retrain", "ft") for s in ("0.0", "0.5")},
    "evaluate-class_wise-retrain": False,
    "evaluate-class_wise-ft": False,
    "report": False,
}


@pytest.fixture(scope="module")
def tiny_params():
    return parse_params(TINY, "tiny study")


@contextlib.contextmanager
def study_folder(folder: Path):
    """Run in `folder` on the CPU, as a stage would in a checkout; restore cwd and env after."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        patch.setenv("UNLEARN_DEVICE", "cpu")
        yield folder


@pytest.fixture(scope="module")
def thread_run(prefect_api, tiny_params, tmp_path_factory):
    """The tiny study with the thread runner: (its folder, its result, its flow run id)."""
    with study_folder(tmp_path_factory.mktemp("threads")) as folder:
        state = study(params=tiny_params, return_state=True)
        return folder, state.result(), state.state_details.flow_run_id


def read_metrics(folder: Path, method: str) -> dict:
    return json.loads((folder / "metrics" / "class_wise" / f"{method}.json").read_text())


def without_timings(results: dict) -> dict:
    """The results without wall times (RTE), at the top level of each sparsity and in its per-seed block."""
    if not isinstance(results, dict):
        return results
    return {key: without_timings(value) for key, value in results.items() if not key.startswith("RTE")}


def test_study_writes_metrics_report_and_artifact(thread_run):
    folder, result, flow_run_id = thread_run
    assert result["metrics"] == {"class_wise": {m: f"metrics/class_wise/{m}.json" for m in ("retrain", "ft")}}
    for method in ("retrain", "ft"):
        results = read_metrics(folder, method)
        assert set(results) == SPARSITY_TAGS
        assert all(set(row) >= METRICS for row in results.values())
    # Retrain never saw class 0: every forgotten sample is misclassified, at both sparsities.
    assert all(row["UA"] == 100.0 for row in read_metrics(folder, "retrain").values())
    report = (folder / "reports" / "study.md").read_text()
    assert result["report"] == "reports/study.md"
    assert "| FT |" in report and "| Retrain |" in report
    assert (folder / "reports" / "validation" / "class_wise.json").is_file()

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[REPORT_ARTIFACT]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]),
            )
        )
    assert [str(a.id) for a in artifacts] == [result["artifact_id"]]
    assert artifacts[0].type == "markdown"
    assert "| FT |" in artifacts[0].data and "### Dense" in artifacts[0].data


def test_task_runs_follow_the_dvc_grid_and_model_stages_are_tagged_gpu(thread_run):
    _, _, flow_run_id = thread_run
    with get_client(sync_client=True) as client:
        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        gpu_limit = client.read_concurrency_limit_by_tag(GPU_TAG)
    tagged = {run.name: GPU_TAG in run.tags for run in task_runs}
    assert tagged == GRID
    assert all(run.state.is_completed() for run in task_runs)
    assert gpu_limit.concurrency_limit == default_gpu_slots()  # the flow set it


def test_tasks_wrap_the_stage_functions_themselves():
    from tasks.production import study_calibration
    from tasks.stages import evaluate, prepare, prune, report, split, train, unlearn, validate

    functions = [prepare.prepare, split.make_split, validate.validate_scenario, train.train_originals,
                 prune.prune_originals, study_calibration.calibrate_study, unlearn.unlearn, evaluate.evaluate_method,
                 report.build_report]  # fmt: skip
    assert [t.fn.__wrapped__ for t in STAGE_TASKS] == functions  # under flows.stages.thread_policy
    assert all(t.retries == 0 for t in STAGE_TASKS)
    assert {t.name for t in STAGE_TASKS if GPU_TAG in t.tags} == {"train", "prune", "calibrate", "unlearn"}


def test_dask_runner_reproduces_the_thread_runs_metrics(thread_run, tiny_params, tmp_path):
    threads_folder = thread_run[0]
    with study_folder(tmp_path):
        result = run_study(params=tiny_params, task_runner="dask", gpu_slots=2)
    assert result["metrics"] == thread_run[1]["metrics"]
    assert (tmp_path / "reports" / "study.md").is_file()
    for method in ("retrain", "ft"):
        on_dask, on_threads = read_metrics(tmp_path, method), read_metrics(threads_folder, method)
        assert set(on_dask) == SPARSITY_TAGS
        assert all(set(row) >= METRICS for row in on_dask.values())
        # Same seeds, same CPU: only the wall times differ.
        assert without_timings(on_dask) == without_timings(on_threads)


def test_a_failed_stage_fails_the_flow_with_its_own_error(prefect_api, tmp_path):
    missing = parse_params({**TINY, "data": {"preset": "cifar10", "root": str(tmp_path / "nowhere")}})
    with study_folder(tmp_path), pytest.raises(DatasetNotFoundError, match="cifar10 is not under"):
        study(params=missing)
    assert not (tmp_path / "metrics").exists()
    assert not (tmp_path / "models").exists()


def test_study_reruns_itself_with_the_runner_it_is_asked_for(prefect_api, monkeypatch):
    """A deployment's run, whose flow object has the default runner, still gets the runner it names."""
    seen = []
    monkeypatch.setattr(study_module, "run_grid", lambda params: seen.append(FlowRunContext.get().task_runner))

    def cheap_runner(name: str, address: str | None = None) -> ThreadPoolTaskRunner:
        return ThreadPoolTaskRunner(max_workers=1 if name == "dask" else 2)  # 1 stands in for Dask

    monkeypatch.setattr(study_module, "make_task_runner", cheap_runner)
    study(params=parse_params(TINY), task_runner="dask", gpu_slots=1)
    study(params=parse_params(TINY), task_runner="threads", gpu_slots=1)
    assert seen == [cheap_runner("dask"), cheap_runner("threads")]


def test_gpu_limit_is_created_then_updated(prefect_api):
    with get_client(sync_client=True) as client:
        ensure_gpu_limit(3)
        assert client.read_concurrency_limit_by_tag(GPU_TAG).concurrency_limit == 3
        ensure_gpu_limit(1)
        assert client.read_concurrency_limit_by_tag(GPU_TAG).concurrency_limit == 1
    with pytest.raises(ConfigError, match="at least 1 slot"):
        ensure_gpu_limit(0)


def test_task_runner_choice():
    from prefect_dask import DaskTaskRunner

    assert make_task_runner("threads") == ThreadPoolTaskRunner(max_workers=2)
    local = make_task_runner("dask")
    assert isinstance(local, DaskTaskRunner) and local.cluster_kwargs["threads_per_worker"] == 1
    assert make_task_runner("dask", "tcp://10.0.0.1:8786").address == "tcp://10.0.0.1:8786"
    with pytest.raises(ConfigError, match="unknown task runner"):
        make_task_runner("ray")
    with pytest.raises(ConfigError, match="needs the `dask` task runner"):
        make_task_runner("threads", "tcp://10.0.0.1:8786")
