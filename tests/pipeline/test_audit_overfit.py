"""The audit through the production path, on a champion that memorises: it has power, and it decides.

A project whose prepared data set is a small digits subset (TRAIN training samples, about 12 per
class, and TEST test samples), a dense champion trained 60 epochs in batches of 30 (memorised:
its members look seen), registered as the first champion; its reference pool built by the
`audit-pool` flow (REFERENCES Retrains on halves). Then two batches of BATCH samples, each
through the batch's own steps (`tasks.production.deletion`) with a candidate made two ways:

- a **no-op**: the champion's own weights registered as the batch's candidate. The audit must
  have the power to see it and fail it on the audit rule itself, not only on UA.
- a **Retrain** on the batch's retain set (the gold standard): it must pass the sample-level gates.

Run with -s to see the figures.
"""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml
from projects import batch_of, champion_candidate, enter_project, gate, register_and_review

from tasks.adapters import layout, registry, tracking
from tasks.adapters.params import load_params, method_config
from tasks.adapters.workspace import bundle, load_model
from tasks.production import deletion
from tasks.stages.steps import unlearn_checkpoint

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
TRAIN, TEST, REFERENCES, BATCH = 120, 240, 8, 20


def overfit_params() -> dict:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["train"].update(seeds=[0], epochs=60, batch_size=30)
    params["deletion"].update(sparsity=0.0, dvc_push=True)
    params["audit"].update(references=REFERENCES, probe_size=40)
    return params


@pytest.fixture(scope="module")
def project(tmp_path_factory, prefect_api, digits):
    """The small project, its memorising champion registered, its pool built (~1 min on one core)."""
    from flows.audit_pool import audit_pool
    from tasks.stages.train import train_originals

    monkeypatch = pytest.MonkeyPatch()
    folder = enter_project(tmp_path_factory.mktemp("overfit"), monkeypatch)
    order = np.random.default_rng(0).permutation(len(digits.train))[:TRAIN]
    small = replace(digits, train=digits.train.subset(sorted(order.tolist())), test=digits.test.subset(range(TEST)))
    small.save(layout.RAW)
    (folder / "params.yaml").write_text(yaml.safe_dump(overfit_params()))
    params = load_params("params.yaml")
    (path,) = train_originals(params, root=str(layout.CHAMPION_MODELS))
    _, checkpoint = load_model(path)
    champion = registry.register_original(path, {"TA": checkpoint.metadata["test_accuracy"]}, champion=True)
    pool = audit_pool("params.yaml")
    yield params, champion, pool
    monkeypatch.undo()


def retrained_candidate(params, batch, split) -> deletion.Candidate:
    """Retrain with the champion's masks on the batch's retain set, saved as the batch's candidate."""
    champion = deletion.champion_version(params)
    source = registry.verify_checkpoint(champion, registry.checkpoint_path(champion))
    model, checkpoint = load_model(source)
    data, path = split.data, layout.batch_model_path(batch.batch_id)
    sets = (split.split.retain_set(data), split.split.forget_set(data))
    config = method_config(params, "retrain", seed=7)
    result = unlearn_checkpoint(params, data, "retrain", model, checkpoint, sets, config, path, batch_id=batch.batch_id)
    return deletion.Candidate(path, result.seconds, str(champion.version), "retrain", result.model,
                              checkpoint.masks, Path(source))  # fmt: skip


def test_the_pool_is_built_versioned_and_recorded_on_the_champion(project):
    params, champion, pool = project
    assert pool["status"] == "built" and pool["references"] == REFERENCES
    tags = registry.get_version(champion.name, champion.version).tags
    folder = Path(tags["audit_pool.path"])
    assert tags["audit_pool.references"] == str(REFERENCES) and tags["audit_pool.sha256"] == pool["sha256"]
    assert tags["audit_pool.seeds"] == ",".join(str(100_000 + k) for k in range(REFERENCES))
    assert Path(f"{folder}.dvc").is_file() and (folder / "pool.npz").is_file()
    manifest = json.loads((folder / "pool.json").read_text())
    assert manifest["train_samples"] == TRAIN and len(manifest["seeds"]) == REFERENCES == len(set(manifest["seeds"]))


def test_a_retrained_candidate_passes_the_sample_level_gates(project):
    params, _, _ = project
    ids = list(bundle().train.ids[:BATCH])
    batch, ledger, split = batch_of(params, ids, "req-retrain")
    found, audited = register_and_review(params, batch, ledger, split, retrained_candidate(params, batch, split))
    assert found.evidence.kind == "sample"
    assert audited.figures.power > 0.4, "the memorising champion's audit must have power"
    assert gate(found, "audit_power").passed and not gate(found, "audit_power").insufficient
    assert gate(found, "audit_unseen").passed and gate(found, "UA").passed and gate(found, "TA_drop").passed
    assert found.passed, [g.line() for g in found.failed]


def test_a_noop_candidate_fails_on_the_audit_rule_itself_with_sufficient_evidence(project):
    params, _, _ = project
    ids = list(bundle().train.ids[BATCH : 2 * BATCH])
    batch, ledger, split = batch_of(params, ids, "req-noop")
    assert batch.request_ids == ["req-noop"]
    found, audited = register_and_review(params, batch, ledger, split, champion_candidate(params, batch))
    assert audited.figures.unseen_share < 50 < audited.figures.nonmember_unseen_share
    audit_rule = gate(found, "audit_unseen")
    assert not audit_rule.passed and not audit_rule.insufficient, audit_rule.line()
    assert gate(found, "audit_power").passed  # the audit could see it: the verdict rests on evidence
    assert not found.passed


def test_the_review_is_on_the_registered_version_and_loads(project):
    """(e) review.md, review.png and audit.csv are artefacts of the version's logged model, and they load."""
    import mlflow
    from PIL import Image

    params, champion, _ = project
    version = registry.version_by_alias(champion.name, registry.CANDIDATE)
    assert version.tags[registry.REVIEW_VERDICT_TAG] == "not promotable"  # the no-op, registered last
    folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=version.tags["review.artifacts"]))
    assert {"review.md", "review.png", "audit.csv"} <= {path.name for path in folder.iterdir()}
    markdown = (folder / "review.md").read_text()
    assert "NOT promotable" in markdown and "audit_unseen" in markdown and "FAIL" in markdown
    with Image.open(folder / "review.png") as image:
        assert image.size[0] > 500 and image.size[1] > 200
    with (folder / "audit.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == BATCH and {row["sample_id"] for row in rows} == set(bundle().train.ids[BATCH : 2 * BATCH])
    assert tracking.client().get_model_version(version.name, version.version).tags["audit.samples"] == str(BATCH)
