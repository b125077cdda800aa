"""The pipeline's stage functions as Prefect tasks: the same function objects `dvc repro` runs.

One task per stage function of tasks/, never a second copy of its code. Tasks that train
or run models (train, prune, calibrate, unlearn, which with method `retrain` is the gold standard)
carry the `gpu` tag, so a tag concurrency limit (`flows.study.ensure_gpu_limit`) keeps
at most one of them per accelerator. None of them retries: their failures (bad
configuration, a failed split check, a numerical error) are not transient. Results are
not cached by Prefect either: the stages' outputs are files, and deciding what is stale is
DVC's job. Each task body first applies params.yaml's thread policy
(`flows.deployments.thread_policy`), as a stage process does.
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from flows.deployments import thread_policy
from tasks.production.study_calibration import calibrate_study
from tasks.stages.evaluate import evaluate_method
from tasks.stages.prepare import prepare
from tasks.stages.prune import prune_originals
from tasks.stages.report import build_report
from tasks.stages.split import make_split
from tasks.stages.train import train_originals
from tasks.stages.unlearn import unlearn
from tasks.stages.validate import validate_scenario

GPU_TAG = "gpu"
_STAGE = {"cache_policy": NO_CACHE, "retries": 0}


prepare_task = task(thread_policy(prepare), name="prepare", task_run_name="prepare", **_STAGE)
split_task = task(thread_policy(make_split), name="split", task_run_name="split-{scenario}", **_STAGE)
validate_task = task(thread_policy(validate_scenario), name="validate", task_run_name="validate-{scenario_name}",
                     **_STAGE)  # fmt: skip
train_task = task(thread_policy(train_originals), name="train", task_run_name="train", tags=[GPU_TAG], **_STAGE)
prune_task = task(thread_policy(prune_originals), name="prune", task_run_name="prune-s{sparsity}", tags=[GPU_TAG],
                  **_STAGE)  # fmt: skip
# The study's calibration is the tuning service's search (tasks.production), run as dvc.yaml's stage `calibrate`.
calibrate_task = task(thread_policy(calibrate_study), name="calibrate", task_run_name="calibrate", tags=[GPU_TAG],
                      **_STAGE)  # fmt: skip
unlearn_task = task(
    thread_policy(unlearn),
    name="unlearn",
    task_run_name="unlearn-{scenario}-{method}-s{sparsity}",
    tags=[GPU_TAG],
    **_STAGE,
)
evaluate_task = task(thread_policy(evaluate_method), name="evaluate", task_run_name="evaluate-{scenario}-{method}",
                     **_STAGE)  # fmt: skip
report_task = task(thread_policy(build_report), name="report", task_run_name="report", **_STAGE)

STAGE_TASKS = (prepare_task, split_task, validate_task, train_task, prune_task, calibrate_task, unlearn_task,
               evaluate_task, report_task)  # fmt: skip
