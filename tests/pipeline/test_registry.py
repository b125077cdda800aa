"""The model registry against real stores: lineage tags, aliases, review, gated promotion, history."""

from __future__ import annotations

import json
from datetime import datetime

import mlflow
import pytest
import torch
from mlflow import MlflowClient
from mlflow_servers import S3_ENV, end_runs, mlflow_server, s3_keys, sqlite_store
from typer.testing import CliRunner

from cli import app
from tasks.adapters import registry, tracking
from tasks.adapters.params import ClassWiseGateParams, GateParams, SampleGateParams
from tasks.production import promotion
from unlearn.audit import AuditFigures
from unlearn.checkpoint import load_checkpoint, model_metadata, restore_model, save_checkpoint
from unlearn.data import as_float
from unlearn.errors import ConfigError
from unlearn.original import new_model
from unlearn.presets import get_preset

NAME = "unlearn-digits-digits_resnet"
GATES = GateParams(
    sample=SampleGateParams(max_ta_drop=2.0, min_power=0.8, weak_evidence="retrain"),
    class_wise=ClassWiseGateParams(max_ta_drop=2.0, min_ua=90.0, min_mia_efficacy=50.0),
)
# GOOD and BAD are whole-class batches (`deletion.kind: class_wise`, see cheap_version): UA and MIA-efficacy floors.
GOOD = {"UA": 96.0, "MIA_efficacy": 81.0, "RA": 99.0, "TA": 96.5, "RTE_seconds": 1.2}
BAD = {"UA": 40.0, "MIA_efficacy": 30.0, "RA": 99.5, "TA": 97.0, "RTE_seconds": 0.4}
CLASS_WISE = {registry.DELETION_KIND_TAG: "class_wise"}
# A batch of arbitrary samples forgotten as retraining would: UA about the test error (4%).
RETRAIN_LIKE = {"UA": 0.0, "MIA_efficacy": 10.0, "RA": 99.5, "TA": 96.0, "RTE_seconds": 0.8}
SPLITS = {"retain": "a" * 64, "forget": "b" * 64, "test": "c" * 64, "split": "d" * 64}


@pytest.fixture(scope="module")
def checkpoints(digits, tmp_path_factory):
    """An 'original' and an 'unlearned' digits checkpoint: untrained, different seeds, no training needed."""
    preset = get_preset("digits")
    folder = tmp_path_factory.mktemp("checkpoints")
    paths = {}
    for role, seed in (("original", 0), ("unlearned", 1)):
        metadata = model_metadata(preset.arch, digits, model_options=preset.model_options, seed=seed)
        paths[role] = save_checkpoint(folder / f"{role}.pt", new_model(preset, digits, seed), metadata)
    return paths


def lineage(*request_ids: str, parent: str | None = "1", batch: str = "batch-1") -> registry.Lineage:
    return registry.Lineage(request_ids, batch, "ledger-digest", SPLITS, "l1_sparse", parent)


def cheap_version(
    kind: str, metrics: dict, lineage_: registry.Lineage | None = None, deletion: str | None = "class_wise", **tags
) -> str:
    """A registered version with real tags in the real store, without logging a model (~3 s each).

    An unlearned one records its request kind (`deletion`; None: no `deletion.kind` tag, a "sample" batch).
    """
    all_tags = {registry.KIND_TAG: kind, **registry.metric_tags(metrics), **tags}
    if kind == "unlearned" and deletion is not None:
        all_tags[registry.DELETION_KIND_TAG] = deletion
    if lineage_ is not None:
        all_tags.update(lineage_.tags())
    return str(registry.register_version(NAME, "file:///nowhere/model", all_tags).version)


def set_alias(alias: str, version: str) -> None:
    tracking.client().set_registered_model_alias(NAME, alias, version)


def alias(name: str) -> str | None:
    found = registry.version_by_alias(NAME, name)
    return None if found is None else str(found.version)


def predictions(model: torch.nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(as_float(inputs))


def test_names_and_gates_come_from_params(tmp_path):
    assert registry.model_name("cifar10", "resnet18") == "unlearn-cifar10-resnet18"
    assert registry.default_model_name(tmp_path / "missing.yaml") == NAME
    assert promotion.load_gates(tmp_path / "missing.yaml") == GateParams()
    params = tmp_path / "params.yaml"
    params.write_text("promote:\n  class_wise:\n    min_ua: 99.5\n")
    gates = promotion.load_gates(params)
    assert (gates.class_wise.min_ua, gates.sample) == (99.5, SampleGateParams())
    assert registry.default_model_name(params) == NAME


def test_lineage_needs_comma_free_request_ids():
    with pytest.raises(ConfigError, match="request ids"):
        lineage().tags()
    with pytest.raises(ConfigError, match="comma-free"):
        lineage("a,b").tags()


def test_an_unlearned_version_names_its_requests_and_loads_by_alias(store, checkpoints, digits):
    original = registry.register_original(checkpoints["original"], {"TA": 97.0}, champion=True)
    assert (str(original.version), alias("champion")) == ("1", "1")
    assert original.tags["unlearn.kind"] == "original"
    with pytest.raises(registry.PromotionError, match="already has champion v1"):
        registry.register_original(checkpoints["original"], champion=True)  # refused before logging
    forgotten = lineage("req-7", "req-9", parent=str(original.version))
    unlearned = registry.register_unlearned(
        checkpoints["unlearned"], forgotten, GOOD, example_inputs=digits.test.inputs[:4], retrain_metrics=GOOD
    )
    tags = MlflowClient(tracking_uri=store).get_model_version(NAME, unlearned.version).tags
    assert tags["request_ids"] == "req-7,req-9" and tags["request_count"] == "2"
    assert (tags["batch_id"], tags["ledger_digest"], tags["method"]) == (
        "batch-1",
        "ledger-digest",
        "l1_sparse",
    )
    assert tags["parent_version"] == "1" and tags["sparsity"] == "0.0000"
    assert [tags[f"split.{part}.digest"] for part in ("retain", "forget", "test")] == [
        "a" * 64,
        "b" * 64,
        "c" * 64,
    ]
    assert tags["split.digest"] == "d" * 64
    assert registry.version_metrics(unlearned)["UA"] == GOOD["UA"] and float(tags["retrain.TA"]) == GOOD["TA"]
    assert (alias("candidate"), alias("champion")) == ("2", "1")
    info = mlflow.models.get_model_info(registry.model_uri(NAME, "candidate"))
    assert info.signature is not None and info.saved_input_example_info is not None
    loaded = mlflow.pytorch.load_model(f"models:/{NAME}@candidate")
    saved = restore_model(load_checkpoint(checkpoints["unlearned"])).eval()
    assert torch.equal(predictions(loaded, digits.test.inputs), predictions(saved, digits.test.inputs))
    champion = registry.load_model(NAME, "champion")
    original_model = restore_model(load_checkpoint(checkpoints["original"])).eval()
    assert torch.equal(predictions(champion, digits.test.inputs), predictions(original_model, digits.test.inputs))


def test_review_compares_with_the_champion_and_the_retrained_reference(store):
    set_alias("champion", cheap_version("original", {"TA": 97.0, "UA": 1.0}))
    retrain = cheap_version("unlearned", {"UA": 100.0, "TA": 96.0}, lineage("r1"), method="retrain")
    candidate = cheap_version("unlearned", GOOD, lineage("r1", "r2"), retrain_version=retrain)
    set_alias("candidate", candidate)
    review = promotion.review(name=NAME, gates=GATES)
    assert (review.version, review.champion, review.passed) == (candidate, "1", True)
    assert review.metrics["TA"] == {"version": 96.5, "champion": 97.0, "retrain": 96.0}
    assert review.metrics["UA"]["retrain"] == 100.0
    assert [(g.name, g.passed) for g in review.gates] == [
        ("TA_drop", True),
        ("UA", True),
        ("MIA_efficacy", True),
    ]
    assert review.gates[0].value == pytest.approx(0.5)
    assert review.evidence.kind == "class_wise" and review.evidence.retrain["TA"] == 96.0
    text = review.render()
    assert "requests (2): r1, r2" in text and "PASS  TA_drop" in text and "verdict: promotable" in text
    assert "UA 96.0 >= 90.0" in text and "evidence: class_wise batch" in text


def audit_tags(unseen: int, samples: int, member: float, nonmember: float = 95.0) -> dict[str, str]:
    """`forget.samples` and `audit.*` tags of a batch audited as the deletion batch records them."""
    figures = AuditFigures(samples, unseen, 100 * unseen / samples, 0.0, member, nonmember, 0.5, 0.8, 0.05, 16)
    audit = {f"{registry.AUDIT_PREFIX}{name}": str(value) for name, value in figures.as_dict().items()}
    return {registry.FORGET_SAMPLES_TAG: str(samples), **audit}


def test_a_sample_batch_is_judged_on_its_test_error_and_audit_read_off_its_tags(store):
    set_alias("champion", cheap_version("original", {"TA": 97.0}))
    strong = cheap_version("unlearned", RETRAIN_LIKE, lineage("r1"), deletion=None, **audit_tags(19, 20, 5.0))
    review = promotion.review(strong, name=NAME, gates=GATES)
    assert (review.evidence.kind, review.evidence.forget_samples) == ("sample", 20)
    assert (review.evidence.audit.unseen, review.evidence.audit.member_unseen_share) == (19, 5.0)
    assert [(g.name, g.passed) for g in review.gates] == [
        ("TA_drop", True),
        ("UA", True),
        ("audit_unseen", True),
        ("audit_power", True),
    ]
    assert review.passed and not review.insufficient
    text = review.render()
    assert "evidence: sufficient (audit power 1.00 on 20 samples)" in text and "holds the test error 4.0" in text
    # 3 samples and a leaky member probe: the audit cannot tell; no Retrain reference to certify it
    weak = cheap_version("unlearned", RETRAIN_LIKE, lineage("r2"), deletion="sample", **audit_tags(3, 3, 30.0))
    review = promotion.review(weak, name=NAME, gates=GATES)
    assert review.insufficient and [g.name for g in review.failed] == ["audit_power"]
    assert "evidence: insufficient (audit power 0.34 on 3 samples)" in review.render()
    with pytest.raises(promotion.GateFailedError, match="fails gates audit_power: .*insufficient evidence"):
        promotion.promote(weak, "ana", name=NAME, gates=GATES)
    set_alias("candidate", weak)
    promotion.promote(weak, "ana", "counsel accepts the Retrain gap report", force=True, name=NAME, gates=GATES)
    gates = json.loads(registry.get_version(NAME, weak).tags["promotion.gates"])
    assert gates["audit_power"]["insufficient"] and "power 0.34 < 0.80 on 3 samples" in gates["audit_power"]["reason"]
    assert not gates["UA"]["insufficient"] and gates["UA"]["reason"].startswith("UA 0.0 on 3 samples")


def test_promotion_moves_the_champion_only_when_the_gates_pass(store):
    set_alias("champion", cheap_version("original", {"TA": 97.0}))
    failing = cheap_version("unlearned", BAD, lineage("r1"))
    too_inaccurate = cheap_version("unlearned", {**GOOD, "TA": 94.0}, lineage("r1"))
    passing = cheap_version("unlearned", GOOD, lineage("r1"))
    set_alias("candidate", passing)
    with pytest.raises(promotion.GateFailedError, match="fails gates UA, MIA_efficacy") as refused:
        promotion.promote(failing, "ana", name=NAME, gates=GATES)
    assert [gate.name for gate in refused.value.failed] == ["UA", "MIA_efficacy"]
    with pytest.raises(promotion.GateFailedError, match="TA_drop"):
        promotion.promote(too_inaccurate, "ana", name=NAME, gates=GATES)
    assert alias("champion") == "1"
    assert not any(k.startswith("promotion.") for k in registry.get_version(NAME, failing).tags)
    done = promotion.promote(passing, "ana", "forgets batch 1", name=NAME, gates=GATES)
    assert (done.previous, done.version, alias("champion"), alias("candidate")) == (
        "1",
        passing,
        passing,
        None,
    )
    tags = registry.get_version(NAME, passing).tags
    assert (tags["promotion.reviewer"], tags["promotion.reason"], tags["promotion.forced"]) == (
        "ana",
        "forgets batch 1",
        "false",
    )
    assert tags["promotion.previous_champion"] == "1"
    assert datetime.fromisoformat(tags["promotion.time"]).tzinfo is not None
    assert all(gate["passed"] for gate in json.loads(tags["promotion.gates"]).values())


def test_a_forced_promotion_needs_a_reason_and_is_recorded(store):
    set_alias("champion", cheap_version("original", {"TA": 97.0}))
    failing = cheap_version("unlearned", BAD, lineage("r1"))
    with pytest.raises(registry.PromotionError, match="needs a reason"):
        promotion.promote(failing, "ana", force=True, name=NAME, gates=GATES)
    with pytest.raises(registry.PromotionError, match="needs a reviewer"):
        promotion.promote(failing, " ", name=NAME, gates=GATES)
    with pytest.raises(registry.VersionNotFoundError, match="no version 99"):
        promotion.promote("99", "ana", name=NAME, gates=GATES)
    done = promotion.promote(failing, "ana", "legal deadline; UA fix follows", force=True, name=NAME, gates=GATES)
    assert done.forced and alias("champion") == failing
    tags = registry.get_version(NAME, failing).tags
    assert tags["promotion.forced"] == "true" and tags["promotion.reason"] == "legal deadline; UA fix follows"
    gates = json.loads(tags["promotion.gates"])
    assert (gates["UA"]["passed"], gates["UA"]["value"], gates["TA_drop"]["passed"]) == (False, 40.0, True)
    with pytest.raises(registry.PromotionError, match="already the champion"):
        promotion.promote(failing, "ana", "again", force=True, name=NAME, gates=GATES)


def test_promoting_an_older_or_unrelated_version_is_refused_unless_forced_and_then_recorded(store):
    set_alias("champion", cheap_version("original", {"TA": 97.0}))
    stale = cheap_version("unlearned", GOOD, lineage("r1", batch="b1"))
    stranger = cheap_version("unlearned", GOOD, lineage("r2", parent=None, batch="b2"))
    set_alias("candidate", cheap_version("unlearned", GOOD, lineage("r3", batch="b3")))
    with pytest.raises(registry.PromotionError, match=f"v{stale} is older than the candidate v4"):
        promotion.promote(stale, "ana", name=NAME, gates=GATES)
    with pytest.raises(registry.PromotionError, match=f"v{stranger} is not descended from the champion v1"):
        promotion.promote(stranger, "ana", name=NAME, gates=GATES)
    assert alias("champion") == "1"
    done = promotion.promote(stale, "ana", "rollback ordered", force=True, name=NAME, gates=GATES)
    assert done.forced and done.warnings == (f"v{stale} is older than the candidate v4",)
    assert registry.get_version(NAME, stale).tags["promotion.warnings"] == done.warnings[0]
    forced = promotion.promote(stranger, "bo", "legal hold", force=True, name=NAME, gates=GATES)
    assert any("not descended from the champion v2" in w for w in forced.warnings)


def test_history_follows_the_champion_lineage_with_its_requests(store):
    original = cheap_version("original", {"TA": 97.0})
    set_alias("champion", original)
    first = cheap_version("unlearned", GOOD, lineage("r1", "r2", parent=original, batch="b1"))
    promotion.promote(first, "ana", name=NAME, gates=GATES)
    second = cheap_version("unlearned", BAD, lineage("r3", parent=first, batch="b2"))
    promotion.promote(second, "bo", "deadline", force=True, name=NAME, gates=GATES)
    set_alias("candidate", cheap_version("unlearned", GOOD, lineage("r4", parent=second, batch="b3")))
    entries = registry.history(NAME)
    assert [e.version for e in entries] == [second, first, original]
    assert [e.request_ids for e in entries] == [("r3",), ("r1", "r2"), ()]
    assert (entries[0].forced, entries[0].reviewer, entries[0].aliases) == (True, "bo", ("champion",))
    text = registry.render_history(NAME, entries)
    assert "forgotten 3 request(s): r1, r2, r3" in text and "r4" not in text and "(FORCED)" in text


def test_nothing_credential_like_reaches_params_or_tags(store, checkpoints):
    secrets = {"db_password": "hunter2", "api_token": "tok-123", "aws_secret_access_key": "abc"}
    with tracking.start_run("register", params={"store": "postgresql://u:hunter2@db/x", **secrets}, tags=secrets):
        version = registry.register_unlearned(
            checkpoints["unlearned"], lineage("r1"), GOOD, tags={**secrets, "origin": "https://u:hunter2@h/x"}
        )
    client = MlflowClient(tracking_uri=store)
    run = client.get_run(version.run_id)
    stored = [
        run.data.params,
        run.data.tags,
        client.get_model_version(NAME, version.version).tags,
        client.get_registered_model(NAME).tags,
    ]
    for mapping in stored:
        assert not [key for key in mapping if tracking.is_secret_key(key)]
        assert not [value for value in mapping.values() if "hunter2" in value or "tok-123" in value]
    assert run.data.params["store"] == "postgresql://u:***@db/x"  # the user kept, the password gone


def test_the_cli_reviews_promotes_and_lists_history(store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no params.yaml here: default gates and model name
    set_alias("champion", cheap_version("original", {"TA": 97.0}))
    failing = cheap_version("unlearned", BAD, lineage("r1"))
    set_alias("candidate", cheap_version("unlearned", GOOD, lineage("r2", "r3")))
    runner = CliRunner()
    reviewed = runner.invoke(app, ["review"])
    assert reviewed.exit_code == 0 and "verdict: promotable" in reviewed.output
    assert "NOT promotable" in runner.invoke(app, ["review", "--version", failing]).output
    refused = runner.invoke(app, ["promote", "--version", failing, "--reviewer", "ana"])
    assert refused.exit_code == 1 and "fails gates UA, MIA_efficacy" in refused.output
    unexplained = runner.invoke(app, ["promote", "--version", failing, "--reviewer", "ana", "--force"])
    assert unexplained.exit_code == 1 and "needs a reason" in unexplained.output
    promoted = runner.invoke(app, ["promote", "--version", "3", "--reviewer", "ana", "--reason", "ok"])
    assert promoted.exit_code == 0 and "champion v1 -> v3 by ana" in promoted.output
    listed = runner.invoke(app, ["history"])
    assert listed.exit_code == 0 and "the champion has forgotten 2 request(s): r2, r3" in listed.output


@pytest.fixture
def s3_server_store(tmp_path, monkeypatch, mlflow_template, s3_endpoint, s3_bucket):
    """An `mlflow server` on 127.0.0.1 keeping artefacts in moto's S3; terminated at teardown."""
    sqlite_store(tmp_path, monkeypatch, mlflow_template)
    server_env = {**S3_ENV, "MLFLOW_S3_ENDPOINT_URL": s3_endpoint}
    with mlflow_server(tmp_path / "server", mlflow_template, f"s3://{s3_bucket}/mlflow", server_env) as url:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        yield url
        end_runs()


@pytest.mark.slow
def test_registry_through_an_mlflow_server_with_s3_artefacts(
    s3_server_store, checkpoints, digits, s3_endpoint, s3_bucket
):
    original = registry.register_original(checkpoints["original"], {"TA": 97.0}, champion=True)
    forgotten = lineage("req-1", parent=str(original.version))
    unlearned = registry.register_unlearned(checkpoints["unlearned"], forgotten, BAD, tags=CLASS_WISE)
    with pytest.raises(promotion.GateFailedError):
        promotion.promote(unlearned.version, "ana", name=NAME, gates=GATES)
    assert alias("champion") == "1"
    promotion.promote(unlearned.version, "ana", "test", force=True, name=NAME, gates=GATES)
    loaded = registry.load_model(NAME, "champion")
    saved = restore_model(load_checkpoint(checkpoints["unlearned"])).eval()
    assert torch.equal(predictions(loaded, digits.test.inputs), predictions(saved, digits.test.inputs))
    assert registry.history(NAME)[0].request_ids == ("req-1",)
    keys = s3_keys(s3_endpoint, s3_bucket, "mlflow/")
    assert sum(key.endswith("/MLmodel") for key in keys) == 2
    assert any(key.endswith("/unlearned.pt") for key in keys)  # the checkpoint travels with the model
