"""The user's own data set, an image folder and an npz file, end to end.

The image folder goes through a shrunk `dvc repro` of every stage dvc.yaml runs by default (the
study, the Trojan-model cleanse, transfer); the npz file, to keep the suite's time, through
prepare and transfer only: after `prepare` every stage reads the same prepared bundle either way.
Then both go through `train-original` and a deletion batch that names file-path ids, in the same
project. DVC watches the files under data/own/, and every MLflow run (the stages', the flows')
carries the data set's name as its `dataset` tag.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from mlflow_servers import QUIET_ENV, migrated_database
from PIL import Image
from test_pipeline_dvc import SHRINK, make_repo, run, shrunk_params, stages_run

from tasks.adapters import registry
from tasks.adapters.params import load_params
from tasks.adapters.requests import DeletionRequest, open_inbox
from tasks.adapters.workspace import bundle
from tasks.production import deletion
from unlearn.transfer import split_classes

pytestmark = pytest.mark.slow
CLASSES = ("bar", "column", "corner", "dot")
PER_CLASS = 60  # 240 images: 192 to train on, 48 to test
# One scenario, one method, the smallest grid that still prunes; the backdoor and transfer shrunk alike.
OWN_SHRINK = {
    **SHRINK,
    "unlearn": {"methods": ["ft"], "settings": {"ft": {"epochs": 1}}},
    "deletion": {"method": "ft", "sparsity": 0.5, "tuned_scenario": "class_wise"},  # the one scenario
    "audit": {"references": 4, "probe_size": 20},
}


def pattern(label: int, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A grey image of class `label`: a bright row, column, corner or centre dot over seeded noise."""
    pixels = rng.integers(0, 60, (height, width), dtype=np.uint8)
    if label == 0:
        pixels[height // 2, :] = 255
    elif label == 1:
        pixels[:, width // 2] = 255
    elif label == 2:
        pixels[:3, :3] = 255
    else:
        pixels[height // 2 - 1 : height // 2 + 1, width // 2 - 1 : width // 2 + 1] = 255
    return pixels


def write_images(root: Path) -> str:
    """RGB PNGs 10 px high and 12 wide (non-square, colour), one folder per class."""
    rng = np.random.default_rng(0)
    for label, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for index in range(PER_CLASS):
            grey = pattern(label, rng, 10, 12)
            tint = np.stack([grey, grey // 2, 255 - grey], axis=-1)
            Image.fromarray(tint, mode="RGB").save(root / name / f"img{index:03d}.png")
    return root.name


def write_npz(path: Path) -> str:
    """Grey 9x9 images as uint8 `x`, labels `y` and path-like `ids` (as exported from a file tree)."""
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(len(CLASSES)), PER_CLASS)
    images = np.stack([pattern(int(label), rng, 9, 9) for label in labels])
    ids = np.array([f"scans/{CLASSES[label]}/scan{index:03d}.png" for index, label in enumerate(labels)])
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x=images, y=labels, ids=ids)
    return path.stem


# source -> (data.path, writer, the changed file of the DVC check, `dvc repro` targets: none = every stage)
SOURCES = {
    "images": ("data/own/letters", write_images, "data/own/letters/dot/img000.png", ()),
    "npz": ("data/own/scans.npz", write_npz, "data/own/scans.npz", ("transfer",)),
}
EVERY_STAGE = {"prepare", "train", "retrain@class_wise", "unlearn@class_wise-ft", "evaluate@class_wise-ft", "report",
               "backdoor_train", "backdoor_prune", "backdoor_cleanse@ft", "backdoor_report", "transfer"}  # fmt: skip


@pytest.fixture(scope="module", params=sorted(SOURCES))
def project(request, tmp_path_factory):
    """A shrunk study on an own data set, after `dvc repro`: (repo, source, data set's name, repro output)."""
    source = request.param
    relative, write, _, targets = SOURCES[source]
    base = tmp_path_factory.mktemp(f"own-{source}")
    params = shrunk_params({**OWN_SHRINK, "data": {"source": source, "path": relative}})
    if "calibrate" in params:  # train-original's settings search: not what these tests are about
        params["calibrate"]["enabled"] = False
    repo = make_repo(base / "study", params)
    run(repo, "dvc", "remote", "add", "-d", "local", str(base / "remote"))  # train-original pushes its audit pool
    name = write(repo / relative)
    shutil.copyfile(migrated_database(base), repo / "mlflow.db")  # the stages' default store, migrated once
    with pytest.MonkeyPatch.context() as patch:
        for key, value in QUIET_ENV.items():
            patch.setenv(key, value)
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{repo / 'mlflow.db'}")
        patch.setenv("UNLEARN_ARTIFACT_ROOT", str(repo / "mlartifacts"))
        patch.setenv("UNLEARN_DEVICE", "cpu")
        output = run(repo, "dvc", "repro", *targets).stdout
        patch.chdir(repo)
        yield repo, source, name, output


def test_repro_runs_every_default_stage_on_the_own_data_set(project):
    repo, source, name, output = project
    ran = stages_run(output)
    if source == "images":
        assert ran >= EVERY_STAGE and any(stage.startswith("prune@") for stage in ran)
        assert "| FT |" in (repo / "reports/study.md").read_text()
    else:
        assert ran == {"prepare", "transfer"}
    data = bundle()
    assert data.name == name and data.num_classes == len(CLASSES)
    assert data.input_shape == ((3, 10, 12) if source == "images" else (1, 9, 9))
    assert json.loads(run(repo, "dvc", "status", "--json", *SOURCES[source][3]).stdout) == {}


def test_dvc_sees_a_changed_data_file(project):
    repo, source, _, _ = project
    changed = repo / SOURCES[source][2]
    before = changed.read_bytes()
    try:
        changed.write_bytes(before + b"\0")
        status = json.loads(run(repo, "dvc", "status", "--json", "prepare").stdout)
    finally:
        changed.write_bytes(before)
    assert "prepare" in status, status
    assert json.loads(run(repo, "dvc", "status", "--json", "prepare").stdout) == {}


def test_transfer_splits_the_own_classes_and_the_trigger_fits_the_images(project):
    repo, source, name, _ = project
    transferred = json.loads((repo / "metrics/transfer.json").read_text())
    source_classes, target_classes, forget_classes = split_classes(len(CLASSES))
    assert transferred["source_dataset"] == transferred["target_dataset"] == name
    assert (transferred["source_classes"], transferred["target_classes"], transferred["forget_classes"]) == (
        list(source_classes), list(target_classes), list(forget_classes))  # fmt: skip
    assert {row["source"] for row in transferred["rows"]} == {"original", "unlearned", "retrained"}
    assert f"Source task: {name} classes 0, 1" in (repo / "reports/transfer.md").read_text()
    if source == "npz":
        return  # the cleanse ran on the image folder alone
    cleanse = json.loads((repo / "metrics/backdoor.json").read_text())["ft"]["s0.0"]
    # the images' shorter side (10 px) scales the paper's 4 px trigger down to 2 px, 1 px in; the
    # images' dark corner takes a white patch
    assert {key: cleanse["attack"][key] for key in ("trigger_size", "border", "patch_value")} == {
        "trigger_size": 2, "border": 1, "patch_value": 1.0}  # fmt: skip
    assert cleanse["poisoned_count"] == round(0.1 * len(bundle().train))
    assert "2 px patch of value 1, 1 px from the bottom-right border" in (repo / "reports/backdoor.md").read_text()


def test_train_original_and_a_batch_forget_file_path_ids(project, prefect_api):
    repo, source, name, _ = project
    from flows.deletion_batch import deletion_batch
    from flows.train_original import train_original

    summary = train_original("params.yaml")
    params = load_params("params.yaml")
    model = deletion.model_name(params)
    assert model == f"unlearn-{name}-digits_resnet" == summary["model"]
    assert registry.version_by_alias(model, registry.CHAMPION) is not None
    prefix = "column/" if source == "images" else "scans/column/"
    forgotten = [sample_id for sample_id in bundle().train.ids if sample_id.startswith(prefix)][:3]
    assert len(forgotten) == 3 and all(sample_id.endswith(".png") for sample_id in forgotten)
    open_inbox(params.deletion.inbox).submit(DeletionRequest(request_id=f"req-{source}", sample_ids=forgotten))
    result = deletion_batch("params.yaml")
    assert result["status"] == "registered" and result["requests"] == [f"req-{source}"]
    candidate = registry.version_by_alias(model, registry.CANDIDATE)
    assert candidate is not None and candidate.tags["dataset"] == name


def test_every_run_carries_the_data_sets_name(project):
    from tasks.adapters import tracking

    _, _, name, _ = project
    client = tracking.client()
    experiments = [experiment.experiment_id for experiment in client.search_experiments()]
    runs = client.search_runs(experiments, max_results=1000)
    assert len(runs) > 5
    assert {run.data.tags.get("dataset") for run in runs} == {name}
