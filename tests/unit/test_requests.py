"""Deletion requests: the schema, and the inbox's lifecycle on a local folder and on S3 (moto)."""

import contextlib
import json
import os
import re
import stat
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from pydantic import ValidationError

from tasks.adapters.requests import (
    CLAIMED,
    DONE,
    MAX_REASON_BYTES,
    MAX_REQUEST_BYTES,
    PENDING,
    REJECTED,
    BatchExistsError,
    DeletionRequest,
    EntryExistsError,
    Inbox,
    InboxError,
    InvalidRequestError,
    LocalStore,
    Location,
    NotARegularFileError,
    RequestExistsError,
    RequestFinalError,
    RequestNotClaimedError,
    RequestTooLargeError,
    UnknownBatchError,
    UnknownRequestError,
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


# --- hostile inboxes: bad content, bad entry kinds, bad names, reused ids ---------------------


def short_enough(reason) -> bool:
    return isinstance(reason, str) and 0 < len(reason.encode()) <= MAX_REASON_BYTES


def no_hang(function, *args, timeout: float = 20.0):
    """`function(*args)` in a thread: fail (instead of hanging the suite) if it does not return in time."""
    outcome = {}

    def target():
        try:
            outcome["value"] = function(*args)
        except BaseException as error:  # re-raised below
            outcome["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"{function.__name__} still running after {timeout} s: it hangs"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def good_request_goes_through(inbox, batch_id: str, request_id: str = "good") -> list[str]:
    """The good request waiting beside the hostile entries is claimed, read back and completed."""
    claimed = no_hang(inbox.claim, batch_id)
    assert request_id in claimed
    assert no_hang(inbox.read, batch_id, request_id) == request(request_id)
    inbox.complete(batch_id, [request_id])
    assert inbox.status(request_id) == Location(DONE, batch_id)
    return claimed


def quarantined(inbox) -> dict[str, str]:
    """{quarantined entry: its reason note} in the inbox's quarantine/."""
    names = inbox.store.children("quarantine")
    notes = {n.removesuffix(".reason.txt") for n in names if n.endswith(".reason.txt")}
    entries = {n for n in names if not n.endswith(".reason.txt")}
    assert entries == notes, "every quarantined entry has its note, and only those"
    return {n: inbox.store.get(f"quarantine/{n}.reason.txt").decode() for n in sorted(entries)}


DEEP = [b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 100_000 + b"1" + b"}" * 100_000]


@pytest.mark.parametrize("raw", DEEP, ids=["arrays", "objects"])
def test_parse_refuses_deep_nesting_quickly_without_raising(raw):
    started = time.perf_counter()
    reason = parse(raw, expected_id="deep")
    assert short_enough(reason) and "nested" in reason
    assert time.perf_counter() - started < 5  # linear pre-scan: well under a second for 1 MB


def test_parse_counts_brackets_in_strings_and_escapes_correctly():
    inside = make_request(request_id="r1", sample_ids=["a"], subject="[[[[" * 20 + '\\"{{{{' * 20)
    assert parse(inside.to_json(), expected_id="r1") == inside  # brackets in strings are text
    escaped = b'{"request_id": "r1", "sample_ids": ["a\\\\"], "subject": "' + b"[" * 40 + b'"}'
    assert isinstance(parse(escaped, expected_id="r1"), DeletionRequest)  # "a\\" ends at its quote
    sneaky = b'["\\\\"' + b"[" * 40 + b"]" * 40 + b"]"  # the string is "\\": the brackets are real
    assert "nested" in parse(sneaky)


@pytest.mark.parametrize(
    "raw",
    [
        b"1" * 5000,  # int() over its 4300-digit limit: a ValueError, not a JSONDecodeError
        b'{"request_id": "r1", "sample_ids": ["a"], "' + b"k" * 100_000 + b'": 1}',
        b'{"request_id": "' + b"r" * 100_000 + b'", "sample_ids": ["a"]}',
        b'{"request_id": "r1", "sample_ids": ["' + b"x" * 100_000 + b'"]}',
        b'{"request_id": "r1", "sample_ids": ["\\ud800"]}',
        b'{"request_id": "r1", "sample_ids": ' + json.dumps([f"s{i}" for i in range(50)] * 2).encode() + b"}",
        b" " * (MAX_REQUEST_BYTES + 1),
        "not bytes at all",
        None,
    ],
    ids=[
        "huge-int",
        "huge-key",
        "huge-request-id",
        "huge-sample-id",
        "surrogate",
        "many-repeats",
        "oversize",
        "str",
        "none",
    ],
)
def test_parse_never_raises_and_its_reasons_are_short(raw):
    reason = parse(raw, expected_id="r1")
    assert short_enough(reason), reason


def test_a_sample_id_over_256_characters_is_refused_clearly():
    assert make_request(request_id="r1", sample_ids=["x" * 256]).sample_ids == ["x" * 256]
    with pytest.raises(InvalidRequestError, match="position.*longer than 256 characters") as caught:
        make_request(request_id="r1", sample_ids=["ok", "x" * 100_000])
    assert len(str(caught.value)) < 300


@pytest.mark.parametrize("raw", DEEP, ids=["arrays", "objects"])
def test_a_deeply_nested_request_file_is_rejected_with_a_short_reason(inbox, raw):
    inbox.submit(request("good"))
    inbox.store.put("pending/deep.json", raw)
    assert inbox.sweep() == {}  # a regular file under a valid name: the batch reads and rejects it
    assert inbox.claim("b1") == ["deep", "good"]
    reason = inbox.read("b1", "deep")
    assert short_enough(reason) and "nested" in reason
    inbox.reject("b1", "deep", reason)
    assert inbox.status("deep") == Location(REJECTED, "b1") and inbox.rejection_reason("deep") == reason
    assert inbox.read("b1", "good") == request("good")
    inbox.complete("b1", ["good"])
    assert inbox.status("good") == Location(DONE, "b1")


def test_huge_ids_give_short_reasons_everywhere(inbox):
    inbox.submit(request("good"))
    inbox.store.put("pending/huge.json", b'{"request_id": "huge", "sample_ids": ["' + b"x" * 100_000 + b'"]}')
    inbox.store.put("pending/long-id.json", b'{"request_id": "' + b"r" * 100_000 + b'", "sample_ids": ["a"]}')
    claimed = good_request_goes_through(inbox, "b1")
    assert claimed == ["good", "huge", "long-id"]
    for request_id in ("huge", "long-id"):
        reason = inbox.read("b1", request_id)
        assert short_enough(reason), reason
        inbox.reject("b1", request_id, reason + " " + "y" * 100_000)  # a caller's long reason is cut too
        stored = inbox.rejection_reason(request_id)
        assert short_enough(stored) and stored.startswith(reason[:50]) and "cut" in stored
        assert len(inbox.store.get(f"rejected/{request_id}.reason.txt")) <= MAX_REASON_BYTES + 1
    assert "longer than 256 characters" in inbox.rejection_reason("huge")


def test_a_folder_named_like_a_request_is_rejected_by_id_not_blocking_the_batch(inbox):
    inbox.submit(request("good"))
    if isinstance(inbox.store, LocalStore):
        (inbox.store.root / "pending" / "x.json").mkdir(parents=True)
        (inbox.store.root / "pending" / "x.json" / "inner").write_bytes(b"kept")
    else:  # on S3 a folder is a prefix, seen through CommonPrefixes
        inbox.store.put("pending/x.json/inner", b"kept")
    assert inbox.pending() == ["good"]
    dealt = inbox.sweep()
    assert list(dealt) == ["x"] and "folder" in dealt["x"] and short_enough(dealt["x"])
    assert inbox.status("x") == Location(REJECTED) and inbox.rejection_reason("x") == dealt["x"]
    assert inbox.store.get("rejected/x.json/inner") == b"kept"  # moved whole, nothing deleted
    assert inbox.sweep() == {}  # dealt with once: no reason on every run
    good_request_goes_through(inbox, "b1")
    # its id is now used for ever: a file placed under it later is a duplicate, never claimed
    inbox.store.put("pending/x.json", request("x").to_json())
    assert inbox.claim("b2") == []
    dealt = inbox.sweep()
    assert list(dealt) == ["x"] and "duplicate" in dealt["x"] and "rejected" in dealt["x"]
    assert inbox.status("x") == Location(REJECTED)


def test_misnamed_entries_are_quarantined_once_with_their_names(inbox):
    inbox.submit(request("good"))
    long_name = "n" * 200 + ".json"
    inbox.store.put("pending/notes.txt", b"not a request")
    inbox.store.put("pending/bad name.json", request("good").to_json())
    inbox.store.put(f"pending/{long_name}", b"{}")
    inbox.store.put("pending/sub/deeper.json", b"a misnamed folder")
    assert inbox.pending() == ["good"]
    dealt = inbox.sweep()
    assert set(dealt) == {"pending/'notes.txt'", "pending/'bad name.json'", "pending/'sub'", shown_label(long_name)}
    assert all(short_enough(reason) and "misnamed" in reason for reason in dealt.values())
    assert all(len(label) <= 90 for label in dealt)
    notes = quarantined(inbox)
    assert len(notes) == 4
    assert sum("'pending/notes.txt'" in note for note in notes.values()) == 1
    assert sum(long_name in note for note in notes.values()) == 1  # the full original name is kept
    contents = {inbox.store.get(f"quarantine/{n}") for n in notes if inbox.store.kind(f"quarantine/{n}") == "file"}
    assert contents == {b"not a request", request("good").to_json(), b"{}"}
    folder = next(n for n, note in notes.items() if "'pending/sub'" in note)
    assert inbox.store.get(f"quarantine/{folder}/deeper.json") == b"a misnamed folder"
    assert inbox.store.children("pending") == ["good.json"]
    assert inbox.sweep() == {}
    good_request_goes_through(inbox, "b1")


def shown_label(name: str) -> str:
    text = repr(name)
    return f"pending/{text[:77]}..." if len(text) > 80 else f"pending/{text}"


def test_reused_names_of_done_and_rejected_requests_are_duplicates_not_history(inbox):
    for name in ("r-done", "r-rej"):
        inbox.submit(request(name))
    inbox.claim("b-1")
    inbox.reject("b-1", "r-rej", "unknown sample ids")
    inbox.complete("b-1", ["r-done"])
    done_record = inbox.store.get("done/b-1/r-done.json")
    inbox.store.put("pending/r-done.json", request("r-done", "someone else's sample").to_json())
    inbox.store.put("pending/r-rej.json", request("r-rej", "another").to_json())
    inbox.submit(request("good"))

    # before any sweep: the reused names are never claimed, never settled into batch b-1
    assert inbox.pending() == ["good"]
    assert inbox.claim("b-2") == ["good"]
    assert inbox.claimed_batches() == ["b-2"] and inbox.claimed_requests("b-1") == []
    inbox.complete("b-1", ["r-done"])  # a repeat completion: nothing to move, nothing overwritten
    assert inbox.read("b-2", "good") == request("good")
    inbox.complete("b-2", ["good"])

    dealt = inbox.sweep()
    assert set(dealt) == {"r-done", "r-rej"}
    assert "duplicate" in dealt["r-done"] and "done in batch b-1" in dealt["r-done"]
    assert "duplicate" in dealt["r-rej"] and "rejected in batch b-1" in dealt["r-rej"]
    assert inbox.store.get("done/b-1/r-done.json") == done_record  # byte for byte
    assert inbox.status("r-done") == Location(DONE, "b-1") and inbox.status("r-rej") == Location(REJECTED, "b-1")
    assert inbox.rejection_reason("r-rej") == "unknown sample ids"
    assert parse(inbox.store.get("rejected/r-rej.json")) == request("r-rej")
    kept = sorted(inbox.store.get(f"quarantine/{n}") for n in quarantined(inbox))
    assert kept == sorted([request("r-done", "someone else's sample").to_json(), request("r-rej", "another").to_json()])
    assert inbox.store.children("pending") == [] and inbox.sweep() == {}


def test_a_reused_name_of_a_claimed_request_is_quarantined_and_the_claim_finishes(inbox):
    inbox.submit(request("r1"))
    inbox.claim("b1")
    inbox.store.put("pending/r1.json", request("r1", "forged").to_json())
    assert inbox.claim("b2") == [] and inbox.claimed_requests("b1") == ["r1"]
    dealt = inbox.sweep()
    assert "claimed by batch b1" in dealt["r1"]
    assert inbox.read("b1", "r1") == request("r1")
    inbox.complete("b1", ["r1"])
    assert inbox.status("r1") == Location(DONE, "b1")


def test_moves_never_overwrite(inbox):
    inbox.store.put("a", b"source")
    inbox.store.put("b", b"target")
    with pytest.raises(EntryExistsError):
        inbox.store.move("a", "b")
    assert inbox.store.get("a") == b"source" and inbox.store.get("b") == b"target"
    assert inbox.store.move("a", "c") and inbox.store.get("c") == b"source"
    assert not inbox.store.move("a", "d")  # gone: False


def test_a_claimed_copy_of_a_done_request_is_quarantined_not_written_over_the_record(inbox):
    inbox.submit(request("r1"))
    inbox.claim("b1")
    inbox.complete("b1", ["r1"])
    record = inbox.store.get("done/b1/r1.json")
    inbox.store.put("claimed/b1/r1.json", b"forged")  # by hand
    inbox.complete("b1", ["r1"])
    assert inbox.store.get("done/b1/r1.json") == record
    assert inbox.claimed_requests("b1") == []
    assert [inbox.store.get(f"quarantine/{n}") for n in quarantined(inbox)] == [b"forged"]


# --- links, FIFOs, devices: a local folder only ---------------------------------------------


@pytest.fixture
def local(tmp_path):
    inbox = open_inbox(str(tmp_path / "requests"))
    inbox.submit(request("good"))
    return inbox


def link_targets(tmp_path) -> dict[str, Path]:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "linked.json").write_bytes(request("linked").to_json())
    os.mkfifo(outside / "fifo")
    return {"request": outside / "linked.json", "fifo": outside / "fifo", "zero": Path("/dev/zero")}


@pytest.mark.parametrize("target", ["request", "fifo", "zero", "passwd"])
def test_a_symlink_in_pending_is_rejected_never_followed(local, tmp_path, target):
    targets = {**link_targets(tmp_path), "passwd": Path("/etc/passwd")}
    pointed = targets[target]
    before = pointed.read_bytes() if target == "request" else None
    link = local.store.root / "pending" / "linked.json"
    link.symlink_to(pointed)

    assert no_hang(local.pending) == ["good"]  # a link is never claimed, even to a valid request
    dealt = no_hang(local.sweep)
    assert list(dealt) == ["linked"] and "symlink" in dealt["linked"] and short_enough(dealt["linked"])
    assert local.status("linked") == Location(REJECTED) and "symlink" in local.rejection_reason("linked")
    moved = local.store.root / "rejected" / "linked.json"
    assert moved.is_symlink() and os.readlink(moved) == str(pointed)  # the link itself, moved
    assert not os.path.lexists(link)
    if before is not None:
        assert pointed.read_bytes() == before  # the target untouched, where it was
    good_request_goes_through(local, "b1")
    assert local.claimed_requests("b1") == [] and "linked" not in local.claimed_requests("b1")


def test_a_fifo_in_pending_neither_hangs_nor_blocks_the_batch(local):
    os.mkfifo(local.store.root / "pending" / "fifo.json")
    assert no_hang(local.claim, "b1") == ["good"]
    dealt = no_hang(local.sweep)
    assert list(dealt) == ["fifo"] and "FIFO" in dealt["fifo"]
    assert stat.S_ISFIFO(os.lstat(local.store.root / "rejected" / "fifo.json").st_mode)
    assert local.status("fifo") == Location(REJECTED)
    assert local.read("b1", "good") == request("good")
    local.complete("b1", ["good"])


@pytest.mark.parametrize("swap", ["fifo", "link-to-zero", "link-to-request", "folder"])
def test_a_claimed_file_swapped_after_the_claim_is_read_as_a_reason(local, tmp_path, swap):
    local.submit(request("other"))
    assert local.claim("b1") == ["good", "other"]
    path = local.store.root / "claimed" / "b1" / "good.json"
    path.unlink()
    targets = link_targets(tmp_path)
    if swap == "fifo":
        os.mkfifo(path)
    elif swap == "folder":
        path.mkdir()
    else:
        path.symlink_to(targets["zero"] if swap == "link-to-zero" else targets["request"])
    reason = no_hang(local.read, "b1", "good")
    assert short_enough(reason) and "not a regular file" in reason
    with pytest.raises(NotARegularFileError):
        local.read_raw("b1", "good")
    no_hang(local.reject, "b1", "good", reason)
    assert local.status("good") == Location(REJECTED, "b1")
    assert os.lstat(local.store.root / "rejected" / "good.json").st_mode & 0o170000 != stat.S_IFREG
    assert local.read("b1", "other") == request("other")
    local.complete("b1", ["other"])
    assert local.claimed_batches() == []


def test_store_reads_are_bounded_and_never_follow_links(local, tmp_path):
    store = local.store
    store.put("big", b"x" * 10_000)
    assert len(store.get("big", limit=100)) == 101
    (store.root / "zero").symlink_to("/dev/zero")
    with pytest.raises(NotARegularFileError, match="symlink"):
        no_hang(store.get, "zero")
    assert store.kind("zero") == "symlink" and store.size("zero") == len("/dev/zero")  # lstat, not stat


def test_odd_names_are_quarantined_with_a_safe_label(local):
    name = "a\nb\x1b[31m.json"
    (local.store.root / "pending" / name).write_bytes(b"x")
    dealt = local.sweep()
    assert list(dealt) == [f"pending/{name!r}"] and "\n" not in "".join(dealt) and "\x1b" not in "".join(dealt)
    good_request_goes_through(local, "b1")


# --- the operator's commands ----------------------------------------------------------------


def test_operator_rejects_a_claimed_request_a_pending_one_and_a_batch(inbox):
    for name in ("r1", "r2", "r3"):
        inbox.submit(request(name))
    inbox.claim("b1")
    inbox.submit(request("r4"))
    assert inbox.reject_request("r1", "subject withdrew") == Location(REJECTED, "b1")
    assert inbox.rejection_reason("r1") == "rejected by operator: subject withdrew"
    assert inbox.reject_request("r4", "duplicate of r2") == Location(REJECTED)
    assert inbox.status("r4") == Location(REJECTED) and inbox.pending() == []
    assert inbox.reject_batch("b1", "batch stuck") == ["r2", "r3"]
    assert [inbox.status(r) for r in ("r2", "r3")] == [Location(REJECTED, "b1")] * 2
    assert inbox.rejection_reason("r3") == "rejected by operator: batch stuck"
    assert inbox.claimed_batches() == [] and inbox.reject_batch("b1", "again") == []
    with pytest.raises(RequestFinalError, match="already rejected"):
        inbox.reject_request("r1", "again")
    with pytest.raises(UnknownRequestError, match="nobody"):
        inbox.reject_request("nobody", "x")
    with pytest.raises(UnknownBatchError, match="b-none"):
        inbox.reject_batch("b-none", "x")
    with pytest.raises(UnknownBatchError):
        inbox.release("b-none")


def test_operator_cannot_reject_a_done_request(inbox):
    inbox.submit(request("r1"))
    inbox.claim("b1")
    inbox.complete("b1", ["r1"])
    with pytest.raises(RequestFinalError, match="done in batch b1"):
        inbox.reject_request("r1", "too late")
    assert inbox.status("r1") == Location(DONE, "b1")


def test_release_puts_a_stuck_batch_back_for_the_next_one(inbox):
    for name in ("r1", "r2", "r3"):
        inbox.submit(request(name))
    inbox.claim("b1")
    inbox.complete("b1", ["r3"])
    assert inbox.release("b1") == ["r1", "r2"]
    assert inbox.pending() == ["r1", "r2"] and inbox.status("r1") == Location(PENDING)
    assert inbox.claimed_batches() == [] and inbox.release("b1") == []
    assert inbox.status("r3") == Location(DONE, "b1")
    assert inbox.claim("b2") == ["r1", "r2"]
    assert inbox.read("b2", "r1") == request("r1")
    inbox.complete("b2", ["r1", "r2"])
    assert inbox.status("r2") == Location(DONE, "b2")


def test_release_finishes_a_half_done_release_and_a_crashed_claim(inbox):
    inbox.submit(request("r1"))
    inbox.submit(request("r2"))
    assert inbox.store.create("batches/b1", b"{}")
    assert inbox.store.create("claims/r1", b"b1")  # a claim crashed before its move
    assert inbox.release("b1") == ["r1"]
    assert inbox.claim("b2") == ["r1", "r2"]


@pytest.mark.parametrize("swap", ["fifo", "link-to-request"])
def test_an_entry_swapped_between_the_check_and_the_open_is_refused_without_hanging(local, tmp_path, swap, monkeypatch):
    """lstat saw a regular file, then the entry became a FIFO or a link: the open must not wait or follow."""
    assert local.claim("b1") == ["good"]
    path = local.store.root / "claimed" / "b1" / "good.json"
    regular = os.lstat(path)
    path.unlink()
    if swap == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to(link_targets(tmp_path)["request"])
    real_lstat = os.lstat
    monkeypatch.setattr(os, "lstat", lambda p, *a, **k: regular if str(p) == str(path) else real_lstat(p, *a, **k))
    with pytest.raises(NotARegularFileError):
        no_hang(local.store.get, "claimed/b1/good.json")
    reason = no_hang(local.read, "b1", "good")
    assert short_enough(reason) and "not a regular file" in reason


def test_the_folder_lock_is_reentrant_across_stores_of_one_folder(tmp_path):
    """A thread holding the inbox lock (through any store on the folder) is not blocked by itself."""
    first, second = open_inbox(str(tmp_path / "requests")), open_inbox(str(tmp_path / "requests"))
    second.submit(request("r1"))

    def nested():
        with first.store.lock():
            return second.claim("b1")

    assert no_hang(nested, timeout=10) == ["r1"]


def test_a_folder_put_into_a_claimed_batch_is_read_as_a_reason_and_rejected_whole(inbox):
    inbox.submit(request("good"))
    assert inbox.claim("b1") == ["good"]
    if isinstance(inbox.store, LocalStore):
        (inbox.store.root / "claimed" / "b1" / "extra.json").mkdir()
        (inbox.store.root / "claimed" / "b1" / "extra.json" / "inner").write_bytes(b"kept")
    else:
        inbox.store.put("claimed/b1/extra.json/inner", b"kept")
    assert inbox.claimed_requests("b1") == ["extra", "good"]
    reason = inbox.read("b1", "extra")
    assert short_enough(reason) and "folder" in reason
    inbox.reject("b1", "extra", reason)
    assert inbox.store.get("rejected/extra.json/inner") == b"kept"
    assert inbox.claimed_requests("b1") == ["good"]
    assert inbox.read("b1", "good") == request("good")
    inbox.complete("b1", ["good"])
    assert inbox.claimed_batches() == []
