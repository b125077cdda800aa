"""`unlearn review`, `promote` and `history` against a real registry: exit codes, --json, one-line errors."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from cli import app
from tasks.adapters import registry, tracking
from unlearn.audit import AuditFigures

NAME = "unlearn-digits-digits_resnet"  # the default preset's model: no params.yaml in the test's folder
CLASS_WISE_GOOD = {"UA": 96.0, "MIA_efficacy": 81.0, "RA": 99.0, "TA": 96.5, "RTE_seconds": 1.2}
CLASS_WISE_BAD = {"UA": 40.0, "MIA_efficacy": 30.0, "RA": 99.5, "TA": 97.0, "RTE_seconds": 0.4}
RETRAIN_LIKE = {"UA": 0.0, "MIA_efficacy": 10.0, "RA": 99.5, "TA": 96.0, "RTE_seconds": 0.8}  # UA ~ test error
SPLITS = {"retain": "a" * 64, "forget": "b" * 64, "test": "c" * 64, "split": "d" * 64}


def version(kind: str, metrics: dict, requests: tuple[str, ...] = (), **tags: str) -> str:
    """A registered version with real tags and no model (as tests/pipeline/test_registry.py registers them)."""
    all_tags = {registry.KIND_TAG: kind, **registry.metric_tags(metrics), **tags}
    if requests:
        lineage = registry.Lineage(requests, f"batch-{requests[0]}", "ledger-digest", SPLITS, "l1_sparse", "1")
        all_tags.update(lineage.tags())
    return str(registry.register_version(NAME, "file:///nowhere/model", all_tags).version)


def audit(unseen: int, samples: int, member: float, nonmember: float = 95.0) -> dict[str, str]:
    figures = AuditFigures(samples, unseen, 100 * unseen / samples, 0.0, member, nonmember, 0.5, 0.8, 0.05, 16)
    audited = {f"{registry.AUDIT_PREFIX}{name}": str(value) for name, value in figures.as_dict().items()}
    return {registry.FORGET_SAMPLES_TAG: str(samples), **audited}


@pytest.fixture
def versions(store, tmp_path, monkeypatch):
    """A champion (v1); a class-wise batch that passes (v2) and one that fails (v3); a sample batch of 3 (v4)."""
    monkeypatch.chdir(tmp_path)  # no params.yaml: the default gates and model name
    champion = version("original", {"TA": 97.0})
    tracking.client().set_registered_model_alias(NAME, "champion", champion)
    class_wise = {registry.DELETION_KIND_TAG: "class_wise"}
    good = version("unlearned", CLASS_WISE_GOOD, ("r1",), **class_wise)
    bad = version("unlearned", CLASS_WISE_BAD, ("r2",), **class_wise)
    weak = version("unlearned", RETRAIN_LIKE, ("r3",), **{registry.DELETION_KIND_TAG: "sample"}, **audit(3, 3, 30.0))
    tracking.client().set_registered_model_alias(NAME, "candidate", good)
    return {"champion": champion, "good": good, "bad": bad, "weak": weak}


def test_review_exits_0_3_or_4_and_says_so_in_json(versions):
    runner = CliRunner()
    cases = {"good": (0, "promotable"), "bad": (3, "not promotable"), "weak": (4, "not promotable")}
    for case, (code, verdict) in cases.items():
        shown = runner.invoke(app, ["review", "--version", versions[case]])
        assert shown.exit_code == code, (case, shown.output)
        assert ("verdict: promotable" if code == 0 else "verdict: NOT promotable") in shown.stdout
        answer = json.loads(runner.invoke(app, ["review", "--version", versions[case], "--json"]).stdout)
        assert (answer["version"], answer["champion"], answer["verdict"]) == (versions[case], "1", verdict)
        assert answer["exit_code"] == code and answer["insufficient"] == (case == "weak")
    weak = json.loads(runner.invoke(app, ["review", "--version", versions["weak"], "--json"]).stdout)
    power = next(gate for gate in weak["gates"] if gate["name"] == "audit_power")
    assert power["insufficient"] and not power["passed"] and weak["evidence"]["audit"]["samples"] == 3
    assert runner.invoke(app, ["review"]).exit_code == 0  # the candidate (v2) by default


def test_review_promote_and_history_errors_are_one_line_exit_1(versions):
    runner = CliRunner()
    for args, message in (
        (["review", "--version", "99"], "99"),
        (["promote", "--version", versions["bad"], "--reviewer", "ana"], "fails gates UA, MIA_efficacy"),
        (["promote", "--version", versions["bad"], "--reviewer", "ana", "--force"], "needs a reason"),
        (["history", "r-none"], "r-none"),
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 1, (args, result.output)
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1 and message in result.stderr
        assert result.stdout == ""


def test_history_json_is_the_lineage(versions):
    runner = CliRunner()
    promoted = runner.invoke(app, ["promote", "--version", versions["good"], "--reviewer", "ana", "--reason", "ok"])
    assert promoted.exit_code == 0, promoted.output
    answer = json.loads(runner.invoke(app, ["history", "--json"]).stdout)
    assert (answer["champion"], answer["forgotten"]) == (versions["good"], ["r1"])
    table = runner.invoke(app, ["history"], env={"TTY_COMPATIBLE": "1", "NO_COLOR": "1", "COLUMNS": "200"})
    assert table.exit_code == 0 and f"v{versions['good']} [champion]" in table.stdout
    assert "the champion has forgotten 1 request(s): r1" in table.stdout
