"""`unlearn purge` on the embedded default: after two batches, a promotion and a purge, no store holds a
deleted sample's pixels or a purged version's weights.

One project for the module (git + DVC with a local remote, an MLflow sqlite store and artefact folder, the
inbox a folder): a dense and a 50%-sparse original (the champion, with a two-reference audit pool), a
dvc.yaml whose `prepare` and a stand-in study stage are committed and pushed, two batches (v3 forgets
batch 1, v4 forgets both), v4 promoted. The purge then runs once per step with that step crashing, and
once more to the end. The S3 stores (moto) are left out to keep the module short: the artefact and DVC
code paths are the same calls on another filesystem.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml
from projects import batch_of, enter_project

from tasks.adapters import dvc_branch, layout, registry, tracking
from tasks.adapters.params import load_params
from tasks.production import deletion, purge
from unlearn.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
STEPS = ("redact_data", "redact_pools", "purge_versions", "purge_study_outputs", "redact_inbox",
         "collect_garbage", "finish_record")  # fmt: skip
DVC_YAML = {
    "stages": {
        "prepare": {"cmd": "python -m tasks.stages.prepare", "params": ["data"], "outs": [str(layout.RAW)]},
        # a stand-in for the study's stages: a model derived from the full data set
        "train": {"cmd": "python -m tasks.stages.train", "deps": [str(layout.RAW)], "outs": ["models/original"]},
    }
}
FIRST = [f"digits/train/{n:05d}" for n in (11, 12, 13)]
SECOND = [f"digits/train/{n:05d}" for n in (21, 22)]


def base_params() -> dict:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["train"].update(seeds=[0], epochs=2)
    params["unlearn"]["settings"]["ft"] = {"epochs": 1}
    params["deletion"].update(method="ft", sparsity=0.5, dvc_push=True)
    params["audit"].update(references=4, probe_size=50)  # the fewest the audit fits (2 OUT each)
    params["retention"].update(purge="on_command", grace_days=0, study_outputs="purge")
    return params


def stores(folder: Path) -> list[Path]:
    """Every file of the project's stores: data/, models/, the MLflow artefact root, the DVC cache and remote."""
    roots = [folder / "data", folder / "models", folder / "mlartifacts", folder / ".dvc" / "cache", folder / "remote"]
    return sorted(path for root in roots if root.is_dir() for path in root.rglob("*") if path.is_file())


def holders(folder: Path, needles: dict[str, bytes], digests: dict[str, str]) -> dict[str, list[str]]:
    """label -> the store files holding those bytes (anywhere in the file), or with that sha256 (the whole file)."""
    found: dict[str, list[str]] = {}
    for path in stores(folder):
        content = path.read_bytes()
        digest = hashlib.sha256(content).hexdigest()
        for label, needle in needles.items():
            if needle in content:
                found.setdefault(label, []).append(str(path.relative_to(folder)))
        for label, expected in digests.items():
            if digest == expected:
                found.setdefault(label, []).append(str(path.relative_to(folder)))
    return found


def fingerprint(folder: Path) -> dict[str, str]:
    """Every store file's sha256 and every registry version's tags: the project's state."""
    files = {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest() for path in stores(folder)}
    name = registry.model_name("digits", "digits_resnet")
    tags = {f"v{v.version}": json.dumps(dict(v.tags), sort_keys=True)
            for v in tracking.client().search_model_versions(f"name = '{name}'")}  # fmt: skip
    return {**files, **tags}


def weights_needle(path: Path) -> bytes:
    """The raw bytes of a checkpoint's largest weight tensor (as torch.save and torch.export store them)."""
    state = load_checkpoint(path).state_dict
    largest = max((t for t in state.values() if t.is_floating_point()), key=lambda t: t.numel())
    return largest.contiguous().numpy().tobytes()


def dvc(*args: str) -> None:
    from projects import tool_env

    subprocess.run(["dvc", *args], check=True, env=tool_env(), capture_output=True)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The project after two batches and v4's promotion; what the stores held then; the dry-run plan."""
    from flows.train_original import anchor_tags
    from tasks.production import audit
    from tasks.production.promotion import promote
    from tasks.stages.prepare import prepare
    from tasks.stages.prune import prune_originals
    from tasks.stages.train import train_originals

    monkeypatch = pytest.MonkeyPatch()
    folder = enter_project(tmp_path_factory.mktemp("purge"), monkeypatch)
    (folder / "params.yaml").write_text(yaml.safe_dump(base_params()))
    (folder / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML))
    params = load_params("params.yaml")
    prepare(params)
    root = str(layout.CHAMPION_MODELS)
    train_originals(params, root=root)
    prune_originals(params, 0.5, root=root)
    tags = {"seed": "0", **anchor_tags(params, deletion.Ledger())}
    dense = registry.register_original(layout.original_path(0, layout.CHAMPION_MODELS), {"TA": 90.0}, tags=tags)
    registry.register_original(layout.pruned_path(0.5, 0, layout.CHAMPION_MODELS), {"TA": 90.0},
                               parent_version=str(dense.version), champion=True, tags=tags)  # fmt: skip
    audit.build_pool_serially(params)
    study = Path("models/original/seed0.pt")  # the study's model: trained on the full data set
    study.parent.mkdir(parents=True)
    shutil.copyfile(layout.rewind_path(0, layout.CHAMPION_MODELS), study)
    dvc("commit", "--force", "prepare", "train")
    dvc("push")
    data = deletion.load_data()
    pixels = {sample: data.train.inputs[data.train.ids.index(sample)].numpy().tobytes() for sample in FIRST + SECOND}
    every = [row.numpy().tobytes() for row in torch.cat([data.train.inputs, data.test.inputs])]
    assert all(every.count(image) == 1 for image in pixels.values()), "a deleted sample's image is not unique"
    versions = []
    for request_id, samples in (("req-1", FIRST), ("req-2", SECOND)):
        batch, ledger, split = batch_of(params, samples, request_id)
        digests = deletion.version_split(params, split)
        candidate = deletion.unlearn_champion(params, batch, ledger, split)
        metrics = deletion.evaluate_candidate(params, split, candidate)
        audited = deletion.audit_batch(params, batch, ledger, split, candidate)
        version = deletion.register_candidate(params, batch, ledger, split, candidate, metrics, None, digests, audited)
        deletion.attach_review(params, batch, version)
        deletion.finish(params, batch)
        versions.append(str(version.version))
    name = deletion.model_name(params)
    promote(versions[-1], "dpo", "batch 2 reviewed", force=True, name=name, gates=params.promote)
    checkpoints = {f"v{v}": registry.checkpoint_path(registry.get_version(name, v)) for v in ("1", "2", versions[0])}
    checkpoints["rewind"] = layout.rewind_path(0, layout.CHAMPION_MODELS)
    digests = {label: hashlib.sha256(Path(path).read_bytes()).hexdigest() for label, path in checkpoints.items()}
    needles = {**{f"pixels {s}": b for s, b in pixels.items()},
               **{f"weights {label}": weights_needle(Path(path)) for label, path in checkpoints.items()}}  # fmt: skip
    before = holders(folder, needles, digests)
    plan = purge.plan_purge(params)
    waiting = params.model_copy(update={"retention": params.retention.model_copy(update={"grace_days": 30.0})})
    grace = purge.plan_purge(waiting)
    yield {"folder": folder, "params": params, "name": name, "versions": versions, "needles": needles,
           "digests": digests, "before": before, "plan": plan, "grace": grace}  # fmt: skip
    monkeypatch.undo()


def lost(*args, **kwargs):
    raise OSError("connection lost")


@pytest.fixture(scope="module")
def purged(world):
    """The purge, crashing once at every step in turn (each rerun resumes), then run to the end."""
    params = world["params"]
    patch = pytest.MonkeyPatch()
    crashes, seconds = [], {}
    try:
        for step in STEPS:
            with patch.context() as inside:

                def crash(*args, _step=step, **kwargs):
                    raise RuntimeError(f"injected crash before {_step}")

                inside.setattr(purge, step, crash)
                started = time.perf_counter()
                with pytest.raises(RuntimeError, match="injected crash") as raised:
                    purge.purge(params, "erasure requests req-1, req-2 in service")
                seconds[step] = time.perf_counter() - started
                crashes.append(str(raised.value))
            if step == "purge_versions":  # and once inside it: v1's files gone, its tags not set yet
                with patch.context() as inside:
                    inside.setattr(registry, "set_version_tags", lost)
                    with pytest.raises(OSError, match="lost"):
                        purge.purge(params, "another reason, never recorded: the first run's stays")
                first = registry.get_version(world["name"], "1")
                assert not layout.original_path(0, layout.CHAMPION_MODELS).exists()
                assert registry.PURGED_TAG not in first.tags
        report = purge.purge(params, "a third reason")
    finally:
        patch.undo()
    print(f"\n{report.render()}\nseconds of the runs crashing before each step: {seconds}")
    return {"report": report, "crashes": crashes, "seconds": seconds}


def test_the_stores_held_every_deleted_sample_and_purged_model_before_the_purge(world):
    """The scan can fail: before the purge it finds every needle (pixels in the data set, weights in artefacts)."""
    before = world["before"]
    assert set(before) == set(world["needles"]) | set(world["digests"])
    for sample in FIRST + SECOND:
        assert any(path.startswith(".dvc/cache") for path in before[f"pixels {sample}"])  # the committed data set
        assert any(path.startswith("remote") for path in before[f"pixels {sample}"])  # and pushed
    for label in ("v1", "v2", f"v{world['versions'][0]}"):
        assert any(path.startswith("mlartifacts") and path.endswith("model.pt2") for path in before[f"weights {label}"])
        assert any(path.startswith("models/") for path in before[label])


def test_the_dry_run_lists_what_would_go_and_what_stays(world):
    plan, (v3, v4) = world["plan"], world["versions"]
    assert plan.champion == v4 and plan.through_batch == plan.forgotten_through
    assert plan.sample_ids == frozenset(FIRST + SECOND)
    assert {v.version for v in plan.to_purge} == {"1", "2", v3}
    (third,) = [v for v in plan.to_purge if v.version == v3]
    assert third.held_batches == plan.batches[1:] and third.held_samples == len(SECOND)  # it forgot batch 1 only
    assert plan.data.rows == 5 and plan.data.tracked == purge.STAGE
    assert set(plan.pools.values()) == {5}
    assert {out.path for out in plan.study} == {"models/original"}
    assert len(plan.inbox) == 2
    grace = world["grace"]  # with 30 days' grace: every version waits, and so do the pixels they would need
    assert not grace.to_purge and {v.version for v in grace.versions if v.action == purge.DEFER} == {"1", "2", v3}
    assert grace.through_batch is None and not grace.sample_ids and "purgeable from" in grace.render()
    text = plan.render()
    assert "would remove:" in text and "models/champion/original/seed0.rewind.pt" in text
    assert f"v{v4} unlearned: the champion" in text and "the ledger" in text and "study output models/original" in text


def test_purging_the_champion_is_refused_with_a_clear_error(world):
    with pytest.raises(purge.PurgeRefusedError, match=f"v{world['versions'][1]} is the champion: .* never purged"):
        purge.purge(world["params"], "by mistake", versions=[world["versions"][1]])
    with pytest.raises(purge.PurgeError, match="needs a reason"):
        purge.purge(world["params"], " ")


def test_after_the_purge_no_store_holds_a_deleted_sample_or_a_purged_model(world, purged):
    assert len(purged["crashes"]) == len(STEPS)
    left = holders(world["folder"], world["needles"], world["digests"])
    assert left == {}, f"still held: {left}"
    report = purged["report"]
    assert report.resumed and report.reason == "erasure requests req-1, req-2 in service"
    removed = "\n".join(report.removed)  # every run's, the crashed ones' too
    for what in ("data/raw/dataset.npz", "pool.npz", "models/champion/original/seed0.rewind.pt",
                 "models/champion/pruned/s0.5/seed0.pt", "candidate.pt", "model artefacts", "models/original",
                 "dvc.lock", "done request", "DVC cache", "DVC remote"):  # fmt: skip
        assert what in removed, what
    assert sorted(report.tagged) == sorted(["1", "2", world["versions"][0]])
    data = deletion.load_data()
    assert not set(FIRST + SECOND) & set(data.train.ids)
    from tasks.stages.prepare import prepare

    prepare(world["params"])  # a later run of the stage leaves them out too
    assert not set(FIRST + SECOND) & set(deletion.load_data().train.ids)
    inbox = deletion.inbox_of(world["params"])
    for request_id in ("req-1", "req-2"):
        assert inbox.status(request_id).state == "done"
        (body,) = [json.loads(p.read_text()) for p in Path(inbox.uri).glob(f"done/*/{request_id}.json")]
        assert "sample_ids" not in body and body["purged_at"] == report.started_at
    assert not Path("models/original").exists()
    assert "train" not in yaml.safe_load(Path("dvc.lock").read_text())["stages"]
    record = json.loads(purge.record_path(world["params"]).read_text())
    assert record["status"] == "done" and record["through_batch"] == world["plan"].through_batch
    assert (
        dvc_branch.files_in(dvc_branch.DVC_BRANCH)
        and subprocess.run(
            ["git", "show", f"{dvc_branch.DVC_BRANCH}:{purge.record_path(world['params'])}"], capture_output=True
        ).returncode
        == 0
    )


def test_the_champion_still_loads_and_predicts_and_the_lineage_shows_the_purged_versions(world, purged):
    name, (v3, v4) = world["name"], world["versions"]
    model = registry.load_model(name)
    data = deletion.load_data()
    with torch.no_grad():
        predicted = model(data.test.inputs[:64]).argmax(1)
    assert (predicted == data.test.labels[:64]).float().mean() > 0.3
    champion = registry.version_by_alias(name, registry.CHAMPION)
    registry.verify_checkpoint(champion, registry.checkpoint_path(champion))
    lineage = registry.history(name)
    assert [entry.version for entry in lineage] == [v4, "2", "1"]
    assert [bool(entry.purged_at) for entry in lineage] == [False, True, True]
    assert "PURGED" in lineage[1].line() and {"req-1", "req-2"} <= set(lineage[0].request_ids)
    listed = registry.history_as_dict(name, lineage)["lineage"]
    assert "purged_at" not in listed[0] and listed[1]["purged_at"] == purged["report"].started_at
    third = registry.get_version(name, v3)
    assert third.tags[registry.PURGED_TAG] == "true" and third.tags[registry.REQUEST_IDS_TAG] == "req-1"
    assert third.tags[registry.PARENT_TAG] == "2" and third.tags[registry.CHECKPOINT_TAG]
    assert third.tags["purged.reason"] == "erasure requests req-1, req-2 in service"
    assert purge.purged_for(world["params"], "req-1") == ["1", "2"]  # v3 had forgotten req-1 already
    assert purge.purged_for(world["params"], "req-2") == ["1", "2", v3]
    from tasks.production.lifecycle import FORGOTTEN, request_states

    states = {state.request_id: state for state in request_states(world["params"])}
    assert states["req-2"].state == FORGOTTEN and states["req-2"].purged == ("1", "2", v3)
    assert "purged: v1, v2" in states["req-2"].line()
    with pytest.raises(registry.RegistryError, match="purged"):
        from tasks.production.promotion import promote

        promote(v3, "dpo", "rollback", force=True, name=name, gates=world["params"].promote)


def test_a_second_purge_removes_nothing(world, purged):
    before = fingerprint(world["folder"])
    report = purge.purge(world["params"], "again")
    assert report.removed_nothing, report.render()
    assert fingerprint(world["folder"]) == before
    assert "nothing" in purge.run_purge_command("params.yaml", dry_run=True)


def test_the_next_batch_runs_on_the_redacted_data_set(world, purged):
    """Training rows, the batch split and the audit pool all fit the data set without the purged samples."""
    params = world["params"]
    batch, ledger, split = batch_of(params, ["digits/train/00031"], "req-3")
    assert len(split.split.retain) == len(split.data.train) - 1
    candidate = deletion.unlearn_champion(params, batch, ledger, split)
    metrics = deletion.evaluate_candidate(params, split, candidate)
    audited = deletion.audit_batch(params, batch, ledger, split, candidate)
    assert audited is not None and audited.figures.samples == 1 and 0 <= metrics["UA"] <= 100
