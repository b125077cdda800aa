"""Data tier: the Great Expectations suite passes good splits and names what is wrong with bad ones."""

import json
from dataclasses import replace

import pytest

from tasks.adapters import layout
from tasks.adapters.expectations import (
    Reference,
    SplitValidationError,
    data_docs,
    expected_for,
    plan_checks,
    validate_against,
    validate_split,
)
from tasks.adapters.params import Scenario
from tasks.stages.validate import main
from unlearn.splits import Manifest, class_wise, random_fraction

CLASS_WISE = Scenario(kind="class_wise", classes=[0])
RANDOM = Scenario(kind="random", fraction=0.1, seed=1)


@pytest.fixture(scope="module")
def class_split(digits):
    return class_wise(digits, [0])


@pytest.fixture(scope="module")
def random_split(digits):
    return random_fraction(digits, RANDOM.fraction, RANDOM.seed)


def _rows(manifest: Manifest) -> list[tuple]:
    return list(zip(manifest.sample_ids, manifest.indices, manifest.labels, strict=True))


def _manifest(rows: list[tuple]) -> Manifest:
    ids, indices, labels = zip(*rows, strict=True)
    return Manifest(tuple(ids), tuple(indices), tuple(labels))


def _failed(split, digits, scenario) -> set[str]:
    """The descriptions of the failed expectations; the raised error must name each of them."""
    report = validate_against(split, digits, scenario)
    with pytest.raises(SplitValidationError) as raised:
        report.raise_for_failures()
    for failure in report.failures:
        assert failure.description in str(raised.value)
        assert failure.expectation_type in str(raised.value)
    return {failure.description for failure in report.failures}


def test_good_class_wise_split_passes_every_expectation(class_split, digits):
    report = validate_against(class_split, digits, CLASS_WISE)
    assert report.success, [failure.describe() for failure in report.failures]
    report.raise_for_failures()
    names = {result.description for result in report.results}
    assert "forget: holds only the forgotten classes [0]" in names
    assert "test: holds none of the forgotten classes [0]" in names
    assert "forget: has 142 rows, as configured" in names
    assert report.digests == class_split.digests()


def test_good_random_split_passes_with_the_bare_signature(random_split, digits):
    report = validate_split(random_split, digits.train.ids, digits.num_classes, len(digits.test), RANDOM)
    assert report.success, [failure.describe() for failure in report.failures]
    names = {result.description for result in report.results}
    assert f"forget: has {round(0.1 * len(digits.train))} rows, as configured" in names
    assert not any("forgotten classes" in name for name in names)


def test_plan_covers_every_manifest_and_the_partition(class_split, digits):
    reference = Reference.of(digits)
    checks = plan_checks(reference, expected_for(class_split, reference, CLASS_WISE))
    assert {check.part for check in checks} == {"retain", "forget", "test", "train"}
    descriptions = [check.description for check in checks]
    assert len(descriptions) == len(set(descriptions)), "each expectation needs its own name"
    assert "train: retain and forget share no sample id" in descriptions


def test_duplicated_id_fails(class_split, digits):
    rows = _rows(class_split.retain)
    rows[1] = (rows[0][0], *rows[1][1:])
    failed = _failed(replace(class_split, retain=_manifest(rows)), digits, CLASS_WISE)
    assert {"retain: sample ids are unique", "train: retain and forget share no sample id"} <= failed
    assert "train: ids are the training set's ids at their index" in failed


def test_sample_in_both_retain_and_forget_fails(class_split, digits):
    retain = _manifest(_rows(class_split.retain) + _rows(class_split.forget)[:1])
    failed = _failed(replace(class_split, retain=retain), digits, CLASS_WISE)
    assert "train: retain and forget share no sample id" in failed
    assert "retain: holds none of the forgotten classes [0]" in failed


def test_forget_row_of_a_kept_class_fails(class_split, digits):
    moved = _rows(class_split.retain)[0]
    assert moved[2] != 0
    split = replace(class_split, retain=_manifest(_rows(class_split.retain)[1:]),
                    forget=_manifest(_rows(class_split.forget) + [moved]))  # fmt: skip
    failed = _failed(split, digits, CLASS_WISE)
    assert {"forget: holds only the forgotten classes [0]", "forget: has 142 rows, as configured"} <= failed
    assert not any(name.startswith("train:") for name in failed), "the partition itself is intact"


def test_test_row_of_the_forgotten_class_fails(class_split, digits):
    index = digits.test.labels.tolist().index(0)
    extra = (digits.test.ids[index], index, 0)
    failed = _failed(replace(class_split, test=_manifest(_rows(class_split.test) + [extra])), digits, CLASS_WISE)
    assert "test: holds none of the forgotten classes [0]" in failed
    assert any(name.startswith("test: has") for name in failed)


def test_label_out_of_range_fails(random_split, digits):
    rows = _rows(random_split.retain)
    rows[5] = (*rows[5][:2], 10)
    failed = _failed(replace(random_split, retain=_manifest(rows)), digits, RANDOM)
    assert {"retain: labels lie in the class range 0..9",
            "train: labels are the training set's labels at their index"} <= failed  # fmt: skip


def test_missing_row_fails(random_split, digits):
    failed = _failed(replace(random_split, retain=_manifest(_rows(random_split.retain)[:-1])), digits, RANDOM)
    assert failed == {f"train: retain + forget rows = the training set's {len(digits.train)}"}


def test_forget_size_other_than_configured_fails(random_split, digits):
    failed = _failed(random_split, digits, Scenario(kind="random", fraction=0.2, seed=1))
    assert failed == {f"forget: has {round(0.2 * len(digits.train))} rows, as configured"}


def test_stage_writes_the_report_and_exits_nonzero_on_a_bad_split(class_split, digits, tmp_path, monkeypatch,
                                                                  capsys):  # fmt: skip
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("split:\n  scenarios:\n    cw:\n      kind: class_wise\n"
                                          "      classes: [0]\n")  # fmt: skip
    digits.save("data/raw/dataset.npz")
    class_split.save("data/splits/cw")
    assert main(["--scenario", "cw"]) == 0
    report = json.loads((tmp_path / "reports/validation/cw.json").read_text())
    assert report["success"] and report["scenario"] == "cw"
    assert report["digests"] == class_split.digests()
    reference = Reference.of(digits)
    planned = plan_checks(reference, expected_for(class_split, reference, CLASS_WISE))
    assert sorted(r["description"] for r in report["results"]) == sorted(c.description for c in planned)
    assert all({"expectation_type", "kwargs", "success", "observed"} <= set(r) for r in report["results"])
    assert (tmp_path / "reports/validation/cw.md").read_text().startswith("# Split validation: cw")
    docs = data_docs("cw")  # in the project's GX context, gx/: stored suites, results, Data Docs
    assert docs.index == layout.DATA_DOCS_INDEX and docs.index.is_file()
    assert (layout.GX_CONTEXT / "expectations" / "cw" / "forget.json").is_file()
    assert str(layout.DATA_DOCS_INDEX) in capsys.readouterr().out

    replace(class_split, forget=_manifest(_rows(class_split.forget)[:-1])).save("data/splits/cw")
    assert main(["--scenario", "cw"]) == 1
    stderr = capsys.readouterr().err
    assert "forget: has 142 rows, as configured (expect_table_row_count_to_equal" in stderr
    assert f"data docs: {layout.DATA_DOCS_INDEX}" in stderr
    assert not json.loads((tmp_path / "reports/validation/cw.json").read_text())["success"]
    failed = data_docs("cw")
    assert not json.loads(failed.results["forget"].read_text())["success"]
    assert not docs.pages["forget"].exists(), "the failed run's result replaced the passing one"
    assert main(["--scenario", "nope"]) == 2
    assert "no scenario 'nope'" in capsys.readouterr().err


def test_a_later_deletion_batch_partitions_train_with_the_earlier_deletions(digits, tmp_path):
    """Batch 2's retain set lacks batch 1's samples too: they complete the partition, and may not leak back."""
    from tasks.adapters.ledger import Ledger, batch_split
    from tasks.adapters.requests import DeletionRequest

    ids = digits.train.ids
    ledger = Ledger.load(tmp_path / "ledger.csv").extend("b1", [DeletionRequest(request_id="r1", sample_ids=ids[:3])])
    ledger = ledger.extend("b2", [DeletionRequest(request_id="r2", sample_ids=ids[10:12])])
    split, cumulative = batch_split(digits, ledger, "b2")
    earlier = Manifest.of(digits.train, sorted(set(cumulative.indices) - set(split.forget.indices)))

    report = validate_against(split, digits, name="b2", earlier_deletions=earlier)
    assert report.success, [failure.describe() for failure in report.failures]
    assert {f.expectation_type for f in validate_against(split, digits, name="b2").failures} == {
        "expect_table_row_count_to_equal"
    }
    leaky = replace(split, retain=Manifest.of(digits.train, sorted([*split.retain.indices, earlier.indices[0]])))
    leaked = validate_against(leaky, digits, name="b2", earlier_deletions=earlier)
    assert "expect_column_values_to_be_unique" in {f.expectation_type for f in leaked.failures}
