"""`unlearn request reject` and `unlearn request release`: the operator's way out of a stuck request or batch."""

from datetime import UTC, datetime

import pytest
import yaml
from typer.testing import CliRunner

from cli import app
from tasks.adapters.ledger import Ledger
from tasks.adapters.requests import DeletionRequest, Location, open_inbox

RECEIVED = datetime(2025, 1, 31, 12, tzinfo=UTC)


def request(request_id: str) -> DeletionRequest:
    return DeletionRequest(request_id=request_id, sample_ids=[f"digits/train/{request_id}"], received_at=RECEIVED)


@pytest.fixture
def setup(tmp_path):
    """params.yaml naming a fresh inbox and ledger; r1, r2 claimed by batch b1, r3 pending."""
    inbox_dir, ledger = tmp_path / "requests", tmp_path / "ledger.csv"
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"deletion": {"inbox": str(inbox_dir), "ledger": str(ledger)}}))
    inbox = open_inbox(str(inbox_dir))
    for name in ("r1", "r2"):
        inbox.submit(request(name))
    assert inbox.claim("b1") == ["r1", "r2"]
    inbox.submit(request("r3"))
    return inbox, params, ledger


def run(*args: str):
    return CliRunner().invoke(app, ["--no-verbose", "request", *args])


def states(inbox) -> dict[str, Location | None]:
    return {name: inbox.status(name) for name in ("r1", "r2", "r3")}


def test_reject_one_claimed_request_and_one_pending(setup):
    inbox, params, _ = setup
    result = run("reject", "r1", "--reason", "subject withdrew", "--params", str(params))
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines() == ["r1: rejected (batch b1)"]
    assert inbox.status("r1") == Location("rejected", "b1")
    assert inbox.rejection_reason("r1") == "rejected by operator: subject withdrew"
    result = run("reject", "r3", "--reason", "sent twice", "--params", str(params))
    assert result.exit_code == 0 and result.output.strip() == "r3: rejected"
    assert inbox.status("r3") == Location("rejected") and inbox.pending() == []
    status = run("status", "r3", "--params", str(params))
    assert "rejected" in status.output and "rejected by operator: sent twice" in status.output


def test_reject_a_batch(setup):
    inbox, params, _ = setup
    result = run("reject", "--batch", "b1", "--reason", "stuck", "--params", str(params))
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines() == ["r1: rejected (batch b1)", "r2: rejected (batch b1)"]
    assert inbox.claimed_batches() == [] and inbox.status("r3") == Location("pending")
    again = run("reject", "--batch", "b1", "--reason", "stuck", "--params", str(params))
    assert again.exit_code == 0 and "nothing changed" in again.output


def test_release_a_batch_for_the_next_one(setup):
    inbox, params, _ = setup
    result = run("release", "--batch", "b1", "--params", str(params))
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines() == [
        "r1: released from batch b1, pending again",
        "r2: released from batch b1, pending again",
    ]
    assert inbox.pending() == ["r1", "r2", "r3"] and inbox.claimed_batches() == []
    assert inbox.claim("b2") == ["r1", "r2", "r3"]


def test_the_inbox_option_overrides_params(setup, tmp_path):
    _, params, _ = setup
    other = open_inbox(str(tmp_path / "other"))
    other.submit(request("o1"))
    other.claim("b9")
    result = run("release", "--batch", "b9", "--inbox", str(tmp_path / "other"), "--params", str(params))
    assert result.exit_code == 0 and result.output.strip() == "o1: released from batch b9, pending again"
    assert other.pending() == ["o1"]


@pytest.mark.parametrize(
    "args",
    [
        ["reject", "--batch", "b1", "--reason", "stuck"],
        ["reject", "r1", "--reason", "stuck"],
        ["release", "--batch", "b1"],
    ],
    ids=["reject-batch", "reject-request", "release"],
)
def test_a_batch_the_ledger_records_is_refused_and_nothing_changes(setup, args):
    inbox, params, ledger = setup
    Ledger(ledger).extend("b1", [request("r1"), request("r2")]).save()
    before = states(inbox)
    result = run(*args, "--params", str(params))
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:")
    assert "b1" in lines[0] and "ledger" in lines[0] and "unlearn batch" in lines[0]
    assert states(inbox) == before and inbox.claimed_requests("b1") == ["r1", "r2"]


def test_a_pending_request_is_not_in_any_recorded_batch(setup):
    inbox, params, ledger = setup
    Ledger(ledger).extend("b1", [request("r1"), request("r2")]).save()
    result = run("reject", "r3", "--reason", "no longer needed", "--params", str(params))
    assert result.exit_code == 0 and inbox.status("r3") == Location("rejected")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["reject", "nobody", "--reason", "x"], "no request 'nobody'"),
        (["reject", "--batch", "b-none", "--reason", "x"], "no batch 'b-none'"),
        (["release", "--batch", "b-none"], "no batch 'b-none'"),
        (["reject", "r1", "--batch", "b1", "--reason", "x"], "not both"),
        (["reject", "--reason", "x"], "not both"),
        (["reject", "../x", "--reason", "x"], "not valid"),
    ],
)
def test_bad_targets_are_one_line_errors(setup, args, message):
    inbox, params, _ = setup
    before = states(inbox)
    result = run(*args, "--params", str(params))
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]
    assert states(inbox) == before


def test_a_final_request_cannot_be_rejected(setup):
    inbox, params, _ = setup
    inbox.complete("b1", ["r1"])
    result = run("reject", "r1", "--reason", "too late", "--params", str(params))
    assert result.exit_code == 1 and "already done in batch b1" in result.output
    assert inbox.status("r1") == Location("done", "b1")


def test_reason_is_required(setup):
    inbox, params, _ = setup
    result = run("reject", "r1", "--params", str(params))
    assert result.exit_code == 2 and "--reason" in result.output
    assert inbox.status("r1") == Location("claimed", "b1")


def test_an_operator_command_waits_for_a_running_batch_and_changes_nothing_while_it_runs(setup):
    from tasks.adapters.batch_lock import batch_lock

    inbox, params, ledger = setup
    settings = yaml.safe_load(params.read_text())
    settings["deletion"]["lock_timeout_seconds"] = 1
    params.write_text(yaml.safe_dump(settings))
    with batch_lock(ledger, timeout_seconds=1, purpose="deletion batch"):
        result = run("release", "--batch", "b1", "--params", str(params))
    assert result.exit_code == 1 and "another deletion batch holds" in result.output
    assert inbox.claimed_requests("b1") == ["r1", "r2"]
    assert run("release", "--batch", "b1", "--params", str(params)).exit_code == 0
