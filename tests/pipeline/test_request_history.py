"""`unlearn history REQUEST_ID`: which version forgot a request, its audit, its promotion, whether it is in service."""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from mlflow_servers import end_runs, sqlite_store
from typer.testing import CliRunner

from cli import app
from tasks.adapters import registry, tracking
from tasks.adapters.ledger import Ledger
from tasks.adapters.requests import DeletionRequest
from unlearn.audit import AuditFigures
from unlearn.checkpoint import model_metadata, save_checkpoint
from unlearn.original import new_model
from unlearn.presets import get_preset

NAME = "unlearn-digits-digits_resnet"
METRICS = {"UA": 96.0, "MIA_efficacy": 81.0, "RA": 99.0, "TA": 96.5, "RTE_seconds": 1.2}
SPLITS = {"retain": "a" * 64, "forget": "b" * 64, "test": "c" * 64, "split": "d" * 64}
T0 = datetime(2026, 1, 31, 12, tzinfo=UTC)
COLUMNS = (
    "sample_id,candidate,champion,out_mean,out_std,in_mean,in_std,p_out,log_lr,unseen,champion_p_out,champion_unseen"
)


def sample(number: int) -> str:
    return f"digits/train/{number:05d}"


def audit_tags(samples: int, unseen: int, champion_share: float) -> dict[str, str]:
    """`audit.*` tags as a batch writes them (`BatchAudit.tags`: reprs of `AuditFigures`)."""
    figures = AuditFigures(
        samples=samples,
        unseen=unseen,
        unseen_share=100.0 * unseen / samples,
        champion_unseen_share=champion_share,
        member_unseen_share=71.0,
        nonmember_unseen_share=94.0,
        power=0.23,
        auc=0.61,
        alpha=0.05,
        references=16,
    )
    return {f"audit.{key}": repr(value) for key, value in figures.as_dict().items()}


def write_audit_table(folder: Path, numbers: list[int]) -> Path:
    """A review folder holding `audit.csv`: sample 1 looked seen by the champion, the rest unseen throughout."""
    folder.mkdir(parents=True)
    with (folder / "audit.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS.split(","))
        for n in numbers:
            seen_before = n == 1
            p_champion = 0.001 if seen_before else 0.3
            writer.writerow([sample(n), 1.5, 4.0, 1.0, 0.5, 4.2, 0.6, 0.4 + n / 100, -2.0, True, p_champion,
                             not seen_before])  # fmt: skip
    return folder


@pytest.fixture(scope="module")
def world(tmp_path_factory, mlflow_template, digits):
    """A registry and ledger, built once (~10 s):

    v1 original (champion); v2 forgot r-1 (samples 1, 2) and r-2 (sample 3) in batch b-1, audited,
    its audit.csv logged; v3, made from v2, forgot r-10 (samples 4, 5) in batch b-2, audited, no
    audit.csv. The ledger also records r-30 (batch b-3), which no version forgot yet.
    """
    folder = tmp_path_factory.mktemp("request-history")
    preset = get_preset("digits")
    checkpoints = {}
    for role, seed in (("original", 0), ("unlearned", 1)):
        metadata = model_metadata(preset.arch, digits, model_options=preset.model_options, seed=seed)
        checkpoints[role] = save_checkpoint(folder / f"{role}.pt", new_model(preset, digits, seed), metadata)
    ledger = Ledger.load(folder / "ledger" / "ledger.csv")
    for batch, requests in (
        ("b-1", [("r-1", [1, 2]), ("r-2", [3])]),
        ("b-2", [("r-10", [4, 5])]),
        ("b-3", [("r-30", [6])]),
    ):
        received = [DeletionRequest(request_id=r, sample_ids=[sample(n) for n in ns], received_at=T0)
                    for r, ns in requests]  # fmt: skip
        ledger = ledger.extend(batch, received, deleted_at=T0)
    ledger.save()
    params = folder / "params.yaml"
    params.write_text(f"deletion:\n  ledger: {ledger.path}\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        sqlite_store(folder, patch, mlflow_template)
        original = registry.register_original(checkpoints["original"], {"TA": 97.0}, champion=True)
        first = registry.register_unlearned(
            checkpoints["unlearned"],
            registry.Lineage(("r-1", "r-2"), "b-1", ledger.digest(), SPLITS, "l1_sparse", str(original.version)),
            METRICS,
            tags={**audit_tags(3, 3, 100 / 3), "review.verdict": "promotable", "review.evidence": "sufficient"},
        )
        registry.log_version_artifacts(first, write_audit_table(folder / "review-b-1", [1, 2, 3]), "review")
        second = registry.register_unlearned(
            checkpoints["unlearned"],
            registry.Lineage(("r-10",), "b-2", ledger.digest(), SPLITS, "ga", str(first.version)),
            METRICS,
            tags=audit_tags(2, 1, 0.0),
        )
        yield {"ledger": ledger.path, "params": params, "versions": [str(v.version) for v in (original, first, second)]}
        end_runs()


def test_each_request_is_found_with_its_version_and_only_its_samples(world):
    assert world["versions"] == ["1", "2", "3"]
    found = registry.request_history(NAME, "r-1", world["ledger"])
    assert [v.version for v in found.versions] == ["2"]  # not v3, whose r-10 merely starts with "r-1"
    version = found.versions[0]
    assert (version.batch_id, version.method, version.parent_version) == ("b-1", "l1_sparse", "1")
    assert version.request_ids == ("r-1", "r-2")
    assert datetime.fromisoformat(version.registered_at).tzinfo is not None
    assert found.sample_ids == (sample(1), sample(2)) and found.ledger_batches == ("b-1",)
    assert [row["sample_id"] for row in version.samples] == [sample(1), sample(2)]  # not r-2's sample 3
    assert version.samples[0]["unseen"] is True and version.samples[0]["champion_unseen"] is False
    assert version.samples[0]["champion_p_out"] == 0.001 and version.samples_note == ""
    assert (version.audit["samples"], version.audit["references"], version.audit["alpha"]) == (3, 16, 0.05)
    assert version.audit["champion_unseen_share"] == pytest.approx(100 / 3)
    assert version.review == {"verdict": "promotable", "evidence": "sufficient"}
    text = registry.render_request_history(found)
    assert text.startswith(f"request r-1: forgotten by {NAME} v2 (batch b-1, l1_sparse from v1), registered 20")
    assert "audit of its 2 sample(s) (batch of 3; 16 references, alpha 0.05): 2 look unseen" in text
    assert sample(1) in text and sample(2) in text and sample(3) not in text
    assert "(champion: p_out 0.001 seen)" in text
    assert "batch: unseen 100.0% (champion before: 33.3%; probes: members 71.0%, non-members 94.0%)" in text
    assert "review: promotable (evidence sufficient)" in text

    other = registry.request_history(NAME, "r-10", world["ledger"])
    assert [v.version for v in other.versions] == ["3"] and other.sample_ids == (sample(4), sample(5))
    assert other.versions[0].aliases == ("candidate",) and other.champion == "1"
    assert other.versions[0].samples is None and "no review/audit.csv logged with v3" in other.versions[0].samples_note
    rendered = registry.render_request_history(other)
    assert "audit of its 2 sample(s) (batch of 2; 16 references, alpha 0.05): no review/audit.csv" in rendered
    assert "batch: unseen 50.0%" in rendered


def test_an_unknown_request_is_a_one_line_error(world):
    with pytest.raises(registry.RequestNotFoundError, match="records it \\(batch b-3, 1 sample\\(s\\)\\), but no"):
        registry.request_history(NAME, "r-30", world["ledger"])
    with pytest.raises(registry.RequestNotFoundError, match="does not record it: unknown request id"):
        registry.request_history(NAME, "r-99", world["ledger"])
    result = CliRunner().invoke(app, ["history", "r-99", "--params", str(world["params"])])
    assert result.exit_code == 1
    assert result.output.strip().count("\n") == 0 and "unknown request id" in result.output
    pending = CliRunner().invoke(app, ["history", "r-30", "--json", "--params", str(world["params"])])
    assert pending.exit_code == 1 and "no registered version forgot it yet" in pending.output


def test_history_json_for_a_request_and_for_the_lineage(world):
    runner = CliRunner()
    shown = runner.invoke(app, ["history", "r-2", "--json", "--params", str(world["params"])])
    assert shown.exit_code == 0, shown.output
    answer = json.loads(shown.output)
    assert {"model", "request_id", "champion", "ledger_path", "sample_ids", "versions", "in_service"} <= set(answer)
    (version,) = answer["versions"]
    assert {"version", "batch_id", "method", "parent_version", "registered_at", "aliases", "audit", "samples",
            "promotion", "in_service", "review"} <= set(version)  # fmt: skip
    assert (answer["request_id"], version["version"], answer["sample_ids"]) == ("r-2", "2", [sample(3)])
    assert [row["sample_id"] for row in version["samples"]] == [sample(3)]
    assert version["audit"]["unseen_share"] == 100.0
    text = runner.invoke(app, ["history", "r-2", "--params", str(world["params"])])
    assert text.exit_code == 0 and text.output.startswith("request r-2: forgotten by")
    lineage = runner.invoke(app, ["history", "--json", "--params", str(world["params"])])
    assert lineage.exit_code == 0, lineage.output
    listed = json.loads(lineage.output)
    assert {"model", "champion", "lineage", "forgotten"} <= set(listed) and listed["model"] == NAME
    assert set(listed["lineage"][0]) == {"version", "kind", "method", "request_ids", "batch_id", "promoted_at",
                                         "reviewer", "forced", "aliases"}  # fmt: skip
    plain = runner.invoke(app, ["history", "--params", str(world["params"])])
    assert plain.exit_code == 0 and f"{NAME}: champion v" in plain.output


def test_a_request_is_in_service_only_once_the_champion_descends_from_its_version(world):
    """The only test that changes the registry: it promotes v3 and leaves it champion."""
    before = registry.request_history(NAME, "r-1", world["ledger"])
    assert (before.champion, before.in_service, before.versions[0].in_service) == ("1", False, False)
    assert "in service: no (champion v1)   never promoted" in registry.render_request_history(before)
    stamp = T0.isoformat(timespec="seconds")
    tags = {"promotion.reviewer": "ana", "promotion.time": stamp, "promotion.forced": "false",
            "promotion.reason": "forgets b-2"}  # fmt: skip
    registry.record_promotion(NAME, "3", tags)
    after = registry.request_history(NAME, "r-1", world["ledger"])  # v3 was made from v2: r-1 stays forgotten
    assert (after.champion, after.in_service) == ("3", True)
    assert "in service: yes (champion v3, made from v2)   never promoted" in registry.render_request_history(after)
    own = registry.request_history(NAME, "r-10", world["ledger"])
    assert own.in_service and own.versions[0].promotion == {
        "reviewer": "ana",
        "time": stamp,
        "forced": False,
        "reason": "forgets b-2",
    }
    assert f"in service: yes (champion v3)   promoted {stamp} by ana, reason: forgets b-2" in (
        registry.render_request_history(own)
    )
    assert registry.ancestors(NAME, "3") == ["3", "2", "1"]


def test_a_request_forgotten_by_two_versions_lists_both_and_survives_a_missing_audit(store, tmp_path):
    ledger = Ledger.load(tmp_path / "ledger.csv")
    ledger.extend("b-1", [DeletionRequest(request_id="r-1", sample_ids=[sample(1)], received_at=T0)]).save()
    for parent in ("1", "2"):  # registered without a logged model: no artefacts at all, no audit tags
        lineage = registry.Lineage(("r-1",), "b-1", ledger.digest(), SPLITS, "ft", parent)
        tags = {registry.KIND_TAG: registry.UNLEARNED, **lineage.tags()}
        registry.register_version(NAME, "file:///nowhere/model", tags)
    found = registry.request_history(NAME, "r-1", ledger.path, tracking.client())
    assert [v.version for v in found.versions] == ["1", "2"] and found.champion is None
    assert all(v.samples is None and not v.audit and not v.in_service for v in found.versions)
    text = registry.render_request_history(found)
    assert text.startswith("request r-1 is forgotten by 2 versions (v1, v2): its batch's, and each later one")
    assert text.count("batch: not audited") == 2 and "in service: no (no champion)" in text
