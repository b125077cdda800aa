"""The deletion ledger: extension, idempotency, digest, atomic writes, batch checks and splits."""

import os
from datetime import UTC, datetime, timedelta

import pytest

from tasks.adapters.ledger import Ledger, LedgerError, LedgerTamperedError, batch_split, validate_batch
from tasks.adapters.requests import DeletionRequest
from unlearn.errors import DuplicateSampleIdError, UnknownSampleIdError

T0 = datetime(2025, 1, 31, 12, tzinfo=UTC)


def request(request_id: str, *sample_ids: str, minutes: int = 0) -> DeletionRequest:
    return DeletionRequest(
        request_id=request_id, sample_ids=list(sample_ids), received_at=T0 + timedelta(minutes=minutes)
    )


def train(*numbers: int) -> list[str]:
    return [f"digits/train/{n:05d}" for n in numbers]


@pytest.fixture
def ledger(tmp_path):
    """A saved ledger with one batch: b1 deleted samples 1, 2 (r1) and 3 (r2)."""
    first = Ledger.load(tmp_path / "ledger" / "ledger.csv")
    extended = first.extend("b1", [request("r1", *train(1, 2)), request("r2", *train(3))], deleted_at=T0)
    extended.save()
    return extended


def test_a_missing_ledger_is_empty(tmp_path):
    empty = Ledger.load(tmp_path / "nowhere.csv")
    assert empty.rows == () and empty.deleted_ids() == set() and empty.batches() == []


def test_extend_save_and_load_round_trip(ledger):
    loaded = Ledger.load(ledger.path)
    assert loaded == ledger
    assert loaded.deleted_ids() == set(train(1, 2, 3))
    assert loaded.batches() == ["b1"] and loaded.sample_ids_of("b1") == train(1, 2, 3)
    header, first, *_ = ledger.path.read_text().splitlines()
    empty_digest = Ledger().digest()  # the first batch's rows chain to the empty ledger
    assert header == "sample_id,request_id,batch_id,deleted_at,previous_digest"
    assert first == f"digits/train/00001,r1,b1,2025-01-31T12:00:00+00:00,{empty_digest}"


def test_extending_with_a_recorded_batch_does_nothing(ledger):
    text, digest = ledger.path.read_text(), ledger.digest()
    again = Ledger.load(ledger.path).extend("b1", [request("r9", *train(7))])
    assert again == ledger and again.digest() == digest
    again.save()
    assert ledger.path.read_text() == text


def test_extend_refuses_samples_already_deleted_or_named_twice(ledger):
    with pytest.raises(DuplicateSampleIdError, match="00002"):
        ledger.extend("b2", [request("r3", *train(2, 4))])
    with pytest.raises(DuplicateSampleIdError, match="00005"):
        ledger.extend("b2", [request("r3", *train(5)), request("r4", *train(5, 6))])


def test_digest_names_the_content_not_the_row_order(ledger):
    shuffled = Ledger(ledger.path, tuple(reversed(ledger.rows)))
    assert shuffled.digest() == ledger.digest()
    grown = ledger.extend("b2", [request("r3", *train(4))], deleted_at=T0)
    assert grown.digest() != ledger.digest()
    assert Ledger.load(ledger.path).digest() == ledger.digest()


def test_a_failed_save_keeps_the_old_file_whole(ledger, monkeypatch):
    text = ledger.path.read_text()
    grown = ledger.extend("b2", [request("r3", *train(4))])

    def crash(source, target):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk gone"):
        grown.save()
    assert ledger.path.read_text() == text
    assert os.listdir(ledger.path.parent) == ["ledger.csv"]  # no temporary file left behind


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("sample,request\n", "header"),
        ("sample_id,request_id,batch_id,deleted_at\na,r1,b1\n", "line 2"),
        ("sample_id,request_id,batch_id,deleted_at\na,r1,b1,t\na,r2,b2,t\n", "more than once"),
    ],
)
def test_a_malformed_ledger_is_an_error(tmp_path, content, message):
    path = tmp_path / "ledger.csv"
    path.write_text(content)
    with pytest.raises(LedgerError, match=message):
        Ledger.load(path)


def test_validate_batch_gives_each_rejection_a_reason_naming_the_samples(ledger):
    known = train(*range(20))
    requests = [
        request("late", *train(8, 9), minutes=5),  # overlaps "early" on 00008: rejected
        request("early", *train(7, 8), minutes=1),
        request("unknown", *train(10), "digits/train/99999", minutes=2),
        request("again", *train(2, 11), minutes=3),
        request("fine", *train(12), minutes=4),
    ]
    accepted, rejected = validate_batch(requests, known, ledger)
    assert [r.request_id for r in accepted] == ["early", "fine"]
    assert set(rejected) == {"late", "unknown", "again"}
    assert "digits/train/00008" in rejected["late"] and "early" in rejected["late"]
    assert "digits/train/00009" not in rejected["late"]
    assert "unknown" in rejected["unknown"] and "99999" in rejected["unknown"]
    assert "00010" not in rejected["unknown"]
    assert "already deleted" in rejected["again"] and "00002" in rejected["again"]
    assert "b1" in rejected["again"]


def test_a_rerun_of_a_recorded_batch_makes_the_same_decisions(ledger):
    requests = [request("r3", *train(4, 5)), request("r4", *train(1))]
    first = validate_batch(requests, train(*range(10)), ledger)
    recorded = ledger.extend("b2", first[0])
    assert validate_batch(requests, train(*range(10)), recorded, batch_id="b2") == first
    assert validate_batch(requests, train(*range(10)), recorded)[0] == []  # without batch_id: all deleted


def test_batch_split_retains_nothing_deleted_so_far(digits, tmp_path):
    ids = digits.train.ids
    ledger = Ledger.load(tmp_path / "ledger.csv").extend("b1", [request("r1", *ids[:5])])
    ledger = ledger.extend("b2", [request("r2", *ids[10:13]), request("r3", ids[40])])
    split, cumulative = batch_split(digits, ledger, "b2")

    assert split.scenario == "ids"
    assert set(split.forget.sample_ids) == {*ids[10:13], ids[40]}
    assert set(cumulative.sample_ids) == ledger.deleted_ids() == {*ids[:5], *ids[10:13], ids[40]}
    assert not set(split.retain.sample_ids) & ledger.deleted_ids()
    assert len(split.retain) + len(cumulative) == len(digits.train)
    assert len(split.test) == len(digits.test)
    assert [ids[i] for i in split.retain.indices] == list(split.retain.sample_ids)

    both, _ = batch_split(digits, ledger, ["b1", "b2"])
    assert set(both.forget.sample_ids) == ledger.deleted_ids()
    with pytest.raises(LedgerError, match="b3"):
        batch_split(digits, ledger, "b3")


def test_batch_split_refuses_a_ledger_naming_unknown_samples(digits, tmp_path):
    ledger = Ledger.load(tmp_path / "ledger.csv").extend("b1", [request("r1", "cifar10/train/00001")])
    with pytest.raises(UnknownSampleIdError, match="cifar10"):
        batch_split(digits, ledger, "b1")


# --- tamper evidence ---------------------------------------------------------------------------


@pytest.fixture
def three_batches(ledger):
    """b1 (samples 1-3), b2 (4, 5), b3 (6), saved."""
    grown = ledger.extend("b2", [request("r3", *train(4, 5))], deleted_at=T0).extend(
        "b3", [request("r4", *train(6))], deleted_at=T0
    )
    grown.save()
    return grown


def _drop_line(path, text: str) -> None:
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(line for line in lines if text not in line))


def test_an_untouched_ledger_verifies_and_matches_its_anchors(three_batches):
    loaded = Ledger.load(three_batches.path)
    loaded.verify()
    for batch in ("b1", "b2", "b3"):
        through = three_batches.through(batch)
        loaded.check_anchor(batch, through.digest(), len(through.rows), "v9")


@pytest.mark.parametrize("removed", ["digits/train/00002", "digits/train/00004"])
def test_removing_a_row_of_an_earlier_batch_breaks_the_chain(three_batches, removed):
    _drop_line(three_batches.path, removed)
    with pytest.raises(LedgerTamperedError, match="batch b[23]'s rows record the ledger before them"):
        Ledger.load(three_batches.path).verify()


def test_editing_an_earlier_row_breaks_the_chain(three_batches):
    text = three_batches.path.read_text()
    three_batches.path.write_text(text.replace("digits/train/00001,r1", "digits/train/00001,r-forged"))
    with pytest.raises(LedgerTamperedError, match="b2"):
        Ledger.load(three_batches.path).verify()


def test_removing_a_row_of_the_last_batch_is_caught_by_the_anchor(three_batches):
    """The chain cannot vouch for the last batch; the registry's anchor of it does."""
    grown = three_batches.extend("b4", [request("r5", *train(7, 8))], deleted_at=T0)
    grown.save()
    anchor = grown.through("b4")
    _drop_line(grown.path, "digits/train/00008")
    tampered = Ledger.load(grown.path)
    tampered.verify()  # nothing after b4 chains to it
    with pytest.raises(LedgerTamperedError, match=r"through batch b4 .* \(7 rows now, 8 recorded\)"):
        tampered.check_anchor("b4", anchor.digest(), len(anchor.rows), "registry version v7")


def test_removing_the_last_batch_whole_is_caught_by_the_anchor(three_batches):
    anchor = three_batches.through("b3")
    _drop_line(three_batches.path, "digits/train/00006")
    tampered = Ledger.load(three_batches.path)
    tampered.verify()
    with pytest.raises(LedgerTamperedError, match="lacks batch b3, which registry version v8 recorded"):
        tampered.check_anchor("b3", anchor.digest(), len(anchor.rows), "registry version v8")


def test_a_ledger_written_before_the_chain_column_loads_chained(tmp_path, three_batches):
    legacy = tmp_path / "legacy.csv"
    legacy.write_text(three_batches.to_csv(("sample_id", "request_id", "batch_id", "deleted_at")))
    loaded = Ledger.load(legacy)
    loaded.verify()
    assert loaded.digest() == three_batches.digest() and [r.previous_digest for r in loaded.rows] == [
        r.previous_digest for r in three_batches.rows
    ]
