"""Split invariants: Dr and Df disjoint and covering train; class-wise drops the class from test."""

import pytest

from unlearn.errors import ConfigError, DuplicateSampleIdError, UnknownSampleIdError
from unlearn.splits import Split, by_ids, class_wise, random_fraction, scenario_split


def _check_partition(split, bundle):
    retain, forget = set(split.retain.sample_ids), set(split.forget.sample_ids)
    assert not retain & forget
    assert retain | forget == set(bundle.train.ids)
    assert len(split.retain) + len(split.forget) == len(bundle.train)


def test_class_wise_forgets_exactly_the_classes_and_test_drops_them(digits):
    split = class_wise(digits, [3, 7])
    _check_partition(split, digits)
    assert set(split.forget.labels) == {3, 7}
    assert 3 not in split.retain.labels and 7 not in split.retain.labels
    assert set(split.test.labels) == set(range(10)) - {3, 7}
    assert split.forget.labels.count(3) == int((digits.train.labels == 3).sum())
    forget = split.forget_set(digits)
    assert forget.ids == split.forget.sample_ids and set(forget.labels.tolist()) == {3, 7}


def test_random_fraction_is_seeded_and_keeps_test(digits):
    split = random_fraction(digits, 0.1, seed=4)
    _check_partition(split, digits)
    assert len(split.forget) == round(0.1 * len(digits.train))
    assert len(split.test) == len(digits.test)
    assert random_fraction(digits, 0.1, seed=4).digest() == split.digest()
    assert random_fraction(digits, 0.1, seed=5).digest() != split.digest()


def test_by_ids_forgets_named_samples(digits):
    names = ["digits/train/00005", "digits/train/00100"]
    split = by_ids(digits, names)
    _check_partition(split, digits)
    assert sorted(split.forget.sample_ids) == names


def test_unknown_and_duplicate_ids_are_named(digits):
    with pytest.raises(UnknownSampleIdError, match="digits/train/99999"):
        by_ids(digits, ["digits/train/00001", "digits/train/99999"])
    with pytest.raises(DuplicateSampleIdError, match="digits/train/00001"):
        by_ids(digits, ["digits/train/00001", "digits/train/00001"])


def test_bad_config_values_fail(digits):
    with pytest.raises(ConfigError, match="outside"):
        class_wise(digits, [12])
    with pytest.raises(ConfigError, match="fraction"):
        random_fraction(digits, 1.5)


def test_a_scenario_kind_picks_its_split(digits):
    assert scenario_split(digits, "class_wise", [3]).digest() == class_wise(digits, [3]).digest()
    assert scenario_split(digits, "random", [3], 0.2, 7).digest() == random_fraction(digits, 0.2, 7).digest()
    with pytest.raises(ConfigError, match="^unknown forgetting scenario kind 'sample'; known: class_wise, random$"):
        scenario_split(digits, "sample")


def test_save_load_round_trip_keeps_digest(digits, tmp_path):
    split = class_wise(digits, [0])
    split.save(tmp_path / "cw")
    loaded = Split.load(tmp_path / "cw")
    assert loaded == split and loaded.digest() == split.digest()
    assert (tmp_path / "cw" / "retain.csv").read_text().startswith("sample_id,index,label\n")


def test_digest_changes_with_content(digits):
    assert class_wise(digits, [0]).digest() != class_wise(digits, [1]).digest()
