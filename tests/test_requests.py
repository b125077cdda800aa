"""Deletion requests: the schema, and the inbox's lifecycle on a local folder and on S3 (moto)."""

import contextlib
import json
import re
import threading
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from tasks.requests import (
    CLAIMED,
    DONE,
    PENDING,
    REJECTED,
    BatchExistsError,
    DeletionRequest,
    Inbox,
    InboxError,
    InvalidRequestError,
    LocalStore,
    Location,
    RequestExistsError,
    RequestNotClaimedError,
    RequestTooLargeError,
    make_request,
    open_inbox,
    parse,
    submit_request,
)
from unlearn.errors import UnlearnError

RECEIVED = datetime(2025, 1, 31, 12, tzinfo=UTC)


def request(request_id: str, *sample_ids: str) -> DeletionRequest:
    """A request received at a fixed time, so that a copy read back compares equal."""
    ids = list(sample_ids) or [f"digits/train/{request_id}"]
    return DeletionRequest(request_id=request_id, sample_ids=ids, received_at=RECEIVED)


@pytest.fixture(params=["local", "s3"])
def inbox(request, tmp_path, monkeypatch):
    """The same inbox interface over a local folder and over an S3 prefix on moto's server."""
    if request.param == "local":
        return open_inbox(str(tmp_path / "requests"))
    endpoint = request.getfixturevalue("s3_endpoint")
    bucket = request.getfixturevalue("s3_bucket")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)  # boto3 reads it: no endpoint_url passed
    # s3_bucket names the bucket after the test's first 50 characters: parametrised cases can share it
    return open_inbox(f"s3://{bucket}/{uuid.uuid4().hex}/inbox/")


# --- schema ---------------------------------------------------------------------------------


@pytest.mark.parametrize("bad_id", ["a/b", "..", ".", "../etc", "x" * 129, "", "a b", ".hidden", "a\\b"])
def test_bad_request_ids_are_refused(bad_id):
    with pytest.raises(InvalidRequestError, match="request_id"):
        make_request(request_id=bad_id, sample_ids=["digits/train/00001"])
    with pytest.raises(ValidationError):
        DeletionRequest(request_id=bad_id, sample_ids=["digits/train/00001"])


def test_a_good_request_id_of_128_characters_is_accepted():
    assert make_request(request_id="R" * 128, sample_ids=["s"]).request_id == "R" * 128


def test_duplicate_sample_ids_are_named():
    with pytest.raises(InvalidRequestError, match="digits/train/00002"):
        make_request(request_id="r1", sample_ids=["digits/train/00002", "digits/train/00001", "digits/train/00002"])


@pytest.mark.parametrize("sample_ids", [[], [""], ["a", "  "]])
def test_empty_sample_ids_are_refused(sample_ids):
    with pytest.raises(InvalidRequestError, match="sample_ids"):
        make_request(request_id="r1", sample_ids=sample_ids)


def test_received_at_must_carry_a_time_zone_and_is_kept_in_utc():
    with pytest.raises(InvalidRequestError, match="received_at"):
        make_request(request_id="r1", sample_ids=["a"], received_at=datetime(2025, 1, 1, 12))
    local = datetime(2025, 1, 1, 12, tzinfo=timezone(timedelta(hours=2)))
    made = make_request(request_id="r1", sample_ids=["a"], received_at=local)
    assert made.received_at == datetime(2025, 1, 1, 10, tzinfo=UTC) and made.received_at.tzinfo == UTC
    assert make_request(request_id="r2", sample_ids=["a"]).received_at.tzinfo == UTC


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{not json", "not valid UTF-8 JSON"),
        (b"\xff\xfe", "not valid UTF-8 JSON"),
        (b'["r1"]', "expected a JSON object"),
        (b'{"request_id": "r1", "sample_ids": ["a"], "priority": 1}', "priority"),
        (b'{"request_id": "r1"}', "sample_ids"),
        (b'{"request_id": "r2", "sample_ids": ["a"]}', "does not match its file name"),
    ],
)
def test_parse_returns_a_reason_for_bad_content(raw, reason):
    result = parse(raw, expected_id="r1")
    assert isinstance(result, str) and reason in result


def test_parse_round_trips_a_request():
    original = make_request(request_id="r1", sample_ids=["a", "b"], subject="alice", reason="gdpr")
    assert parse(original.to_json(), expected_id="r1") == original


# --- the inbox, on both backends ------------------------------------------------------------


def test_full_lifecycle(inbox):
    for name in ("r1", "r2", "r3"):
        inbox.submit(request(name))
    assert inbox.pending() == ["r1", "r2", "r3"]
    assert inbox.status("r1") == Location(PENDING) and inbox.status("nobody") is None

    assert inbox.claim("b1") == ["r1", "r2", "r3"]
    assert inbox.pending() == [] and inbox.claimed_batches() == ["b1"]
    assert inbox.status("r2") == Location(CLAIMED, "b1")
    assert inbox.read("b1", "r1") == request("r1")

    inbox.reject("b1", "r3", "unknown sample ids: 'x'")
    inbox.reject("b1", "r3", "again")  # a repeat is a no-op
    assert inbox.status("r3") == Location(REJECTED, "b1")
    assert inbox.rejection_reason("r3") == "unknown sample ids: 'x'"
    assert parse(inbox.store.get("rejected/r3.json")) == request("r3")  # the request itself is kept

    inbox.complete("b1", ["r1", "r2"])
    inbox.complete("b1", ["r1", "r2"])  # idempotent
    assert inbox.status("r1") == Location(DONE, "b1")
    assert inbox.claimed_batches() == [] and inbox.claimed_requests("b1") == []
    with pytest.raises(RequestNotClaimedError):
        inbox.complete("b1", ["r3"])

    assert inbox.claim("b2") == []  # nothing pending: no batch
    inbox.submit(request("r4"))
    with pytest.raises(BatchExistsError, match="b1"):
        inbox.claim("b1")
    assert inbox.pending() == ["r4"]  # a refused claim takes nothing


def test_resubmitting_a_known_id_is_refused_and_loses_nothing(inbox):
    for name in ("r1", "r2", "r3"):
        inbox.submit(request(name))
    inbox.claim("b1")
    inbox.complete("b1", ["r1"])
    inbox.reject("b1", "r2", "bad")
    inbox.submit(request("r4"))
    before = {name: inbox.status(name) for name in ("r1", "r2", "r3", "r4")}
    assert [where.state for where in before.values()] == [DONE, REJECTED, CLAIMED, PENDING]
    for name, where in before.items():
        with pytest.raises(RequestExistsError, match=f"{name}.*{where.state}"):
            inbox.submit(request(name, "another sample"))
    assert {name: inbox.status(name) for name in before} == before
    assert inbox.claim("b2") == ["r4"] and inbox.read("b2", "r4") == request("r4")


def test_a_pending_id_cannot_be_submitted_twice(inbox):
    inbox.submit(request("r1", "a"))
    with pytest.raises(RequestExistsError, match="pending"):
        inbox.submit(request("r1", "b"))
    inbox.claim("b1")
    assert inbox.read("b1", "r1").sample_ids == ["a"]


def test_a_claim_crashed_between_marker_and_move_is_resumed(inbox):
    """Another claimer (or a crashed run) holds r1: this claim skips it, and its batch can resume."""
    inbox.submit(request("r1"))
    inbox.submit(request("r2"))
    assert inbox.store.create("claims/r1", b"b-crashed")  # the winner's marker, its move not done
    assert inbox.pending() == ["r2"]
    assert inbox.status("r1") == Location(CLAIMED, "b-crashed")
    assert inbox.claim("b2") == ["r2"]
    assert inbox.claimed_batches() == ["b-crashed", "b2"]
    assert inbox.claimed_requests("b-crashed") == ["r1"]
    assert inbox.read("b-crashed", "r1") == request("r1")


def test_malformed_files_are_claimed_and_rejected_with_a_reason(inbox):
    inbox.store.put("pending/bad.json", b"{not json")
    inbox.store.put("pending/notes.txt", b"ignored: not <request id>.json")
    assert inbox.claim("b1") == ["bad"]
    reason = inbox.read("b1", "bad")
    assert isinstance(reason, str) and "JSON" in reason
    inbox.reject("b1", "bad", reason)
    assert inbox.status("bad") == Location(REJECTED, "b1")


def test_a_file_over_the_size_limit_is_rejected_unread(inbox, monkeypatch):
    small = Inbox(inbox.store, max_bytes=300)
    small.store.put("pending/big.json", b" " * 1000)
    small.claim("b1")

    def never(key):
        raise AssertionError(f"{key} was read")

    monkeypatch.setattr(small.store, "get", never)
    reason = small.read("b1", "big")
    assert isinstance(reason, str) and "1000 bytes" in reason and "not read" in reason
    with pytest.raises(RequestTooLargeError):
        small.read_raw("b1", "big")
    with pytest.raises(RequestTooLargeError, match="split"):
        small.submit(request("huge", *[f"digits/train/{i:05d}" for i in range(100)]))


def test_bad_ids_never_reach_a_path(inbox):
    with pytest.raises(InvalidRequestError):
        inbox.claim("../b1")
    with pytest.raises(InvalidRequestError):
        inbox.read("b1", "../../etc/passwd")
    with pytest.raises(InvalidRequestError):
        inbox.status("a/b")


def test_unsupported_locations_are_refused():
    with pytest.raises(InboxError, match="unsupported"):
        open_inbox("gs://bucket/requests")
    with pytest.raises(InboxError, match="bucket"):
        open_inbox("s3:///requests")


def test_a_missing_bucket_is_an_inbox_error(s3_endpoint):
    with pytest.raises(InboxError, match="no-such-bucket"):
        open_inbox("s3://no-such-bucket/inbox", endpoint_url=s3_endpoint).pending()


# --- concurrency, on a local folder ----------------------------------------------------------


@pytest.mark.parametrize("folder_lock", [True, False], ids=["flock", "markers-only"])
def test_racing_claimers_never_share_a_request(tmp_path, monkeypatch, folder_lock):
    """Two claimers over the same pending set: disjoint batches that together hold every request."""
    if not folder_lock:  # the per-request markers alone must keep claims exclusive
        monkeypatch.setattr(LocalStore, "lock", lambda self: contextlib.nullcontext())
    inbox = open_inbox(str(tmp_path / "requests"))
    names = [f"r{i:03d}" for i in range(60)]
    for name in names:
        inbox.submit(request(name))
    start, results, errors = threading.Barrier(2), {}, []

    def claimer(batch_id):
        start.wait()
        try:
            results[batch_id] = open_inbox(str(tmp_path / "requests")).claim(batch_id)
        except Exception as error:  # reported below, not swallowed
            errors.append(error)

    threads = [threading.Thread(target=claimer, args=(b,)) for b in ("bA", "bB")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert not set(results["bA"]) & set(results["bB"])
    assert sorted(results["bA"] + results["bB"]) == names
    for batch_id, claimed in results.items():
        assert inbox.claimed_requests(batch_id) == sorted(claimed)


def test_racing_submits_of_one_id_accept_exactly_one(tmp_path):
    inbox = open_inbox(str(tmp_path / "requests"))
    start, outcomes = threading.Barrier(4), []

    def submitter(sample):
        start.wait()
        try:
            inbox.submit(request("same", sample))
            outcomes.append(sample)
        except RequestExistsError:
            outcomes.append(None)

    threads = [threading.Thread(target=submitter, args=(f"s{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [o for o in outcomes if o]
    assert len(outcomes) == 4 and len(winners) == 1
    inbox.claim("b1")
    assert inbox.read("b1", "same").sample_ids == winners


# --- the CLI's entry point -------------------------------------------------------------------


def test_submit_request_inline_and_from_files(tmp_path):
    uri = str(tmp_path / "requests")
    made = submit_request(uri, sample_ids=["digits/train/00001"], subject="alice")
    assert re.fullmatch(r"req-\d{8}T\d{6}Z-[0-9a-f]{8}", made.request_id)
    lines = tmp_path / "ids.txt"
    lines.write_text("# subject 42\ndigits/train/00002\n\ndigits/train/00003\n")
    listed = tmp_path / "ids.json"
    listed.write_text(json.dumps(["digits/train/00004"]))
    assert submit_request(uri, file=lines, request_id="r-lines").sample_ids == [
        "digits/train/00002",
        "digits/train/00003",
    ]
    assert submit_request(uri, file=listed, request_id="r-json").sample_ids == ["digits/train/00004"]
    assert open_inbox(uri).pending() == sorted([made.request_id, "r-json", "r-lines"])


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"sample_ids": ["a"], "file": "ids.txt"}, {"file": "missing.txt"}, {"sample_ids": ["a", "a"]}],
)
def test_submit_request_refuses_bad_input(tmp_path, kwargs):
    with pytest.raises(InvalidRequestError) as caught:
        submit_request(str(tmp_path / "requests"), **kwargs)
    assert isinstance(caught.value, UnlearnError)
    assert open_inbox(str(tmp_path / "requests")).pending() == []
