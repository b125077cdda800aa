"""Data sets: stable unique ids, persisted splits, device-side augmentation, clear errors."""

import numpy as np
import pytest
import torch

from unlearn.data import DataBundle, TensorSet, as_float, batches, load_dataset, random_crop_flip
from unlearn.errors import ConfigError, DatasetNotFoundError, UnknownDatasetError


def test_digits_ids_are_unique_and_stable_across_runs(digits):
    again = load_dataset("digits")
    assert len(set(digits.train.ids)) == len(digits.train)
    assert digits.train.ids == again.train.ids
    assert torch.equal(digits.train.inputs, again.train.inputs)
    assert digits.train.ids[123] == "digits/train/00123"
    assert not set(digits.train.ids) & set(digits.test.ids)


def test_digits_split_is_stratified_and_seeded(digits):
    assert (len(digits.train), len(digits.test)) == (1437, 360)
    assert digits.input_shape == (1, 8, 8)
    counts = np.bincount(digits.test.labels.numpy(), minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37
    other = load_dataset("digits", seed=1)
    assert not torch.equal(other.train.labels, digits.train.labels)


def test_bundle_save_load_round_trip(digits, tmp_path):
    path = digits.save(tmp_path / "digits.npz")
    loaded = DataBundle.load(path)
    assert loaded.train.ids == digits.train.ids
    assert torch.equal(loaded.test.inputs, digits.test.inputs)
    assert (loaded.num_classes, loaded.mean, loaded.augment) == (10, digits.mean, False)


def test_npz_brings_its_own_ids(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (50, 6, 6, 3), dtype=np.uint8)  # NHWC: turned into NCHW
    y = np.repeat(np.arange(5), 10)
    ids = np.array([f"customer-{i}" for i in range(50)])
    np.savez(tmp_path / "mine.npz", x=x, y=y, ids=ids)
    bundle = load_dataset("npz", tmp_path / "mine.npz")
    assert bundle.input_shape == (3, 6, 6) and bundle.num_classes == 5
    assert set(bundle.train.ids) | set(bundle.test.ids) == set(ids)
    assert len(bundle.train) == 40


def test_npz_rejects_duplicate_ids_and_missing_arrays(tmp_path):
    np.savez(tmp_path / "dup.npz", x=np.zeros((4, 2, 2)), y=np.zeros(4), ids=np.array(["a"] * 4))
    with pytest.raises(ConfigError, match="not unique"):
        load_dataset("npz", tmp_path / "dup.npz")
    np.savez(tmp_path / "nox.npz", y=np.zeros(4))
    with pytest.raises(ConfigError, match="missing"):
        load_dataset("npz", tmp_path / "nox.npz")


def test_unknown_dataset_names_the_known_ones():
    with pytest.raises(UnknownDatasetError, match="imagenet.*digits"):
        load_dataset("imagenet")


def test_missing_torchvision_root_asks_for_download(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="download"):
        load_dataset("cifar10", tmp_path)


def test_uint8_inputs_become_unit_floats():
    assert as_float(torch.tensor([0, 255], dtype=torch.uint8)).tolist() == [0.0, 1.0]


def test_batches_cover_every_row_once():
    data = TensorSet(torch.arange(10.0).view(10, 1, 1, 1), torch.arange(10), tuple("abcdefghij"))
    seen = torch.cat([y for _, y in batches(data, 3, shuffle=True, generator=torch.Generator().manual_seed(0))])
    assert sorted(seen.tolist()) == list(range(10))


def test_random_crop_flip_keeps_shape_and_moves_pixels():
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(64, 3, 8, 8)
    out = random_crop_flip(images, 2, generator)
    assert out.shape == images.shape
    changed = (out != images).flatten(1).any(1)
    assert changed.float().mean() > 0.5  # most images shifted or flipped
    flipped_only = random_crop_flip(images, 0, torch.Generator().manual_seed(1))
    for original, result in zip(images, flipped_only, strict=True):
        assert torch.equal(result, original) or torch.equal(result, original.flip(2))
