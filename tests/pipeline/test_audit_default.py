"""The audit on the shipped digits champion (20 epochs, OMP 95%): a no-op is never certified.

`train-original` as shipped (its pool smaller: REFERENCES instead of 16, to keep the suite short),
then a 20-sample random request through the `deletion-batch` flow with the shipped method, and a
no-op candidate (the champion's own weights) for a second batch through the batch's steps. This
champion generalises well (test accuracy about 99%), so members and non-members may be hard to
tell apart: the no-op must then fail on the audit rule, or the review must say the evidence is
insufficient and refuse to certify it; never may it pass. Run with -s to see the figures.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from projects import batch_of, champion_candidate, enter_project, gate, register_and_review

from tasks.adapters import registry
from tasks.adapters.params import load_params
from tasks.adapters.workspace import bundle
from tasks.production.promotion import review

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
REFERENCES, BATCH = 8, 20


@pytest.fixture(scope="module")
def project(tmp_path_factory, prefect_api):
    """The shipped champion and its pool (~2.5 min on one core)."""
    from flows.train_original import train_original

    monkeypatch = pytest.MonkeyPatch()
    folder = enter_project(tmp_path_factory.mktemp("default"), monkeypatch)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["train"].update(seeds=[0])
    params["audit"].update(references=REFERENCES)
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    summary = train_original("params.yaml")
    yield load_params("params.yaml"), summary
    monkeypatch.undo()


def random_request(count: int, seed: int) -> list[str]:
    ids = bundle().train.ids
    return [ids[i] for i in sorted(np.random.default_rng(seed).choice(len(ids), size=count, replace=False))]


def test_the_shipped_methods_candidate_for_a_20_sample_request_is_reviewed_with_its_audit(project):
    from flows.deletion_batch import deletion_batch
    from tasks.production import deletion

    params, summary = project
    assert summary["audit_references"] == REFERENCES
    deletion.inbox_of(params).submit(
        deletion.DeletionRequest(request_id="req-20", sample_ids=random_request(BATCH, 20))
    )
    result = deletion_batch("params.yaml")
    found = review(result["version"], name=result["model"], gates=params.promote)
    print(f"\n{found.render()}")
    version = registry.get_version(result["model"], result["version"])
    assert version.tags["audit.samples"] == str(BATCH)
    assert version.tags["review.verdict"] in ("promotable", "not promotable")
    assert found.insufficient or gate(found, "audit_power").passed  # either the audit could tell, or it says so


def test_a_noop_candidate_is_never_certified_on_the_shipped_champion(project):
    params, _ = project
    batch, ledger, split = batch_of(params, random_request(BATCH, 21), "req-noop")
    found, audited = register_and_review(params, batch, ledger, split, champion_candidate(params, batch))
    print(f"audit: {audited.figures}")
    assert not found.passed
    audit_rule, power_rule = gate(found, "audit_unseen"), gate(found, "audit_power")
    assert not audit_rule.passed or (power_rule.insufficient and not power_rule.passed), found.render()
